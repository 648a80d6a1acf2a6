"""The `export` stage: the one-cycle student as ONNX, checked, described and registered.

Only the student ships: the exported graph is `StudentHeatmaps`, the first cycle returning
the heatmaps alone, so the file holds one pass of the shared layers whatever the training
cycles were. From opset 23 on, attention is the standard ONNX `Attention` op (one fused
kernel in onnxruntime >= 1.23); older opsets get MatMul and Softmax, for older runtimes.
An export that does not reproduce PyTorch (onnx.checker, then max abs difference <=
`export.atol` on real inference) fails here rather than in a deployment.

Contract of the file: input `images` (N, 3, H, W) float32 at the model's input size (256x192
for the paper presets, 128x96 for the nano ones), RGB normalised with the ImageNet mean and
std; output `heatmaps` (N, 17, h, w) float32 at its heatmap size; N is dynamic. The model
card records both shapes, and `sdpose predict` reads them from the file.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sdpose.config import Params
from sdpose.models.student import StudentHeatmaps

EXPORT_DIR = Path("models/export")
ONNX_NAME = "sdpose-student.onnx"
CARD_NAME = "model_card.json"
CANDIDATES = {"train": Path("models/train/best.pt"), "tune": Path("models/tune/best.pt")}
INPUT_NAME, OUTPUT_NAME = "images", "heatmaps"
NORMALISATION = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
FUSED_ATTENTION_OPSET = 23  # the first opset with a standard Attention op


class ExportError(RuntimeError):
    """The ONNX graph is invalid or does not reproduce the PyTorch student."""


def export_onnx(
    model: nn.Module,
    path: Path,
    opset: int = 23,
    atol: float = 1e-4,
    parity_batches: tuple[int, ...] = (2, 1),
    seed: int = 0,
) -> dict[str, Any]:
    """Write the student of `model` to `path` as one self-contained ONNX file and check it.

    Parity runs onnxruntime and PyTorch on the same random inputs, once per batch size in
    `parity_batches` (two sizes prove the batch axis is really dynamic). Returns
    {path, opset, nodes, max_abs_diff}; raises ExportError on any failure.
    """
    import onnx

    config = model.config
    model.eval()
    fused = opset >= FUSED_ATTENTION_OPSET
    student = StudentHeatmaps(model, fused_attention=fused).eval()
    generator = torch.Generator().manual_seed(seed)
    # Traced at batch >= 2: an example of batch 1 lets torch.export specialise N to 1.
    traced = max(2, *parity_batches)
    example = torch.randn(traced, 3, *config.input_size, generator=generator)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        program = torch.onnx.export(
            student,
            (example,),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            opset_version=opset,
            dynamic_shapes=({0: torch.export.Dim("N", min=1, max=4096)},),
            dynamo=True,
            verbose=False,
            custom_translation_table=_ATTENTION_TRANSLATION if fused else None,
        )
    # One file (weights inline): a deployable artifact must not depend on a sidecar file.
    onnx.save_model(program.model_proto, str(path), save_as_external_data=False)
    graph = onnx.load(str(path))
    try:
        onnx.checker.check_model(graph, full_check=True)
    except onnx.checker.ValidationError as error:
        raise ExportError(f"{path}: onnx.checker rejects the exported graph: {error}") from error

    def reference(images: torch.Tensor) -> torch.Tensor:  # the model as trained, unrewritten
        return model(images, cycles=1)[0].heatmaps

    batches = [example[:batch] for batch in sorted(set(parity_batches))]
    diff = _parity_diff(reference, path, batches, atol)
    return {
        "path": str(path),
        "opset": _opset(graph),
        "nodes": len(graph.graph.node),
        "max_abs_diff": diff,
        "atol": atol,
    }


def _onnx_attention(query, key, value, heads: int):
    """`sdpose::attention` as ONNX Attention-23 on merged-head (N, L, D) tensors."""
    from onnxscript import opset23

    output, *_ = opset23.Attention(query, key, value, q_num_heads=heads, kv_num_heads=heads)
    return output


_ATTENTION_TRANSLATION = {torch.ops.sdpose.attention.default: _onnx_attention}


def _parity_diff(
    reference: Callable[[torch.Tensor], torch.Tensor],
    path: Path,
    batches: list[torch.Tensor],
    atol: float,
) -> float:
    """Max |onnxruntime - PyTorch reference| over the batches, for the file as it is and as
    `sdpose predict` runs it (contrib attention), one session each; ExportError above `atol`."""
    from sdpose.onnx_session import cpu_session

    with torch.no_grad():
        expected = [reference(images).numpy() for images in batches]
    worst = 0.0
    for contrib_attention in (False, True):
        session = cpu_session(path, contrib_attention=contrib_attention)
        form = "with onnxruntime's contrib attention" if contrib_attention else "as written"
        for images, torch_heatmaps in zip(batches, expected, strict=True):
            (onnx_heatmaps,) = session.run([OUTPUT_NAME], {INPUT_NAME: images.numpy()})
            if onnx_heatmaps.shape != torch_heatmaps.shape:
                raise ExportError(
                    f"{path}: ONNX output {OUTPUT_NAME} has shape {onnx_heatmaps.shape}, "
                    f"PyTorch {torch_heatmaps.shape} (batch {images.shape[0]})"
                )
            diff = float(np.abs(onnx_heatmaps - torch_heatmaps).max())
            if not diff <= atol:
                raise ExportError(
                    f"{path}: ONNX ({form}) and PyTorch heatmaps differ by {diff:.3g} > "
                    f"export.atol {atol:g} (batch {images.shape[0]})"
                )
            worst = max(worst, diff)
    return worst


def _opset(graph) -> int:
    return next(entry.version for entry in graph.opset_import if entry.domain in ("", "ai.onnx"))


def choose_checkpoint(workdir: Path) -> tuple[str, Path, dict[str, Any] | None]:
    """(name, checkpoint, its eval.json entry): the best student AP of train and tune.

    Without metrics/eval.json the trained model is the only candidate with a known origin.
    """
    evaluation = _read_json(workdir / "metrics" / "eval.json")
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
    raise FileNotFoundError(
        f"{workdir / CANDIDATES['train']}: no trained model to export; run `sdpose train` first"
    )


def model_card(
    model: nn.Module,
    checkpoint: dict[str, Any],
    source: str,
    evaluation: dict[str, Any] | None,
    workdir: Path,
    export_info: dict[str, Any],
) -> dict[str, Any]:
    """What a deployer needs to trust and call the file: origin, cost, accuracy, contract."""
    from sdpose.models.cost import model_info

    config = model.config
    info = model_info(config)
    student = (evaluation or {}).get("student", {})
    return {
        "model_name": "sdpose-student",
        "preset": config.name,
        "training_cycles": config.cycles,
        "exported_cycles": 1,
        "architecture": config.to_dict(),
        "params": info["params"],
        "gflops": info["gflops"],
        "gflops_with_attention": info["gflops_with_attention"],
        "gflops_deployed": info["gflops_deployed"],  # this file's graph, attention included
        "student_ap": student.get("AP"),
        "student_metrics": student or None,
        "source_checkpoint": source,
        "epoch": checkpoint.get("epoch"),
        "data_version": dvc_data_version(workdir),
        "git_commit": git_commit(workdir),
        "training_params": _training_params(checkpoint, workdir),
        "onnx": {key: export_info[key] for key in ("opset", "nodes", "max_abs_diff", "atol")},
        "input": {
            "name": INPUT_NAME,
            "shape": ["N", 3, *config.input_size],
            "dtype": "float32",
            "layout": "NCHW, RGB, (pixel / 255 - mean) / std",
            **NORMALISATION,
        },
        "output": {
            "name": OUTPUT_NAME,
            "shape": ["N", config.num_keypoints, *config.heatmap_size],
            "dtype": "float32",
            "meaning": "COCO-17 heatmaps; heatmap pixel = input pixel / 4; decode with DARK",
        },
    }


def _training_params(checkpoint: dict[str, Any], workdir: Path) -> dict[str, Any] | None:
    """The model and train sections the checkpoint was made with (its own record first)."""
    recorded = checkpoint.get("params")
    if not isinstance(recorded, dict):
        recorded = _read_json(workdir / "models" / "train" / "config.json") or {}
        recorded = recorded.get("params", recorded)
    if not isinstance(recorded, dict):
        return None
    sections = {key: recorded[key] for key in ("model", "train") if key in recorded}
    return sections or recorded


def dvc_data_version(workdir: Path) -> dict[str, str] | None:
    """The DVC hashes of the data outputs (dvc.lock), or None outside a DVC run."""
    import yaml

    lock = workdir / "dvc.lock"
    if not lock.is_file():
        return None
    stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
    version = {}
    for stage in stages.values():
        for out in stage.get("outs", []) or []:
            if str(out.get("path", "")).startswith("data/") and out.get("md5"):
                version[out["path"]] = out["md5"]
    return version or None


def git_commit(workdir: Path) -> str | None:
    """HEAD of the repository holding the workdir, with `-dirty` for uncommitted changes."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=workdir, capture_output=True, text=True, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=workdir,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("-dirty" if status.strip() else "")


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def run(params: Params, workdir: Path) -> dict[str, Any]:
    """Export the best student, write its model card, register it in MLflow."""
    from sdpose.models.checkpoint import load_checkpoint

    workdir = Path(workdir)
    _, checkpoint_path, evaluation = choose_checkpoint(workdir)
    model, checkpoint = load_checkpoint(checkpoint_path)
    out_dir = workdir / EXPORT_DIR
    onnx_path = out_dir / ONNX_NAME
    export_info = export_onnx(model, onnx_path, params.export.opset, params.export.atol)
    source_name = str(checkpoint_path.relative_to(workdir))
    card = model_card(model, checkpoint, source_name, evaluation, workdir, export_info)
    (out_dir / CARD_NAME).write_text(json.dumps(card, indent=2) + "\n")
    summary = {"onnx": str(onnx_path), "card": str(out_dir / CARD_NAME), **export_info}
    summary["registry"] = _register(params, workdir, onnx_path, card, evaluation)
    return summary


def _register(params, workdir, onnx_path, card, evaluation) -> dict[str, Any]:
    from sdpose import registry

    if not evaluation or card["student_ap"] is None:
        return {"registered": False, "reason": "no metrics/eval.json entry: run `sdpose evaluate`"}
    val_set = json.loads((workdir / "metrics" / "eval.json").read_text())["val_set"]
    metrics = {f"student_{key}": value for key, value in evaluation["student"].items()}
    metrics |= {"student_ap": card["student_ap"], "params": card["params"]}
    metrics |= {"gflops": card["gflops"]}

    def score_on_current_val(champion_onnx: Path) -> float:
        from sdpose.evaluate import onnx_student_ap

        return onnx_student_ap(params, workdir, champion_onnx)

    return registry.register_student(
        params, workdir, onnx_path, card, metrics, val_set, score_on_current_val
    )
