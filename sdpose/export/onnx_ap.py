"""COCO AP of an exported ONNX file on the current val set, through the evaluation's path.

The export scores its fp32 and int8 files with it; the registry re-measures a champion
with it before a new version may take its place, so both sides meet on the same val set.
"""

from __future__ import annotations

from pathlib import Path

from sdpose.config import Params
from sdpose.core.codecs import Codec
from sdpose.deploy.predict import onnx_runner
from sdpose.evaluation.valset import ValSet, evaluate_cycles, val_set


def onnx_student_ap(
    params: Params,
    workdir: Path,
    onnx_path: Path,
    runtime: str | None = None,
    codec: Codec | None = None,
    val: ValSet | None = None,
) -> float:
    """AP of an exported student on the current val set (the export's scoring of its fp32
    and int8 files, the registry's re-measurement of a champion).

    `runtime`: onnxruntime, openvino or auto (the one the file's model card names), by
    default `export.runtime`. The codec is `codec` (the export knows its model's), else the
    file's own (its model card's record, or its shapes'). `val`: the val set when the
    caller has it already (the export scores two files on one), else read here.
    """
    runner, file_codec = onnx_runner(onnx_path, runtime or params.export.runtime)
    codec = codec or file_codec
    val = val or val_set(params, workdir)
    stats, _ = evaluate_cycles(runner, 1, codec, params, workdir, val)
    return stats[0]["AP"]
