"""Where a training run lives: `<ray.storage_path>/<run name>`, local or a URI (s3://, gs://).

Ray Train V2 keeps a run's checkpoints and its checkpoint manifest there, and picks them up
when a driver starts a run of the same name again. The launcher needs two things on top:
the last registered checkpoint (to know where a resumed run continues, and to read a
finished run's outputs) and removing a previous run before a fresh one. pyarrow's
filesystems do both for local paths and object stores alike.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs
from ray.train import Result

from sdpose.core.paths import resolve

CHECKPOINT_PREFIX = "epoch-"
# `scheme:/x` is how a pathlib.Path spells `scheme://x` (it collapses the double slash)
_COLLAPSED_URI = re.compile(r"^([a-zA-Z][\w+.-]*):/(?!/)")


def storage_uri(storage_path: Path | str) -> str:
    """A URI as typed (`s3://b/x`) from its pathlib form (`s3:/b/x`); `file:` URIs and plain
    paths become local paths."""
    text = str(storage_path)
    if text.startswith("file:"):
        return "/" + text.removeprefix("file:").lstrip("/")
    return _COLLAPSED_URI.sub(r"\1://", text)


@dataclass(frozen=True)
class RunStorage:
    """One run's folder: `uri` for RunConfig(storage_path), `run_path` on `filesystem`."""

    storage_uri: str
    name: str
    filesystem: pafs.FileSystem
    run_path: str

    @classmethod
    def of(cls, storage_path: Path | str, name: str, workdir: Path) -> RunStorage:
        """A relative local path is taken from `workdir`; URIs are left as they are."""
        text = storage_uri(storage_path)
        if "://" in text:
            filesystem, root = pafs.FileSystem.from_uri(text)
            return cls(text, name, filesystem, f"{root.rstrip('/')}/{name}")
        local = resolve(Path(workdir).resolve(), text)
        return cls(str(local), name, pafs.LocalFileSystem(), str(local / name))

    def checkpoint_path(self, epoch: int) -> str:
        return f"{self.run_path}/{CHECKPOINT_PREFIX}{epoch:04d}"

    def latest_checkpoint(self):  # -> tuple[int, ray.train.Checkpoint] | None
        """(epoch, checkpoint) of the run's last registered checkpoint; None without one.

        Ray's own record of the run (`Result.from_path`, the checkpoint manager snapshot)
        decides, not the folders: a folder can exist half-copied when a node died during
        the upload, and Ray would not restore it either.
        """

        if self.filesystem.get_file_info(self.run_path).type == pafs.FileType.NotFound:
            return None
        try:
            result = Result.from_path(self.run_path, storage_filesystem=self.filesystem)
        except RuntimeError:  # a folder without Ray's record: nothing was registered
            return None
        if result.checkpoint is None:
            return None
        name = result.checkpoint.path.rstrip("/").rsplit("/", 1)[-1]
        return int(name.removeprefix(CHECKPOINT_PREFIX)), result.checkpoint

    def remove(self) -> None:
        """Delete the run (a fresh run must not continue an old one); absent is fine."""
        if self.filesystem.get_file_info(self.run_path).type != pafs.FileType.NotFound:
            self.filesystem.delete_dir(self.run_path)

    def __str__(self) -> str:
        if isinstance(self.filesystem, pafs.LocalFileSystem):
            return self.run_path
        return f"{self.storage_uri.rstrip('/')}/{self.name}"
