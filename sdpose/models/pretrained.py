"""Pretrained weights that ship inside the package, each with its model card.

Every pose toolbox's quick start fine-tunes a pretrained model; none can be downloaded
here, so this project trains its own with its own pipeline (`sdpose train` on a large
synthetic set, docs/pretrained.md) and ships the result as package data in
`sdpose/models/weights/`: `index.json` names each set of weights, its checkpoint file and
that file's SHA-256; `<name>.json` is its card (architecture, code version, every training
leg's iterations, wall time and data, AP on its own val set, on a val set drawn with
another seed and on the real COCO sample). `train.init: <name>` starts from them.

A checkpoint is the ordinary sdpose format (`sdpose.models.checkpoint`): weights-only
loadable, self-describing. A file whose checksum differs from the index is refused by name.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdpose.core.errors import InputError

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
INDEX_NAME = "index.json"


class PretrainedError(InputError):
    """Shipped weights that are unknown, missing or fail their checksum."""


@dataclass(frozen=True)
class ShippedWeights:
    """One entry of the index: where its files are and what its checkpoint must hash to."""

    name: str
    checkpoint: Path
    card_path: Path
    sha256: str

    def card(self) -> dict[str, Any]:
        """The model card (architecture, provenance, measured AP)."""
        try:
            return json.loads(self.card_path.read_text())
        except (OSError, ValueError) as error:
            raise PretrainedError(f"{self.card_path}: unreadable model card ({error})") from None

    def config(self) -> dict[str, Any]:
        """The architecture the weights are for (`ModelConfig.to_dict`), from the card."""
        return self.card()["architecture"]

    def verified_path(self) -> Path:
        """The checkpoint file, after checking its SHA-256 against the index."""
        if not self.checkpoint.is_file():
            raise PretrainedError(f"{self.checkpoint}: shipped weights {self.name!r} are missing")
        digest = file_sha256(self.checkpoint)
        if digest != self.sha256:
            raise PretrainedError(
                f"{self.checkpoint}: shipped weights {self.name!r} fail their checksum "
                f"(sha256 {digest[:16]}..., the index says {self.sha256[:16]}...): the file "
                "is damaged or was replaced; reinstall the package"
            )
        return self.checkpoint


def shipped(weights_dir: Path = WEIGHTS_DIR) -> dict[str, ShippedWeights]:
    """Every set of weights the package ships, by name (none when the index is absent)."""
    index_path = weights_dir / INDEX_NAME
    if not index_path.is_file():
        return {}
    try:
        index = json.loads(index_path.read_text())
    except ValueError as error:
        raise PretrainedError(f"{index_path}: not valid JSON ({error})") from None
    return {
        name: ShippedWeights(
            name=name,
            checkpoint=weights_dir / entry["checkpoint"],
            card_path=weights_dir / entry["card"],
            sha256=entry["sha256"],
        )
        for name, entry in index.items()
    }


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, read in pieces."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def add_to_index(weights_dir: Path, name: str, checkpoint: Path, card: Path) -> None:
    """Record (or replace) `name` in the index with its checkpoint's checksum."""
    index_path = weights_dir / INDEX_NAME
    index = json.loads(index_path.read_text()) if index_path.is_file() else {}
    index[name] = {
        "checkpoint": checkpoint.name,
        "card": card.name,
        "sha256": file_sha256(checkpoint),
    }
    index_path.write_text(json.dumps(dict(sorted(index.items())), indent=2) + "\n")
