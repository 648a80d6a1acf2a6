"""The int8 gate: an export's int8 file ships only as accurate as its fp32 file, nearly.

The export decides (`int8_verdict`) and the registry stores the verdict as given. The
file may be registered with its version only if its ONNX AP is within
`export.int8_max_ap_drop` of the fp32 file's on the same val set and its heatmaps are within
`export.int8_rtol` of PyTorch's peak; a refusal says by how much it missed.
"""

from __future__ import annotations

from pathlib import Path

from sdpose.config import Params
from sdpose.deploy.registry import Int8Verdict

FLOAT_SLACK = 1e-9  # far below an AP's resolution (one instance in a million)


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


def int8_verdict(
    params: Params, path: Path, fp32_ap: float, int8_ap: float, heatmap_gap: float
) -> Int8Verdict:
    """The export's decision on its int8 file, handed to the registry, which stores it.

    `heatmap_gap`: the worst gap to PyTorch over the runtimes, a share of the peak.
    """
    refusal = int8_refusal(params, fp32_ap, int8_ap, heatmap_gap)
    if refusal:
        return Int8Verdict(False, f"not registered: {refusal}", path, int8_ap)
    reason = (
        f"registered (AP {int8_ap:.4f}, {fp32_ap - int8_ap:.4f} below fp32 {fp32_ap:.4f}; "
        f"export.int8_max_ap_drop {params.export.int8_max_ap_drop:g})"
    )
    return Int8Verdict(True, reason, path, int8_ap)
