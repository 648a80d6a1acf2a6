"""onnxruntime sessions for the exported student, with onnxruntime's tiled attention kernel.

The file that ships holds standard ONNX operators only (opset 23 `Attention`), so that any
runtime can load it. onnxruntime's kernel for that op writes every (batch, head) score
matrix before it applies V: 19 MB at batch 8 for sdpose-t, which leaves the cache between
the two passes. Its contrib `MultiHeadAttention` computes the same function as a cache-tiled
flash attention on CPU. Sessions made here swap one for the other in memory only: the file
on disk stays portable, and export parity checks both forms.
"""

from __future__ import annotations

from pathlib import Path

import onnx

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
    import onnxruntime as ort

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
