"""The int8 student: post-training static quantization of the exported ONNX file.

onnxruntime's `quantize_static` writes a QDQ graph (QuantizeLinear/DequantizeLinear pairs
around each quantized operator): standard ONNX, so onnxruntime and OpenVINO both read it
and run the pairs as int8 kernels. Weights are int8 per output channel, activations uint8
per tensor (the u8s8 form x86 integer kernels take), with ranges calibrated (MinMax) on
training crops prepared exactly as validation prepares a crop (the feed's `val_batch`: the
unaugmented box warped to the input size), so the ranges are those of real inputs.

Only Conv and MatMul are quantized: they hold nearly all of the student's multiply-adds.
The attention core (the ONNX Attention op), LayerNorm and GELU stay fp32, where their
outputs' wide ranges would cost accuracy for little time.
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pyarrow.parquet as pq

from sdpose.core.codec import HeatmapCodec
from sdpose.core.paths import INT8_NAME

QUANTIZED_OPS = ("Conv", "MatMul")
CALIBRATION_BATCH = 32
CALIBRATION_SPLIT = "train"


def int8_path(fp32_path: Path) -> Path:
    """Where the int8 form of an exported file lives: beside it."""
    return Path(fp32_path).with_name(INT8_NAME)


def calibration_images(workdir: Path, codec: HeatmapCodec, samples: int) -> Iterator[np.ndarray]:
    """Up to `samples` training crops as network inputs (N, 3, H, W) float32, in batches.

    The first shards' first rows: crops are written in manifest order, which is already
    shuffled across images, and a calibration only needs a few hundred typical inputs.
    """
    from sdpose.data.feed import crop_shards, val_batch

    taken = 0
    for shard in crop_shards(workdir, CALIBRATION_SPLIT):
        table = pq.read_table(shard)
        for start in range(0, table.num_rows, CALIBRATION_BATCH):
            rows = table.slice(start, min(CALIBRATION_BATCH, samples - taken))
            yield val_batch(rows, codec)["images"]
            taken += rows.num_rows
            if taken >= samples:
                return


def _reader(batches: Iterable[np.ndarray], input_name: str):  # -> CalibrationDataReader
    """onnxruntime's calibration reader over batches of images; counts what it gave."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(batches)
            self.samples = 0

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            if batch is None:
                return None
            self.samples += len(batch)
            return {input_name: np.ascontiguousarray(batch, dtype=np.float32)}

    return Reader()


def quantize_student(
    fp32_path: Path, out_path: Path, batches: Iterable[np.ndarray]
) -> dict[str, Any]:
    """Write the int8 (QDQ) form of `fp32_path` to `out_path`, calibrated on `batches`.

    Returns {path, calibration_samples, quantized_nodes, nodes}; ValueError without any
    calibration batch (a range from no data would be garbage).
    """
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    batches = iter(batches)
    first = next(batches, None)
    if first is None or len(first) == 0:
        raise ValueError(f"{fp32_path}: no calibration images for the int8 form")
    input_name = onnx.load(str(fp32_path)).graph.input[0].name
    reader = _reader(itertools.chain([first], batches), input_name)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    quantize_static(
        str(fp32_path),
        str(out_path),
        reader,
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        op_types_to_quantize=list(QUANTIZED_OPS),
    )
    ops = collections.Counter(node.op_type for node in onnx.load(str(out_path)).graph.node)
    return {
        "path": str(out_path),
        "calibration_samples": reader.samples,
        "quantized_nodes": ops["QuantizeLinear"],
        "nodes": sum(ops.values()),
    }
