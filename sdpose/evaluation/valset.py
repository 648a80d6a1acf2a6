"""The val set every model is measured on, and the COCO figures of a runner on it.

The one library of evaluation's scoring: the evaluate stage scores PyTorch checkpoints
with it, the export stage its ONNX files (fp32 and int8) and the registry's champion, so
every AP the project reports comes from the same crops, decoding and protocol.

The val crops are decoded in this process with the feed's own `val_batch` rather than
through a Ray Dataset: evaluation is one sequential pass whose cost is the network, and a
Ray start would cost more than the decoding it parallelises on small val sets.

Shapes: N persons, K keypoints, C cycles.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from torch import nn

from sdpose.config import Params
from sdpose.core.codecs import Codec, codec_for_labels
from sdpose.core.errors import MissingInputError
from sdpose.core.paths import resolve, split_paths
from sdpose.data.feed import crop_shards, val_batch
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
    codec = codec_for_labels(model.config, params.train)
    with torch.no_grad():
        return evaluate_cycles(
            inference.model_runner(model, cycles), cycles, codec, params, workdir, val, device
        )


def val_images(workdir: Path, val: ValSet, codec: Codec, count: int = 32) -> np.ndarray:
    """The first `count` crops of `val` as network inputs (N, 3, H, W) float32."""
    batches, taken = [], 0
    for batch in val_batches(workdir, val.split, codec):
        batches.append(batch["images"].numpy())
        taken += len(batches[-1])
        if taken >= count:
            break
    return np.concatenate(batches)[:count]
