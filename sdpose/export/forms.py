"""The files the export stage ships, fp32 and int8, measured and the int8 one judged.

Beside the fp32 file the stage writes its int8 form (`sdpose.export.quantize`, calibrated
on training crops), times both on every installed runtime (`sdpose.export.latency`),
scores both on the val set (`sdpose.export.onnx_ap`), and decides whether the int8 file
ships (`sdpose.export.int8_gate`). `ShippedForms` carries all of it: the model card's
`deploy` section, its metrics and lines, and the int8 verdict the registry stores.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sdpose.config import Params
from sdpose.core.codecs import Codec, codec_for_labels
from sdpose.core.paths import CROPS_DIR, int8_path
from sdpose.deploy.registry import NO_INT8, Int8Verdict
from sdpose.evaluation.valset import ValSet, val_images, val_set
from sdpose.export import latency
from sdpose.export.int8_gate import int8_refusal, int8_verdict
from sdpose.export.onnx_ap import onnx_student_ap
from sdpose.export.quantize import calibration_images, quantize_student

NO_CROPS = (
    "no data/crops: the int8 form is calibrated on training crops and scored on val crops; "
    "run `sdpose crops`"
)


@dataclass(frozen=True)
class ShippedForms:
    """What the export measured about the files it ships, and its verdict on the int8 one.

    `section` is the model card's `deploy` section (JSON as written); `int8` the verdict
    the registry stores (NO_INT8 when no int8 file was built).
    """

    section: dict[str, Any]
    int8: Int8Verdict = NO_INT8

    def metrics(self) -> dict[str, float]:
        """The APs and latencies as flat MLflow metrics."""
        metrics = {}
        for name, form in self.section["forms"].items():
            if "ap" in form:
                metrics[f"{name}_onnx_ap"] = form["ap"]
            for runtime, measured in form["latency_ms"].items():
                for batch, ms in measured.items():
                    metrics[f"latency_ms_{name}_{runtime}_{batch}"] = ms
        if "int8" in self.section["forms"]:
            metrics["int8_ap_drop"] = self.section["forms"]["int8"]["ap_drop"]
        return metrics

    def lines(self, registered: dict[str, Any]) -> list[str]:
        """What a person reads about the shipped files: runtime, latency, AP, and what the
        registry did with the int8 file (`registered`: `register_student`'s summary)."""
        lines = []
        for name, form in self.section["forms"].items():
            measured = form["latency_ms"][form["runtime"]]
            ap = f", ONNX AP {form['ap']:.4f}" if "ap" in form else ""
            lines.append(
                f"{name}: {form['file']} on {form['runtime']} ({measured['batch1']:.1f} ms at "
                f"batch 1, {measured['batch8']:.1f} ms at batch 8){ap}"
            )
        if "int8_skipped" in self.section:
            lines.append(f"int8: not built: {self.section['int8_skipped']}")
        elif "int8" in registered:
            lines.append(f"int8: {registered['int8']['reason']}")
        return lines


def ship_forms(
    params: Params, workdir: Path, model: nn.Module, onnx_path: Path, parity: dict[str, float]
) -> ShippedForms:
    """Measure the fp32 file, build and measure its int8 form, and judge the int8 one.

    The int8 form needs crops (training crops calibrate it, val crops score it); without
    them only the fp32 file ships and the section says why.
    """
    runtimes = latency.runtimes_here()
    fp32_latency = latency.latencies(onnx_path, model.config.input_size, runtimes)
    fp32_runtime = latency.choose_runtime(params.export.runtime, fp32_latency)
    fp32 = latency.form_record(onnx_path, fp32_runtime, fp32_latency, parity_max_abs_diff=parity)
    section = {"runtime_param": params.export.runtime, "threads": "runtime default"}
    section |= {"runtimes": runtimes, "forms": {"fp32": fp32}}
    int8_file = int8_path(onnx_path)
    int8_file.unlink(missing_ok=True)  # never ship a stale int8 file beside a new fp32 one
    if not (workdir / CROPS_DIR / "summary.json").is_file():
        return ShippedForms(section | {"int8_skipped": NO_CROPS})
    codec = codec_for_labels(model.config, params.train)
    val = val_set(params, workdir)  # read once: both files are scored on it
    int8 = _int8_form(params, workdir, model, onnx_path, runtimes, codec, val)
    section["forms"]["int8"] = int8
    fp32["ap"] = onnx_student_ap(params, workdir, onnx_path, fp32_runtime, codec, val)
    int8["ap"] = onnx_student_ap(params, workdir, int8_file, int8["runtime"], codec, val)
    int8["ap_drop"] = fp32["ap"] - int8["ap"]
    int8["speedup_batch8"] = (
        fp32_latency[fp32_runtime]["batch8"] / int8["latency_ms"][int8["runtime"]]["batch8"]
    )
    gap = max(int8["heatmap_gap"].values())
    int8["gate"] = int8_refusal(params, fp32["ap"], int8["ap"], gap) or "passed"
    return ShippedForms(section, int8_verdict(params, int8_file, fp32["ap"], int8["ap"], gap))


def _int8_form(
    params: Params,
    workdir: Path,
    model: nn.Module,
    onnx_path: Path,
    runtimes: list[str],
    codec: Codec,
    val: ValSet,
) -> dict[str, Any]:
    """Quantize the fp32 file, then measure the int8 file: latency, output gap to PyTorch
    on val crops (held out from the calibration)."""
    calibration = calibration_images(workdir, codec, params.export.calibration_samples)
    built = quantize_student(onnx_path, int8_path(onnx_path), calibration)
    images = val_images(workdir, val, codec)
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
