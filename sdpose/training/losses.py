"""SDPose training losses: heatmap MSE on every cycle plus self-distillation between cycles.

Semantics of the official code (SDPoseHead.get_loss with mmpose 0.29.0 JointsMSELoss and
the repo's TokenDistilLoss), checked against the reference fixture in
`shared/reference/official-sdpose-t`:
- the heatmap loss is applied to every cycle's prediction and SUMMED over cycles;
- cycle i (student) learns from cycle i + 1 (teacher) through the MSE of their keypoint
  tokens and of their visual tokens, each weighted 5e-6 and summed over the pairs; the
  teacher is not detached unless asked.

Shape legend: N batch, K keypoints, H x W heatmap, P visual tokens, D embedding dim.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from sdpose.core.keypoints import JOINT_WEIGHTS
from sdpose.models.outputs import CycleOutput


def joints_mse_loss(
    heatmaps: torch.Tensor, target: torch.Tensor, target_weight: torch.Tensor
) -> torch.Tensor:
    """mmpose 0.29 JointsMSELoss(use_target_weight=True): a scalar.

    heatmaps, target (N, K, H, W); target_weight (N, K). The weight multiplies prediction
    and target before the squared error, i.e. the error (pred - target)^2 counts w^2 times
    (w for 0/1 visibility weights), then the mean runs over N, K and all pixels, weight-0
    samples included: `(1/K) sum_k mean_{n,p} (w[n,k] (pred - target))^2`. No 0.5 factor.
    """
    weight = target_weight.reshape(*target_weight.shape[:2], 1, 1)
    return ((heatmaps - target) * weight).square().mean()


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
class DistillationLoss:
    """Total SDPose loss over a sequence of cycle outputs, with every term reported.

    `token_weight` scales the keypoint-token and the visual-token distillation (each);
    `heatmap_distill_weight` an MSE between consecutive cycles' heatmaps (off by default: the
    paper's figure draws it but its equations and the official code have none);
    `use_joint_weights` multiplies target weights by MMPose's COCO joint weights (the
    official config leaves them off).
    """

    token_weight: float = 5e-6
    heatmap_distill_weight: float = 0.0
    detach_teacher: bool = False
    use_joint_weights: bool = False

    def __call__(
        self,
        outputs: Sequence[CycleOutput],
        target: torch.Tensor,
        target_weight: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """outputs: one CycleOutput per cycle; target (N, K, H, W); weight (N, K) or (N, K, 1).

        Returns scalars: `loss` (the sum of `heatmap_loss`, `kpt_dist_loss`, `vis_dist_loss`,
        `heatmap_dist_loss`), `heatmap_loss_cycle{c}` for c = 1.., and `kpt_dist_loss_pair{i}`,
        `vis_dist_loss_pair{i}` (cycle i learns from i + 1), plus `heatmap_dist_loss_pair{i}`
        when heatmap distillation is on. One cycle gives zero distillation terms.
        """
        weight = self._checked_weight(outputs, target, target_weight)
        terms: dict[str, torch.Tensor] = {}
        target = target.float()
        per_cycle = [joints_mse_loss(out.heatmaps.float(), target, weight) for out in outputs]
        for cycle, value in enumerate(per_cycle, start=1):
            terms[f"heatmap_loss_cycle{cycle}"] = value
        terms["heatmap_loss"] = torch.stack(per_cycle).sum()

        distilled = {
            "kpt_dist_loss": ([out.keypoint_tokens for out in outputs], self.token_weight),
            "vis_dist_loss": ([out.visual_tokens for out in outputs], self.token_weight),
            "heatmap_dist_loss": ([out.heatmaps for out in outputs], self.heatmap_distill_weight),
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
            terms["heatmap_loss"]
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
            if out.heatmaps.shape != target.shape:
                raise ValueError(
                    f"DistillationLoss: cycle {cycle} heatmaps {tuple(out.heatmaps.shape)} "
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
