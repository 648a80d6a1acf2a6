"""Training-time validation on real COCO annotations: decoding and scoring end to end.

A ground-truth network replaces the model: for each person of the real COCO sample it
answers with the codec's Gaussians at the true keypoints (and, for the mirrored crop, at the
mirrored keypoints with left and right swapped), so student AP ~ 1 proves the flip test,
DARK decoding, the box geometry back to image pixels and the COCO scoring together. A
second cycle that predicts wrong keypoints proves the teacher is scored from the last cycle.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from shared import SHARED
from torch import nn

from sdpose.config import EvaluateParams
from sdpose.core.codec import HeatmapCodec
from sdpose.core.inputs import center_scale
from sdpose.core.keypoints import FLIP_INDEX
from sdpose.models.outputs import CycleOutput
from sdpose.training.validate import ROLES, coco_ap, predict_batches

pytestmark = pytest.mark.unit

ANNOTATIONS = SHARED / "fixtures" / "coco-val2017-sample" / "person_keypoints_val2017_sample.json"
MARK = 7.0  # a pixel value at the top-left corner: at the top-right, the crop is mirrored


@pytest.fixture(scope="module")
def people() -> dict[str, np.ndarray]:
    """Every annotated person of the sample: box geometry and keypoints in input pixels."""
    data = json.loads(ANNOTATIONS.read_text())
    found: dict[str, list] = {"image_id": [], "center": [], "scale": [], "keypoints": []}
    for ann in data["annotations"]:
        if ann["num_keypoints"] == 0:
            continue
        center, scale = center_scale(ann["bbox"])
        points = np.asarray(ann["keypoints"], dtype=np.float64).reshape(17, 3)
        found["image_id"].append(ann["image_id"])
        found["center"].append(center)
        found["scale"].append(scale)
        found["keypoints"].append(points)
    return {name: np.stack(values) for name, values in found.items()}


@pytest.fixture(params=[(256, 192), (128, 96)], ids=["256x192", "128x96"])
def codec(request) -> HeatmapCodec:
    """The paper's input size and the CPU presets': the plumbing must round trip at both."""
    input_h, input_w = request.param
    return HeatmapCodec(input_size=(input_h, input_w), heatmap_size=(input_h // 4, input_w // 4))


def _heatmaps(
    points: np.ndarray, visible: np.ndarray, codec: HeatmapCodec
) -> tuple[torch.Tensor, torch.Tensor]:
    """Target heatmaps of input-pixel keypoints (N, K, 2), and of the mirrored crop."""
    mirrored = points[:, FLIP_INDEX].copy()
    mirrored[..., 0] = (codec.input_size[1] - 1) - mirrored[..., 0]  # flip: x -> W - 1 - x
    plain = codec.encode(points, visible)[0]
    flipped = codec.encode(mirrored, visible[:, FLIP_INDEX])[0]
    return torch.from_numpy(plain), torch.from_numpy(flipped)


class GroundTruthNet(nn.Module):
    """Heatmaps of the true keypoints; `wrong_teacher` makes every later cycle miss by far."""

    def __init__(
        self, people: dict[str, np.ndarray], wrong_teacher: bool, codec: HeatmapCodec
    ) -> None:
        super().__init__()
        points = codec.to_input(people["keypoints"][..., :2], people["center"], people["scale"])
        visible = people["keypoints"][..., 2] > 0
        far = points + np.array(codec.input_size[::-1]) / 3  # every joint ~1/3 of the crop away
        self.maps, self.mirrored_maps = _heatmaps(points, visible, codec)
        self.far_maps, self.far_mirrored = _heatmaps(far, visible, codec)
        self.wrong_teacher = wrong_teacher

    def forward(self, images: torch.Tensor, cycles: int | None = None) -> list[CycleOutput]:
        # the flip test may send plain and mirrored crops in one batch: answer per sample
        person = torch.arange(len(images)) % len(self.maps)
        mirrored = (images[:, 0, 0, -1] == MARK)[:, None, None, None]
        good = torch.where(mirrored, self.mirrored_maps[person], self.maps[person])
        bad = torch.where(mirrored, self.far_mirrored[person], self.far_maps[person])
        maps = [good] + [bad if self.wrong_teacher else good] * ((cycles or 1) - 1)
        tokens = torch.zeros(len(images), 17, 4)
        return [
            CycleOutput(predictions=m, keypoint_tokens=tokens, visual_tokens=tokens) for m in maps
        ]


def _batch(people: dict[str, np.ndarray], codec: HeatmapCodec) -> dict[str, torch.Tensor]:
    images = torch.zeros(len(people["image_id"]), 3, *codec.input_size)
    images[:, 0, 0, 0] = MARK
    return {
        "images": images,
        "center": torch.from_numpy(people["center"]).float(),
        "scale": torch.from_numpy(people["scale"]).float(),
        "image_id": torch.from_numpy(people["image_id"]),
        "score": torch.ones(len(images)),
    }


@pytest.mark.parametrize(
    ("flip_test", "decode"), [(False, "dark"), (True, "dark"), (True, "argmax")]
)
def test_perfect_heatmaps_score_ap_one(people, codec, flip_test: bool, decode: str) -> None:
    evaluate = EvaluateParams(flip_test=flip_test, decode=decode)
    model = GroundTruthNet(people, wrong_teacher=False, codec=codec)
    found = predict_batches(model, [_batch(people, codec)], codec, evaluate, teacher_cycles=2)
    assert {role: len(found[role]) for role in ROLES} == {"student": 12, "teacher": 12}
    for role in ROLES:
        # the flip test's one-pixel shift and argmax's quarter pixel cost a little OKS
        assert coco_ap(found[role], ANNOTATIONS, evaluate)["AP"] > 0.97


def test_student_is_first_cycle_and_teacher_the_last(people, codec) -> None:
    evaluate = EvaluateParams(flip_test=True)
    model = GroundTruthNet(people, wrong_teacher=True, codec=codec)
    found = predict_batches(model, [_batch(people, codec)], codec, evaluate, teacher_cycles=3)
    assert coco_ap(found["student"], ANNOTATIONS, evaluate)["AP"] > 0.97
    assert coco_ap(found["teacher"], ANNOTATIONS, evaluate)["AP"] < 0.1


def test_predictions_are_in_image_pixels(people, codec) -> None:
    evaluate = EvaluateParams(flip_test=False)
    model = GroundTruthNet(people, False, codec)
    found = predict_batches(model, [_batch(people, codec)], codec, evaluate, 1)
    predicted = np.concatenate(found["student"].keypoints)
    visible = people["keypoints"][..., 2] > 0
    error = np.abs(predicted[..., :2] - people["keypoints"][..., :2])[visible]
    # DARK recovers an exact Gaussian's centre to a small fraction of a heatmap pixel (4 px)
    # times the crop's zoom (box / input size): about a pixel in the image at 256x192,
    # twice that at 128x96.
    assert np.median(error) < 256 / codec.input_size[0]
    assert np.all(predicted[..., 2][visible] > 0.5)


def test_no_predictions_score_zero() -> None:
    from sdpose.training.validate import Predictions

    assert coco_ap(Predictions(), ANNOTATIONS, EvaluateParams())["AP"] == 0.0
