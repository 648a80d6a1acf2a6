"""The int8 gate: an export's int8 file ships only as accurate as its fp32 file, nearly.

It may be registered with its version only if its ONNX AP is within
`export.int8_max_ap_drop` of the fp32 file's on the same val set and its heatmaps are within
`export.int8_rtol` of PyTorch's peak; a refusal says by how much it missed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdpose.config import Params

FLOAT_SLACK = 1e-9  # far below an AP's resolution (one instance in a million)


@dataclass(frozen=True)
class Int8Candidate:
    """The int8 file of an export and what the gate reads: both ONNX APs on the same val
    set, and the worst heatmap gap to PyTorch over the runtimes (a share of the peak)."""

    path: Path
    ap: float
    fp32_ap: float
    heatmap_gap: float


def int8_refusal(params: Params, fp32_ap: float, int8_ap: float, heatmap_gap: float) -> str | None:
    """Why an int8 file may not be registered, saying by how much it missed; None if it may.

    At the limits it passes (to within float rounding: 0.42 - 0.415 is not 0.005 exactly).
    """
    reasons = []
    drop, limit = fp32_ap - int8_ap, params.export.int8_max_ap_drop
    if drop > limit + FLOAT_SLACK:
        reasons.append(
            f"int8 AP {int8_ap:.4f} is {drop:.4f} below fp32 {fp32_ap:.4f}, "
            f"{drop - limit:.4f} more than export.int8_max_ap_drop {limit:g}"
        )
    rtol = params.export.int8_rtol
    if heatmap_gap > rtol + FLOAT_SLACK:
        reasons.append(
            f"int8 outputs differ from PyTorch's by {heatmap_gap:.3g} of their peak, "
            f"{heatmap_gap - rtol:.3g} more than export.int8_rtol {rtol:g}"
        )
    return "; ".join(reasons) or None


def int8_outcome(params: Params, int8: Int8Candidate | None) -> dict[str, Any]:
    """{registered, reason} of an export's int8 file."""
    if int8 is None:
        return {"registered": False, "reason": "no int8 form was built"}
    refusal = int8_refusal(params, int8.fp32_ap, int8.ap, int8.heatmap_gap)
    if refusal:
        return {"registered": False, "reason": f"not registered: {refusal}"}
    return {
        "registered": True,
        "reason": (
            f"registered (AP {int8.ap:.4f}, {int8.fp32_ap - int8.ap:.4f} below fp32 "
            f"{int8.fp32_ap:.4f}; export.int8_max_ap_drop {params.export.int8_max_ap_drop:g})"
        ),
    }
