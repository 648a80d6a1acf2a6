"""The one inference path: crops -> head outputs of every cycle (flip test) -> image
keypoints -> COCO results and AP.

Validation during training, the `evaluate` stage (PyTorch checkpoints and the ONNX
student) and `sdpose predict` all go through these functions with the codec of the model's
own config (`sdpose.core.codecs.codec_for_model`: heatmaps or SimCC), so the input and
output sizes, the flip convention, the decoder and the rescoring cannot differ between what
is validated and what ships. The official test protocol (mmpose 0.x top-down): flip test
(with the heatmap's one-pixel shift), DARK (or SimCC's 1-D equivalent), box geometry back
to image pixels, rescoring and OKS-NMS (`sdpose.evaluation.coco_ap`), then pycocotools' AP.

Shapes: C cycles, N persons, K keypoints, Hi x Wi input, O the head's output per keypoint
(H x W heatmap or Wx + Hy SimCC bins).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from sdpose.config import EvaluateParams
from sdpose.core.codecs import Codec
from sdpose.core.errors import InputError
from sdpose.evaluation.coco_ap import coco_keypoint_ap, topdown_results

Array = np.ndarray | torch.Tensor
# (N, 3, Hi, Wi) normalised crops -> outputs (N, K, *O) or (C, N, K, *O), same array kind
OutputRunner = Callable[[Array], Array]


class InferenceError(InputError):
    """A network that answers with outputs of the wrong shape."""


def model_runner(model: nn.Module, cycles: int) -> OutputRunner:
    """A PyTorch model as a runner: the outputs of its first `cycles` cycles, (C, N, K, *O)."""

    def run(images: torch.Tensor) -> torch.Tensor:
        return torch.stack([output.predictions.float() for output in model(images, cycles=cycles)])

    return run


@torch.no_grad()
def flip_test_outputs(
    runner: OutputRunner, crops: Array, codec: Codec, flip: bool = True
) -> torch.Tensor:
    """Outputs (C, N, K, *O) of the crops, averaged with those of the mirrored crops.

    Both halves go through the network in one call (eval-mode networks treat each sample
    alone); the mirrored half's outputs are flipped back by the codec (joints swapped, the
    x axis mirrored with its shift) before averaging.
    """
    count = len(crops)
    if flip:
        if isinstance(crops, np.ndarray):
            batch = np.ascontiguousarray(np.concatenate([crops, crops[..., ::-1]]))
        else:
            batch = torch.cat([crops, crops.flip(-1)])
    else:
        batch = crops
    outputs = torch.as_tensor(runner(batch)).float()
    rank = 2 + len(codec.output_shape)  # N, K, *O
    if outputs.ndim == rank:
        outputs = outputs[None]
    if (
        outputs.ndim != rank + 1
        or outputs.shape[1] != len(batch)
        or tuple(outputs.shape[3:]) != codec.output_shape
    ):
        expected = ", ".join(str(size) for size in codec.output_shape)
        raise InferenceError(
            f"the network returned outputs {tuple(outputs.shape)} for {len(batch)} crops; the "
            f"model's codec expects ([cycles,] {len(batch)}, K, {expected})"
        )
    if not flip:
        return outputs
    plain, mirrored = outputs[:, :count], outputs[:, count:]
    per_person = mirrored.reshape(-1, *outputs.shape[2:])
    return (plain + codec.flip_back(per_person).reshape(mirrored.shape)) * 0.5


def keypoints_in_image(
    outputs: torch.Tensor, center: Array, scale: Array, codec: Codec, method: str
) -> np.ndarray:
    """Outputs (..., N, K, *O) -> keypoints (..., N, K, 3): image x, y and the score."""
    split = outputs.ndim - 1 - len(codec.output_shape)  # the leading axes end with N
    lead, per_person = outputs.shape[:split], outputs.shape[split:]
    points, scores = codec.decode(outputs.reshape(-1, *per_person), method)
    points = points.reshape(*lead, *points.shape[-2:]).double()
    scores = scores.reshape(*lead, scores.shape[-1]).double()
    center = torch.as_tensor(np.asarray(center, dtype=np.float64))
    scale = torch.as_tensor(np.asarray(scale, dtype=np.float64))
    in_image = codec.to_image(points, center, scale)
    return torch.cat([in_image, scores[..., None]], dim=-1).cpu().numpy()


def predict_crops(
    runner: OutputRunner,
    crops: Array,
    center: Array,
    scale: Array,
    codec: Codec,
    evaluate: EvaluateParams,
) -> np.ndarray:
    """The whole path for one batch of crops: keypoints (C, N, K, 3) in image pixels."""
    outputs = flip_test_outputs(runner, crops, codec, evaluate.flip_test)
    return keypoints_in_image(outputs, _numpy(center), _numpy(scale), codec, evaluate.decode)


@dataclass
class Predictions:
    """Per-person predictions of one model output (a cycle), accumulated batch by batch."""

    image_ids: list[np.ndarray] = field(default_factory=list)
    keypoints: list[np.ndarray] = field(default_factory=list)  # (N, K, 3) each
    box_scores: list[np.ndarray] = field(default_factory=list)
    areas: list[np.ndarray] = field(default_factory=list)

    def add(self, batch: Mapping[str, Array], keypoints: np.ndarray) -> None:
        """A feed batch (image_id, score, scale) and its decoded keypoints."""
        scale = _numpy(batch["scale"]).astype(np.float64)
        self.add_people(_numpy(batch["image_id"]), keypoints, _numpy(batch["score"]), scale)

    def add_people(
        self, image_ids: Array, keypoints: np.ndarray, box_scores: Array, scale: np.ndarray
    ) -> None:
        """People of any source; the crop window's area (scale w x h) is MMPose's NMS scale."""
        self.image_ids.append(np.asarray(image_ids).astype(np.int64).reshape(-1))
        self.keypoints.append(keypoints)
        self.box_scores.append(np.asarray(box_scores, dtype=np.float64).reshape(-1))
        self.areas.append(scale[:, 0] * scale[:, 1])

    def extend(self, other: Predictions) -> None:
        for name in ("image_ids", "keypoints", "box_scores", "areas"):
            getattr(self, name).extend(getattr(other, name))

    def __len__(self) -> int:
        return sum(len(ids) for ids in self.image_ids)

    def results(self, evaluate: EvaluateParams) -> list[dict]:
        """COCO keypoint results: rescored and OKS-NMSed as MMPose's top-down protocol."""
        if len(self) == 0:
            return []
        return topdown_results(
            np.concatenate(self.image_ids),
            np.concatenate(self.keypoints),
            np.concatenate(self.box_scores),
            np.concatenate(self.areas),
            vis_thr=evaluate.vis_thr,
            oks_thr=evaluate.oks_thr,
        )


def score(
    predictions: Predictions, annotations: Path, evaluate: EvaluateParams
) -> tuple[dict[str, float], list[dict]]:
    """pycocotools' keypoint AP figures of the predictions, and the results they came from."""
    results = predictions.results(evaluate)
    return coco_keypoint_ap(annotations, results), results


def _numpy(value: Array) -> np.ndarray:
    return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
