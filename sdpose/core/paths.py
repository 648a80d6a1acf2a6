"""Where each stage reads and writes, and how a file or folder appears whole or not at all.

Every path a stage takes from params (data.root, ray.storage_path, ...) may be relative:
`resolve(workdir, path)` anchors it to the stage's working folder. The fixed outputs
(docs/ARCHITECTURE.md, stage table) are named here once, so the CLI, the stages and the
Prefect flow cannot spell them differently.

Atomic writes: a file is written under a temporary name beside its final one and renamed
into place (`atomic_file`, `write_text_atomic`); a stage builds its output folder the same
way (`staged_directory`). An interrupted run leaves the previous output (or none), never
a half-written file or a folder of new and old files that looks complete. Renames within
one file system are atomic; temporary names start with a dot, so DVC and globs skip them.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# The stages' fixed outputs, relative to the working folder (docs/ARCHITECTURE.md).
SYNTH_DIR = Path("data/raw/synth")
PREPARED_DIR = Path("data/prepared")
CROPS_DIR = Path("data/crops")
TRAIN_MODELS = Path("models/train")
TUNE_MODELS = Path("models/tune")
TRAIN_METRICS = Path("metrics/train.json")
TRAIN_HISTORY = Path("metrics/train_history.csv")
TUNE_METRICS = Path("metrics/tune.json")
EVAL_METRICS = Path("metrics/eval.json")
REPORTS_DIR = Path("reports")
EXPORT_DIR = Path("models/export")
ONNX_NAME = "sdpose-student.onnx"
INT8_NAME = "sdpose-student.int8.onnx"
WEIGHTS_NAME = "weights.pt"  # a registered version's PyTorch checkpoint (train.init from it)
CARD_NAME = "model_card.json"
REGISTRY_DOWNLOADS = Path("models/registry")  # registered files fetched for predict
# the checkpoints that evaluate scores and export chooses from, by the stage that made them
CANDIDATES = {"train": TRAIN_MODELS / "best.pt", "tune": TUNE_MODELS / "best.pt"}


def resolve(workdir: Path | str, path: Path | str) -> Path:
    """`path` as given if absolute (or `~`), else under the stage's working folder."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else Path(workdir) / path


def int8_path(fp32_path: Path | str) -> Path:
    """Where the int8 form of an exported file lives: beside it, as INT8_NAME."""
    return Path(fp32_path).with_name(INT8_NAME)


def split_paths(source: str, root: Path | str, split: str) -> tuple[Path, Path]:
    """(annotation file, image root) of one split under `data.root` (synth or COCO 2017)."""
    root = Path(root)
    if source == "synth":
        return root / "annotations" / f"person_keypoints_{split}.json", root / "images"
    return root / "annotations" / f"person_keypoints_{split}2017.json", root / f"{split}2017"


@contextmanager
def atomic_file(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside `path` to write; on success it becomes `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:  # after an error: no half-written (or whole but unnamed) copy stays behind
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: Path | str, text: str) -> Path:
    """Write a text file whole or not at all (JSON summaries, results, cards)."""
    with atomic_file(path) as tmp:
        tmp.write_text(text)
    return Path(path)


@contextmanager
def staged_directory(final: Path) -> Iterator[Path]:
    """Yield an empty staging folder; on success it replaces `final`, on error it is removed."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    old = final.with_name(f".{final.name}.old-{os.getpid()}")
    if final.exists():
        os.replace(final, old)
    os.replace(staging, final)
    shutil.rmtree(old, ignore_errors=True)


def remove_abandoned_staging(final: Path) -> None:
    """Delete the staging folders beside `final` left by runs that were killed.

    `staged_directory` removes its folder on any Python error, but not on SIGKILL or a power
    cut; a folder whose process (the pid in its name) is gone is abandoned.
    """
    final = Path(final)
    for folder in final.parent.glob(f".{final.name}.tmp-*"):
        pid = folder.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _process_alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # gone, or no pid this system can have
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True
