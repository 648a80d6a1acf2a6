"""Ray Train data parallelism against a plain PyTorch loop on the same two cores.

Both sides run the project's own training step (`sdpose.training.loop.train_epoch`: all
cycles, every loss term, Adam, warmup + step schedule) on the same model, the same global
batch and the same samples. Ray Train: 2 workers x 1 torch thread, DDP over gloo, the
samples sharded from a Ray Dataset. Baseline: one process with 2 torch threads iterating
in-memory tensors. Prints samples/s of each and the ratio Ray / plain (goal: >= 0.9).

The samples are synthetic normalised images with Gaussian targets from random keypoints:
a model step costs the same whatever the pixels, and the augmentation, which the real feed
runs in Ray Data tasks, is not what this measures. One warmup step on each side first.

Usage: python bench/train.py [--presets sdpose-nano sdpose-t] [--steps N]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from typing import Any

import numpy as np
import torch

from sdpose.codec import HeatmapCodec
from sdpose.config import Params, RayParams
from sdpose.losses import DistillationLoss
from sdpose.models import build_model, resolve_model_config
from sdpose.training.loop import Trainee, train_epoch
from sdpose.training.schedule import WarmupStepSchedule

WORKERS = 2
# preset -> (global batch, measured steps): 15-30 s per side on two cores, so that the
# one-off start of the sharded stream (about a second) weighs little, as in a real epoch
WORKLOADS = {"sdpose-nano": (32, 48), "sdpose-t": (8, 16)}


def synthetic_samples(preset: str, count: int, seed: int = 0) -> dict[str, np.ndarray]:
    """images (N, 3, Hi, Wi) ~ N(0, 1), Gaussian targets (N, 17, H, W), weights (N, 17), at
    the preset's own input and heatmap sizes."""
    rng = np.random.default_rng(seed)
    codec = HeatmapCodec.for_model(resolve_model_config(preset))
    in_h, in_w = codec.input_size
    keypoints = rng.uniform([4, 4], [in_w - 4, in_h - 4], size=(count, 17, 2))
    target, target_weight = codec.encode(keypoints, np.ones((count, 17)))
    images = rng.standard_normal((count, 3, in_h, in_w), dtype=np.float32)
    return {"images": images, "target": target, "target_weight": target_weight}


def _params(preset: str, batch: int) -> Params:
    return Params.model_validate(
        {
            "model": {"preset": preset},
            "train": {"batch_size": batch, "warmup_iters": 0},
            "ray": {"num_workers": WORKERS, "cpus_per_worker": 0.5},
        }
    )


def _plain_trainee(params: Params) -> Trainee:
    model = build_model(params.model.preset)
    optimizer = torch.optim.Adam(model.parameters(), lr=params.train.lr)
    schedule = WarmupStepSchedule(optimizer, params.train.lr, 0, 1.0, [], 1.0)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    return Trainee(model, optimizer, schedule, scaler, torch.device("cpu"))


def _batches(samples: dict[str, np.ndarray], batch: int) -> list[dict[str, torch.Tensor]]:
    count = len(samples["images"])
    return [
        {name: torch.from_numpy(values[start : start + batch]) for name, values in samples.items()}
        for start in range(0, count, batch)
    ]


def plain_loop(preset: str, samples: dict[str, np.ndarray], batch: int, threads: int) -> float:
    """Samples/s of a single process with `threads` torch threads."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    trainee = _plain_trainee(_params(preset, batch))
    batches = _batches(samples, batch)
    train_epoch(trainee, iter(batches[:1]), DistillationLoss(), epoch=0)  # warmup
    return train_epoch(trainee, iter(batches), DistillationLoss(), epoch=0)["samples_per_s"]


def _ray_worker(config: dict[str, Any]) -> None:
    """The per-worker loop: the real `build_trainee` (DDP) and `train_epoch` on a shard."""
    import ray.train
    import ray.train.torch

    from sdpose.training.loop import build_trainee

    torch.set_num_threads(1)
    torch.manual_seed(0)
    params = Params.model_validate(config["params"])
    trainee = build_trainee(params, ray.train.torch.get_device())
    per_worker = params.train.batch_size // WORKERS
    warmup = _batches(synthetic_samples(params.model.preset, per_worker, seed=1), per_worker)
    train_epoch(trainee, iter(warmup), DistillationLoss(), epoch=0)
    shard = ray.train.get_dataset_shard("train")
    batches = shard.iter_torch_batches(batch_size=per_worker)
    metrics = train_epoch(trainee, batches, DistillationLoss(), epoch=0)
    # Train V2 keeps only the metrics that come with a checkpoint, so send an empty one
    with tempfile.TemporaryDirectory() as folder:
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))


def ray_train(preset: str, samples: dict[str, np.ndarray], batch: int) -> float:
    """Samples/s of Ray Train with WORKERS workers of one thread each (all of the shard)."""
    import ray.data
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    params = _params(preset, batch)
    rows = [
        {name: values[i] for name, values in samples.items()} for i in range(len(samples["images"]))
    ]
    trainer = TorchTrainer(
        _ray_worker,
        train_loop_config={"params": params.to_dict()},
        torch_config=TorchConfig(backend="gloo"),
        scaling_config=ScalingConfig(num_workers=WORKERS, resources_per_worker={"CPU": 0.5}),
        run_config=RunConfig(
            name=f"bench-train-{preset}-{time.time_ns()}", storage_path="/tmp/sdpose-bench-train"
        ),
        datasets={"train": ray.data.from_items(rows).materialize()},
    )
    return trainer.fit().metrics["samples_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    parser.add_argument("--steps", type=int, help="measured steps per preset (default: WORKLOADS)")
    args = parser.parse_args()

    from sdpose.ray_runtime import ray_session

    print(f"{'preset':<12} {'batch':>5} {'plain 2 thr':>12} {'ray 2x1 thr':>12} {'ratio':>6}")
    with ray_session(RayParams()):
        for preset in args.presets:
            batch, steps = WORKLOADS[preset]
            steps = args.steps or steps
            samples = synthetic_samples(preset, batch * steps)
            plain = plain_loop(preset, samples, batch, threads=WORKERS)
            distributed = ray_train(preset, samples, batch)
            ratio = distributed / plain
            print(
                f"{preset:<12} {batch:>5} {plain:>12.2f} {distributed:>12.2f} {ratio:>6.2f}"
                f"  {'ok' if ratio >= 0.9 else 'below goal 0.9'}",
                flush=True,
            )


if __name__ == "__main__":
    main()
