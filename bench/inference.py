"""Inference cost of the deployed student: ONNX Runtime against eager PyTorch.

What ships is `models/export/sdpose-student.onnx`, one cycle of sdpose-t; the official code
instead runs every training cycle at inference and keeps the first output. For sdpose-t at
batch 1 and 8 with 1 and 2 threads this prints the median latency of: the ONNX Runtime
student, the eager PyTorch student (one cycle) and the eager all-cycles forward (the
baseline), the speed-up against that baseline, and the student's achieved GFLOP/s against
the machine's own single-precision matmul rate (its practical limit, measured here in the
same interleaved loop, so that it sees the same load).

Work is counted as 2 x every multiply-add a function executes, attention products included:
the one-cycle forward's (`gflops_with_attention`) for the eager student, the exported graph's
(`gflops_deployed`: its last layer updates the keypoint tokens only) for the ONNX student.
Latencies are medians of blocks of runs taken in turn; rates use each function's fastest
run, as the matmul figure does, so that a busy machine biases both sides alike.

Goals: the ONNX student >= 3x faster than the all-cycles forward, and >= 80% of the
matmul rate.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from sdpose.export import export_onnx
from sdpose.models import build_model
from sdpose.models.cost import model_info
from sdpose.onnx_session import cpu_session

PRESET = "sdpose-t"
THREADS = (1, 2)
BATCHES = (1, 8)
SPEEDUP_GOAL, EFFICIENCY_GOAL = 3.0, 0.80
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


def measure(model, onnx_path: Path, threads: int, batch: int) -> dict[str, list[float]]:
    torch.set_num_threads(threads)
    session = cpu_session(onnx_path, threads)  # as `sdpose predict` runs it
    images = torch.randn(batch, 3, *model.config.input_size)
    array = images.numpy()

    def onnx_student() -> None:
        session.run(["heatmaps"], {"images": array})

    def eager_student() -> None:
        with torch.inference_mode():
            model(images, cycles=1)

    def eager_all_cycles() -> None:
        with torch.inference_mode():
            model(images, cycles=model.config.cycles)

    names = ("onnx student", "eager student", "eager all cycles", "matmul")
    functions = [onnx_student, eager_student, eager_all_cycles, gemm()]
    runs = timings(functions, repeats=25 if batch == 1 else 10)
    return dict(zip(names, runs, strict=True))


def main() -> None:
    load, cores = os.getloadavg()[0], os.cpu_count()
    print(f"torch {torch.__version__}, load average {load:.1f} on {cores} cores")
    info = model_info(PRESET)
    flops = 2e9 * info["gflops_with_attention"]  # per image
    deployed_flops = 2e9 * info["gflops_deployed"]
    # every cycle after the first repeats the transformer and the readout, attention included
    extra = info["gflops_per_extra_cycle"] + info["gflops_with_attention"] - info["gflops"]
    all_cycles_flops = flops + 2e9 * extra * (info["cycles"] - 1)
    work = {
        "onnx student": deployed_flops,
        "eager student": flops,
        "eager all cycles": all_cycles_flops,
    }
    model = build_model(PRESET).eval()
    with tempfile.TemporaryDirectory() as folder:
        onnx_path = Path(folder) / "student.onnx"
        export_onnx(model, onnx_path, parity_batches=(1,))
        print(
            f"{PRESET}: {info['cycles']} cycles, GFLOP per image, attention included: "
            f"{flops / 1e9:.2f} one cycle, {deployed_flops / 1e9:.2f} exported graph, "
            f"{all_cycles_flops / 1e9:.2f} all cycles; ONNX parity checked"
        )
        header = f"{'thr':>3}{'batch':>6}  {'function':<18}{'median ms':>10}{'best ms':>9}"
        print(f"\n{header}{'GFLOP/s':>9}{'% matmul':>9}{'x faster than all cycles':>26}")
        verdicts = []
        for threads in THREADS:
            for batch in BATCHES:
                runs = measure(model, onnx_path, threads, batch)
                peak = 2 * GEMM_SIZE**3 / min(runs.pop("matmul")) / 1e9
                baseline = statistics.median(runs["eager all cycles"])
                print(f"{threads:>3}{batch:>6}  matmul fp32 {GEMM_SIZE}^3: {peak:.1f} GFLOP/s")
                for name, series in runs.items():
                    median, best = statistics.median(series), min(series)
                    rate = work[name] * batch / best / 1e9
                    print(
                        f"{threads:>3}{batch:>6}  {name:<18}{1000 * median:>10.1f}"
                        f"{1000 * best:>9.1f}{rate:>9.1f}{f'{100 * rate / peak:.0f}%':>9}"
                        f"{baseline / median:>26.2f}"
                    )
                onnx = runs["onnx student"]
                verdicts.append(
                    (
                        threads,
                        batch,
                        baseline / statistics.median(onnx),
                        deployed_flops * batch / min(onnx) / 1e9 / peak,
                    )
                )
    ratio = all_cycles_flops / deployed_flops
    print(
        f"\nthe all-cycles forward does {ratio:.2f}x the exported graph's work: a 3x speed-up "
        f"needs the ONNX student at {SPEEDUP_GOAL / ratio:.2f}x that forward's GFLOP/s"
    )
    print("goals: ONNX student >= 3x faster than all cycles, >= 80% of the matmul rate")
    for threads, batch, speedup, share in verdicts:
        print(
            f"  {threads} thread(s), batch {batch}: {speedup:.2f}x "
            f"[{'met' if speedup >= SPEEDUP_GOAL else 'NOT met'}], {100 * share:.1f}% "
            f"[{'met' if share >= EFFICIENCY_GOAL else 'NOT met'}]"
        )


if __name__ == "__main__":
    main()
