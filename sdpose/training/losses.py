"""SDPose training losses: the head's loss on every cycle plus self-distillation between cycles.

Semantics of the official code (SDPoseHead.get_loss with mmpose 0.29.0 JointsMSELoss and
the repo's TokenDistilLoss), checked against the reference fixture in
`shared/reference/official-sdpose-t`:
- the heatmap loss is applied to every cycle's prediction and SUMMED over cycles;
- cycle i (student) learns from cycle i + 1 (teacher) through the MSE of their keypoint
  tokens and of their visual tokens, each weighted 5e-6 and summed over the pairs; the
  teacher is not detached unless asked.

The head's loss is the heatmap MSE (optionally weighting the pixels under each target's
Gaussian more: `train.heatmap_foreground_weight`) or, for the SimCC head, MMPose's
KLDiscretLoss as RTMPose configures it (`kl_discrete_loss`).

Shape legend: N batch, K keypoints, H x W heatmap, P visual tokens, D embedding dim.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from sdpose.core.keypoints import JOINT_WEIGHTS
from sdpose.models.outputs import CycleOutput

if TYPE_CHECKING:
    from sdpose.config import TrainParams
    from sdpose.core.presets import ModelConfig


FOREGROUND_LEVEL = 0.05  # target values above this are "under the Gaussian"


def joints_mse_loss(
    heatmaps: torch.Tensor,
    target: torch.Tensor,
    target_weight: torch.Tensor,
    foreground_weight: float = 1.0,
) -> torch.Tensor:
    """mmpose 0.29 JointsMSELoss(use_target_weight=True): a scalar.

    heatmaps, target (N, K, H, W); target_weight (N, K). The weight multiplies prediction
    and target before the squared error, i.e. the error (pred - target)^2 counts w^2 times
    (w for 0/1 visibility weights), then the mean runs over N, K and all pixels, weight-0
    samples included: `(1/K) sum_k mean_{n,p} (w[n,k] (pred - target))^2`. No 0.5 factor.

    `foreground_weight` > 1 multiplies the squared error of the pixels where the target
    exceeds FOREGROUND_LEVEL: on a 32x24 map a joint's Gaussian covers ~5% of the pixels,
    so the plain mean is dominated by the background that a flat map already fits. 1 is
    the official loss exactly.
    """
    weight = target_weight.reshape(*target_weight.shape[:2], 1, 1)
    error = ((heatmaps - target) * weight).square()
    if foreground_weight != 1.0:
        error = error * torch.where(target > FOREGROUND_LEVEL, foreground_weight, 1.0)
    return error.mean()


def kl_discrete_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    target_weight: torch.Tensor,
    bins: tuple[int, int],
    beta: float = 10.0,
    label_beta: float | None = 10.0,
) -> torch.Tensor:
    """MMPose 1.x KLDiscretLoss(beta, label_softmax, use_target_weight=True): a scalar.

    logits, labels (N, K, Wx + Hy): x bins then y bins (`sdpose.core.simcc`); target_weight
    (N, K). Per axis, the prediction is softmax(beta * logits) and the target the Gaussian
    labels, passed through softmax(label_beta * labels) when `label_beta` is set (RTMPose's
    label_softmax) and used as they are otherwise; the KL divergence is averaged over the
    bins, weighted per joint, summed over the two axes and averaged over the joints. One
    difference from MMPose: the batch is averaged, not summed, so the loss (and its balance
    against the token distillation) does not depend on the batch size or the worker count.
    """
    weight = target_weight.reshape(*target_weight.shape[:2]).float()
    total = logits.new_zeros(())
    for pred, target in zip(logits.split(bins, -1), labels.split(bins, -1), strict=True):
        log_p = torch.log_softmax(pred.float() * beta, dim=-1)
        target = target.float()
        if label_beta is not None:
            target = torch.softmax(target * label_beta, dim=-1)
        # KLDivLoss(reduction='none') = target * (log target - log_p), 0 where target is 0
        kl = torch.where(target > 0, target * (target.clamp_min(1e-30).log() - log_p), 0.0)
        total = total + (kl.mean(-1) * weight).sum(-1).mean()
    return total / logits.shape[1]


def consecutive_mse(tensors: Sequence[torch.Tensor], detach_teacher: bool) -> list[torch.Tensor]:
    """Per consecutive pair (i, i + 1): mean((tensors[i] - tensors[i + 1])^2); len - 1 terms.

    The later cycle is the teacher; `detach_teacher` stops its gradient (the official code
    does not, so the teacher is also pulled toward the student).
    """
    pairs = []
    for student, teacher in itertools.pairwise(tensors):
        teacher = teacher.detach() if detach_teacher else teacher
        pairs.append((student.float() - teacher.float()).square().mean())
    return pairs


@dataclass(frozen=True)
class SimCCLoss:
    """`kl_discrete_loss` with its settings bound: the SimCC head's per-cycle loss."""

    bins: tuple[int, int]
    beta: float = 10.0
    label_beta: float | None = 10.0

    def __call__(
        self, logits: torch.Tensor, labels: torch.Tensor, target_weight: torch.Tensor
    ) -> torch.Tensor:
        return kl_discrete_loss(
            logits, labels, target_weight, self.bins, self.beta, self.label_beta
        )


