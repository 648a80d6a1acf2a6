"""Numerical equivalence with the official SDPose-T (random weights, all three cycles).

The fixture (/work/shared/reference/official-sdpose-t, see its README) was produced by the
official code; our model must reproduce its per-cycle heatmaps and tokens.
"""

from __future__ import annotations

import pytest
import torch
from shared import REFERENCE

from sdpose.models.checkpoint import convert_official_checkpoint, load_checkpoint
from sdpose.models.mct import sine_position_embedding

pytestmark = pytest.mark.unit

FIXTURE = REFERENCE / "official-sdpose-t"


@pytest.fixture(scope="module")
def official_state() -> dict[str, torch.Tensor]:
    if not FIXTURE.exists():
        pytest.skip(f"official reference fixture not found at {FIXTURE}")
    return torch.load(FIXTURE / "sdpose_t_random_official.pth", weights_only=True)["state_dict"]


@pytest.fixture(scope="module")
def converted(tmp_path_factory, official_state):
    destination = tmp_path_factory.mktemp("reference") / "sdpose-t.pt"
    summary = convert_official_checkpoint(
        FIXTURE / "sdpose_t_random_official.pth", destination, "sdpose-t"
    )
    model, _ = load_checkpoint(destination)
    return model, summary


def test_sine_embedding_is_bit_identical(official_state):
    stored = official_state["keypoint_head.tokenpose.pos_embedding"]
    assert stored.dtype == torch.float32
    assert torch.equal(sine_position_embedding((16, 16), 192), stored)


def test_converted_model_uses_the_same_embedding(converted, official_state):
    model, summary = converted
    stored = official_state["keypoint_head.tokenpose.pos_embedding"]
    assert torch.equal(model.head.pos_embedding, stored)
    # every official tensor but the fixed embedding is carried over
    assert summary["tensors"] == len(official_state) - 1


def test_all_three_cycles_match_the_official_outputs(converted):
    model, _ = converted
    images = torch.load(FIXTURE / "input.pt", weights_only=True).float()
    expected = torch.load(FIXTURE / "expected_outputs.pt", weights_only=True)
    assert model.training is False  # BN must use running statistics, as the fixture did
    with torch.no_grad():
        outputs = model(images, cycles=3)
    assert len(outputs) == 3
    for index, output in enumerate(outputs, start=1):
        reference = expected[f"cycle_{index}"]
        pairs = [
            ("heatmaps", output.predictions, reference["heatmaps"]),
            ("kpt_token", output.keypoint_tokens, reference["kpt_token"]),
            ("vis_token", output.visual_tokens, reference["vis_token"]),
        ]
        for name, got, want in pairs:
            torch.testing.assert_close(
                got,
                want,
                atol=1e-4,
                rtol=1e-5,
                msg=lambda m, n=name, i=index: f"cycle {i} {n}: {m}",
            )


def test_default_eval_forward_is_the_official_inference_output(converted):
    """The official inference_model uses the cycle-1 heatmaps; our eval default runs it alone."""
    model, _ = converted
    images = torch.load(FIXTURE / "input.pt", weights_only=True).float()
    expected = torch.load(FIXTURE / "expected_outputs.pt", weights_only=True)
    with torch.no_grad():
        (only,) = model(images)
    torch.testing.assert_close(
        only.predictions, expected["cycle_1"]["heatmaps"], atol=1e-4, rtol=1e-5
    )
