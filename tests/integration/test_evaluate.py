"""The `evaluate` stage on real COCO crops (the fixture's four images through prepare and
crops): every cycle scored, the files of the stage, and the ONNX re-measurement."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from shared import COCO_SAMPLE

from sdpose.config import Params
from sdpose.core.codecs import codec_for_labels
from sdpose.evaluation.stage import run
from sdpose.evaluation.valset import model_cycles, val_batches, val_set
from sdpose.export.onnx_ap import onnx_student_ap
from sdpose.models import build_model
from sdpose.models.checkpoint import save_checkpoint
from sdpose.models.outputs import CycleOutput

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

SAMPLE = COCO_SAMPLE


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A COCO 2017 tree made of the real sample (train = val), prepared and cropped."""
    from sdpose.data import crops, prepare

    root = tmp_path_factory.mktemp("project")
    coco = root / "coco"
    (coco / "annotations").mkdir(parents=True)
    for split in ("train", "val"):
        shutil.copy(
            SAMPLE / "person_keypoints_val2017_sample.json",
            coco / "annotations" / f"person_keypoints_{split}2017.json",
        )
        shutil.copytree(SAMPLE / "images", coco / f"{split}2017")
    params = coco_params(root)
    prepare.run(params, root)
    crops.run(params, root)
    return root


def coco_params(root: Path, **evaluate) -> Params:
    return Params.model_validate(
        {
            "data": {"source": "coco", "root": str(root / "coco")},
            "ray": {"num_workers": 1},
            "evaluate": evaluate,
        }
    )


class TargetNetwork(torch.nn.Module):
    """Stand-in network: cycle 1 answers each crop with its ground-truth target heatmaps
    (the feed's own encoding), cycle 2 with a blank map; so per-cycle AP must be ~1, ~0."""

    def __init__(self, params: Params, workdir: Path) -> None:
        super().__init__()
        self.config = build_model("sdpose-nano").config  # two cycles
        self.targets = {}
        for batch in val_batches(
            workdir, "val", codec_for_labels(params.model.resolve(), params.train)
        ):
            for image, target in zip(batch["images"], batch["target"], strict=True):
                self.targets[image.numpy().tobytes()] = target

    def forward(self, images: torch.Tensor, cycles: int | None = None) -> list[CycleOutput]:
        truth = torch.stack([self.targets[image.numpy().tobytes()] for image in images])
        return [CycleOutput(truth, None, None), CycleOutput(torch.zeros_like(truth), None, None)]


def test_every_cycle_is_scored_on_its_own(workdir):
    params = coco_params(workdir, flip_test=False)
    network = TargetNetwork(params, workdir)
    val = val_set(params, workdir)
    per_cycle, student_results = model_cycles(network, params, workdir, val)
    assert val.instances == 12  # the 14 annotations less the two without keypoints
    assert len(per_cycle) == 2
    assert per_cycle[0]["AP"] >= 0.99  # the ground truth, through decode and scoring
    assert per_cycle[1]["AP"] == 0.0  # blank maps: every score 0, nothing matches
    assert {r["image_id"] for r in student_results} == {785, 40083, 196141, 197388}


def test_stage_writes_metrics_report_and_figures(workdir):
    torch.manual_seed(0)
    save_checkpoint(workdir / "models/train/best.pt", build_model("sdpose-nano"), epoch=1)
    save_checkpoint(workdir / "models/tune/best.pt", build_model("tokenpose-nano"), epoch=1)
    params = coco_params(workdir)
    summary = run(params, workdir)
    evaluation = json.loads((workdir / "metrics/eval.json").read_text())
    assert set(evaluation["models"]) == {"train", "tune"}
    train, tune = evaluation["models"]["train"], evaluation["models"]["tune"]
    assert [row["cycle"] for row in train["per_cycle"]] == [1, 2]
    assert [row["cycle"] for row in tune["per_cycle"]] == [1]
    assert train["student"] == {k: v for k, v in train["per_cycle"][0].items() if k != "cycle"}
    assert train["teacher"] == {k: v for k, v in train["per_cycle"][1].items() if k != "cycle"}
    for entry in (train, tune):
        assert set(entry["student"]) >= {"AP", "AP50", "AP75", "APm", "APl", "AR"}
        assert all(-1 <= value <= 1 for value in entry["student"].values())
        assert entry["latency_ms"]["student_batch1"] > 0 and entry["gflops"] > 0
    assert train["params"] == sum(p.numel() for p in build_model("sdpose-nano").parameters())
    best = max(("train", "tune"), key=lambda name: evaluation["models"][name]["student"]["AP"])
    assert evaluation["best"] == best == summary["best"]
    assert evaluation["val_set"] == val_set(params, workdir).fingerprint
    report = (workdir / "reports/eval.md").read_text()
    for figure in ("eval_ap_per_cycle.png", "eval_ap_vs_gflops.png", "eval_predictions.png"):
        assert f"]({figure})" in report and (workdir / "reports" / figure).stat().st_size > 0


def test_val_set_fingerprint_follows_the_protocol(workdir):
    plain = val_set(coco_params(workdir), workdir).fingerprint
    assert val_set(coco_params(workdir), workdir).fingerprint == plain
    assert val_set(coco_params(workdir, flip_test=False), workdir).fingerprint != plain


def test_onnx_student_scores_like_the_pytorch_student(workdir, tmp_path):
    from sdpose.export.onnx import export_onnx

    torch.manual_seed(1)
    model = build_model("sdpose-nano").eval()
    export_onnx(model, tmp_path / "student.onnx", parity_batches=(1,))
    params = coco_params(workdir)
    val = val_set(params, workdir)
    per_cycle, _ = model_cycles(model, params, workdir, val)
    assert onnx_student_ap(params, workdir, tmp_path / "student.onnx") == pytest.approx(
        per_cycle[0]["AP"], abs=1e-3
    )


def test_evaluation_emits_no_warning(workdir):
    """The val crops become tensors of their own (pyarrow's columns are read-only: turning
    one into a tensor used to warn of undefined behaviour on every evaluation)."""
    import warnings

    params = coco_params(workdir)
    model = build_model(params.model.preset).eval()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model_cycles(model, params, workdir, val_set(params, workdir))
    assert [str(warning.message) for warning in caught] == []
