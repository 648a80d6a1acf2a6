"""ONNX export of the one-cycle student: parity with PyTorch for every preset, one cycle only,
the input/output contract, and the model card."""

from __future__ import annotations

import collections
import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from sdpose.core.codecs import codec_for_model, codec_from_record
from sdpose.export.card import model_card
from sdpose.export.onnx import ExportError, _parity_diff, export_onnx
from sdpose.models import PRESETS, build_model
from sdpose.models.student import StudentGraph

pytestmark = pytest.mark.unit

SLOW_PRESETS = {"sdpose-b"}  # HRNet-W32: ~25 s to export and check on two busy cores


def realistic_weights(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Replace the tiny training-init weights (conv std 0.001) with O(1) activations, so
    parity is measured on heatmaps of a realistic size, not on near-zero outputs."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() > 1:
                fan_in = param[0].numel()
                param.copy_(torch.randn(param.shape, generator=generator) / math.sqrt(fan_in))
            elif name.endswith("weight"):
                param.copy_(1 + 0.1 * torch.rand(param.shape, generator=generator))
            else:
                param.copy_(0.1 * torch.rand(param.shape, generator=generator) - 0.05)
    return model.eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(preset, cycles) -> (model, ONNX path, export info), each exported once per module:
    an export costs seconds, and several tests look at the same file."""
    folder = tmp_path_factory.mktemp("onnx")
    cache = {}

    def export(preset: str, cycles: int | None = None, head: str | None = None):
        if (preset, cycles, head) not in cache:
            overrides = {"cycles": cycles} if cycles else {}
            overrides |= {"head": head} if head else {}
            model = realistic_weights(build_model(preset, **overrides))
            path = folder / f"{preset}-{cycles}{'-' + head if head else ''}.onnx"
            info = export_onnx(model, path, opset=23, atol=1e-4, parity_batches=(1,))
            cache[preset, cycles, head] = model, path, info
        return cache[preset, cycles, head]

    return export


@pytest.mark.parametrize(
    "preset",
    [pytest.param(p, marks=pytest.mark.slow) if p in SLOW_PRESETS else p for p in PRESETS],
)
def test_export_matches_pytorch_for_every_preset(preset, exported):
    model, path, info = exported(preset)
    graph = onnx.load(str(path))
    onnx.checker.check_model(graph, full_check=True)
    assert info["opset"] >= 17 and info["max_abs_diff"] <= 1e-4
    assert [i.name for i in graph.graph.input] == ["images"]
    name = "simcc" if model.config.head == "simcc" else "heatmaps"  # what the head predicts
    assert [o.name for o in graph.graph.output] == [name]
    # Dynamic batch: a batch size never seen at export still runs, and matches PyTorch.
    images = torch.randn(3, 3, *model.config.input_size, generator=torch.Generator().manual_seed(1))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (heatmaps,) = session.run([name], {"images": images.numpy()})
    with torch.no_grad():
        expected = model(images, cycles=1)[0].predictions.numpy()
    assert heatmaps.shape == (3, 17, *model.config.output_shape)
    assert expected.std() > 0.05  # the comparison is about real signal
    assert np.abs(heatmaps - expected).max() <= 1e-4


def _op_histogram(path) -> collections.Counter:
    return collections.Counter(node.op_type for node in onnx.load(str(path)).graph.node)


def test_sdpose_t_onnx_holds_one_cycle_whatever_the_training_cycles(exported):
    assert PRESETS["sdpose-t"].cycles == 3
    histograms = {cycles: _op_histogram(exported("sdpose-t", cycles)[1]) for cycles in (None, 1)}
    assert histograms[None] == histograms[1]
    # One pass of 6 layers: 6 LayerNorm pairs plus the heatmap head's, nothing cycled.
    depth = PRESETS["sdpose-t"].depth
    norms = histograms[None]["LayerNormalization"]
    assert 2 * depth <= norms <= 2 * depth + 2


def test_a_simcc_student_exports_its_logits_and_decodes_from_the_card(exported, tmp_path):
    model, path, info = exported("sdpose-nano", head="simcc")
    graph = onnx.load(str(path))
    (output,) = graph.graph.output
    dims = [d.dim_value or d.dim_param for d in output.type.tensor_type.shape.dim]
    assert output.name == "simcc" and dims[1:] == [17, 96 * 2 + 128 * 2]
    assert info["max_abs_diff"] <= 1e-4
    codec = codec_for_model(model.config)
    card = model_card(model, {}, "models/train/best.pt", None, tmp_path, info, codec)
    assert card["output"]["shape"] == ["N", 17, 448] and card["output"]["name"] == "simcc"
    assert codec_from_record(card["output"]["codec"]) == codec


def test_parity_check_catches_a_graph_of_another_model(exported):
    _, path, _ = exported("sdpose-nano")
    other = realistic_weights(build_model("sdpose-nano"), seed=1)
    images = torch.randn(1, 3, *other.config.input_size)
    message = r"nano-None\.onnx: ONNX \(as written\) and PyTorch outputs differ"
    with pytest.raises(ExportError, match=message):
        _parity_diff(StudentGraph(other), path, [images], atol=1e-4)


def test_model_card_states_origin_cost_and_contract(exported, tmp_path):
    model, _, info = exported("sdpose-nano")
    evaluation = {"student": {"AP": 0.42, "AP50": 0.8}}
    codec = codec_for_model(model.config)
    card = model_card(
        model, {"epoch": 7}, "models/train/best.pt", evaluation, tmp_path, info, codec
    )
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert card["params"] == trainable
    assert card["preset"] == "sdpose-nano" and card["training_cycles"] == 2
    assert card["exported_cycles"] == 1 and card["student_ap"] == 0.42
    assert card["epoch"] == 7 and card["source_checkpoint"] == "models/train/best.pt"
    assert card["input"]["shape"] == ["N", 3, 128, 96] and card["input"]["name"] == "images"
    assert card["output"]["shape"] == ["N", 17, 448] and card["output"]["name"] == "simcc"
    assert codec_from_record(card["output"]["codec"]) == codec  # what predict decodes with
    assert card["onnx"]["opset"] >= 17
    assert 0 < card["gflops"] < 1  # the nano student: about 0.15 GMACs
    # the shipped graph skips the last layer's unread visual tokens
    assert card["gflops"] < card["gflops_deployed"] < card["gflops_with_attention"]
    assert card["data_version"] is None  # no dvc.lock in tmp_path


def test_data_version_comes_from_the_dvc_lock(tmp_path):
    from sdpose.export.card import dvc_data_version

    assert dvc_data_version(tmp_path) is None
    (tmp_path / "dvc.lock").write_text(
        "schema: '2.0'\nstages:\n  crops:\n    cmd: sdpose crops\n    outs:\n"
        "    - path: data/crops\n      hash: md5\n      md5: 0123abcd.dir\n"
        "  train:\n    cmd: sdpose train\n    outs:\n    - path: models/train\n"
        "      hash: md5\n      md5: ffff.dir\n"
    )
    assert dvc_data_version(tmp_path) == {"data/crops": "0123abcd.dir"}


def test_exported_graph_has_no_patch_permute_and_a_fusable_gelu(exported):
    """The conv patch embedding and the fusable GELU reach the file (parity proves them exact)."""
    _, path, _ = exported("sdpose-nano")
    graph = onnx.load(str(path)).graph
    ranks = {
        len(attribute.ints)
        for node in graph.node
        if node.op_type == "Transpose"
        for attribute in node.attribute
    }
    assert max(ranks, default=0) <= 5  # no 6-D (N, C, gh, p1, gw, p2) patch permute
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(path.with_suffix(".optimized.onnx"))
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    fused = collections.Counter(
        n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node
    )
    assert fused["Erf"] == 0  # every GELU became one fused kernel
