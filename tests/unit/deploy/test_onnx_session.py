"""onnxruntime sessions of the student: the in-memory swap to contrib MultiHeadAttention is
exact, leaves the file alone, and touches no Attention node it cannot reproduce."""

from __future__ import annotations

import collections

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from sdpose.deploy.runtimes import cpu_session, with_contrib_attention
from sdpose.export.onnx import export_onnx
from sdpose.models import build_model

pytestmark = pytest.mark.unit


def _ops(model: onnx.ModelProto) -> collections.Counter:
    nodes = model.graph.node
    return collections.Counter((node.domain or "ai.onnx", node.op_type) for node in nodes)


@pytest.fixture(scope="module")
def student_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("session") / "student.onnx"
    export_onnx(build_model("sdpose-nano"), path, opset=23, parity_batches=(1,))
    return path


def test_swap_covers_every_layer_and_leaves_the_file_untouched(student_file):
    before = student_file.read_bytes()
    original = onnx.load(str(student_file))
    swapped = with_contrib_attention(original)
    depth = build_model("sdpose-nano").config.depth
    assert _ops(original)["ai.onnx", "Attention"] == depth
    assert _ops(swapped)["com.microsoft", "MultiHeadAttention"] == depth
    assert _ops(swapped)["ai.onnx", "Attention"] == 0
    assert _ops(original)["ai.onnx", "Attention"] == depth  # the input model is not mutated
    assert student_file.read_bytes() == before


def test_contrib_and_standard_sessions_agree(student_file):
    config = build_model("sdpose-nano").config
    images = torch.randn(3, 3, *config.input_size, generator=torch.Generator().manual_seed(2))
    images = images.numpy()
    standard, contrib = (
        cpu_session(student_file, threads=1, contrib_attention=contrib).run(
            None, {"images": images}
        )[0]
        for contrib in (False, True)
    )
    assert standard.shape == (3, 17, *config.output_shape)
    np.testing.assert_allclose(contrib, standard, rtol=0, atol=1e-5)


def _attention_graph(shape: list[int], **attributes) -> onnx.ModelProto:
    inputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape) for name in "qkv"]
    output = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    node = helper.make_node("Attention", ["q", "k", "v"], ["y"], **attributes)
    graph = helper.make_graph([node], "attention", inputs, [output])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)])


@pytest.mark.parametrize(
    "shape, attributes",
    [
        ([1, 2, 5, 4], {}),  # 4-D inputs: heads are already split
        ([1, 5, 8], {"q_num_heads": 2, "kv_num_heads": 2, "is_causal": 1}),
        ([1, 5, 8], {"q_num_heads": 2, "kv_num_heads": 2, "scale": 0.5}),
        ([1, 5, 8], {"q_num_heads": 4, "kv_num_heads": 2}),  # grouped-query attention
    ],
)
def test_attention_it_cannot_reproduce_is_left_alone(shape, attributes):
    model = _attention_graph(shape, **attributes)
    assert _ops(with_contrib_attention(model)) == _ops(model)


def test_plain_merged_head_attention_is_swapped_and_exact():
    model = _attention_graph([2, 5, 8], q_num_heads=2, kv_num_heads=2)
    swapped = with_contrib_attention(model)
    assert _ops(swapped) == {("com.microsoft", "MultiHeadAttention"): 1}
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    feed = {name: rng.standard_normal((2, 5, 8)).astype(np.float32) for name in "qkv"}
    results = [
        ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(
            None, feed
        )[0]
        for m in (model, swapped)
    ]
    np.testing.assert_allclose(results[1], results[0], rtol=0, atol=1e-6)
