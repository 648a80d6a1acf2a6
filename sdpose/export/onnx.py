"""The one-cycle student as one ONNX file, checked against PyTorch on every runtime.

Only the student ships: the exported graph is `StudentGraph`, the first cycle returning
the head's output alone, so the file holds one pass of the shared layers whatever the
training cycles were. From opset 23 on, attention is the standard ONNX `Attention` op (one fused
kernel in onnxruntime >= 1.23); older opsets get MatMul and Softmax, for older runtimes.
An export that does not reproduce PyTorch (onnx.checker, then max abs difference <=
`export.atol` on real inference, on every installed runtime) fails here rather than in a
deployment.

Contract of the file: input `images` (N, 3, H, W) float32 at the model's input size (256x192
for the paper presets, 128x96 for the nano ones), RGB normalised with the ImageNet mean and
std; output `heatmaps` (N, 17, h, w) float32 at its heatmap size, or for the SimCC head
`simcc` (N, 17, Wx + Hy) float32 logits, x bins then y bins; N is dynamic. The model card
records both shapes and the codec to decode with, and `sdpose predict` reads them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnxscript import opset23
from torch import nn

from sdpose.deploy.runtimes import cpu_session, installed_runtimes, open_session
from sdpose.models.student import StudentGraph

INPUT_NAME = "images"
OUTPUT_NAMES = {"heatmap": "heatmaps", "simcc": "simcc"}  # per head
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

    config = model.config
    model.eval()
    fused = opset >= FUSED_ATTENTION_OPSET
    student = StudentGraph(model, fused_attention=fused).eval()
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
            output_names=[output_name(config)],
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
        return model(images, cycles=1)[0].predictions

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


def output_name(config) -> str:  # config: ModelConfig
    """The file's output name: what the head predicts."""
    return OUTPUT_NAMES[config.head]


def _onnx_attention(query, key, value, heads: int):
    """`sdpose::attention` as ONNX Attention-23 on merged-head (N, L, D) tensors."""

    output, *_ = opset23.Attention(query, key, value, q_num_heads=heads, kv_num_heads=heads)
    return output


_ATTENTION_TRANSLATION = {torch.ops.sdpose.attention.default: _onnx_attention}


def _parity_diff(
    reference: Callable[[torch.Tensor], torch.Tensor],
    path: Path,
    batches: list[torch.Tensor],
    atol: float,
) -> dict[str, float]:
    """{runtime: max |its outputs - PyTorch reference|} over the batches, for every
    installed runtime: onnxruntime on the file as it is and as `sdpose predict` runs it
    (contrib attention), OpenVINO if installed; ExportError above `atol` on any of them."""
    with torch.no_grad():
        expected = [reference(images).numpy() for images in batches]
    worst: dict[str, float] = {}
    for form, runtime, run in _parity_sessions(path):
        for images, torch_outputs in zip(batches, expected, strict=True):
            onnx_outputs = run(images.numpy())
            if onnx_outputs.shape != torch_outputs.shape:
                raise ExportError(
                    f"{path}: the ONNX output has shape {onnx_outputs.shape}, "
                    f"PyTorch {torch_outputs.shape} (batch {images.shape[0]})"
                )
            diff = float(np.abs(onnx_outputs - torch_outputs).max())
            if not diff <= atol:
                raise ExportError(
                    f"{path}: ONNX ({form}) and PyTorch outputs differ by {diff:.3g} > "
                    f"export.atol {atol:g} (batch {images.shape[0]})"
                )
            worst[runtime] = max(worst.get(runtime, 0.0), diff)
    return worst


def _parity_sessions(path: Path) -> Iterator[tuple[str, str, Callable[[np.ndarray], np.ndarray]]]:
    """(form, runtime, run) of every way the file is run: onnxruntime as written and with
    its contrib attention, then each other installed runtime."""

    for contrib_attention in (False, True):
        session = cpu_session(path, contrib_attention=contrib_attention)
        form = "with onnxruntime's contrib attention" if contrib_attention else "as written"
        yield form, "onnxruntime", partial(_run_onnxruntime, session)
    for runtime in installed_runtimes():
        if runtime != "onnxruntime":
            yield f"on {runtime}", runtime, open_session(path, runtime).run


def _run_onnxruntime(session, images: np.ndarray) -> np.ndarray:
    return session.run(None, {INPUT_NAME: images})[0]  # the file's one output


def _opset(graph) -> int:
    return next(entry.version for entry in graph.opset_import if entry.domain in ("", "ai.onnx"))
