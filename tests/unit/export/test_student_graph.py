"""The deployed student graph (`models/student.py`): exact against the trained model, cheaper
by exactly the work nothing reads, and exported as one ONNX Attention op per layer."""

from __future__ import annotations

import collections
import math

import onnx
import pytest
import torch

from sdpose.export.onnx import export_onnx
from sdpose.models import build_model
from sdpose.models.cost import model_info
from sdpose.models.student import StudentGraph, split_heads_attention

pytestmark = pytest.mark.unit


def _lively(model: torch.nn.Module) -> torch.nn.Module:
    """O(1) weights: the training init (conv std 0.001) makes heatmaps nearly constant."""
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() > 1:
                param.copy_(torch.randn(param.shape, generator=generator) / param[0].numel() ** 0.5)
    return model.eval()


@pytest.mark.parametrize("fused", [True, False])
def test_student_graph_reproduces_the_first_cycle(fused):
    model = _lively(build_model("sdpose-nano"))
    images = torch.randn(2, 3, *model.config.input_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(images, cycles=1)[0].predictions
        heatmaps = StudentGraph(model, fused_attention=fused)(images)
    assert expected.std() > 0.05
    torch.testing.assert_close(heatmaps, expected, rtol=0, atol=1e-5)


def test_student_graph_leaves_the_trained_model_untouched():
    model = build_model("sdpose-nano").eval()
    before = {name: value.clone() for name, value in model.state_dict().items()}
    StudentGraph(model)
    assert all(torch.equal(before[name], value) for name, value in model.state_dict().items())
    assert all(type(layer).__name__ == "TransformerLayer" for layer in model.head.layers)


def test_merged_head_attention_matches_per_head_softmax_by_hand():
    generator = torch.Generator().manual_seed(1)
    query, key, value = (torch.randn(2, 5, 8, generator=generator) for _ in range(3))
    heads, width = 2, 4
    expected = []
    for head in range(heads):
        cols = slice(head * width, (head + 1) * width)
        scores = query[..., cols] @ key[..., cols].transpose(1, 2) / math.sqrt(width)
        expected.append(scores.softmax(-1) @ value[..., cols])
    torch.testing.assert_close(
        split_heads_attention(query, key, value, heads), torch.cat(expected, -1)
    )
    torch.testing.assert_close(
        torch.ops.sdpose.attention(query[:, :2], key, value, heads), torch.cat(expected, -1)[:, :2]
    )


def test_deployed_work_drops_the_unread_visual_tokens_of_the_last_layer_by_hand():
    """sdpose-t: in the last layer, P = 256 visual tokens skip q, proj and the MLP (with their
    norms, mmcv convention) and are no longer queries in QK^T and AV."""
    dim, mlp, keypoints, patches = 192, 576, 17, 256
    tokens = keypoints + patches
    per_token = dim * dim + dim * dim + 2 * dim + dim * mlp + mlp * dim  # q, proj, norm, MLP
    attention = 2 * (tokens - keypoints) * tokens * dim
    saved = patches * per_token + attention
    info = model_info("sdpose-t")
    assert (info["gflops_with_attention"] - info["gflops_deployed"]) * 1e9 == pytest.approx(
        saved, abs=1
    )


@pytest.mark.parametrize("opset", [17, 23])
def test_attention_is_one_standard_op_from_opset_23(opset, tmp_path):
    model = build_model("sdpose-nano")
    info = export_onnx(model, tmp_path / "student.onnx", opset=opset, parity_batches=(1,))
    graph = onnx.load(info["path"])
    ops = collections.Counter(node.op_type for node in graph.graph.node)
    domains = {node.domain for node in graph.graph.node}
    assert domains <= {"", "ai.onnx"}  # standard operators only: any runtime may load it
    assert info["opset"] == opset and info["max_abs_diff"] <= 1e-4
    if opset >= 23:
        assert ops["Attention"] == model.config.depth and ops["Softmax"] == 0
        # no per-head split/merge: only the stem's and the readout's transposes remain
        assert ops["Transpose"] <= 2
    else:
        assert ops["Attention"] == 0 and ops["Softmax"] == model.config.depth
