"""The `evaluate` stage: accuracy of every cycle, cost and latency of the trained models.

SDPose's claim is that the one-cycle student is nearly as good as its all-cycles teacher
at the price of one cycle; this stage measures exactly that for the best trained and the
best tuned model (whichever exist): COCO AP of each cycle on the val crops (ground-truth
or detector boxes, `evaluate.boxes`), through `sdpose.evaluation.inference` (flip test, DARK,
rescoring, OKS-NMS, pycocotools: the path of validation and predict) with the codec of each
model's own config, plus params, GFLOPs and measured latency. Outputs: metrics/eval.json,
reports/eval.md and its PNGs.

The val crops are decoded in this process with the feed's own `val_batch` rather than
through a Ray Dataset: evaluation is one sequential pass whose cost is the network, and a
Ray start would cost more than the decoding it parallelises on small val sets.

Shapes: N persons, K keypoints, C cycles.
"""

from __future__ import annotations

import hashlib
import json
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch
from torch import nn

from sdpose.config import Params
from sdpose.core.codecs import Codec, codec_for_params
from sdpose.core.errors import MissingInputError
from sdpose.core.paths import (
    CANDIDATES,
    EVAL_METRICS,
    REPORTS_DIR,
    resolve,
    split_paths,
    write_text_atomic,
)
from sdpose.evaluation import inference

BATCH_ROWS = 32


@dataclass(frozen=True)
class ValSet:
    """What the models are measured on: a crop split, its ground truth, and a fingerprint
    of both plus the scoring protocol (the registry compares APs only on equal ones)."""

    split: str  # "val" (ground-truth boxes) or "val_det" (detector boxes)
    annotations: Path
    boxes: str
    instances: int
    fingerprint: str


def val_set(params: Params, workdir: Path) -> ValSet:
    """The val split of `params` under `workdir`, fingerprinted."""
    from sdpose.data.feed import crop_shards

    annotations, _ = split_paths(params.data.source, params.data.root, "val")
    annotations = resolve(workdir, annotations)
    if not annotations.is_file():
        raise MissingInputError(f"{annotations}: val annotations not found (data.root)")
    split = "val" if params.evaluate.boxes is None else "val_det"
    image_ids, ann_ids = [], []
    for shard in crop_shards(workdir, split):
        table = pq.read_table(shard, columns=["image_id", "ann_id"])
        image_ids += table.column("image_id").to_pylist()
        ann_ids += table.column("ann_id").to_pylist()
    pairs = sorted(zip(image_ids, ann_ids, strict=True))
    digest = hashlib.sha256(annotations.read_bytes())
    protocol = params.evaluate.model_dump(mode="json", exclude={"boxes"})
    digest.update(json.dumps({"split": split, "pairs": pairs, "protocol": protocol}).encode())
    boxes = "ground truth" if params.evaluate.boxes is None else str(params.evaluate.boxes)
    return ValSet(split, annotations, boxes, len(pairs), digest.hexdigest()[:16])


def val_batches(workdir: Path, split: str, codec: Codec) -> Iterator[dict[str, torch.Tensor]]:
    """The val crops as tensors, warped to the codec's input size (the feed's `val_batch`)."""
    from sdpose.data.feed import crop_shards, val_batch

    for shard in crop_shards(workdir, split):
        table = pq.read_table(shard)
        for start in range(0, table.num_rows, BATCH_ROWS):
            batch = val_batch(table.slice(start, BATCH_ROWS), codec)
            # the columns of a pyarrow table are read-only; tensors want memory of their own
            yield {name: torch.from_numpy(np.array(value)) for name, value in batch.items()}


def evaluate_cycles(
    runner: inference.OutputRunner,
    cycles: int,
    codec: Codec,
    params: Params,
    workdir: Path,
    val: ValSet,
    device: str = "cpu",
) -> tuple[list[dict[str, float]], list[dict]]:
    """COCO figures of each of `cycles` cycles (C dicts) and the student's COCO results.

    One network call gives every cycle's outputs; each cycle is decoded and scored alone.
    """
    found = [inference.Predictions() for _ in range(cycles)]
    for batch in val_batches(workdir, val.split, codec):
        keypoints = inference.predict_crops(
            runner, batch["images"].to(device), batch["center"], batch["scale"], codec,
            params.evaluate,
        )  # fmt: skip
        for predictions, cycle_keypoints in zip(found, keypoints, strict=True):
            predictions.add(batch, cycle_keypoints)
    scored = [
        inference.score(predictions, val.annotations, params.evaluate) for predictions in found
    ]
    return [stats for stats, _ in scored], scored[0][1]


