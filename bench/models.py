"""Model latency: the one-cycle student against the all-cycles training forward.

SDPose's claim is that the student pays nothing for the teacher: the deployed forward runs
one cycle of the shared layers, so its latency must track its one-cycle multiply-adds, not
the training forward's. For every preset this prints eager CPU latency (batch 1, 2 threads,
median after warm-up) of the inference forward and of the all-cycles training forward, their
ratio beside the ratio of multiply-adds, and, for the multi-cycle presets, the inference
latency of the same network built with one cycle (its TokenPose twin), timed interleaved
with the student. Then the nano training step (batch 32) that params.yaml relies on.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import statistics
import time
from collections.abc import Callable

import torch

from sdpose.models import PRESETS, build_model
from sdpose.models.cost import model_info

THREADS = 2
BIG = {"sdpose-s-v2", "tokenpose-s-v2", "sdpose-b"}  # fewer repeats keep the bench short


def median_ms(
    functions: list[Callable[[], object]], repeats: int, warmup: int = 2
) -> list[tuple[float, float]]:
    """(wall ms, process CPU ms) medians of each function.

    Calls are interleaved so a busy machine slows all alike; the CPU time is the work done
    by this process, a figure that other processes on the machine disturb much less.
    """
    for function in functions * warmup:
        function()
    wall: list[list[float]] = [[] for _ in functions]
    cpu: list[list[float]] = [[] for _ in functions]
    for _ in range(repeats):
        for index, function in enumerate(functions):
            start, start_cpu = time.perf_counter(), time.process_time()
            function()
            wall[index].append(time.perf_counter() - start)
            cpu[index].append(time.process_time() - start_cpu)
    return [
        (1000 * statistics.median(w), 1000 * statistics.median(c))
        for w, c in zip(wall, cpu, strict=True)
    ]


def inference(model: torch.nn.Module, images: torch.Tensor) -> Callable[[], None]:
    def run() -> None:
        with torch.inference_mode():
            model.eval()(images)  # the default eval forward: one cycle

    return run


def training_forward(model: torch.nn.Module, images: torch.Tensor) -> Callable[[], None]:
    def run() -> None:
        model.train()(images)  # all cycles, building the autograd graph as in training

    return run


def forward_latencies(preset: str) -> list[float]:
    """Wall ms of [inference, training forward] and, with cycles > 1, [one-cycle twin]."""
    config = PRESETS[preset]
    images = torch.randn(1, 3, *config.input_size)
    model = build_model(config)
    functions = [inference(model, images), training_forward(model, images)]
    if config.cycles > 1:
        twin = build_model(dataclasses.replace(config, cycles=1))
        functions.append(inference(twin, images))
    timings = median_ms(functions, repeats=3 if preset in BIG else 10)
    return [wall for wall, _ in timings]


def train_step(preset: str, batch: int = 32) -> Callable[[], None]:
    """Forward of all cycles, heatmap + token distillation loss, backward, AdamW step."""
    model = build_model(preset).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    config = model.config
    images = torch.randn(batch, 3, *config.input_size)
    targets = torch.rand(batch, 17, *config.heatmap_size)

    def step() -> None:
        outputs = model(images)
        loss = sum((out.predictions - targets).square().mean() for out in outputs)
        for student, teacher in itertools.pairwise(outputs):
            loss = loss + 5e-6 * (student.visual_tokens - teacher.visual_tokens).square().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def main() -> None:
    torch.set_num_threads(THREADS)
    load, cores = os.getloadavg()[0], os.cpu_count()
    print(f"torch {torch.__version__}, {THREADS} threads, load average {load:.1f} on {cores} cores")
    print(
        f"{'preset':<15}{'cyc':>4}{'GMAC':>7}{'infer ms':>10}{'train-fwd ms':>14}{'ratio':>7}"
        f"{'MAC ratio':>11}{'1-cycle twin ms':>17}{'student/twin':>14}"
    )
    for preset in PRESETS:
        info = model_info(preset)
        infer, train, *twin = forward_latencies(preset)
        twin_cells = f"{twin[0]:>17.1f}{infer / twin[0]:>14.2f}" if twin else ""
        print(
            f"{preset:<15}{info['cycles']:>4}{info['gflops']:>7.3f}{infer:>10.1f}{train:>14.1f}"
            f"{train / infer:>7.2f}{info['gflops_train'] / info['gflops']:>11.2f}{twin_cells}"
        )
    print("\ntraining step, batch 32, forward + backward of all cycles + AdamW:")
    steps = [train_step("sdpose-nano"), train_step("tokenpose-nano")]
    (student, student_cpu), (baseline, baseline_cpu) = median_ms(steps, repeats=5, warmup=1)
    print(
        f"  sdpose-nano {student:.0f} ms ({student_cpu:.0f} ms CPU), tokenpose-nano (1 cycle) "
        f"{baseline:.0f} ms ({baseline_cpu:.0f} ms CPU), ratio {student / baseline:.2f}"
    )


if __name__ == "__main__":
    main()
