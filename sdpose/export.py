"""The `export` stage: the one-cycle student as ONNX, checked, described and registered.

Only the student ships: the exported graph is `StudentHeatmaps`, the first cycle returning
the heatmaps alone, so the file holds one pass of the shared layers whatever the training
cycles were. From opset 23 on, attention is the standard ONNX `Attention` op (one fused
kernel in onnxruntime >= 1.23); older opsets get MatMul and Softmax, for older runtimes.
An export that does not reproduce PyTorch (onnx.checker, then max abs difference <=
`export.atol` on real inference, on every installed runtime) fails here rather than in a
deployment.

Beside the fp32 file the stage writes its int8 form (`sdpose.quantize`, calibrated on
training crops), times both on every installed runtime, scores both on the val set with
`evaluate.onnx_student_ap`, and records all of it in the model card's `deploy` section
(`sdpose.deploy`); the registry keeps the int8 file only if it passes the int8 gate.

Contract of the file: input `images` (N, 3, H, W) float32 at the model's input size (256x192
for the paper presets, 128x96 for the nano ones), RGB normalised with the ImageNet mean and
std; output `heatmaps` (N, 17, h, w) float32 at its heatmap size; N is dynamic. The model
card records both shapes, and `sdpose predict` reads them from the file.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sdpose.config import Params
from sdpose.console import say
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

    Parity runs every installed runtime and PyTorch on the same random inputs, once per
    batch size in `parity_batches` (two sizes prove the batch axis is really dynamic).
    Returns {path, opset, nodes, max_abs_diff, parity (per runtime), atol}; raises
    ExportError on any failure.
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
    per_runtime = _parity_diff(reference, path, batches, atol)
    return {
        "path": str(path),
        "opset": _opset(graph),
        "nodes": len(graph.graph.node),
        "max_abs_diff": max(per_runtime.values()),
        "parity": per_runtime,  # runtime -> max abs difference from PyTorch
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
) -> dict[str, float]:
    """{runtime: max |its heatmaps - PyTorch reference|} over the batches, for every
    installed runtime: onnxruntime on the file as it is and as `sdpose predict` runs it
    (contrib attention), OpenVINO if installed; ExportError above `atol` on any of them."""
    with torch.no_grad():
        expected = [reference(images).numpy() for images in batches]
    worst: dict[str, float] = {}
    for form, runtime, run in _parity_sessions(path):
        for images, torch_heatmaps in zip(batches, expected, strict=True):
            onnx_heatmaps = run(images.numpy())
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
            worst[runtime] = max(worst.get(runtime, 0.0), diff)
    return worst


def _parity_sessions(path: Path) -> Iterator[tuple[str, str, Callable[[np.ndarray], np.ndarray]]]:
    """(form, runtime, run) of every way the file is run: onnxruntime as written and with
    its contrib attention, then each other installed runtime."""
    from sdpose.onnx_session import cpu_session, installed_runtimes, open_session

    for contrib_attention in (False, True):
        session = cpu_session(path, contrib_attention=contrib_attention)
        form = "with onnxruntime's contrib attention" if contrib_attention else "as written"
        yield form, "onnxruntime", partial(_run_onnxruntime, session)
    for runtime in installed_runtimes():
        if runtime != "onnxruntime":
            yield f"on {runtime}", runtime, open_session(path, runtime).run


def _run_onnxruntime(session, images: np.ndarray) -> np.ndarray:
    return session.run([OUTPUT_NAME], {INPUT_NAME: images})[0]


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
        "onnx": {
            key: export_info[key]
            for key in ("opset", "nodes", "max_abs_diff", "parity", "atol")
            if key in export_info
        },
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
    """Export the best student in fp32 and int8, measure both on every installed runtime,
    write the model card, register the student (with its int8 file if it passes the gate)."""
    from sdpose.models.checkpoint import load_checkpoint
    from sdpose.onnx_session import AUTO, require

    if params.export.runtime != AUTO:
        require(params.export.runtime)  # before a minute of export, not after
    workdir = Path(workdir)
    _, checkpoint_path, evaluation = choose_checkpoint(workdir)
    model, checkpoint = load_checkpoint(checkpoint_path)
    out_dir = workdir / EXPORT_DIR
    onnx_path = out_dir / ONNX_NAME
    export_info = export_onnx(model, onnx_path, params.export.opset, params.export.atol)
    deployed = deploy_forms(params, workdir, model, onnx_path, export_info["parity"])
    source_name = str(checkpoint_path.relative_to(workdir))
    card = model_card(model, checkpoint, source_name, evaluation, workdir, export_info)
    card["deploy"] = deployed
    (out_dir / CARD_NAME).write_text(json.dumps(card, indent=2) + "\n")
    summary = {"onnx": str(onnx_path), "card": str(out_dir / CARD_NAME), **export_info}
    summary["deploy"] = deployed
    summary["registry"] = _register(params, workdir, onnx_path, card, evaluation)
    for line in deploy_lines(deployed, summary["registry"]):
        say(line)
    return summary


def deploy_forms(
    params: Params, workdir: Path, model: nn.Module, onnx_path: Path, parity: dict[str, float]
) -> dict[str, Any]:
    """The model card's `deploy` section: each shipped file, its runtime, latencies, AP.

    The int8 form needs crops (training crops calibrate it, val crops score it); without
    them only the fp32 file ships and the section says why.
    """
    from sdpose import deploy
    from sdpose.quantize import int8_path

    runtimes = deploy.runtimes_here()
    size = model.config.input_size
    fp32_latency = deploy.latencies(onnx_path, size, runtimes)
    fp32_runtime = deploy.choose_runtime(params.export.runtime, fp32_latency)
    fp32 = deploy.form_record(onnx_path, fp32_runtime, fp32_latency, parity_max_abs_diff=parity)
    section = {"runtime_param": params.export.runtime, "threads": "runtime default"}
    section |= {"runtimes": runtimes, "forms": {"fp32": fp32}}
    int8_file = int8_path(onnx_path)
    int8_file.unlink(missing_ok=True)  # never ship a stale int8 file beside a new fp32 one
    if not (workdir / "data" / "crops" / "summary.json").is_file():
        section["int8_skipped"] = (
            "no data/crops: the int8 form is calibrated on training crops and scored on val "
            "crops; run `sdpose crops`"
        )
        return section
    section["forms"]["int8"] = _int8_form(params, workdir, model, onnx_path, runtimes)
    fp32["ap"] = _onnx_ap(params, workdir, onnx_path, fp32_runtime)
    int8 = section["forms"]["int8"]
    int8["ap"] = _onnx_ap(params, workdir, int8_file, int8["runtime"])
    int8["ap_drop"] = fp32["ap"] - int8["ap"]
    int8["speedup_batch8"] = (
        fp32_latency[fp32_runtime]["batch8"] / int8["latency_ms"][int8["runtime"]]["batch8"]
    )
    int8["gate"] = _int8_gate(params, fp32["ap"], int8)
    return section


def _int8_form(
    params: Params, workdir: Path, model: nn.Module, onnx_path: Path, runtimes: list[str]
) -> dict[str, Any]:
    """Quantize the fp32 file, then measure the int8 file: latency, heatmap gap to PyTorch."""
    from sdpose import deploy
    from sdpose.codec import HeatmapCodec
    from sdpose.quantize import calibration_images, int8_path, quantize_student

    codec = HeatmapCodec.for_model(model.config, params.train.sigma)
    calibration = calibration_images(workdir, codec, params.export.calibration_samples)
    built = quantize_student(onnx_path, int8_path(onnx_path), calibration)
    images = _val_images(params, workdir, codec)
    with torch.no_grad():
        expected = model(torch.from_numpy(images), cycles=1)[0].heatmaps.numpy()
    gap = deploy.heatmap_gap(int8_path(onnx_path), runtimes, images, expected)
    latency = deploy.latencies(int8_path(onnx_path), model.config.input_size, runtimes)
    runtime = deploy.choose_runtime(params.export.runtime, latency)
    return deploy.form_record(
        int8_path(onnx_path),
        runtime,
        latency,
        heatmap_gap=gap,  # runtime -> max |int8 - PyTorch| / PyTorch's peak, val crops
        calibration_samples=built["calibration_samples"],
        quantized_nodes=built["quantized_nodes"],
    )


def _val_images(params: Params, workdir: Path, codec, count: int = 32) -> np.ndarray:
    """The first `count` val crops as network inputs: held out from the calibration."""
    from sdpose.evaluate import val_batches, val_set

    batches, taken = [], 0
    for batch in val_batches(workdir, val_set(params, workdir).split, codec):
        batches.append(batch["images"].numpy())
        taken += len(batches[-1])
        if taken >= count:
            break
    return np.concatenate(batches)[:count]


def _onnx_ap(params: Params, workdir: Path, path: Path, runtime: str) -> float:
    from sdpose.evaluate import onnx_student_ap

    return onnx_student_ap(params, workdir, path, runtime)


def _int8_gate(params: Params, fp32_ap: float, int8: dict[str, Any]) -> str:
    from sdpose.registry import int8_refusal

    refusal = int8_refusal(params, fp32_ap, int8["ap"], max(int8["heatmap_gap"].values()))
    return refusal or "passed"


def deploy_lines(deployed: dict[str, Any], registered: dict[str, Any]) -> list[str]:
    """What a person reads about the shipped files: runtime, latency, AP, the int8 verdict."""
    lines = []
    for name, form in deployed["forms"].items():
        latency = form["latency_ms"][form["runtime"]]
        ap = f", ONNX AP {form['ap']:.4f}" if "ap" in form else ""
        lines.append(
            f"{name}: {form['file']} on {form['runtime']} ({latency['batch1']:.1f} ms at "
            f"batch 1, {latency['batch8']:.1f} ms at batch 8){ap}"
        )
    if "int8_skipped" in deployed:
        lines.append(f"int8: not built: {deployed['int8_skipped']}")
    elif "int8" in registered:
        lines.append(f"int8: {registered['int8']['reason']}")
    return lines


def _register(params, workdir, onnx_path, card, evaluation) -> dict[str, Any]:
    from sdpose import registry

    if not evaluation or card["student_ap"] is None:
        return {"registered": False, "reason": "no metrics/eval.json entry: run `sdpose evaluate`"}
    val_set = json.loads((workdir / "metrics" / "eval.json").read_text())["val_set"]
    metrics = {f"student_{key}": value for key, value in evaluation["student"].items()}
    metrics |= {"student_ap": card["student_ap"], "params": card["params"]}
    metrics |= {"gflops": card["gflops"]}
    metrics |= deploy_metrics(card["deploy"])

    def score_on_current_val(champion_onnx: Path) -> float:
        from sdpose.evaluate import onnx_student_ap

        return onnx_student_ap(params, workdir, champion_onnx)

    return registry.register_student(
        params,
        workdir,
        onnx_path,
        card,
        metrics,
        val_set,
        score_on_current_val,
        int8=_int8_candidate(card["deploy"], onnx_path),
    )


def deploy_metrics(deployed: dict[str, Any]) -> dict[str, float]:
    """The card's APs and latencies as flat MLflow metrics."""
    metrics = {}
    for name, form in deployed["forms"].items():
        if "ap" in form:
            metrics[f"{name}_onnx_ap"] = form["ap"]
        for runtime, measured in form["latency_ms"].items():
            for batch, ms in measured.items():
                metrics[f"latency_ms_{name}_{runtime}_{batch}"] = ms
    if "int8" in deployed["forms"]:
        metrics["int8_ap_drop"] = deployed["forms"]["int8"]["ap_drop"]
    return metrics


def _int8_candidate(deployed: dict[str, Any], onnx_path: Path):  # -> registry.Int8Candidate
    from sdpose.quantize import int8_path
    from sdpose.registry import Int8Candidate

    int8 = deployed["forms"].get("int8")
    if int8 is None:
        return None
    gap = max(int8["heatmap_gap"].values())
    fp32_ap = deployed["forms"]["fp32"]["ap"]
    return Int8Candidate(int8_path(onnx_path), int8["ap"], fp32_ap, gap)
