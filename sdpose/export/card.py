"""The model card: what a deployer needs to trust and call the exported file.

Origin (checkpoint, epoch, DVC data version, git commit, training params), cost (params,
GFLOPs), accuracy (the evaluate stage's student metrics), the file's ONNX facts and its
input/output contract. The export stage adds the `deploy` section (sdpose.export.forms).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from torch import nn

from sdpose.core.codecs import Codec, codec_record
from sdpose.core.inputs import IMAGENET_MEAN, IMAGENET_STD
from sdpose.core.paths import TRAIN_MODELS
from sdpose.core.provenance import git_commit
from sdpose.core.simcc import SimCCCodec
from sdpose.export.onnx import INPUT_NAME, output_name
from sdpose.models.cost import model_info

NORMALISATION = {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}


def model_card(
    model: nn.Module,
    checkpoint: dict[str, Any],
    source: str,
    evaluation: dict[str, Any] | None,
    workdir: Path,
    export_info: dict[str, Any],
    codec: Codec,
) -> dict[str, Any]:
    """What a deployer needs to trust and call the file: origin, cost, accuracy, contract."""

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
        "git_commit": git_commit(workdir) or git_commit(),
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
            "name": output_name(config),
            "shape": ["N", config.num_keypoints, *config.output_shape],
            "dtype": "float32",
            "meaning": _output_meaning(codec),
            "codec": codec_record(codec),  # what `sdpose predict` decodes with
        },
    }


def _output_meaning(codec: Codec) -> str:
    if isinstance(codec, SimCCCodec):
        width, height = codec.bins
        return (
            f"COCO-17 SimCC logits: {width} x bins then {height} y bins, {codec.split} per "
            f"input pixel; softmax(beta * logits) per axis, beta {codec.beta:g}"
        )
    stride = int(codec.stride[0])
    return f"COCO-17 heatmaps; heatmap pixel = input pixel / {stride}; decode with DARK"


def _training_params(checkpoint: dict[str, Any], workdir: Path) -> dict[str, Any] | None:
    """The model and train sections the checkpoint was made with (its own record first)."""
    recorded = checkpoint.get("params")
    if not isinstance(recorded, dict):
        recorded = read_json(workdir / TRAIN_MODELS / "config.json") or {}
        recorded = recorded.get("params", recorded)
    if not isinstance(recorded, dict):
        return None
    sections = {key: recorded[key] for key in ("model", "train") if key in recorded}
    return sections or recorded


def dvc_data_version(workdir: Path) -> dict[str, str] | None:
    """The DVC hashes of the data outputs (dvc.lock), or None outside a DVC run."""

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


def read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None
