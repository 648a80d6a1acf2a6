"""The `evaluate` stage: accuracy of every cycle, cost and latency of the trained models.

SDPose's claim is that the one-cycle student is nearly as good as its all-cycles teacher
at the price of one cycle; this stage measures exactly that for the best trained and the
best tuned model (whichever exist): COCO AP of each cycle on the val crops (ground-truth
or detector boxes, `evaluate.boxes`), through `sdpose.evaluation.inference` (flip test, DARK,
rescoring, OKS-NMS, pycocotools: the path of validation and predict) with the codec of each
model's own config, plus params, GFLOPs and measured latency. Outputs: metrics/eval.json,
reports/eval.md and its PNGs.

The val set and the scoring are the evaluation library's (`sdpose.evaluation.valset`);
this module only runs the stage.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sdpose.config import Params
from sdpose.core.errors import MissingInputError
from sdpose.core.paths import CANDIDATES, EVAL_METRICS, REPORTS_DIR, write_text_atomic
from sdpose.evaluation.report import write_report
from sdpose.evaluation.valset import ValSet, model_cycles, val_set
from sdpose.models.checkpoint import load_checkpoint
from sdpose.models.cost import model_info


def measure_latency(
    model: nn.Module, cycles: int, batch: int = 1, repeats: int = 10, device: str = "cpu"
) -> float:
    """Median milliseconds of one eager forward of `cycles` cycles (after 2 warm-up runs)."""
    images = torch.randn(batch, 3, *model.config.input_size, device=device)
    timings = []
    with torch.no_grad():
        for index in range(repeats + 2):
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            started = time.perf_counter()
            model(images, cycles=cycles)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            if index >= 2:
                timings.append((time.perf_counter() - started) * 1000)
    return statistics.median(timings)


def evaluate_checkpoint(
    checkpoint: Path, params: Params, workdir: Path, val: ValSet, device: str
) -> tuple[dict[str, Any], list[dict]]:
    """eval.json's entry of one model, and its student's COCO results (for drawing)."""
    model, _ = load_checkpoint(checkpoint)
    model = model.to(device).eval()
    per_cycle, student_results = model_cycles(model, params, workdir, val, device)
    info = model_info(model.config)
    cycles = model.config.cycles
    entry = {
        "checkpoint": str(checkpoint.relative_to(workdir)),
        "preset": model.config.name,
        "config": model.config.to_dict(),
        "cycles": cycles,
        "params": info["params"],
        "gflops": info["gflops"],
        "gflops_train": info["gflops_train"],
        "latency_ms": {
            "device": device,
            "threads": torch.get_num_threads(),
            "student_batch1": measure_latency(model, 1, device=device),
            "all_cycles_batch1": measure_latency(model, cycles, device=device),
        },
        "student": per_cycle[0],
        "teacher": per_cycle[-1],
        "per_cycle": [{"cycle": index + 1, **stats} for index, stats in enumerate(per_cycle)],
    }
    return entry, student_results


def run(params: Params, workdir: Path) -> dict[str, Any]:
    """Evaluate models/train/best.pt and models/tune/best.pt (those present)."""
    workdir = Path(workdir)
    present = {name: workdir / path for name, path in CANDIDATES.items()}
    present = {name: path for name, path in present.items() if path.is_file()}
    if not present:
        raise MissingInputError(
            f"{workdir / CANDIDATES['train']}: no model to evaluate; run `sdpose train` first"
        )
    device = "cuda" if params.ray.use_gpu and torch.cuda.is_available() else "cpu"
    val = val_set(params, workdir)
    models, drawings = {}, {}
    for name, checkpoint in present.items():
        models[name], drawings[name] = evaluate_checkpoint(checkpoint, params, workdir, val, device)
    best = max(models, key=lambda name: models[name]["student"]["AP"])
    evaluation = {
        "val_set": val.fingerprint,
        "split": val.split,
        "boxes": val.boxes,
        "annotations": str(val.annotations),
        "instances": val.instances,
        "protocol": params.evaluate.model_dump(mode="json"),
        "best": best,
        "student_ap": models[best]["student"]["AP"],
        "models": models,
    }
    metrics_path = workdir / EVAL_METRICS
    write_text_atomic(metrics_path, json.dumps(evaluation, indent=2) + "\n")
    report = write_report(evaluation, drawings[best], workdir, workdir / REPORTS_DIR)
    return {
        "metrics": str(metrics_path),
        "report": str(report),
        "best": best,
        "student_ap": evaluation["student_ap"],
        **{f"{name}_ap_per_cycle": [c["AP"] for c in m["per_cycle"]] for name, m in models.items()},
    }
