"""The chain learns: the default model memorises a few dozen fixed crops, quickly.

Synthetic people go through the project's own synth -> prepare -> crop -> warp -> encode
chain at the default model's input size, and the training loop's own `train_epoch` (every
cycle, every loss term, Adam, warmup + cosine) fits them; the one inference path (flip
test, decoding, image pixels) then reads the joints back. If targets, augmentation
geometry, loss and decoding drifted apart, the decoded joints would not land on the
labels, however long it trained.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch
from shared import REPO

from sdpose.config import CropsParams, Params, load_params
from sdpose.core.codecs import codec_for_labels
from sdpose.data import crop_rows, feed, synth
from sdpose.data.manifest import SCHEMA
from sdpose.data.prepare import prepare_split
from sdpose.evaluation import inference
from sdpose.models import build_model
from sdpose.training.loop import distillation_loss, train_epoch
from sdpose.training.schedule import WarmupStepSchedule
from sdpose.training.trainee import Trainee

pytestmark = pytest.mark.unit

CROPS = 32
STEPS = 200
TOLERANCE_CELLS = 1.5  # heatmap pixels or SimCC bins
SHARE = 0.8  # of the labelled joints


def fixed_crops(params: Params, folder) -> pa.Table:
    """The first CROPS people of a few synthetic images, cut for the model's input."""
    params = params.model_copy(
        update={"synth": params.synth.model_copy(update={"train_images": 24, "workers": 1})}
    )
    synth.run(params, folder)
    root = folder / "data" / "raw" / "synth"
    prepared = prepare_split(
        root / "annotations" / "person_keypoints_train.json", root / "images", "train", workers=1
    )
    rows = pa.Table.from_pylist(prepared.rows[:CROPS], schema=SCHEMA)
    height = crop_rows.max_box_height(params.model.resolve().input_size)
    table, skipped = crop_rows.crop_rows(rows, root / "images", CropsParams(), height)
    assert not skipped and table.num_rows == CROPS
    return table


def test_the_default_model_memorises_a_few_dozen_crops(tmp_path):
    errors = memorisation_errors(tmp_path, {}, STEPS)
    assert (errors <= TOLERANCE_CELLS).mean() >= SHARE, np.percentile(errors, [50, 80, 95])


def memorisation_errors(folder, overrides: dict, steps: int) -> np.ndarray:
    """Per labelled joint: the distance between the memorised and the labelled position, in
    the head's cells, after `steps` steps of params.yaml's model on the fixed crops."""
    torch.manual_seed(0)
    torch.set_num_threads(1)
    # from scratch, at the official learning rate (params.yaml's is a fine-tuning one)
    settings = {"train.init": "scratch", "train.lr": 1e-3, "train.warmup_iters": 20, **overrides}
    params = load_params(REPO / "params.yaml", settings)
    codec = codec_for_labels(params.model.resolve(), params.train)
    model = build_model(params.model.resolve()).train()
    batch = feed.val_batch(fixed_crops(params, folder), codec)  # the crops, unaugmented
    optimizer = torch.optim.Adam(model.parameters(), lr=params.train.lr)
    schedule = WarmupStepSchedule(
        optimizer, params.train.lr, 20, 0.001, [], 1.0, policy="cosine", total_iters=steps
    )
    trainee = Trainee(model, optimizer, schedule, torch.amp.GradScaler("cpu", enabled=False),
                      torch.device("cpu"))  # fmt: skip
    # the train loop takes uint8 BGR crops and normalises them itself
    images = torch.from_numpy(np.ascontiguousarray(feed_images_bgr(batch["images"])))
    step = {"images": images, "target": torch.from_numpy(batch["target"]),
            "target_weight": torch.from_numpy(batch["target_weight"])}  # fmt: skip
    loss_fn = distillation_loss(params)
    for epoch in range(steps):
        train_epoch(trainee, iter([step]), loss_fn, epoch)

    model.eval()
    runner = inference.model_runner(model, 1)
    crops = torch.from_numpy(batch["images"])
    # no flip test: memorised crops were never seen mirrored
    outputs = inference.flip_test_outputs(runner, crops, codec, flip=False)[0]
    found, _ = codec.decode(outputs, params.evaluate.decode)
    labelled = batch["target_weight"] > 0
    truth = crop_keypoints(batch, codec)
    cell = input_pixels_per_cell(codec)
    return np.linalg.norm(found.numpy() - truth, axis=-1)[labelled] / cell


def feed_images_bgr(normalised: np.ndarray) -> np.ndarray:
    """The val feed's normalised RGB crops back to the train feed's uint8 BGR (N, H, W, 3)."""
    mean = np.array([0.485, 0.456, 0.406], np.float32)[:, None, None]
    std = np.array([0.229, 0.224, 0.225], np.float32)[:, None, None]
    rgb = np.clip(np.rint((normalised * std + mean) * 255), 0, 255).astype(np.uint8)
    return rgb[:, ::-1].transpose(0, 2, 3, 1)


def crop_keypoints(batch: dict[str, np.ndarray], codec) -> np.ndarray:
    """The labelled joints in input pixels: the targets decoded (exact for both codecs)."""
    target = batch["target"]
    if target.ndim == 3:  # SimCC labels: their log is a parabola
        target = np.log(np.maximum(target, 1e-30))
    found, _ = codec.decode(target, "dark")
    return found


def input_pixels_per_cell(codec) -> float:
    """Input pixels per heatmap pixel, or per SimCC bin."""
    return float(codec.stride[0]) if hasattr(codec, "stride") else 1.0 / codec.split