def model_cycles(
    model: nn.Module, params: Params, workdir: Path, val: ValSet, device: str = "cpu"
) -> tuple[list[dict[str, float]], list[dict]]:
    """`evaluate_cycles` of a PyTorch model: all its cycles, the codec of its own config."""
    cycles = model.config.cycles
    codec = codec_for_params(params, model.config)
    with torch.no_grad():
        return evaluate_cycles(
            inference.model_runner(model, cycles), cycles, codec, params, workdir, val, device
        )


def measure_latency(
    model: nn.Module, cycles: int, batch: int = 1, repeats: int = 10, device: str = "cpu"
) -> float:
    """Median milliseconds of one eager forward of `cycles` cycles (after 2 warm-up runs)."""
    images = torch.randn(batch, 3, *model.config.input_size, device=device)
    timings = []
    with torch.no_grad():
        for index in range(repeats + 2):
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            started = time.perf_counter()
            model(images, cycles=cycles)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            if index >= 2:
                timings.append((time.perf_counter() - started) * 1000)
    return statistics.median(timings)


def evaluate_checkpoint(
    checkpoint: Path, params: Params, workdir: Path, val: ValSet, device: str
) -> tuple[dict[str, Any], list[dict]]:
    """eval.json's entry of one model, and its student's COCO results (for drawing)."""
    from sdpose.models.checkpoint import load_checkpoint
    from sdpose.models.cost import model_info

    model, _ = load_checkpoint(checkpoint)
    model = model.to(device).eval()
    per_cycle, student_results = model_cycles(model, params, workdir, val, device)
    info = model_info(model.config)
    cycles = model.config.cycles
    entry = {
        "checkpoint": str(checkpoint.relative_to(workdir)),
        "preset": model.config.name,
        "config": model.config.to_dict(),
        "cycles": cycles,
        "params": info["params"],
        "gflops": info["gflops"],
        "gflops_train": info["gflops_train"],
        "latency_ms": {
            "device": device,
            "threads": torch.get_num_threads(),
            "student_batch1": measure_latency(model, 1, device=device),
            "all_cycles_batch1": measure_latency(model, cycles, device=device),
        },
        "student": per_cycle[0],
        "teacher": per_cycle[-1],
        "per_cycle": [{"cycle": index + 1, **stats} for index, stats in enumerate(per_cycle)],
    }
    return entry, student_results


def run(params: Params, workdir: Path) -> dict[str, Any]:
    """Evaluate models/train/best.pt and models/tune/best.pt (those present)."""
    from sdpose.evaluation.report import write_report

    workdir = Path(workdir)
    present = {name: workdir / path for name, path in CANDIDATES.items()}
    present = {name: path for name, path in present.items() if path.is_file()}
    if not present:
        raise MissingInputError(
            f"{workdir / CANDIDATES['train']}: no model to evaluate; run `sdpose train` first"
        )
    device = "cuda" if params.ray.use_gpu and torch.cuda.is_available() else "cpu"
    val = val_set(params, workdir)
    models, drawings = {}, {}
    for name, checkpoint in present.items():
        models[name], drawings[name] = evaluate_checkpoint(checkpoint, params, workdir, val, device)
    best = max(models, key=lambda name: models[name]["student"]["AP"])
    evaluation = {
        "val_set": val.fingerprint,
        "split": val.split,
        "boxes": val.boxes,
        "annotations": str(val.annotations),
        "instances": val.instances,
        "protocol": params.evaluate.model_dump(mode="json"),
        "best": best,
        "student_ap": models[best]["student"]["AP"],
        "models": models,
    }
    metrics_path = workdir / EVAL_METRICS
    write_text_atomic(metrics_path, json.dumps(evaluation, indent=2) + "\n")
    report = write_report(evaluation, drawings[best], workdir, workdir / REPORTS_DIR)
    return {
        "metrics": str(metrics_path),
        "report": str(report),
        "best": best,
        "student_ap": evaluation["student_ap"],
        **{f"{name}_ap_per_cycle": [c["AP"] for c in m["per_cycle"]] for name, m in models.items()},
    }
