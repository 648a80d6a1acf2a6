"""The int8 student: post-training static quantization of the exported ONNX file.

onnxruntime's `quantize_static` writes a QDQ graph (QuantizeLinear/DequantizeLinear pairs
around each quantized operator): standard ONNX, so onnxruntime and OpenVINO both read it
and run the pairs as int8 kernels. Weights are int8 per output channel, activations uint8
per tensor (the u8s8 form x86 integer kernels take), with ranges calibrated (MinMax) on
training crops prepared exactly as validation prepares a crop (the feed's `val_batch`: the
unaugmented box warped to the input size), so the ranges are those of real inputs.

What is quantized (measured on sdpose-t, OpenVINO, batch 8, one thread):
- every Conv and MatMul, nearly all of the student's multiply-adds, except the stem's
  overlapping strided convolutions (3x3, stride 2): on the quick start's trained student
  OpenVINO's int8 kernel for either of them alone moved the heatmaps by 0.76 of their peak
  (onnxruntime: 0.001, on the same file); in fp32 the whole file is 0.03 off on both, and
  sdpose-t's int8 file still runs 2.3x / 2.2x the fp32 one (1 / 2 threads, batch 8);
- the CNN stem's residual Adds and Relus (the rank-4 tensors): without them each
  bottleneck's output leaves int8 for an fp32 Add and is quantized again, and those
  conversions took a third of the int8 file's time (with the folding below: 2.1x -> 2.6x
  the fp32 file; README, "Deploying the student");
- not the transformer's Adds, LayerNorm, GELU or the attention core (the ONNX Attention
  op): the token stream's wide ranges cost accuracy there (heatmap gap 0.04 -> 0.21 of
  the peak) for about 5% more speed.
Before calibration the graph's constant subgraphs are folded (onnxruntime's basic graph
optimisation, as its `quant_pre_process` does): the patch embedding's weight is a Reshape
of an initializer, which the quantizer would otherwise quantize as an activation, so that
OpenVINO ran that one convolution in fp32 with its weight re-made on every call (14% of
the time).
"""

from __future__ import annotations

import collections
import itertools
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pyarrow.parquet as pq
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

from sdpose.core.codecs import Codec
from sdpose.data.feed import crop_shards, val_batch

QUANTIZED_OPS = ("Conv", "MatMul")  # everywhere
STEM_OPS = ("Add", "Relu")  # only on rank-4 tensors: the CNN stem's residual blocks
CALIBRATION_BATCH = 32
CALIBRATION_SPLIT = "train"


def calibration_images(workdir: Path, codec: Codec, samples: int) -> Iterator[np.ndarray]:
    """Up to `samples` training crops as network inputs (N, 3, H, W) float32, in batches.

    The first shards' first rows: crops are written in manifest order, which is already
    shuffled across images, and a calibration only needs a few hundred typical inputs.
    """
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

    batches = iter(batches)
    first = next(batches, None)
    if first is None or len(first) == 0:
        raise ValueError(f"{fp32_path}: no calibration images for the int8 form")
    input_name = onnx.load(str(fp32_path)).graph.input[0].name
    reader = _reader(itertools.chain([first], batches), input_name)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="sdpose-int8-") as scratch:
        folded = fold_constants(Path(fp32_path), Path(scratch) / "folded.onnx")
        quantize_static(
            str(folded),
            str(out_path),
            reader,
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            # 7-bit weights: CPUs without VNNI (AVX2 only) sum u8 x s8 products in int16
            # and saturate with 8-bit weights (heatmaps off by more than the gate allows)
            reduce_range=True,
            nodes_to_quantize=nodes_to_quantize(onnx.load(str(folded))),
        )
    ops = collections.Counter(node.op_type for node in onnx.load(str(out_path)).graph.node)
    return {
        "path": str(out_path),
        "calibration_samples": reader.samples,
        "quantized_nodes": ops["QuantizeLinear"],
        "nodes": sum(ops.values()),
    }


def fold_constants(path: Path, out_path: Path) -> Path:
    """`path` with its constant subgraphs folded into initializers, written to `out_path`.

    onnxruntime's basic level only: constant folding and redundant-node removal, standard
    operators kept, so the quantized file still loads on any runtime.
    """

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(out_path)
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return out_path


def nodes_to_quantize(model: onnx.ModelProto) -> list[str]:
    """The names of the nodes the int8 form quantizes (see the module docstring)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    values = [*inferred.graph.value_info, *inferred.graph.output]
    rank = {value.name: len(value.type.tensor_type.shape.dim) for value in values}
    return [
        node.name
        for node in inferred.graph.node
        if (node.op_type in QUANTIZED_OPS and not overlapping_strided(node))
        or (node.op_type in STEM_OPS and rank.get(node.output[0]) == 4)
    ]


def overlapping_strided(node: onnx.NodeProto) -> bool:
    """A convolution whose windows overlap and skip: the stem's 3x3 stride-2 ones, not the
    patch embedding (stride = kernel) nor the 1x1 and stride-1 convolutions."""
    if node.op_type != "Conv":
        return False
    attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    strides = list(attributes.get("strides", [1]))
    kernel = list(attributes.get("kernel_shape", [1] * len(strides)))
    return any(s > 1 and k > s for s, k in zip(strides, kernel, strict=False))
