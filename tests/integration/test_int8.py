"""The int8 student on real crops (the tiny synthetic dataset through prepare and crops):
the QDQ file, its heatmaps on both runtimes, the export stage's record of both forms, and
the registration gate of the int8 file in MLflow on SQLite."""

from __future__ import annotations

import collections
import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from sdpose.core.codecs import codec_for_model
from sdpose.core.paths import INT8_NAME
from sdpose.deploy import registry
from sdpose.deploy.runtimes import open_session
from sdpose.evaluation.valset import val_batches
from sdpose.export import stage as export
from sdpose.export.onnx import export_onnx
from sdpose.export.quantize import (
    calibration_images,
    overlapping_strided,
    quantize_student,
)
from sdpose.models import build_model
from sdpose.models.checkpoint import save_checkpoint

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

RUNTIMES = ("onnxruntime", "openvino")
# Measured max |int8 - fp32| / fp32 peak on these crops for a seeded sdpose-nano: heatmaps
# 0.027 (onnxruntime) and 0.030 (OpenVINO), O(1) weights 0.030-0.035; SimCC logits 0.042
# and 0.043.
HEATMAP_GAP = 0.08


def digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def quantized(tiny_dataset, tmp_path_factory):
    """(model, fp32 file, int8 file, quantize info, val crops) of a seeded sdpose-nano."""
    torch.manual_seed(0)
    model = build_model("sdpose-nano").eval()
    folder = tmp_path_factory.mktemp("int8")
    fp32 = folder / "sdpose-student.onnx"
    export_onnx(model, fp32, parity_batches=(1,))
    codec = codec_for_model(model.config)
    info = quantize_student(fp32, folder / INT8_NAME, calibration_images(tiny_dataset, codec, 20))
    val = next(val_batches(tiny_dataset, "val", codec))["images"].numpy()
    return model, fp32, folder / INT8_NAME, info, val


def test_the_int8_file_is_qdq_calibrated_on_the_asked_number_of_training_crops(quantized):
    _, _, int8, info, _ = quantized
    ops = collections.Counter(node.op_type for node in onnx.load(str(int8)).graph.node)
    assert int8.is_file() and info["path"] == str(int8)
    assert ops["QuantizeLinear"] > 0 and ops["DequantizeLinear"] > ops["QuantizeLinear"]
    assert info["quantized_nodes"] == ops["QuantizeLinear"]
    assert info["calibration_samples"] == 20  # of the fixture's 35 train crops
    weights = {init.name: init for init in onnx.load(str(int8)).graph.initializer}
    assert any(w.data_type == onnx.TensorProto.INT8 for w in weights.values())


def test_conv_weights_are_constant_int8_but_the_strided_stem_and_only_stem_adds_quantized(
    quantized,
):
    """The patch embedding's weight is a Reshape of an initializer in the fp32 file: unfolded,
    the quantizer took it for an activation and OpenVINO re-made it in fp32 on every call."""
    _, _, int8, _, _ = quantized
    graph = onnx.shape_inference.infer_shapes(onnx.load(str(int8))).graph
    int8_weights = {i.name for i in graph.initializer if i.data_type == onnx.TensorProto.INT8}
    producer = {output: node for node in graph.node for output in node.output}
    rank = {v.name: len(v.type.tensor_type.shape.dim) for v in [*graph.value_info, *graph.output]}
    convs = [node for node in graph.node if node.op_type == "Conv"]
    strided = [conv for conv in convs if overlapping_strided(conv)]
    assert len(strided) == 2  # the stem's two 3x3 stride-2 convolutions stay fp32 ...
    assert all(conv.input[1] in {i.name for i in graph.initializer} for conv in strided)
    assert all(  # ... every other one takes a constant int8 weight
        producer[conv.input[1]].op_type == "DequantizeLinear"
        and producer[conv.input[1]].input[0] in int8_weights
        for conv in convs
        if conv not in strided
    )

    def quantized_inputs(node: onnx.NodeProto) -> bool:
        return all(producer.get(name, node).op_type == "DequantizeLinear" for name in node.input)

    adds = [node for node in graph.node if node.op_type == "Add"]
    quantized_ranks = {rank[add.output[0]] for add in adds if quantized_inputs(add)}
    plain_ranks = {rank[add.output[0]] for add in adds if not quantized_inputs(add)}
    assert quantized_ranks == {4}  # the stem's residual adds run in int8 ...
    assert 3 in plain_ranks and 4 not in plain_ranks  # ... the token stream's stay fp32


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_int8_outputs_stay_close_to_fp32_on_real_crops(quantized, runtime):
    model, fp32, int8, _, val = quantized
    reference = open_session(fp32, runtime).run(val)
    outputs = open_session(int8, runtime).run(val)
    expected = (len(val), 17, *codec_for_model(model.config).output_shape)
    assert outputs.shape == reference.shape == expected
    gap = np.abs(outputs - reference).max() / np.abs(reference).max()
    assert 0 < gap <= HEATMAP_GAP  # not 0: the file really runs integer arithmetic