@dataclass(frozen=True)
class HeatmapLoss:
    """`joints_mse_loss` with its settings bound: the heatmap head's per-cycle loss."""

    foreground_weight: float = 1.0

    def __call__(
        self, heatmaps: torch.Tensor, target: torch.Tensor, target_weight: torch.Tensor
    ) -> torch.Tensor:
        return joints_mse_loss(heatmaps, target, target_weight, self.foreground_weight)


PoseLoss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def pose_loss_for(config: ModelConfig, train: TrainParams) -> PoseLoss:
    """The per-cycle loss of the model's head, with the training parameters' settings."""
    if config.head == "simcc":
        return SimCCLoss(config.simcc_bins, train.simcc_beta, train.simcc_label_beta)
    return HeatmapLoss(train.heatmap_foreground_weight)


@dataclass(frozen=True)
class DistillationLoss:
    """Total SDPose loss over a sequence of cycle outputs, with every term reported.

    `pose_loss` is the head's loss of one cycle's predictions (the official heatmap MSE by
    default, `SimCCLoss` for the SimCC head); `token_weight` scales the keypoint-token and
    the visual-token distillation (each); `heatmap_distill_weight` an MSE between
    consecutive cycles' predictions (heatmaps or SimCC logits; off by default: the paper's
    figure draws it but its equations and the official code have none);
    `use_joint_weights` multiplies target weights by MMPose's COCO joint weights (the
    official config leaves them off).
    """

    token_weight: float = 5e-6
    heatmap_distill_weight: float = 0.0
    detach_teacher: bool = False
    use_joint_weights: bool = False
    pose_loss: PoseLoss = HeatmapLoss()

    def __call__(
        self,
        outputs: Sequence[CycleOutput],
        target: torch.Tensor,
        target_weight: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """outputs: one CycleOutput per cycle; target (N, K, *output); weight (N, K) or (N, K, 1).

        Returns scalars: `loss` (the sum of `pose_loss`, `kpt_dist_loss`, `vis_dist_loss`,
        `heatmap_dist_loss`), `pose_loss_cycle{c}` for c = 1.., and `kpt_dist_loss_pair{i}`,
        `vis_dist_loss_pair{i}` (cycle i learns from i + 1), plus `heatmap_dist_loss_pair{i}`
        when heatmap distillation is on. One cycle gives zero distillation terms.
        """
        weight = self._checked_weight(outputs, target, target_weight)
        terms: dict[str, torch.Tensor] = {}
        target = target.float()
        per_cycle = [self.pose_loss(out.predictions.float(), target, weight) for out in outputs]
        for cycle, value in enumerate(per_cycle, start=1):
            terms[f"pose_loss_cycle{cycle}"] = value
        terms["pose_loss"] = torch.stack(per_cycle).sum()

        distilled = {
            "kpt_dist_loss": ([out.keypoint_tokens for out in outputs], self.token_weight),
            "vis_dist_loss": ([out.visual_tokens for out in outputs], self.token_weight),
            "heatmap_dist_loss": (
                [out.predictions for out in outputs],
                self.heatmap_distill_weight,
            ),
        }
        zero = target.new_zeros(())
        for name, (tensors, scale) in distilled.items():
            # heatmap distillation is optional: when off it adds no per-pair entries
            if name == "heatmap_dist_loss" and scale == 0:
                tensors = tensors[:1]
            pairs = [scale * p for p in consecutive_mse(tensors, self.detach_teacher)]
            for index, value in enumerate(pairs, start=1):
                terms[f"{name}_pair{index}"] = value
            terms[name] = torch.stack(pairs).sum() if pairs else zero

        terms["loss"] = (
            terms["pose_loss"]
            + terms["kpt_dist_loss"]
            + terms["vis_dist_loss"]
            + terms["heatmap_dist_loss"]
        )
        return terms

    def _checked_weight(
        self, outputs: Sequence[CycleOutput], target: torch.Tensor, target_weight: torch.Tensor
    ) -> torch.Tensor:
        """Validates shapes; returns the (N, K) float weight, joint weights applied if on."""
        if len(outputs) == 0:
            raise ValueError(
                "DistillationLoss: outputs is empty; expected one CycleOutput per cycle"
            )
        for cycle, out in enumerate(outputs, start=1):
            if out.predictions.shape != target.shape:
                raise ValueError(
                    f"DistillationLoss: cycle {cycle} predictions {tuple(out.predictions.shape)} "
                    f"do not match target {tuple(target.shape)}"
                )
        num, joints = target.shape[:2]
        if target_weight.shape not in ((num, joints), (num, joints, 1)):
            raise ValueError(
                f"DistillationLoss: target_weight must be (N, K) or (N, K, 1) = "
                f"({num}, {joints}[, 1]), got {tuple(target_weight.shape)}"
            )
        weight = target_weight.reshape(num, joints).float()
        if self.use_joint_weights:
            if joints != len(JOINT_WEIGHTS):
                raise ValueError(
                    f"DistillationLoss: use_joint_weights needs {len(JOINT_WEIGHTS)} keypoints, "
                    f"got {joints}"
                )
            weight = weight * torch.as_tensor(JOINT_WEIGHTS, device=weight.device)
        return weight
