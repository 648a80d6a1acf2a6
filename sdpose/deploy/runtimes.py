"""Sessions of the exported student on the CPU runtimes it ships for: onnxruntime, OpenVINO.

Both read the same ONNX file. `open_session` gives one interface over either (a callable
from crops to heatmaps plus the file's input and output shapes), so predict, evaluation,
the registry's re-measurement, export parity and the bench run the file alike. onnxruntime
is a dependency; OpenVINO is the optional extra `openvino` (180 MB installed): asking for
a runtime that is not installed is a `RuntimeUnavailableError` error naming the extra.

OpenVINO runs with `INFERENCE_PRECISION_HINT=f32`: on CPUs with bf16 units (AVX512-BF16,
AMX) its default is bf16, which moves sdpose-t heatmaps by about 1e-2, a hundred times
`export.atol`; the fp32 file must run in fp32. Quantized (QDQ) operators still run in int8.

The file that ships holds standard ONNX operators only (opset 23 `Attention`), so that any
runtime can load it. onnxruntime's kernel for that op writes every (batch, head) score
matrix before it applies V: 19 MB at batch 8 for sdpose-t, which leaves the cache between
the two passes. Its contrib `MultiHeadAttention` computes the same function as a cache-tiled
flash attention on CPU. Sessions made here swap one for the other in memory only: the file
on disk stays portable, and export parity checks both forms.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from sdpose.core.errors import InputError
from sdpose.core.paths import CARD_NAME

CONTRIB_DOMAIN = "com.microsoft"
# Attributes of a standard Attention node that MultiHeadAttention reproduces at these values.
_PLAIN_ATTENTION = {"is_causal": 0, "softcap": 0.0, "qk_matmul_output_mode": 0}


def with_contrib_attention(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` whose plain self-attention nodes are contrib MultiHeadAttention.

    Only the form export writes is swapped: merged-head (N, L, D) inputs, as many key/value
    heads as query heads, no mask, cache, softcap, custom scale or extra outputs. Any other
    Attention node stays as it is.
    """
    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(model)
    swapped = 0
    for index, node in enumerate(rewritten.graph.node):
        heads = _plain_self_attention_heads(node)
        if heads is None:
            continue
        fused = onnx.helper.make_node(
            "MultiHeadAttention",
            list(node.input),
            list(node.output),
            name=node.name,
            domain=CONTRIB_DOMAIN,
            num_heads=heads,
        )
        rewritten.graph.node[index].CopyFrom(fused)
        swapped += 1
    if swapped and all(entry.domain != CONTRIB_DOMAIN for entry in rewritten.opset_import):
        rewritten.opset_import.append(onnx.helper.make_opsetid(CONTRIB_DOMAIN, 1))
    return rewritten


def _plain_self_attention_heads(node: onnx.NodeProto) -> int | None:
    """The head count of a swappable Attention node, None for any other node."""
    if node.op_type != "Attention" or node.domain not in ("", "ai.onnx"):
        return None
    if len(node.input) != 3 or not all(node.input) or len(node.output) != 1:
        return None
    attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    heads = attributes.pop("q_num_heads", None)
    if heads is None or attributes.pop("kv_num_heads", None) != heads:
        return None  # 4-D inputs, or grouped-query attention
    if any(attributes.pop(key, value) != value for key, value in _PLAIN_ATTENTION.items()):
        return None
    return None if attributes else int(heads)  # scale, softmax_precision, ...: keep as is


