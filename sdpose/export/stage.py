"""The `export` stage: the best student as ONNX (fp32 and int8), described and registered.

It picks the checkpoint with the best student AP in metrics/eval.json (train or tune),
writes and checks the ONNX file (sdpose.export.onnx), builds, measures and judges its forms
(sdpose.export.forms: latency, the int8 form and its verdict, ONNX AP), writes the model
card (sdpose.export.card) and registers the student in MLflow (sdpose.deploy.registry,
which stores the verdict). Outputs: models/export/ (docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sdpose.config import Params
from sdpose.console import say
from sdpose.core.codecs import codec_for_labels
from sdpose.core.errors import MissingInputError
from sdpose.core.paths import (
    CANDIDATES,
    CARD_NAME,
    EVAL_METRICS,
    EXPORT_DIR,
    ONNX_NAME,
    write_text_atomic,
)
from sdpose.deploy import registry
from sdpose.deploy.runtimes import AUTO, require
from sdpose.export.card import model_card, read_json
from sdpose.export.forms import ShippedForms, ship_forms
from sdpose.export.onnx import export_onnx
from sdpose.export.onnx_ap import onnx_student_ap
from sdpose.models.checkpoint import load_checkpoint


def choose_checkpoint(workdir: Path) -> tuple[str, Path, dict[str, Any] | None]:
    """(name, checkpoint, its eval.json entry): the best student AP of train and tune.

    Without metrics/eval.json the trained model is the only candidate with a known origin.
    """
    evaluation = read_json(workdir / EVAL_METRICS)
    entries = (evaluation or {}).get("models", {})
    scored = [
        (entry["student"]["AP"], name)
        for name, entry in entries.items()
        if (workdir / CANDIDATES.get(name, Path("-"))).is_file()
    ]
    if scored:
        _, name = max(scored)
        return name, workdir / CANDIDATES[name], entries[name]
    if (workdir / CANDIDATES["train"]).is_file():
        return "train", workdir / CANDIDATES["train"], None
    raise MissingInputError(
        f"{workdir / CANDIDATES['train']}: no trained model to export; run `sdpose train` first"
    )


def run(params: Params, workdir: Path) -> dict[str, Any]:
    """Export the best student in fp32 and int8, measure both on every installed runtime,
    write the model card, register the student (with its int8 file if it passes the gate)."""
    if params.export.runtime != AUTO:
        require(params.export.runtime)  # before a minute of export, not after
    workdir = Path(workdir)
    _, checkpoint_path, evaluation = choose_checkpoint(workdir)
    model, checkpoint = load_checkpoint(checkpoint_path)
    out_dir = workdir / EXPORT_DIR
    onnx_path = out_dir / ONNX_NAME
    export_info = export_onnx(model, onnx_path, params.export.opset, params.export.atol)
    shipped = ship_forms(params, workdir, model, onnx_path, export_info["parity"])
    source_name = str(checkpoint_path.relative_to(workdir))
    codec = codec_for_labels(model.config, params.train)
    card = model_card(model, checkpoint, source_name, evaluation, workdir, export_info, codec)
    card["deploy"] = shipped.section
    write_text_atomic(out_dir / CARD_NAME, json.dumps(card, indent=2) + "\n")
    summary = {"onnx": str(onnx_path), "card": str(out_dir / CARD_NAME), **export_info}
    summary["deploy"] = shipped.section
    summary["registry"] = _register(
        params, workdir, onnx_path, card, evaluation, checkpoint_path, shipped
    )
    for line in shipped.lines(summary["registry"]):
        say(line)
    return summary


def _register(
    params: Params,
    workdir: Path,
    onnx_path: Path,
    card: dict[str, Any],
    evaluation: dict[str, Any] | None,
    checkpoint_path: Path,
    shipped: ShippedForms,
) -> dict[str, Any]:
    """Register the student with the export's int8 verdict; without an evaluation there is
    no AP to rank it by, and nothing is registered."""
    if not evaluation or card["student_ap"] is None:
        return {"registered": False, "reason": "no metrics/eval.json entry: run `sdpose evaluate`"}
    val_set = json.loads((workdir / EVAL_METRICS).read_text())["val_set"]
    metrics = {f"student_{key}": value for key, value in evaluation["student"].items()}
    metrics |= {"student_ap": card["student_ap"], "params": card["params"]}
    metrics |= {"gflops": card["gflops"]}
    metrics |= shipped.metrics()

    rescore = registry.champion_to_rescore(params, workdir, card["student_ap"], val_set)
    champion_score = None
    if rescore is not None:  # the champion was measured on other data: score it on ours
        version, champion_onnx = rescore
        champion_score = registry.ChampionScore(
            version, onnx_student_ap(params, workdir, champion_onnx)
        )
    return registry.register_student(
        params,
        workdir,
        onnx_path,
        card,
        metrics,
        val_set,
        champion_score,
        int8=shipped.int8,
        weights=checkpoint_path,
    )
