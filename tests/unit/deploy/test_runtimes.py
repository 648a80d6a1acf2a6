"""The student's CPU runtimes: both run the exported file like PyTorch, the user's choice
is the one used, `auto` follows the model card, and a runtime that is not installed is an
error naming the extra (exit 2 from the CLI)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from shared import REPO

from sdpose.config import Params
from sdpose.deploy import runtimes
from sdpose.deploy.predict import onnx_runner
from sdpose.deploy.runtimes import (
    Runtime,
    RuntimeUnavailableError,
    installed_runtimes,
    open_session,
    require,
    resolve_runtime,
)
from sdpose.export.onnx import export_onnx
from sdpose.models import build_model

pytestmark = pytest.mark.unit

IMAGE = REPO.parent / "shared" / "fixtures" / "coco-val2017-sample" / "images" / "000000000785.jpg"


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    """(model, exported file, export info) of a seeded sdpose-nano."""
    torch.manual_seed(0)
    model = build_model("sdpose-nano").eval()
    path = tmp_path_factory.mktemp("runtimes") / "sdpose-student.onnx"
    return model, path, export_onnx(model, path, parity_batches=(1,))


@pytest.fixture
def openvino_absent(monkeypatch):
    """OpenVINO as if not installed: its entry names a module that does not exist."""
    absent = Runtime("openvino", "openvino_is_not_installed_here", "openvino")
    monkeypatch.setitem(runtimes.RUNTIMES, "openvino", absent)


def test_dev_installs_both_runtimes_and_export_checks_parity_on_each(student):
    _, _, info = student
    assert installed_runtimes() == ["onnxruntime", "openvino"]
    assert set(info["parity"]) == {"onnxruntime", "openvino"}
    assert max(info["parity"].values()) == info["max_abs_diff"] <= 1e-4


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_each_runtime_runs_the_file_like_pytorch(student, runtime):
    model, path, _ = student
    images = torch.randn(3, 3, *model.config.input_size, generator=torch.Generator().manual_seed(1))
    session = open_session(path, runtime, threads=1)
    with torch.no_grad():
        expected = model(images, cycles=1)[0].predictions.numpy()
    heatmaps = session.run(images.numpy())
    assert session.runtime == runtime
    assert session.input_shape == (None, 3, *model.config.input_size)
    assert session.output_shape == (None, 17, *model.config.output_shape)
    assert heatmaps.shape == expected.shape and expected.std() > 0.05
    assert np.abs(heatmaps - expected).max() <= 1e-4  # fp32, not OpenVINO's default bf16


def test_the_named_runtime_is_used_and_auto_follows_the_model_card(student, tmp_path):
    _, path, _ = student
    assert resolve_runtime("openvino", path) == "openvino"
    assert resolve_runtime("onnxruntime", path) == "onnxruntime"
    assert resolve_runtime("auto", path) == "onnxruntime"  # no card beside the file
    folder = tmp_path / "export"
    folder.mkdir()
    copy = folder / path.name
    copy.write_bytes(path.read_bytes())
    forms = {"fp32": {"file": copy.name, "runtime": "openvino"}}
    (folder / "model_card.json").write_text(json.dumps({"deploy": {"forms": forms}}))
    assert resolve_runtime("auto", copy) == "openvino"
    forms["fp32"]["runtime"] = "onnxruntime"
    (folder / "model_card.json").write_text(json.dumps({"deploy": {"forms": forms}}))
    assert resolve_runtime("auto", copy) == "onnxruntime"


def test_auto_falls_back_to_onnxruntime_when_the_card_names_an_absent_runtime(
    student, tmp_path, openvino_absent
):
    _, path, _ = student
    copy = tmp_path / path.name
    copy.write_bytes(path.read_bytes())
    forms = {"fp32": {"file": copy.name, "runtime": "openvino"}}
    (tmp_path / "model_card.json").write_text(json.dumps({"deploy": {"forms": forms}}))
    assert resolve_runtime("auto", copy) == "onnxruntime"


def test_a_runtime_that_is_not_installed_names_the_extra(openvino_absent, student):
    _, path, _ = student
    with pytest.raises(RuntimeUnavailableError, match=r"pip install 'sdpose\[openvino\]'"):
        require("openvino")
    with pytest.raises(RuntimeUnavailableError, match="not installed"):
        onnx_runner(path, "openvino")
    assert installed_runtimes() == ["onnxruntime"]
    with pytest.raises(RuntimeUnavailableError, match="unknown; choose one of"):
        require("tensorrt")


def test_predict_cli_exits_2_on_a_runtime_that_is_not_installed(
    openvino_absent, student, tmp_path, monkeypatch, capsys
):
    from sdpose.cli import main

    _, path, _ = student
    monkeypatch.chdir(tmp_path)
    argv = ["predict", str(IMAGE), "--model", str(path), "--out", "out", "--runtime"]
    assert main([*argv, "openvino"]) == 2
    assert "sdpose[openvino]" in capsys.readouterr().err
    assert main([*argv, "tensorrt"]) == 2
    assert "runtime 'tensorrt' is unknown" in capsys.readouterr().err
    assert not (tmp_path / "out" / "keypoints.json").exists()


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_predict_runs_on_the_runtime_it_is_given(student, tmp_path, runtime):
    from sdpose.deploy.predict import predict

    _, path, _ = student
    summary = predict([IMAGE], None, path, tmp_path / "out", Params(), tmp_path, runtime)
    assert summary["runtime"] == runtime
    assert len(json.loads(Path(summary["results"]).read_text())) == 1


def test_int8_flag_takes_the_file_beside_the_model_or_says_it_is_missing(student, tmp_path):
    from sdpose.deploy.predict import PredictError, resolve_model

    _, path, _ = student
    copy = tmp_path / path.name
    copy.write_bytes(path.read_bytes())
    with pytest.raises(PredictError, match=r"sdpose-student\.int8\.onnx: no int8 form beside"):
        resolve_model(copy, Params(), tmp_path, int8=True)
    (tmp_path / "sdpose-student.int8.onnx").write_bytes(path.read_bytes())
    assert (
        resolve_model(copy, Params(), tmp_path, int8=True) == tmp_path / "sdpose-student.int8.onnx"
    )
    assert resolve_model(copy, Params(), tmp_path) == copy
    with pytest.raises(PredictError, match="models:/sdpose-student@nobody"):
        resolve_model("models:/sdpose-student@nobody", Params(), tmp_path)
