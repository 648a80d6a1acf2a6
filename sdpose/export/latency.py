"""What the export stage measures about the files it ships, on every installed runtime.

For each form (fp32, int8) and each runtime that can run here: the median latency at batch
1 and 8, and how far its heatmaps are from the PyTorch student's on real val crops. From
those, the runtime `export.runtime: auto` deploys (the one with the lowest latency, batch 1
plus batch 8), which the model card records per form so that `sdpose predict` and the
evaluation's ONNX scoring run each file where it was measured fastest.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from sdpose.deploy.runtimes import AUTO, installed_runtimes, open_session, require

LATENCY_BATCHES = (1, 8)
LATENCY_REPEATS = 7


def median_ms(run: Callable[[np.ndarray], np.ndarray], images: np.ndarray, repeats: int) -> float:
    """Median milliseconds of `repeats` calls after one untimed call (lazy init, caches)."""
    run(images)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run(images)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def latencies(
    path: Path, input_size: tuple[int, int], runtimes: list[str], threads: int = 0
) -> dict[str, dict[str, float]]:
    """{runtime: {"batch1": ms, "batch8": ms}} of the file at `path` on each runtime."""
    generator = np.random.default_rng(0)
    found = {}
    for runtime in runtimes:
        session = open_session(path, runtime, threads)
        found[runtime] = {
            f"batch{batch}": median_ms(
                session.run,
                generator.standard_normal((batch, 3, *input_size), dtype=np.float32),
                LATENCY_REPEATS,
            )
            for batch in LATENCY_BATCHES
        }
    return found


def fastest(measured: dict[str, dict[str, float]]) -> str:
    """The runtime with the lowest batch-1 plus batch-8 latency."""
    return min(measured, key=lambda runtime: sum(measured[runtime].values()))


def choose_runtime(requested: str, measured: dict[str, dict[str, float]]) -> str:
    """`export.runtime`: the named runtime (checked installed), or for auto the fastest."""
    return fastest(measured) if requested == AUTO else require(requested).name


def heatmap_gap(path: Path, runtimes: list[str], images: np.ndarray, expected: np.ndarray) -> dict:
    """{runtime: max |file's heatmaps - expected| / max |expected|} on `images`.

    A share of the reference's peak, so one tolerance fits a trained student (peaks near 1)
    and an untrained one (peaks near 0) alike.
    """
    peak = max(float(np.abs(expected).max()), np.finfo(np.float32).tiny)
    return {
        runtime: float(np.abs(open_session(path, runtime).run(images) - expected).max()) / peak
        for runtime in runtimes
    }


def form_record(
    path: Path, runtime: str, measured: dict[str, dict[str, float]], **extra: Any
) -> dict[str, Any]:
    """The model card's entry of one shipped file."""
    return {"file": Path(path).name, "runtime": runtime, "latency_ms": measured, **extra}


def runtimes_here() -> list[str]:
    """The runtimes export measures and checks: those installed."""
    return installed_runtimes()
