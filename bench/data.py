"""Data-stage throughput: synthetic images/s (parallel vs one process) and prepare instances/s.

`synth` must keep up with a CPU training run and `prepare` must not be the slow step on a
real COCO tree (150k instances), so both are timed on >= 2,000 images through the stage
functions themselves. Prints images/s, instances/s and the parallel/single-process ratio.

Wall-clock ratios need idle cores; on a shared machine they mostly measure the neighbours.
So CPU seconds (this process and its workers) are reported too: `cpu_efficiency` is the
single-process CPU time over the parallel run's, and `idle_speedup_estimate` = workers x
that efficiency is what the parallel run gives on otherwise idle cores.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from sdpose.config import Params
from sdpose.data import prepare, synth


def timed(work: Callable[[], dict]) -> tuple[float, float, dict]:
    """(wall seconds, CPU seconds of this process and finished children, result)."""

    def cpu() -> float:
        own, children = (
            resource.getrusage(resource.RUSAGE_SELF),
            resource.getrusage(resource.RUSAGE_CHILDREN),
        )
        return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime

    wall, start_cpu = time.perf_counter(), cpu()
    result = work()
    return time.perf_counter() - wall, cpu() - start_cpu, result


def synth_params(images: int, size: list[int], workers: int) -> Params:
    return Params.model_validate(
        {
            "synth": {
                "train_images": images,
                "val_images": max(1, images // 10),
                "image_size": size,
                "workers": workers,
            }
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=2000, help="training images to draw")
    parser.add_argument("--size", type=int, nargs=2, default=[320, 256], metavar=("W", "H"))
    parser.add_argument("--workers", type=int, default=0, help="parallel run (0: all cores)")
    args = parser.parse_args()
    workers = synth.default_workers(args.workers)
    total = args.images + max(1, args.images // 10)
    with tempfile.TemporaryDirectory(prefix="sdpose-bench-") as tmp:
        workdir = Path(tmp)
        serial, serial_cpu, _ = timed(
            lambda: synth.run(synth_params(args.images, args.size, 1), workdir)
        )
        parallel, parallel_cpu, summary = timed(
            lambda: synth.run(synth_params(args.images, args.size, workers), workdir)
        )
        prepare_s, _, prepared = timed(lambda: prepare.run(Params(), workdir))
    instances = prepared["train"] + prepared["val"]
    efficiency = serial_cpu / parallel_cpu
    figures = {
        "images": total,
        "image_size": args.size,
        "workers": workers,
        "synth_images_per_s_1_process": round(total / serial, 1),
        "synth_images_per_s_parallel": round(total / parallel, 1),
        "synth_parallel_over_single": round(serial / parallel, 2),
        "synth_cpu_ms_per_image_1_process": round(1000 * serial_cpu / total, 2),
        "synth_cpu_ms_per_image_parallel": round(1000 * parallel_cpu / total, 2),
        "cpu_efficiency": round(efficiency, 3),
        "idle_speedup_estimate": round(workers * efficiency, 2),
        "people": summary["train_people"] + summary["val_people"],
        "prepare_instances": instances,
        "prepare_instances_per_s": round(instances / prepare_s, 1),
        "prepare_images_per_s": round(total / prepare_s, 1),
        "load_average_1min": round(os.getloadavg()[0], 2),
    }
    print(f"synth    {figures['synth_images_per_s_1_process']:>8} images/s on 1 process")
    print(
        f"synth    {figures['synth_images_per_s_parallel']:>8} images/s on {workers} processes"
        f"  (x{figures['synth_parallel_over_single']} wall; x{figures['idle_speedup_estimate']}"
        " on idle cores, from CPU time)"
    )
    print(
        f"prepare  {figures['prepare_instances_per_s']:>8} instances/s "
        f"({instances} instances of {total} images, every image decoded)"
    )
    print(f"load average {figures['load_average_1min']} on {os.cpu_count()} cores")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
