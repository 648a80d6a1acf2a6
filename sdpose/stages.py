"""The pipeline's stages: one table that the CLI, the DVC deps check and the docs read.

Every stage module exposes the same entry, `run(params, workdir, **options) -> summary`;
a `Stage` names it, says what it does and which command-line options it takes. Each entry
is imported when its stage runs (`# lazy` below): the seven stage modules cost 5.2 s at
import together (measured), and `sdpose config show` answers in 0.4 s without them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from sdpose.config import Params


class StageRun(Protocol):
    def __call__(self, params: Params, workdir: Path, **options: Any) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Option:
    """A boolean command-line flag that a stage's `run` takes as a keyword."""

    name: str  # the keyword of `run`; the flag is --name
    help: str


STRICT = Option("strict", "a bad annotation is an error instead of a skipped, reported record")
RESUME = Option("resume", "continue the interrupted run from its last checkpoint")


@dataclass(frozen=True)
class Stage:
    help: str
    entry: Callable[[], StageRun]  # imports the stage module, returns its `run`
    options: tuple[Option, ...] = ()
    starts_from_init: bool = False  # reads `train.init`'s weights

    def run(self, params: Params, workdir: Path, **options: Any) -> dict[str, Any]:
        return self.entry()(params, workdir, **options)

    @property
    def module(self) -> str:
        """The stage's entry module (its code, for DVC, is this module's import closure)."""
        return self.entry().__module__


def _synth() -> StageRun:
    from sdpose.data.synth import run  # lazy: see the module docstring

    return run


def _prepare() -> StageRun:
    from sdpose.data.prepare import run  # lazy: see the module docstring

    return run


def _crops() -> StageRun:
    from sdpose.data.crops import run  # lazy: see the module docstring

    return run


def _train() -> StageRun:
    from sdpose.training.stage import run  # lazy: see the module docstring

    return run


def _tune() -> StageRun:
    from sdpose.tuning.stage import run  # lazy: see the module docstring

    return run


def _evaluate() -> StageRun:
    from sdpose.evaluation.stage import run  # lazy: see the module docstring

    return run


def _export() -> StageRun:
    from sdpose.export.stage import run  # lazy: see the module docstring

    return run


# In pipeline order: `sdpose <name>`, one DVC stage and one task of the flow each.
STAGES: dict[str, Stage] = {
    "synth": Stage("write the synthetic COCO-format dataset", _synth),
    "prepare": Stage("validate COCO annotations, write Parquet manifests", _prepare, (STRICT,)),
    "crops": Stage("cut context crops into Parquet shards with Ray Data", _crops),
    "train": Stage("self-distillation training with Ray Train", _train, (RESUME,), True),
    "tune": Stage("Ray Tune search over cycles and embedding size", _tune, (RESUME,), True),
    "evaluate": Stage("COCO AP of every cycle, cost and latency; the report", _evaluate),
    "export": Stage("ONNX of the one-cycle student, model card, MLflow entry", _export),
}
