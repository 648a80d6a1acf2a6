"""Inference cost of the deployed student: each CPU runtime and form against eager PyTorch.

What ships is `models/export/sdpose-student.onnx`, one cycle of sdpose-t, and its int8 form
`sdpose-student.int8.onnx` (QDQ, `sdpose.export.quantize`); the official code instead runs every
training cycle at inference and keeps the first output. For sdpose-t at batch 1 and 8 with
1 and 2 threads this prints the median latency of: the fp32 and the int8 file on every
installed runtime (onnxruntime, OpenVINO: the sessions `sdpose predict` opens), the eager
PyTorch student (one cycle) and the eager all-cycles forward (the baseline), the speed-up
against that baseline, and the achieved GFLOP/s against the machine's own single-precision
matmul rate (its practical fp32 limit, measured in the same interleaved loop, so that it
sees the same load; an int8 file can pass 100% of it).

The int8 file is calibrated on `data/crops/train` when a pipeline run left it there, on
random inputs otherwise: the bench times kernels, which calibration does not change.

Work is counted as 2 x every multiply-add a function executes, attention products included:
the one-cycle forward's (`gflops_with_attention`) for the eager student, the exported graph's
(`gflops_deployed`: its last layer updates the keypoint tokens only) for the ONNX files.
Latencies are medians of blocks of runs taken in turn; rates use each function's fastest
run, as the matmul figure does, so that a busy machine biases both sides alike.

Goals: the fp32 student on its best runtime >= 3.4x faster than the all-cycles forward at
1 and at 2 threads (batch 1 and 8); the int8 student >= 2x the fp32 student at batch 8
(best runtime each). The last two lines are for scripts:
`min fp32 speed-up over settings (best runtime): X.XX` (the smallest of the four settings)
and `int8 speed-up at batch 8: X.XX` (the smaller of 1 and 2 threads).
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import torch

from sdpose.core.paths import INT8_NAME
from sdpose.deploy.runtimes import installed_runtimes, open_session
from sdpose.export.onnx import export_onnx
from sdpose.export.quantize import quantize_student
from sdpose.models import build_model
from sdpose.models.cost import model_info

PRESET = "sdpose-t"
THREADS = (1, 2)
BATCHES = (1, 8)
SPEEDUP_GOAL, INT8_GOAL = 3.4, 2.0
GEMM_SIZE = 1536  # 7.2 GFLOP: about as long as a batch-1 student forward on one core


def timings(functions: list[Callable[[], object]], repeats: int, rounds: int = 5) -> list[list]:
    """Seconds of `repeats` calls of each function, in blocks taken in turn.

    Blocks, not single calls, alternate: ONNX Runtime's and PyTorch's thread pools keep
    spinning for a while after a call, so a call right after the other runtime's would pay
    for its spinning threads on a two-core machine. Each block starts with an untimed call;
    alternating `rounds` blocks still lets a change of load slow every function alike.
    """
    times: list[list[float]] = [[] for _ in functions]
    per_block = -(-repeats // rounds)
    for _ in range(rounds):
        for index, function in enumerate(functions):
            function()  # the other pool's threads settle; caches and allocators warm
            for _ in range(per_block):
                start = time.perf_counter()
                function()
                times[index].append(time.perf_counter() - start)
    return times


def gemm(size: int = GEMM_SIZE) -> Callable[[], object]:
    """One fp32 GEMM of size^3: this machine's practical limit, timed beside the models."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    return lambda: torch.mm(a, b)


def measure(model, files: dict[str, Path], threads: int, batch: int) -> dict[str, list[float]]:
    """Seconds of every function at one setting: each ONNX file on each installed runtime,
    the eager student and all-cycles forward, and the matmul."""
    torch.set_num_threads(threads)
    images = torch.randn(batch, 3, *model.config.input_size)
    array = images.numpy()
    functions: dict[str, Callable[[], object]] = {}
    for runtime in installed_runtimes():
        for form, path in files.items():
            run = open_session(path, runtime, threads).run  # as `sdpose predict` runs it
            functions[f"{runtime} {form}"] = partial(run, array)

    def eager_student() -> None:
        with torch.inference_mode():
            model(images, cycles=1)

    def eager_all_cycles() -> None:
        with torch.inference_mode():
            model(images, cycles=model.config.cycles)

    functions |= {"eager student": eager_student, "eager all cycles": eager_all_cycles}
    functions["matmul"] = gemm()
    runs = timings(list(functions.values()), repeats=25 if batch == 1 else 10)
    return dict(zip(functions, runs, strict=True))


