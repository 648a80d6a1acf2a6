"""The files the export stage ships, fp32 and int8, measured and gated.

Beside the fp32 file the stage writes its int8 form (`sdpose.deploy.quantize`, calibrated on
training crops), times both on every installed runtime (`sdpose.deploy.latency`), scores
both on the val set with `deploy.scoring.onnx_student_ap`, and records all of it in the
model card's `deploy` section; the registry keeps the int8 file only if it passes the gate.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sdpose.config import Params
from sdpose.core.codecs import Codec, codec_for_params
from sdpose.core.paths import CROPS_DIR


def deploy_forms(
    params: Params, workdir: Path, model: nn.Module, onnx_path: Path, parity: dict[str, float]
) -> dict[str, Any]:
    """The model card's `deploy` section: each shipped file, its runtime, latencies, AP.

    The int8 form needs crops (training crops calibrate it, val crops score it); without
    them only the fp32 file ships and the section says why.
    """
    from sdpose.deploy import latency
    from sdpose.deploy.quantize import int8_path

    runtimes = latency.runtimes_here()
    size = model.config.input_size
    fp32_latency = latency.latencies(onnx_path, size, runtimes)
    fp32_runtime = latency.choose_runtime(params.export.runtime, fp32_latency)
    fp32 = latency.form_record(onnx_path, fp32_runtime, fp32_latency, parity_max_abs_diff=parity)
    section = {"runtime_param": params.export.runtime, "threads": "runtime default"}
    section |= {"runtimes": runtimes, "forms": {"fp32": fp32}}
    int8_file = int8_path(onnx_path)
    int8_file.unlink(missing_ok=True)  # never ship a stale int8 file beside a new fp32 one
    if not (workdir / CROPS_DIR / "summary.json").is_file():
        section["int8_skipped"] = (
            "no data/crops: the int8 form is calibrated on training crops and scored on val "
            "crops; run `sdpose crops`"
        )
        return section
    codec = codec_for_params(params, model.config)
    section["forms"]["int8"] = _int8_form(params, workdir, model, onnx_path, runtimes, codec)
    fp32["ap"] = _onnx_ap(params, workdir, onnx_path, fp32_runtime, codec)
    int8 = section["forms"]["int8"]
    int8["ap"] = _onnx_ap(params, workdir, int8_file, int8["runtime"], codec)
    int8["ap_drop"] = fp32["ap"] - int8["ap"]
    int8["speedup_batch8"] = (
        fp32_latency[fp32_runtime]["batch8"] / int8["latency_ms"][int8["runtime"]]["batch8"]
    )
    int8["gate"] = _int8_gate(params, fp32["ap"], int8)
    return section


def _int8_form(
    params: Params,
    workdir: Path,
    model: nn.Module,
    onnx_path: Path,
    runtimes: list[str],
    codec: Codec,
) -> dict[str, Any]:
    """Quantize the fp32 file, then measure the int8 file: latency, output gap to PyTorch."""
    from sdpose.deploy import latency
    from sdpose.deploy.quantize import calibration_images, int8_path, quantize_student

    calibration = calibration_images(workdir, codec, params.export.calibration_samples)
    built = quantize_student(onnx_path, int8_path(onnx_path), calibration)
    images = _val_images(params, workdir, codec)
    with torch.no_grad():
        expected = model(torch.from_numpy(images), cycles=1)[0].predictions.numpy()
    gap = latency.heatmap_gap(int8_path(onnx_path), runtimes, images, expected)
    measured = latency.latencies(int8_path(onnx_path), model.config.input_size, runtimes)
    runtime = latency.choose_runtime(params.export.runtime, measured)
    return latency.form_record(
        int8_path(onnx_path),
        runtime,
        measured,
        heatmap_gap=gap,  # runtime -> max |int8 - PyTorch| / PyTorch's peak, val crops
        calibration_samples=built["calibration_samples"],
        quantized_nodes=built["quantized_nodes"],
    )


def _val_images(params: Params, workdir: Path, codec, count: int = 32) -> np.ndarray:
    """The first `count` val crops as network inputs: held out from the calibration."""
    from sdpose.evaluation.stage import val_batches, val_set

    batches, taken = [], 0
    for batch in val_batches(workdir, val_set(params, workdir).split, codec):
        batches.append(batch["images"].numpy())
        taken += len(batches[-1])
        if taken >= count:
            break
    return np.concatenate(batches)[:count]


def _onnx_ap(params: Params, workdir: Path, path: Path, runtime: str, codec: Codec) -> float:
    from sdpose.deploy.scoring import onnx_student_ap

    return onnx_student_ap(params, workdir, path, runtime, codec)


def _int8_gate(params: Params, fp32_ap: float, int8: dict[str, Any]) -> str:
    from sdpose.deploy.int8_gate import int8_refusal

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


def int8_candidate(deployed: dict[str, Any], onnx_path: Path):  # -> int8_gate.Int8Candidate
    from sdpose.deploy.int8_gate import Int8Candidate
    from sdpose.deploy.quantize import int8_path

    int8 = deployed["forms"].get("int8")
    if int8 is None:
        return None
    gap = max(int8["heatmap_gap"].values())
    fp32_ap = deployed["forms"]["fp32"]["ap"]
    return Int8Candidate(int8_path(onnx_path), int8["ap"], fp32_ap, gap)