def test_no_calibration_crops_is_an_error_not_a_garbage_file(quantized, tmp_path):
    _, fp32, _, _, _ = quantized
    with pytest.raises(ValueError, match="no calibration images"):
        quantize_student(fp32, tmp_path / INT8_NAME, [])
    assert not (tmp_path / INT8_NAME).exists()


def write_eval(workdir: Path, ap: float) -> None:
    path = workdir / "metrics" / "eval.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    models = {"train": {"student": {"AP": ap, "AP50": ap}}}
    path.write_text(json.dumps({"val_set": "tiny", "models": models}))


def test_export_scores_both_forms_and_registers_the_int8_file_only_through_its_gate(
    train_workdir, tiny_params
):
    torch.manual_seed(0)
    params = tiny_params(train_workdir)
    save_checkpoint(train_workdir / "models/train/best.pt", build_model("sdpose-nano"), epoch=1)
    write_eval(train_workdir, 0.1)
    summary = export.run(params, train_workdir)
    folder = train_workdir / "models" / "export"
    card = json.loads((folder / "model_card.json").read_text())
    forms = card["deploy"]["forms"]
    assert set(forms) == {"fp32", "int8"} and (folder / INT8_NAME).is_file()
    for form in forms.values():
        assert set(form["latency_ms"]) == set(RUNTIMES) and form["runtime"] in RUNTIMES
        assert all(ms > 0 for measured in form["latency_ms"].values() for ms in measured.values())
        assert 0 <= form["ap"] <= 1
    assert set(card["onnx"]["parity"]) == set(RUNTIMES)
    int8 = forms["int8"]
    assert int8["ap_drop"] == pytest.approx(forms["fp32"]["ap"] - int8["ap"])
    assert int8["gate"] == "passed" and 0 < max(int8["heatmap_gap"].values()) <= HEATMAP_GAP
    outcome = summary["registry"]
    assert outcome["int8"]["registered"] and outcome["int8"]["reason"].startswith("registered")
    version = outcome["version"]
    fetched = registry.load_onnx(params, train_workdir, version, form="int8")
    assert digest(fetched) == digest(folder / INT8_NAME)
    row = registry.list_versions(params, train_workdir)[0]
    assert row["int8"] == "registered" and row["int8_ap"] == pytest.approx(int8["ap"])

    # A heatmap tolerance the file cannot meet: exported, recorded, not registered.
    strict = tiny_params(train_workdir, {"export.int8_rtol": 1e-6})
    summary = export.run(strict, train_workdir)
    refused = summary["registry"]["int8"]
    assert not refused["registered"]
    assert "more than export.int8_rtol 1e-06" in refused["reason"]
    card = json.loads((folder / "model_card.json").read_text())
    assert "export.int8_rtol" in card["deploy"]["forms"]["int8"]["gate"]
    with pytest.raises(registry.RegistryError, match="int8: not registered"):
        registry.load_onnx(strict, train_workdir, summary["registry"]["version"], form="int8")