def calibration(model, samples: int = 64) -> tuple[list[np.ndarray], str]:
    """Calibration batches for the int8 file: training crops if present, else random."""
    from sdpose.core.codecs import codec_for_model
    from sdpose.export.quantize import calibration_images

    if (Path("data") / "crops" / "summary.json").is_file():
        codec = codec_for_model(model.config)
        return list(calibration_images(Path("."), codec, samples)), "data/crops/train"
    generator = np.random.default_rng(0)
    shape = (8, 3, *model.config.input_size)
    batches = [generator.standard_normal(shape, dtype=np.float32) for _ in range(samples // 8)]
    return batches, "random inputs (no data/crops)"


def work_per_image(info: dict) -> dict[str, float]:
    """FLOP per image of each eager function and ("onnx") of any exported file."""
    flops = 2e9 * info["gflops_with_attention"]
    # every cycle after the first repeats the transformer and the readout, attention included
    extra = info["gflops_per_extra_cycle"] + info["gflops_with_attention"] - info["gflops"]
    return {
        "eager student": flops,
        "eager all cycles": flops + 2e9 * extra * (info["cycles"] - 1),
        "onnx": 2e9 * info["gflops_deployed"],
    }


def print_setting(threads: int, batch: int, runs: dict, work: dict) -> dict[str, float]:
    """The table rows of one setting; returns each function's speed-up over all cycles."""
    peak = 2 * GEMM_SIZE**3 / min(runs.pop("matmul")) / 1e9
    baseline = statistics.median(runs["eager all cycles"])
    print(f"{threads:>3}{batch:>6}  matmul fp32 {GEMM_SIZE}^3: {peak:.1f} GFLOP/s")
    speedups = {}
    for name, series in runs.items():
        median, best = statistics.median(series), min(series)
        rate = work.get(name, work["onnx"]) * batch / best / 1e9
        speedups[name] = baseline / median
        print(
            f"{threads:>3}{batch:>6}  {name:<20}{1000 * median:>10.1f}{1000 * best:>9.1f}"
            f"{rate:>9.1f}{f'{100 * rate / peak:.0f}%':>9}{speedups[name]:>26.2f}"
        )
    return speedups


def best_of(speedups: dict[str, float], form: str) -> tuple[str, float]:
    """(runtime, speed-up) of the fastest runtime for one form."""
    found = {name.split()[0]: value for name, value in speedups.items() if name.endswith(form)}
    runtime = max(found, key=found.get)
    return runtime, found[runtime]


def main() -> None:
    load, cores = os.getloadavg()[0], os.cpu_count()
    print(f"torch {torch.__version__}, load average {load:.1f} on {cores} cores")
    print(
        "runtimes: " + ", ".join(f"{name} {runtime_version(name)}" for name in installed_runtimes())
    )
    info = model_info(PRESET)
    work = work_per_image(info)
    model = build_model(PRESET).eval()
    settings = {}
    with tempfile.TemporaryDirectory() as folder:
        files = {"fp32": Path(folder) / "student.onnx", "int8": Path(folder) / INT8_NAME}
        export_onnx(model, files["fp32"], parity_batches=(1,))
        batches, source = calibration(model)
        quantize_student(files["fp32"], files["int8"], batches)
        print(
            f"{PRESET}: {info['cycles']} cycles, GFLOP per image, attention included: "
            f"{work['eager student'] / 1e9:.2f} one cycle, {work['onnx'] / 1e9:.2f} exported "
            f"graph, {work['eager all cycles'] / 1e9:.2f} all cycles; fp32 parity checked on "
            f"every runtime; int8 calibrated on {source}"
        )
        header = f"{'thr':>3}{'batch':>6}  {'function':<20}{'median ms':>10}{'best ms':>9}"
        print(f"\n{header}{'GFLOP/s':>9}{'% matmul':>9}{'x faster than all cycles':>26}")
        for threads in THREADS:
            for batch in BATCHES:
                runs = measure(model, files, threads, batch)
                settings[threads, batch] = print_setting(threads, batch, runs, work)
    print_verdicts(settings, work["eager all cycles"] / work["onnx"])


def print_verdicts(settings: dict[tuple[int, int], dict[str, float]], ratio: float) -> None:
    """The goals, setting by setting, then the two lines a script reads."""
    print(
        f"\nthe all-cycles forward does {ratio:.2f}x the exported graph's work: a "
        f"{SPEEDUP_GOAL}x speed-up needs the ONNX student at {SPEEDUP_GOAL / ratio:.2f}x that "
        "forward's GFLOP/s"
    )
    print(
        f"goals: fp32 student (best runtime) >= {SPEEDUP_GOAL}x faster than all cycles; "
        f"int8 >= {INT8_GOAL}x the fp32 student at batch 8 (best runtime each)"
    )
    fp32_speedups, int8_speedups = [], []
    for (threads, batch), speedups in settings.items():
        runtime, fp32 = best_of(speedups, "fp32")
        int8_runtime, int8 = best_of(speedups, "int8")
        fp32_speedups.append(fp32)
        line = (
            f"  {threads} thread(s), batch {batch}: fp32 {fp32:.2f}x on {runtime} "
            f"[{'met' if fp32 >= SPEEDUP_GOAL else 'NOT met'}]"
        )
        if batch == 8:
            int8_speedups.append(int8 / fp32)
            line += (
                f", int8 {int8 / fp32:.2f}x the fp32 student on {int8_runtime} "
                f"[{'met' if int8 / fp32 >= INT8_GOAL else 'NOT met'}]"
            )
        print(line)
    print(f"min fp32 speed-up over settings (best runtime): {min(fp32_speedups):.2f}")
    print(f"int8 speed-up at batch 8: {min(int8_speedups):.2f}")


def runtime_version(name: str) -> str:
    import importlib

    return str(getattr(importlib.import_module(name), "__version__", "?")).split("-")[0]


if __name__ == "__main__":
    main()