def cpu_session(path: Path, threads: int = 0, contrib_attention: bool = True):
    """An onnxruntime CPU session of the ONNX file at `path`; threads=0: onnxruntime's choice.

    Ops run one after another on `threads` threads: the student graph is a chain, so an
    inter-op pool would only compete with the intra-op one for the same cores.
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    source: str | bytes = str(path)
    if contrib_attention:
        model = onnx.load(str(path))
        source = with_contrib_attention(model).SerializeToString()
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


@dataclass(frozen=True)
class Runtime:
    """A CPU runtime the student runs on: the module it needs and the extra that installs it."""

    name: str
    module: str
    extra: str | None  # None: a dependency of sdpose itself


RUNTIMES: dict[str, Runtime] = {
    "onnxruntime": Runtime("onnxruntime", "onnxruntime", None),
    "openvino": Runtime("openvino", "openvino", "openvino"),
}
AUTO = "auto"  # the runtime the model card names (the faster one measured at export)
FALLBACK = "onnxruntime"  # always installed: what "auto" means without a model card


class RuntimeUnavailableError(InputError):
    """A runtime that is unknown or not installed (a ValueError: the CLI exits 2)."""


def require(name: str) -> Runtime:
    """The runtime called `name`, checked to be importable; RuntimeUnavailableError otherwise."""
    runtime = RUNTIMES.get(name)
    if runtime is None:
        raise RuntimeUnavailableError(
            f"runtime {name!r} is unknown; choose one of {sorted(RUNTIMES)} or {AUTO!r}"
        )
    if importlib.util.find_spec(runtime.module) is None:
        hint = f"pip install 'sdpose[{runtime.extra}]'" if runtime.extra else "reinstall sdpose"
        raise RuntimeUnavailableError(
            f"runtime {name!r} is not installed (no module {runtime.module!r}): {hint}"
        )
    return runtime


def resolve_runtime(requested: str, path: Path) -> str:
    """The runtime to run the file at `path` on: `requested`, or for "auto" the one the
    model card beside the file names for it (the faster one measured at export), if that
    one is installed here, else onnxruntime."""
    if requested != AUTO:
        return require(requested).name
    chosen = _card_runtime(Path(path))
    return chosen if chosen in installed_runtimes() else FALLBACK


def _card_runtime(path: Path) -> str | None:
    """The runtime `model_card.json` beside `path` records for that file, if any."""
    card_path = path.with_name(CARD_NAME)
    try:
        card = json.loads(card_path.read_text())
    except (OSError, ValueError):
        return None
    forms = (card.get("deploy") or {}).get("forms") or {}
    for form in forms.values():
        if isinstance(form, dict) and form.get("file") == path.name:
            return form.get("runtime")
    return None


def installed_runtimes() -> list[str]:
    """The names of the runtimes that can run here, onnxruntime first."""
    names = []
    for name in RUNTIMES:
        try:
            names.append(require(name).name)
        except RuntimeUnavailableError:
            continue
    return names


@dataclass(frozen=True)
class Session:
    """An ONNX file loaded on one runtime: `run(crops) -> heatmaps` and the file's shapes
    (a dynamic axis is None)."""

    runtime: str
    run: Callable[[np.ndarray], np.ndarray]
    input_shape: tuple[int | None, ...]
    output_shape: tuple[int | None, ...]


def open_session(path: Path, runtime: str = FALLBACK, threads: int = 0) -> Session:
    """The ONNX file at `path` on `runtime` with `threads` threads (0: the runtime's choice)."""
    name = require(runtime).name
    if name == "openvino":
        return _openvino_session(Path(path), threads)
    return _onnxruntime_session(Path(path), threads)


def _onnxruntime_session(path: Path, threads: int) -> Session:
    session = cpu_session(path, threads)
    (model_input,), (model_output,) = session.get_inputs(), session.get_outputs()

    def run(crops: np.ndarray) -> np.ndarray:
        feed = {model_input.name: np.ascontiguousarray(crops, dtype=np.float32)}
        return session.run([model_output.name], feed)[0]

    return Session("onnxruntime", run, _dims(model_input.shape), _dims(model_output.shape))


def _openvino_session(path: Path, threads: int) -> Session:
    """OpenVINO on the CPU, tuned for latency as `sdpose predict` calls it (one request at
    a time), in fp32 (see the module docstring)."""
    import openvino  # lazy: an optional extra, imported only where installed

    config: dict[str, object] = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    compiled = openvino.Core().compile_model(str(path), "CPU", config)
    request = compiled.create_infer_request()
    if len(compiled.inputs) != 1 or len(compiled.outputs) != 1:
        raise ValueError(f"{path}: expected one input and one output")

    def run(crops: np.ndarray) -> np.ndarray:
        request.infer({0: np.ascontiguousarray(crops, dtype=np.float32)})
        return request.get_output_tensor(0).data.copy()  # the request reuses its buffer

    shapes = [
        _openvino_dims(port.get_partial_shape()) for port in (compiled.input(0), compiled.output(0))
    ]
    return Session("openvino", run, *shapes)


def _dims(shape: Sequence[object]) -> tuple[int | None, ...]:
    return tuple(dim if isinstance(dim, int) else None for dim in shape)


def _openvino_dims(shape) -> tuple[int | None, ...]:
    return tuple(dim.get_length() if dim.is_static else None for dim in shape)
