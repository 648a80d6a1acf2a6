"""What a person sees of a search: one terminal line per trial when it ends, and a bar.

A Tune callback in the search's driver; the trials' own workers print no epoch lines
(sdpose.console), so the terminal shows the search, not every trial's every epoch.
"""

from __future__ import annotations

from typing import Any

from ray.tune import Callback

from sdpose import console
from sdpose.tuning.trial import EPOCHS_DONE


class TrialLines(Callback):
    """`trial 2/4 <id> {'model.dim': 48}: completed, student AP ..., 2 epochs`."""

    def __init__(self, total: int, max_epochs: int) -> None:
        self.total, self.max_epochs, self.ended = total, max_epochs, 0

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        done = (trial.last_result or {}).get(EPOCHS_DONE, 0)
        self._ended(trial, "completed" if done >= self.max_epochs else "stopped early")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._ended(trial, "failed")

    def _ended(self, trial: Any, how: str) -> None:
        self.ended += 1
        console.say(trial_line(self.ended, self.total, trial.trial_id, trial.config, how,
                               trial.last_result or {}))  # fmt: skip
        console.progress("trials", self.ended, self.total)


def trial_line(
    ended: int, total: int, trial_id: str, config: dict, how: str, result: dict[str, Any]
) -> str:
    """The line of a trial that ended `how` (completed, stopped early, failed)."""
    line = f"trial {ended}/{total} {trial_id} {config}: {how}"
    if result.get("student_ap") is not None:
        teacher = result.get("teacher_ap", 0.0)
        line += f", student AP {result['student_ap']:.4f}, teacher AP {teacher:.4f}"
        line += f", {result.get(EPOCHS_DONE, 0)} epochs"
    return line
