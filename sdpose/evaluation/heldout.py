"""COCO AP of a model on any COCO-format annotation file, in this process.

The pipeline's evaluation reads the val crops a run cut (`sdpose.evaluation.valset`); a model
card also needs AP on sets no run prepared: a synthetic val set drawn with another seed, the
real COCO sample. This module takes such a set from its annotation file and images through
the same steps in one process (prepare's validation, the crop contract, the val feed's warp,
the one inference path, pycocotools), so the figures are comparable with the pipeline's.

Shapes: N persons, K keypoints.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from sdpose.config import Params
from sdpose.core.codecs import codec_for_labels
from sdpose.data.crop_rows import crop_rows, max_box_height
from sdpose.data.feed import val_batch
from sdpose.data.manifest import SCHEMA
from sdpose.data.prepare import prepare_split
from sdpose.evaluation import inference

BATCH = 32


def heldout_ap(
    model: nn.Module, params: Params, annotations: Path, images: Path, cycles: int = 1
) -> dict[str, float]:
    """pycocotools' keypoint figures (AP, AP50, ...) of the first `cycles`' last cycle (the
    student for 1) on the people of `annotations`, ground-truth boxes; plus `instances`."""
    prepared = prepare_split(Path(annotations), Path(images), "val", workers=1)
    rows = pa.Table.from_pylist(prepared.rows, schema=SCHEMA)
    height = max_box_height(model.config.input_size)
    table, _ = crop_rows(rows, Path(images), params.crops, height)
    codec = codec_for_labels(model.config, params.train)
    runner = inference.model_runner(model.eval(), cycles)
    found = inference.Predictions()
    with torch.no_grad():
        for start in range(0, table.num_rows, BATCH):
            batch = val_batch(table.slice(start, BATCH), codec)
            tensors = {name: torch.from_numpy(np.array(value)) for name, value in batch.items()}
            keypoints = inference.predict_crops(
                runner, tensors["images"], tensors["center"], tensors["scale"], codec,
                params.evaluate,
            )  # fmt: skip
            found.add(tensors, keypoints[-1])
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its tables
        stats, _ = inference.score(found, Path(annotations), params.evaluate)
    return {**stats, "instances": table.num_rows}
