"""What a search explores and how wide it may run: `tune.space` -> Ray Tune domains, a
sampled trial -> validated `Params`, and the number of trials the cluster holds at once.

Torch-free and Ray-light: the main process, the trial drivers and the tests all use it.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
from ray import tune

from sdpose.config import (
    ConfigError,
    Params,
    RayParams,
    TuneParams,
    apply_overrides,
    validate_params,
)
from sdpose.core.errors import InputError

# A Ray Data task asks for one whole CPU; a search that leaves less than this free beside
# its training workers starves the input pipeline and hangs without an error.
DATA_CPUS = 1.0


class InvalidTrialConfigError(InputError):
    """A sampled combination that cannot be built (say model.dim not divisible by heads)."""


def search_space(space: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """`tune.space` ({"model.dim": {"choice": [48, 64]}, ...}) -> Ray Tune domains.

    choice takes a list; uniform, loguniform and randint take [low, high] (randint's high
    excluded, as numpy's).
    """

    domains: dict[str, Any] = {}
    for key, spec in space.items():
        (kind, values), where = next(iter(spec.items())), f"tune.space.{key}"
        if kind == "choice":
            if not isinstance(values, list) or not values:
                raise ConfigError(f"{where}: choice needs a non-empty list, got {values!r}")
            domains[key] = tune.choice(values)
            continue
        if not (isinstance(values, list) and len(values) == 2 and values[0] < values[1]):
            raise ConfigError(f"{where}: {kind} needs [low, high] with low < high, got {values!r}")
        if kind == "loguniform" and values[0] <= 0:
            raise ConfigError(f"{where}: loguniform needs a positive low bound, got {values[0]}")
        make = {"uniform": tune.uniform, "loguniform": tune.loguniform, "randint": tune.randint}
        domains[key] = make[kind](*values)
    return domains


def distinct_points(
    space: dict[str, dict[str, Any]], num_samples: int, seed: int
) -> tuple[list[dict[str, Any]] | None, str | None]:
    """The configurations a search over a finite space runs, each at most once: a seeded
    draw without replacement (every point once when num_samples covers the space; beyond
    that, a second round, and a note saying how many trials repeat one).

    None for a space with a continuous domain (uniform, loguniform): random draws there
    repeat with probability 0, and Tune samples them itself.
    """
    values: dict[str, list[Any]] = {}
    for key, spec in space.items():
        kind, domain = next(iter(spec.items()))
        if kind == "choice":
            values[key] = list(domain)
        elif kind == "randint":
            values[key] = list(range(int(domain[0]), int(domain[1])))
        else:
            return None, None
    grid = [dict(zip(values, combo, strict=True)) for combo in itertools.product(*values.values())]
    if not grid:
        return None, None
    rng = np.random.default_rng(seed)
    points: list[dict[str, Any]] = []
    while len(points) < num_samples:
        points += [grid[index] for index in rng.permutation(len(grid))]
    note = None
    if num_samples > len(grid):
        note = (
            f"tune.space holds {len(grid)} configurations and tune.num_samples is "
            f"{num_samples}: {num_samples - len(grid)} trials repeat a configuration"
        )
    return points[:num_samples], note


def trial_params(base: dict[str, Any], trial_config: dict[str, Any], max_epochs: int) -> Params:
    """The parameters one trial trains with: the base, the sampled values, tune.max_epochs.

    The step decay keeps its place in the schedule: `train.lr_steps` are scaled from
    `train.epochs` to `tune.max_epochs` (unless the search samples lr_steps itself), so a
    short search still decays the learning rate as the full run would.

    Raises InvalidTrialConfigError with the keyed reasons ("model.dim: 36 must be divisible by
    heads (8)") for a combination the model cannot take.
    """
    train = base["train"]
    overrides = {
        "train.epochs": max_epochs,
        "train.lr_steps": scaled_lr_steps(train["lr_steps"], train["epochs"], max_epochs),
        **_plain(trial_config),
    }
    try:
        return validate_params(apply_overrides(base, overrides), source="trial")
    except ConfigError as error:
        reasons = str(error).split("\n")[1:]  # drop the "trial: invalid parameters" header
        raise InvalidTrialConfigError("; ".join(line.strip() for line in reasons)) from None


def scaled_lr_steps(lr_steps: list[int], epochs: int, max_epochs: int) -> list[int]:
    """Decay epochs at the same fractions of a `max_epochs` schedule as of an `epochs` one.

    [200, 260] of 300 epochs -> [3, 3] of 4 -> [3]; [4, 5] of 6 -> [1, 2] of 2 -> [1]: a step
    that lands on epoch 0 (no training at the base rate) or on the end (never reached) is
    dropped; equal steps merge.
    """
    scaled = {round(step * max_epochs / epochs) for step in lr_steps}
    return sorted(step for step in scaled if 0 < step < max_epochs)


def _plain(config: dict[str, Any]) -> dict[str, Any]:
    """numpy scalars (what Tune samples) -> Python numbers, so pydantic and JSON take them."""
    return {key: value.item() if hasattr(value, "item") else value for key, value in config.items()}


def trial_cpus(ray_params: RayParams) -> float:
    """CPUs one trial's training workers hold (its driver asks for none)."""
    return ray_params.num_workers * ray_params.cpus_per_worker


def max_concurrent_trials(
    tune_params: TuneParams, ray_params: RayParams, resources: dict[str, float]
) -> int:
    """How many trials run at once: `tune.max_concurrent`, or (0) what the cluster holds.

    Automatic: every running trial holds its workers' CPUs (GPUs) for its whole life, and
    one CPU stays free for Ray Data, whose tasks all trials share. Never more than the
    number of trials, never less than one.
    """
    if tune_params.max_concurrent > 0:
        return tune_params.max_concurrent
    fits = math.floor((resources.get("CPU", 0.0) - DATA_CPUS) / trial_cpus(ray_params) + 1e-9)
    if ray_params.use_gpu:
        fits = min(fits, math.floor(resources.get("GPU", 0.0) / ray_params.num_workers))
    return max(1, min(fits, tune_params.num_samples))


def check_fits(ray_params: RayParams, resources: dict[str, float]) -> None:
    """Refuse a search whose single trial can never start: Ray would wait forever."""
    cpus = resources.get("CPU", 0.0)
    if trial_cpus(ray_params) + DATA_CPUS > cpus + 1e-9:
        raise ConfigError(
            f"ray: a trial needs {trial_cpus(ray_params):g} CPUs for its workers "
            f"(ray.num_workers x ray.cpus_per_worker) plus {DATA_CPUS:g} for Ray Data, "
            f"but the cluster has {cpus:g}; lower ray.num_workers or ray.cpus_per_worker"
        )
    if ray_params.use_gpu and resources.get("GPU", 0.0) < ray_params.num_workers:
        raise ConfigError(
            f"ray: ray.use_gpu asks one GPU per worker ({ray_params.num_workers}) but the "
            f"cluster has {resources.get('GPU', 0.0):g}"
        )
