"""The MLflow registry on a real SQLite store: the champion alias moves only on improvement,
and `models:/sdpose-student@champion` gives back the champion's ONNX file."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from shared import SHARED

from sdpose.config import Params
from sdpose.core.codecs import codec_for_model
from sdpose.core.presets import resolve_model_config
from sdpose.deploy import registry
from sdpose.export.int8_gate import int8_verdict
from sdpose.export.onnx import export_onnx, output_name
from sdpose.mlflow_store import tracking_uri
from sdpose.models import build_model

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def students(tmp_path_factory) -> list[Path]:
    """Two real exported students with different weights (told apart by their output)."""
    folder = tmp_path_factory.mktemp("students")
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        path = folder / f"seed{seed}" / "sdpose-student.onnx"
        export_onnx(build_model("sdpose-nano"), path, parity_batches=(1,))
        paths.append(path)
    return paths


def register(
    workdir: Path,
    onnx: Path,
    ap: float,
    val_set: str = "val-A",
    params: Params | None = None,
    **kwargs,
) -> dict:
    card = {"preset": "sdpose-nano", "cycles": 2, "params": 1, "gflops": 0.15}
    return registry.register_student(
        params or Params(), workdir, onnx, card, {"student_ap": ap}, val_set, **kwargs
    )


def digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_champion_moves_only_when_a_version_beats_it(students, tmp_path, monkeypatch):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the relative SQLite path must follow the workdir, not cwd
    workdir = tmp_path / "project"
    first, other = students

    assert register(workdir, first, 0.50)["champion"]  # the first version takes the slot
    worse = register(workdir, other, 0.40)
    tie = register(workdir, other, 0.50)
    assert not worse["champion"] and not tie["champion"]
    assert worse["previous_champion"] == 1 and worse["previous_champion_ap"] == 0.50
    assert digest(registry.load_onnx(Params(), workdir, "models:/sdpose-student@champion")) == (
        digest(first)
    )

    better = register(workdir, other, 0.61)
    assert better["champion"] and better["version"] == 4
    rows = registry.list_versions(Params(), workdir)
    assert [row["version"] for row in rows] == [4, 3, 2, 1]
    assert [row["champion"] for row in rows] == [True, False, False, False]
    assert [row["student_ap"] for row in rows] == [0.61, 0.50, 0.40, 0.50]
    assert (workdir / "mlruns.db").is_file() and not (elsewhere / "mlruns.db").exists()
    assert (workdir / "mlartifacts").is_dir()


def test_champion_loads_by_alias_through_mlflow(students, tmp_path, monkeypatch):
    import mlflow.artifacts

    workdir = tmp_path
    register(workdir, students[0], 0.3)
    register(workdir, students[1], 0.7)
    ours = registry.load_onnx(Params(), workdir, "models:/sdpose-student@champion")
    assert digest(ours) == digest(students[1])
    # MLflow's own resolution of the URI finds the same file (it reads the registry URI
    # from the environment, whatever registry_uri says).
    uri = tracking_uri(Params(), workdir)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", uri)
    folder = mlflow.artifacts.download_artifacts(
        artifact_uri="models:/sdpose-student@champion", dst_path=str(tmp_path / "download")
    )
    downloaded = Path(folder) / "sdpose-student.onnx"
    assert digest(downloaded) == digest(students[1])
    card = json.loads((Path(folder) / "model_card.json").read_text())
    assert card["preset"] == "sdpose-nano"
    session = ort.InferenceSession(str(downloaded), providers=["CPUExecutionProvider"])
    config = resolve_model_config("sdpose-nano")  # the preset's sizes, whatever they are
    images = np.zeros((2, 3, *config.input_size), dtype=np.float32)
    outputs = session.run([output_name(config)], {"images": images})[0]
    assert outputs.shape == (2, 17, *codec_for_model(config).output_shape)
    assert digest(registry.load_onnx(Params(), workdir, "models:/sdpose-student/1")) == digest(
        students[0]
    )
    with pytest.raises(registry.RegistryError, match="models:/sdpose-student@nobody"):
        registry.load_onnx(Params(), workdir, "models:/sdpose-student@nobody")


def test_a_champion_from_another_val_set_is_re_measured_before_it_is_compared(students, tmp_path):
    register(tmp_path, students[0], 0.9, val_set="val-A")
    # Higher AP on other data proves nothing: without a way to re-measure, the champion stays.
    assert not register(tmp_path, students[1], 0.95, val_set="val-B")["champion"]
    # The export asks which file to re-measure, scores it on val-B, and passes the score.
    version, champion_onnx = registry.champion_to_rescore(Params(), tmp_path, 0.8, "val-B")
    assert version == 1 and digest(champion_onnx) == digest(students[0])
    assert registry.champion_to_rescore(Params(), tmp_path, 0.8, "val-A") is None  # same data
    stale = registry.ChampionScore(version=7, ap=0.1)  # a score of another version: ignored
    assert not register(tmp_path, students[1], 0.8, val_set="val-B", champion_score=stale)[
        "champion"
    ]
    score = registry.ChampionScore(version, 0.7)  # the champion's AP on val-B
    outcome = register(tmp_path, students[1], 0.8, val_set="val-B", champion_score=score)
    assert outcome["champion"] and outcome["previous_champion_ap"] == 0.7
    outcome = register(tmp_path, students[0], 0.75, val_set="val-B")  # same val set now
    assert not outcome["champion"] and outcome["previous_champion_ap"] == 0.8


def test_a_student_below_min_ap_is_registered_but_never_becomes_the_champion(
    students, tmp_path, monkeypatch, capsys
):
    from sdpose.cli import main

    # An empty slot is no excuse: a near-zero student stays out of it.
    outcome = register(tmp_path, students[0], 0.0)
    assert not outcome["champion"] and outcome["version"] == 1
    assert outcome["previous_champion"] is None
    assert outcome["reason"] == (
        "student AP 0.0000 is below registry.min_ap 0.05: registered, not champion"
    )
    assert registry.current_champion(Params(), tmp_path) is None
    with pytest.raises(registry.RegistryError, match="@champion"):
        registry.load_onnx(Params(), tmp_path, "models:/sdpose-student@champion")
    assert not register(tmp_path, students[0], 0.049)["champion"]  # just below still fails

    # The first student above the gate takes the empty slot.
    outcome = register(tmp_path, students[1], 0.30)
    assert outcome["champion"] and outcome["version"] == 3
    assert outcome["previous_champion"] is None
    assert digest(registry.load_onnx(Params(), tmp_path, "models:/sdpose-student@champion")) == (
        digest(students[1])
    )

    # With a champion in place the gate still holds, even for a student that beats it.
    strict = Params.model_validate({"registry": {"min_ap": 0.6}})
    outcome = register(tmp_path, students[0], 0.5, params=strict)
    assert not outcome["champion"] and outcome["previous_champion"] == 3
    assert "below registry.min_ap 0.6" in outcome["reason"]
    assert int(registry.current_champion(Params(), tmp_path).version) == 3

    rows = registry.list_versions(Params(), tmp_path)
    assert [row["version"] for row in rows] == [4, 3, 2, 1]
    assert [row["champion"] for row in rows] == [False, True, False, False]
    assert [row["not_champion"] for row in rows] == [
        "below registry.min_ap 0.6",
        None,
        "below registry.min_ap 0.05",
        "below registry.min_ap 0.05",
    ]

    monkeypatch.chdir(tmp_path)  # `sdpose registry list` reads the registry of the cwd
    assert main(["registry", "list"]) == 0  # no ./params.yaml: the defaults
    lines = dict(line.split(" ", 1) for line in capsys.readouterr().out.splitlines())
    assert lines["v4"].endswith("  (not champion: below registry.min_ap 0.6)")
    assert lines["v3"].endswith("  <- champion")
    assert lines["v1"].endswith("  (not champion: below registry.min_ap 0.05)")
    assert "0.0000" in lines["v1"]


def test_an_out_of_range_min_ap_is_a_config_error_naming_the_key(tmp_path, monkeypatch, capsys):
    from sdpose.cli import main
    from sdpose.config import ConfigError, load_params

    with pytest.raises(ConfigError, match=r"registry\.min_ap"):
        load_params(tmp_path / "absent.yaml", ["registry.min_ap=2"])
    monkeypatch.chdir(tmp_path)
    assert main(["registry", "list", "--set", "registry.min_ap=2"]) == 2
    assert "registry.min_ap" in capsys.readouterr().err
    assert not (tmp_path / "mlruns.db").exists()  # refused before the registry was opened


def test_predict_takes_a_registry_uri(students, tmp_path):
    from sdpose.deploy.predict import predict

    register(tmp_path, students[0], 0.5)
    image = SHARED / "fixtures"
    image = image / "coco-val2017-sample" / "images" / "000000000785.jpg"
    summary = predict(
        [image], None, "models:/sdpose-student@champion", tmp_path / "out", Params(), tmp_path
    )
    assert digest(summary["model"]) == digest(students[0])
    assert len(json.loads(Path(summary["results"]).read_text())) == 1


def write_eval(workdir: Path, aps: dict[str, float], val_set: str = "val-A") -> None:
    models = {name: {"student": {"AP": ap, "AP50": ap}} for name, ap in aps.items()}
    path = workdir / "metrics" / "eval.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"val_set": val_set, "models": models}))


def test_export_stage_registers_and_a_regression_never_takes_the_champion(tmp_path):
    from sdpose.export import stage as export
    from sdpose.models.checkpoint import save_checkpoint

    torch.manual_seed(0)
    params = Params().to_dict()
    save_checkpoint(
        tmp_path / "models/train/best.pt", build_model("sdpose-nano"), epoch=3, params=params
    )
    write_eval(tmp_path, {"train": 0.40})
    summary = export.run(Params(), tmp_path)
    card = json.loads((tmp_path / "models/export/model_card.json").read_text())
    assert summary["registry"]["champion"] and summary["registry"]["version"] == 1
    assert card["student_ap"] == 0.40 and card["source_checkpoint"] == "models/train/best.pt"
    assert card["epoch"] == 3 and card["exported_cycles"] == 1
    assert card["training_params"] == {"model": params["model"], "train": params["train"]}

    # A tuned model that evaluates better is the one exported, and it takes the slot.
    save_checkpoint(tmp_path / "models/tune/best.pt", build_model("sdpose-nano", dim=32))
    write_eval(tmp_path, {"train": 0.40, "tune": 0.45})
    summary = export.run(Params(), tmp_path)
    assert summary["registry"]["champion"] and summary["registry"]["version"] == 2
    assert (
        json.loads((tmp_path / "models/export/model_card.json").read_text())["architecture"]["dim"]
        == 32
    )

    # A regression is registered (its record is kept) but the champion stays.
    (tmp_path / "models/tune/best.pt").unlink()
    write_eval(tmp_path, {"train": 0.30})
    summary = export.run(Params(), tmp_path)
    assert not summary["registry"]["champion"] and summary["registry"]["version"] == 3
    rows = registry.list_versions(Params(), tmp_path)
    assert [row["version"] for row in rows if row["champion"]] == [2]


@pytest.fixture(scope="module")
def int8_student(students, tmp_path_factory) -> Path:
    """A real int8 (QDQ) form of the first student, calibrated on random inputs."""
    from sdpose.core.paths import INT8_NAME
    from sdpose.export.quantize import quantize_student

    config = resolve_model_config("sdpose-nano")
    rng = np.random.default_rng(0)
    batches = [rng.standard_normal((8, 3, *config.input_size), dtype=np.float32)]
    path = tmp_path_factory.mktemp("int8") / INT8_NAME
    quantize_student(students[0], path, batches)
    return path


def test_the_int8_file_is_registered_with_its_version_only_within_the_ap_drop(
    students, int8_student, tmp_path
):
    # 0.4000 against fp32 0.4200: 0.02 down, over the default 0.005 and within 0.05.
    refused = register(
        tmp_path,
        students[0],
        0.42,
        int8=int8_verdict(Params(), int8_student, fp32_ap=0.42, int8_ap=0.40, heatmap_gap=0.03),
    )
    assert not refused["int8"]["registered"]
    assert refused["int8"]["reason"] == (
        "not registered: int8 AP 0.4000 is 0.0200 below fp32 0.4200, 0.0150 more than "
        "export.int8_max_ap_drop 0.005"
    )
    with pytest.raises(registry.RegistryError, match=r"int8: not registered: int8 AP 0\.4000"):
        registry.load_onnx(Params(), tmp_path, refused["version"], form="int8")
    assert digest(registry.load_onnx(Params(), tmp_path, refused["version"])) == digest(
        students[0]
    )  # the fp32 student is registered all the same

    loose = Params.model_validate({"export": {"int8_max_ap_drop": 0.05}})
    passed = register(
        tmp_path,
        students[0],
        0.42,
        params=loose,
        int8=int8_verdict(loose, int8_student, fp32_ap=0.42, int8_ap=0.40, heatmap_gap=0.03),
    )
    assert passed["int8"]["registered"] and passed["version"] == refused["version"] + 1
    uri = f"models:/sdpose-student/{passed['version']}"
    fetched = registry.load_onnx(loose, tmp_path, uri, form="int8")
    assert digest(fetched) == digest(int8_student) and fetched.parent.name == "model"
    rows = {row["version"]: row for row in registry.list_versions(loose, tmp_path)}
    assert rows[passed["version"]]["int8"] == "registered"
    assert rows[passed["version"]]["int8_ap"] == 0.40
    assert rows[refused["version"]]["int8"].startswith("not registered: int8 AP 0.4000")
    without = register(tmp_path, students[1], 0.30)  # an export that built no int8 form
    assert without["int8"] == {"registered": False, "reason": "no int8 form was built"}
