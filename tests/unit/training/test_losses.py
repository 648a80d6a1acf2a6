"""DistillationLoss against hand computations and the official SDPose-T reference values."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from shared import REFERENCE as SHARED_REFERENCE

from sdpose.core.keypoints import JOINT_WEIGHTS
from sdpose.models.outputs import CycleOutput
from sdpose.training.losses import (
    DistillationLoss,
    HeatmapLoss,
    SimCCLoss,
    joints_mse_loss,
    kl_discrete_loss,
)

pytestmark = pytest.mark.unit

REFERENCE = SHARED_REFERENCE / "official-sdpose-t"


@pytest.fixture(scope="module")
def official() -> tuple[list[CycleOutput], dict]:
    outputs = torch.load(REFERENCE / "expected_outputs.pt", weights_only=True)
    loss = torch.load(REFERENCE / "expected_loss.pt", weights_only=True)
    cycles = [outputs[f"cycle_{c}"] for c in (1, 2, 3)]
    return [CycleOutput(c["heatmaps"], c["kpt_token"], c["vis_token"]) for c in cycles], loss


def small_outputs(cycles: int, seed: int = 0, requires_grad: bool = False) -> list[CycleOutput]:
    generator = torch.Generator().manual_seed(seed)

    def tensor(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator).requires_grad_(requires_grad)

    return [
        CycleOutput(tensor(2, 17, 4, 3), tensor(2, 17, 5), tensor(2, 6, 5)) for _ in range(cycles)
    ]


def small_target(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    target = torch.rand(2, 17, 4, 3, generator=generator)
    weight = (torch.rand(2, 17, generator=generator) > 0.3).float()
    return target, weight


def hand_joints_mse(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> float:
    """mmpose 0.29: per joint, MSELoss(pred * w, target * w) over (N, pixels); mean over K."""
    num, joints, height, width = pred.shape
    total = 0.0
    for k in range(joints):
        squared = 0.0
        for n in range(num):
            w = float(weight[n, k])
            for y in range(height):
                for x in range(width):
                    squared += (w * float(pred[n, k, y, x]) - w * float(target[n, k, y, x])) ** 2
        total += squared / (num * height * width)
    return total / joints


def hand_mse(a: torch.Tensor, b: torch.Tensor) -> float:
    flat_a, flat_b = a.detach().flatten().tolist(), b.detach().flatten().tolist()
    return sum((x - y) ** 2 for x, y in zip(flat_a, flat_b, strict=True)) / len(flat_a)


def test_terms_match_hand_computation() -> None:
    outputs = small_outputs(3)
    target, weight = small_target()
    terms = DistillationLoss(token_weight=0.5)(outputs, target, weight)
    per_cycle = [hand_joints_mse(out.predictions, target, weight) for out in outputs]
    for c, expected in enumerate(per_cycle, start=1):
        assert terms[f"pose_loss_cycle{c}"].item() == pytest.approx(expected, rel=1e-5)
    assert terms["pose_loss"].item() == pytest.approx(sum(per_cycle), rel=1e-5)
    for key, field in (("kpt_dist_loss", "keypoint_tokens"), ("vis_dist_loss", "visual_tokens")):
        tokens = [getattr(out, field) for out in outputs]
        pairs = [0.5 * hand_mse(tokens[i], tokens[i + 1]) for i in range(2)]
        assert terms[f"{key}_pair1"].item() == pytest.approx(pairs[0], rel=1e-5)
        assert terms[f"{key}_pair2"].item() == pytest.approx(pairs[1], rel=1e-5)
        assert terms[key].item() == pytest.approx(sum(pairs), rel=1e-5)
    assert terms["heatmap_dist_loss"].item() == 0.0
    assert "heatmap_dist_loss_pair1" not in terms
    expected_total = sum(per_cycle) + terms["kpt_dist_loss"].item() + terms["vis_dist_loss"].item()
    assert terms["loss"].item() == pytest.approx(expected_total, rel=1e-5)


def test_heatmap_distillation_when_on() -> None:
    outputs = small_outputs(3)
    target, weight = small_target()
    terms = DistillationLoss(heatmap_distill_weight=2.0)(outputs, target, weight)
    maps = [out.predictions for out in outputs]
    expected = 2.0 * (hand_mse(maps[0], maps[1]) + hand_mse(maps[1], maps[2]))
    assert terms["heatmap_dist_loss"].item() == pytest.approx(expected, rel=1e-5)
    assert terms["heatmap_dist_loss_pair2"].item() == pytest.approx(
        2.0 * hand_mse(maps[1], maps[2]), rel=1e-5
    )
    parts = ("pose_loss", "kpt_dist_loss", "vis_dist_loss", "heatmap_dist_loss")
    assert terms["loss"].item() == pytest.approx(sum(terms[p].item() for p in parts), rel=1e-6)


def test_joint_weights_multiply_the_target_weight() -> None:
    outputs = small_outputs(1)
    target, weight = small_target()
    terms = DistillationLoss(use_joint_weights=True)(outputs, target, weight)
    joint_weighted = weight * torch.from_numpy(JOINT_WEIGHTS)
    expected = hand_joints_mse(outputs[0].predictions, target, joint_weighted)
    assert terms["pose_loss"].item() == pytest.approx(expected, rel=1e-5)
    plain = DistillationLoss()(outputs, target, weight)["pose_loss"].item()
    assert terms["pose_loss"].item() > plain


def test_reproduces_official_reference(official) -> None:
    outputs, expected = official
    terms = DistillationLoss()(outputs, expected["target"], expected["target_weight"])
    assert terms["pose_loss"].item() == pytest.approx(expected["heatmap_loss"], rel=1e-5)
    assert terms["vis_dist_loss"].item() == pytest.approx(expected["vis_dist_loss"], rel=1e-4)
    assert terms["kpt_dist_loss"].item() == pytest.approx(expected["kpt_dist_loss"], rel=1e-4)
    for c, value in enumerate(expected["heatmap_loss_per_cycle"], start=1):
        assert terms[f"pose_loss_cycle{c}"].item() == pytest.approx(value, rel=1e-5)
    for i in (1, 2):
        vis_pair, kpt_pair = (
            expected["vis_dist_loss_per_pair"][i - 1],
            expected["kpt_dist_loss_per_pair"][i - 1],
        )
        assert terms[f"vis_dist_loss_pair{i}"].item() == pytest.approx(vis_pair, rel=1e-4)
        assert terms[f"kpt_dist_loss_pair{i}"].item() == pytest.approx(kpt_pair, rel=1e-4)
    official_total = (
        expected["heatmap_loss"] + expected["vis_dist_loss"] + expected["kpt_dist_loss"]
    )
    assert terms["loss"].item() == pytest.approx(official_total, rel=1e-5)


def test_weight_shapes_agree(official) -> None:
    outputs, expected = official
    loss = DistillationLoss()
    with_axis = loss(outputs, expected["target"], expected["target_weight"])
    without = loss(outputs, expected["target"], expected["target_weight"][..., 0])
    assert with_axis["loss"].item() == without["loss"].item()


@pytest.mark.parametrize("detach_teacher", [False, True])
def test_teacher_gradient(detach_teacher: bool) -> None:
    outputs = small_outputs(3, requires_grad=True)
    target, weight = small_target()
    terms = DistillationLoss(detach_teacher=detach_teacher)(outputs, target, weight)
    (terms["kpt_dist_loss"] + terms["vis_dist_loss"]).backward()
    last = outputs[-1]
    for tokens in (last.keypoint_tokens, last.visual_tokens):
        norm = 0.0 if tokens.grad is None else tokens.grad.norm().item()
        assert (norm == 0.0) == detach_teacher
    # the students always learn
    assert outputs[0].visual_tokens.grad is not None
    assert outputs[0].visual_tokens.grad.norm().item() > 0


def test_official_teacher_gradient_is_not_zero(official) -> None:
    outputs, expected = official
    vis_last = outputs[2].visual_tokens.clone().requires_grad_(True)
    outputs = [*outputs[:2], outputs[2]._replace(visual_tokens=vis_last)]
    terms = DistillationLoss()(outputs, expected["target"], expected["target_weight"])
    terms["vis_dist_loss"].backward()
    assert vis_last.grad.norm().item() == pytest.approx(1.1e-7, rel=0.1)  # README's figure


def test_one_cycle_has_no_distillation() -> None:
    outputs = small_outputs(1)
    target, weight = small_target()
    terms = DistillationLoss(heatmap_distill_weight=1.0)(outputs, target, weight)
    for key in ("kpt_dist_loss", "vis_dist_loss", "heatmap_dist_loss"):
        assert terms[key].item() == 0.0
    assert not any("pair" in key for key in terms)
    assert terms["loss"].item() == terms["pose_loss"].item() > 0


def test_bad_inputs_raise() -> None:
    outputs = small_outputs(2)
    target, weight = small_target()
    loss = DistillationLoss()
    with pytest.raises(ValueError, match="empty"):
        loss([], target, weight)
    with pytest.raises(ValueError, match="target_weight"):
        loss(outputs, target, weight[:, :5])
    with pytest.raises(ValueError, match="cycle 1 predictions"):
        loss(outputs, target[:, :, :2], weight)
    assert np.isfinite(loss(outputs, target, weight)["loss"].item())


# ----------------------------------------------------------------- the SimCC head's loss
def mmpose_kl_discrete(pred, target, weight, bins, beta, label_beta) -> float:
    """MMPose 1.x KLDiscretLoss.forward with nn.KLDivLoss, joint by joint; batch averaged."""
    kl_div = torch.nn.KLDivLoss(reduction="none")
    num, joints, _ = pred.shape
    total = 0.0
    for axis_pred, axis_target in zip(pred.split(bins, -1), target.split(bins, -1), strict=True):
        for n in range(num):
            for k in range(joints):
                log_p = torch.log_softmax(axis_pred[n, k] * beta, dim=0)
                labels = axis_target[n, k]
                if label_beta is not None:
                    labels = torch.softmax(labels * label_beta, dim=0)
                total += float(kl_div(log_p, labels).mean()) * float(weight[n, k])
    return total / num / joints


@pytest.mark.parametrize("label_beta", [10.0, None])
def test_kl_discrete_loss_is_mmposes_averaged_over_the_batch(label_beta):
    generator = torch.Generator().manual_seed(3)
    bins = (6, 8)
    pred = torch.randn(2, 17, 14, generator=generator)
    target = torch.rand(2, 17, 14, generator=generator)
    target[0, 2] = 0  # an unlabelled joint: all-zero labels, weight 0
    weight = (torch.rand(2, 17, generator=generator) > 0.3).float()
    weight[0, 2] = 0
    got = kl_discrete_loss(pred, target, weight, bins, beta=10.0, label_beta=label_beta)
    expected = mmpose_kl_discrete(pred, target, weight, bins, 10.0, label_beta)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_kl_discrete_loss_is_least_at_the_label_distribution():
    """softmax(beta * logits) = softmax(label_beta * labels) when logits = labels (equal betas)."""
    generator = torch.Generator().manual_seed(4)
    labels = torch.rand(3, 17, 20, generator=generator)
    weight = torch.ones(3, 17)
    at_labels = kl_discrete_loss(labels, labels, weight, (8, 12)).item()
    noisy = labels + 0.3 * torch.randn(3, 17, 20, generator=generator)
    assert abs(at_labels) < 1e-6 < kl_discrete_loss(noisy, labels, weight, (8, 12)).item()
    simcc = DistillationLoss(pose_loss=SimCCLoss((8, 12)))
    outputs = [CycleOutput(noisy, torch.zeros(3, 17, 4), torch.zeros(3, 5, 4))]
    assert simcc(outputs, labels, weight)["pose_loss"].item() == pytest.approx(
        kl_discrete_loss(noisy, labels, weight, (8, 12)).item()
    )


def test_foreground_weight_counts_the_pixels_under_the_gaussian_more():
    target, weight = small_target()
    pred = torch.zeros_like(target)
    plain = joints_mse_loss(pred, target, weight).item()
    weighted = joints_mse_loss(pred, target, weight, foreground_weight=10.0).item()
    under = target > 0.05
    expected = ((target * weight[..., None, None]) ** 2 * torch.where(under, 10.0, 1.0)).mean()
    assert weighted == pytest.approx(expected.item(), rel=1e-6) and weighted > plain
    assert HeatmapLoss(1.0)(pred, target, weight).item() == pytest.approx(plain)
