"""Bad input never runs silently or crashes (issue 14): exit 2 with a message naming the
file, record or key, or a loud warning; never a traceback, never advice to load unsafely."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from shared import COCO_SAMPLE

from sdpose.config import ConfigError, Params, load_params
from sdpose.data.coco import check_annotation
from sdpose.data.prepare import prepare_split

pytestmark = pytest.mark.unit

SAMPLE = COCO_SAMPLE
ANNOTATIONS = SAMPLE / "person_keypoints_val2017_sample.json"
COCO_SET = ["--set", "data.source=coco", "--set", "data.root=coco"]


def sdpose(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The CLI as a user runs it, in `cwd` (no params.yaml there unless a test writes one)."""
    return subprocess.run(
        [sys.executable, "-m", "sdpose.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )


def assert_bad_input(result: subprocess.CompletedProcess, *names: str) -> None:
    """Exit 2, no traceback, and every name (file, record, key) in the message."""
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    for name in names:
        assert name in result.stderr, (name, result.stderr)


def coco_tree(root: Path, splits: tuple[str, ...] = ("train", "val")) -> Path:
    """root/coco: the real sample as both splits' annotations; images only for `splits`."""
    coco = root / "coco"
    (coco / "annotations").mkdir(parents=True)
    for split in ("train", "val"):
        shutil.copy(ANNOTATIONS, coco / "annotations" / f"person_keypoints_{split}2017.json")
    for split in splits:
        shutil.copytree(SAMPLE / "images", coco / f"{split}2017")
    return coco


# ---------------------------------------------------------------- 1, 3, 4: --params
def test_mistyped_params_path_is_exit_2_naming_it(tmp_path):
    assert_bad_input(
        sdpose("config", "show", "--params", "does-not-exist.yaml", cwd=tmp_path),
        "does-not-exist.yaml",
        "not found",
    )


def test_only_the_implicit_params_yaml_falls_back_and_says_so(tmp_path):
    result = sdpose("config", "show", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "params.yaml" in result.stderr and "defaults" in result.stderr
    (tmp_path / "params.yaml").write_text("train:\n  epochs: 3\n")
    result = sdpose("config", "show", cwd=tmp_path)
    assert result.returncode == 0 and "defaults" not in result.stderr
    assert "epochs: 3" in result.stdout


def test_params_naming_a_directory_is_exit_2_naming_it(tmp_path):
    (tmp_path / "conf").mkdir()
    assert_bad_input(
        sdpose("config", "show", "--params", "conf", cwd=tmp_path), "conf", "directory"
    )


def test_params_not_utf8_names_the_file(tmp_path):
    (tmp_path / "latin1.yaml").write_bytes("train:\n  seed: 1  # caf\xe9\n".encode("latin-1"))
    assert_bad_input(
        sdpose("config", "show", "--params", "latin1.yaml", cwd=tmp_path),
        "latin1.yaml",
        "UTF-8",
    )


def test_load_params_missing_file_is_an_error_unless_allowed(tmp_path):
    with pytest.raises(ConfigError, match="absent.yaml: parameter file not found"):
        load_params(tmp_path / "absent.yaml", missing_ok=False)
    assert load_params(tmp_path / "absent.yaml") == Params()


# ---------------------------------------------------------------- 6: strict counts/flags
def test_boolean_for_a_count_is_a_parameter_error(tmp_path):
    assert_bad_input(
        sdpose("config", "show", "--set", "train.epochs=true", cwd=tmp_path), "train.epochs"
    )


@pytest.mark.parametrize(
    "override, key",
    [
        ("train.epochs=true", "train.epochs"),
        ("train.seed=false", "train.seed"),
        ("train.amp=1", "train.amp"),
        ("train.lr_steps=[true]", "train.lr_steps"),
        ("model.cycles=true", "model.cycles"),
        ("data.strict=0", "data.strict"),
        ("ray.num_workers=true", "ray.num_workers"),
    ],
)
def test_counts_and_flags_are_strict(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_params(Path("absent.yaml"), [override])


def test_yaml_ints_and_bools_still_work_and_floats_take_ints(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  epochs: 3\n  amp: false\n  lr: 1\nmodel:\n  cycles: 2\n")
    params = load_params(path, ["train.batch_size=8", "data.strict=yes"])
    assert (params.train.epochs, params.train.amp, params.train.batch_size) == (3, False, 8)
    assert params.train.lr == 1.0 and isinstance(params.train.lr, float)
    assert params.model.cycles == 2 and params.data.strict is True


# ---------------------------------------------------------------- 2, 5: prepare
def test_prepare_with_a_missing_image_folder_is_exit_2_naming_it(tmp_path):
    coco_tree(tmp_path, splits=("val",))
    assert_bad_input(sdpose("prepare", *COCO_SET, cwd=tmp_path), "train2017", "not found")
    assert not (tmp_path / "data" / "prepared").exists()


def test_prepare_split_with_no_surviving_instance_is_exit_2(tmp_path):
    coco_tree(tmp_path, splits=("val",))
    (tmp_path / "coco" / "train2017").mkdir()  # there, but empty
    assert_bad_input(
        sdpose("prepare", *COCO_SET, cwd=tmp_path),
        "person_keypoints_train2017.json",
        "train2017",
        "missing_image",
    )


def test_prepare_split_losing_most_records_says_so_loudly(tmp_path):
    coco = coco_tree(tmp_path, splits=("val",))
    (coco / "train2017").mkdir()
    shutil.copy(SAMPLE / "images" / "000000000785.jpg", coco / "train2017")
    result = sdpose("prepare", *COCO_SET, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "WARNING" in result.stderr and "split train lost 11 of 12" in result.stderr
    report = json.loads((tmp_path / "data" / "prepared" / "report.json").read_text())
    assert report["splits"]["train"]["warnings"] and "warnings" not in report["splits"]["val"]


def test_prepare_removes_staging_folders_of_killed_runs(tmp_path):
    coco_tree(tmp_path)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # reaped: its pid names no process now
    stale = tmp_path / "data" / f".prepared.tmp-{dead.pid}"
    live = tmp_path / "data" / f".prepared.tmp-{os.getpid()}"  # a run still going
    for folder in (stale, live):
        folder.mkdir(parents=True)
        (folder / "train.parquet").write_bytes(b"half")
    result = sdpose("prepare", *COCO_SET, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert not stale.exists() and live.exists()
    assert (tmp_path / "data" / "prepared" / "train.parquet").is_file()


# ---------------------------------------------------------------- 6: iscrowd
@pytest.mark.parametrize("value", ["no", 2, True, None])
def test_iscrowd_other_than_0_or_1_is_a_bad_record(value):
    data = json.loads(ANNOTATIONS.read_text())
    images = {image["id"]: image for image in data["images"]}
    ann = {**data["annotations"][0], "iscrowd": value}
    issue = check_annotation(ann, 0, images, 1)
    assert issue is not None and issue.reason == "malformed"
    assert "'iscrowd' must be 0 or 1" in issue.detail and str(ann["id"]) in issue.detail


def test_prepare_reports_a_bad_iscrowd_as_malformed_not_crowd(tmp_path):
    data = json.loads(ANNOTATIONS.read_text())
    data["annotations"][0]["iscrowd"] = "no"
    path = tmp_path / "annotations.json"
    path.write_text(json.dumps(data))
    result = prepare_split(path, SAMPLE / "images", "val")
    assert "crowd" not in result.report["skipped"]
    assert result.report["skipped"]["malformed"]["ids"] == [data["annotations"][0]["id"]]
    with pytest.raises(ValueError, match=r"iscrowd.*strict mode"):
        prepare_split(path, SAMPLE / "images", "val", strict=True)


# ---------------------------------------------------------------- 3, 6: coco-eval
def _results(keypoints: list, score: object = 0.9, **extra: object) -> list[dict]:
    image_id = json.loads(ANNOTATIONS.read_text())["images"][0]["id"]
    return [{"image_id": image_id, "category_id": 1, "keypoints": keypoints, "score": score}
            | extra]  # fmt: skip


@pytest.mark.parametrize(
    "results",
    [_results([True] * 51), _results([1.0] * 51, score=True), _results(["1.5"] * 51)],
    ids=["boolean-keypoints", "boolean-score", "text-keypoints"],
)
def test_coco_eval_with_non_number_keypoints_is_exit_2(tmp_path, results):
    (tmp_path / "res.json").write_text(json.dumps(results))
    assert_bad_input(
        sdpose("coco-eval", str(ANNOTATIONS), "res.json", cwd=tmp_path), "res.json", "record 0"
    )


def test_coco_eval_says_how_many_non_person_results_it_ignored(tmp_path):
    results = _results([1.0] * 51) + _results([1.0] * 51, category_id=2)
    results += _results([1.0] * 51, category_id=[1])  # not even a number: still no crash
    (tmp_path / "res.json").write_text(json.dumps(results))
    result = sdpose("coco-eval", str(ANNOTATIONS), "res.json", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "ignored 2 result(s)" in result.stderr and "not person" in result.stderr
    assert set(json.loads(result.stdout)) >= {"AP", "AR"}


def test_coco_eval_ground_truth_with_bad_iscrowd_is_exit_2(tmp_path):
    data = json.loads(ANNOTATIONS.read_text())
    data["annotations"][1]["iscrowd"] = "no"
    (tmp_path / "gt.json").write_text(json.dumps(data))
    (tmp_path / "res.json").write_text(json.dumps(_results([1.0] * 51)))
    assert_bad_input(
        sdpose("coco-eval", "gt.json", "res.json", cwd=tmp_path), "gt.json", "annotations[1]"
    )


# ---------------------------------------------------------------- 3, 6: predict
def test_predict_out_naming_an_existing_file_is_exit_2(tmp_path):
    (tmp_path / "taken").write_text("not a folder")
    image = SAMPLE / "images" / "000000000785.jpg"
    result = sdpose("predict", str(image), "--model", "m.onnx", "--out", "taken", cwd=tmp_path)
    assert_bad_input(result, "taken", "--out")


def test_predict_with_runner_refuses_a_file_as_out_before_predicting(tmp_path):
    from sdpose.core.codec import HeatmapCodec
    from sdpose.deploy.predict import PredictError, predict_with_runner

    calls = []

    def runner(crops: np.ndarray) -> np.ndarray:
        calls.append(len(crops))
        return np.zeros((len(crops), 17, 64, 48), dtype=np.float32)

    taken = tmp_path / "taken"
    taken.write_text("not a folder")
    codec = HeatmapCodec(input_size=(256, 192), heatmap_size=(64, 48))
    image = SAMPLE / "images" / "000000000785.jpg"
    with pytest.raises(PredictError, match="taken: is a file"):
        predict_with_runner([image], None, runner, codec, taken / "sub", Params())
    assert not calls


@pytest.mark.parametrize(
    "field, change", [("score", True), ("score", "0.9"), ("bbox", [1, 2, 3, True])]
)
def test_predict_boxes_with_non_number_fields_are_rejected(tmp_path, field, change):
    from sdpose.deploy.predict import PredictError, load_person_boxes

    record = {"image_id": 785, "category_id": 1, "bbox": [10, 10, 50, 80], "score": 0.9}
    boxes = tmp_path / "dets.json"
    boxes.write_text(json.dumps([{**record, field: change}]))
    images = {785: (Path("000000000785.jpg"), 640, 425)}
    with pytest.raises(PredictError, match=rf"dets\.json: record 0: '{field}' must hold numbers"):
        load_person_boxes(boxes, images)


# ---------------------------------------------------------------- 3, 4: checkpoints
class _Code:
    """A pickle that would run a command when loaded unsafely."""

    def __reduce__(self):
        return (os.system, ("echo unsafe-load-ran",))


@pytest.mark.parametrize(
    "name, content, says",
    [
        ("text.pth", b"hello, I am a text file\n", "not a PyTorch checkpoint (zip or pickle)"),
        ("empty.pth", b"", "empty file"),
        ("random.pth", bytes(range(7, 256)) * 8, "not a PyTorch checkpoint (zip or pickle)"),
        ("code.pth", pickle.dumps(_Code(), protocol=2), "refused"),
    ],
    ids=["text", "empty", "random-bytes", "pickled-code"],
)
def test_convert_checkpoint_says_what_the_file_is_not(tmp_path, name, content, says):
    (tmp_path / name).write_bytes(content)
    result = sdpose("convert-checkpoint", name, "out.pt", "--preset", "sdpose-nano", cwd=tmp_path)
    assert_bad_input(result, name, says)
    assert "weights_only" not in result.stderr and "unsafe-load-ran" not in result.stdout
    assert not (tmp_path / "out.pt").exists()


def test_convert_checkpoint_into_a_directory_is_exit_2(tmp_path):
    (tmp_path / "src.pth").write_bytes(b"")
    (tmp_path / "outdir").mkdir()
    result = sdpose(
        "convert-checkpoint", "src.pth", "outdir", "--preset", "sdpose-nano", cwd=tmp_path
    )
    assert_bad_input(result, "outdir", "directory")


def test_save_checkpoint_onto_a_directory_leaves_no_partial_file(tmp_path):
    from sdpose.models import build_model
    from sdpose.models.checkpoint import CheckpointError, save_checkpoint

    target = tmp_path / "outdir"
    target.mkdir()
    with pytest.raises(CheckpointError, match="outdir: is a directory"):
        save_checkpoint(target, build_model("sdpose-nano"))
    assert sorted(path.name for path in tmp_path.iterdir()) == ["outdir"]


def test_save_checkpoint_that_fails_midway_leaves_no_partial_file(tmp_path, monkeypatch):
    from sdpose.models import build_model
    from sdpose.models.checkpoint import save_checkpoint

    def disk_full(*args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", disk_full)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path / "ours.pt", build_model("sdpose-nano"))
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- 3: registry parameters
def test_registry_list_with_an_unsupported_tracking_uri_is_exit_2(tmp_path):
    result = sdpose("registry", "list", "--set", "registry.tracking_uri=nope://x", cwd=tmp_path)
    assert_bad_input(result, "registry.tracking_uri", "nope://x")
