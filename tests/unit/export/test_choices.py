"""What the export decides about the files it ships, without running them: which runtime
a form deploys on, and whether the int8 file ships (the verdict the registry stores)."""

from __future__ import annotations

from pathlib import Path

import pytest
from shared import REPO

from sdpose.config import ConfigError, Params, load_params
from sdpose.deploy.registry import NO_INT8
from sdpose.export.int8_gate import int8_refusal, int8_verdict
from sdpose.export.latency import choose_runtime, fastest

pytestmark = pytest.mark.unit


def test_auto_picks_the_faster_runtime_and_a_named_one_wins_even_if_slower():
    measured = {
        "onnxruntime": {"batch1": 2.0, "batch8": 10.0},
        "openvino": {"batch1": 2.5, "batch8": 8.0},
    }
    assert fastest(measured) == "openvino"  # 10.5 ms against 12.0 ms
    assert choose_runtime("auto", measured) == "openvino"
    assert choose_runtime("onnxruntime", measured) == "onnxruntime"


def test_export_params_are_validated_and_params_yaml_states_the_defaults(tmp_path):
    export = load_params(REPO / "params.yaml").export
    assert (export.runtime, export.int8_max_ap_drop, export.int8_rtol) == ("auto", 0.005, 0.1)
    assert export.calibration_samples == Params().export.calibration_samples == 256
    for bad, key in (
        ("export.runtime=tensorrt", r"export\.runtime"),
        ("export.int8_max_ap_drop=1.5", r"export\.int8_max_ap_drop"),
        ("export.int8_rtol=0", r"export\.int8_rtol"),
        ("export.calibration_samples=0", r"export\.calibration_samples"),
    ):
        with pytest.raises(ConfigError, match=key):
            load_params(tmp_path / "absent.yaml", [bad])


def test_int8_gate_says_by_how_much_a_file_missed():
    strict = Params()  # int8_max_ap_drop 0.005, int8_rtol 0.1
    assert int8_refusal(strict, 0.420, 0.416, 0.03) is None  # 0.004 below: within
    assert int8_refusal(strict, 0.420, 0.415, 0.1) is None  # exactly at both limits
    reason = int8_refusal(strict, 0.420, 0.400, 0.03)
    assert reason == (
        "int8 AP 0.4000 is 0.0200 below fp32 0.4200, 0.0150 more than export.int8_max_ap_drop 0.005"
    )
    reason = int8_refusal(strict, 0.420, 0.420, 0.25)
    assert reason == (
        "int8 outputs differ from PyTorch's by 0.25 of their peak, 0.15 more than "
        "export.int8_rtol 0.1"
    )
    loose = Params.model_validate({"export": {"int8_max_ap_drop": 0.05}})
    assert int8_refusal(loose, 0.420, 0.400, 0.03) is None


def test_the_verdict_carries_the_file_its_ap_and_why_to_the_registry():
    path = Path("models/export/sdpose-student.int8.onnx")
    refused = int8_verdict(Params(), path, fp32_ap=0.42, int8_ap=0.40, heatmap_gap=0.03)
    assert not refused.registered and (refused.path, refused.ap) == (path, 0.40)
    assert refused.reason == "not registered: " + int8_refusal(Params(), 0.42, 0.40, 0.03)
    assert refused.record() == {"registered": False, "reason": refused.reason}
    loose = Params.model_validate({"export": {"int8_max_ap_drop": 0.05}})
    passed = int8_verdict(loose, path, fp32_ap=0.42, int8_ap=0.40, heatmap_gap=0.03)
    assert passed.registered and passed.reason == (
        "registered (AP 0.4000, 0.0200 below fp32 0.4200; export.int8_max_ap_drop 0.05)"
    )
    too_far = int8_verdict(loose, path, fp32_ap=0.42, int8_ap=0.42, heatmap_gap=0.5)
    assert not too_far.registered and "export.int8_rtol" in too_far.reason
    assert not NO_INT8.registered and NO_INT8.path is None and NO_INT8.ap is None
