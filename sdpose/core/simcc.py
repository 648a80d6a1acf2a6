"""SimCC codec: keypoints as two 1-D classifications, one over x bins and one over y bins.

SimCC (Li et al., ECCV 2022) and RTMPose predict, per keypoint, a distribution over
`split` bins per input pixel on each axis instead of a 2-D heatmap: at 128x96 input and
split 2 that is 192 x-bins and 256 y-bins of half a pixel each, where the heatmap would
have 24 x 32 cells of 4 pixels. The numbers follow MMPose 1.x's `SimCCLabel` as RTMPose
configures it (`normalize=False`): each axis's target is a Gaussian of peak 1 centred at
the exact (sub-bin) position, sigma in bins, weight 0 for an unlabelled joint or one whose
3-sigma window misses the bins (MMPose's rule).

The network's output per keypoint is one vector, the x logits then the y logits,
(N, K, Wx + Hy), so that every path that carries a tensor (cycles, flip test, ONNX,
int8) carries SimCC unchanged. `beta` is the temperature that turns the logits into the
distribution over bins (the loss's, `training.losses.kl_discrete_loss`).

Decoding: the argmax bin per axis, refined by a parabola through the logits at the
argmax and its two neighbours ('dark': the 1-D Taylor step of DARK, exact for a log-
Gaussian; 'argmax': the bin itself). A keypoint's score is the probability that the joint
lies within two label sigmas of the decoded bin, the smaller of the two axes (MMPose takes
the smaller axis too): about 1 for a confident prediction, (4 sigma + 1) / bins for a flat
one, so the rescoring's `evaluate.vis_thr` reads as a probability.

Shape legend: N persons, K keypoints, Wx x-bins, Hy y-bins.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

from sdpose.core.geometry import ArrayT, CropGeometry, batched_keypoints
from sdpose.core.keypoints import FLIP_INDEX

if TYPE_CHECKING:
    import torch

# torch is imported where it is used (`# lazy`): Ray Data's crop and feed processes import
# this module to encode targets, and torch would cost each of them 1.4 s and 190 MB more

DecodeMethod = Literal["dark", "argmax"]
_NEGLIGIBLE = 1e-15


@dataclass(frozen=True)
class SimCCCodec(CropGeometry):
    """Encodes keypoints into per-axis Gaussian labels and decodes logits into keypoints.

    `split`: bins per input pixel (an integer, so that the flip test's mirror is a whole
    number of bins); `sigma`: (x, y) label sigmas in bins; `beta`: the logits' softmax
    temperature.
    """

    split: int = 2
    sigma: tuple[float, float] = (4.9, 5.66)
    beta: float = 10.0

    def __post_init__(self) -> None:
        if len(self.input_size) != 2 or min(self.input_size) <= 0:
            raise ValueError(
                f"input_size must be a positive (height, width), got {self.input_size}"
            )
        if not isinstance(self.split, int) or isinstance(self.split, bool) or self.split < 1:
            raise ValueError(f"split must be a positive integer, got {self.split!r}")
        if len(self.sigma) != 2 or min(self.sigma) <= 0:
            raise ValueError(f"sigma must be two positive numbers (x, y), got {self.sigma}")
        if self.beta <= 0:
            raise ValueError(f"beta must be positive, got {self.beta}")

    @property
    def bins(self) -> tuple[int, int]:
        """(Wx, Hy): x bins, then y bins."""
        return (self.input_size[1] * self.split, self.input_size[0] * self.split)

    @property
    def output_shape(self) -> tuple[int, ...]:
        """What the network predicts per keypoint: x logits then y logits, one vector."""
        return (sum(self.bins),)

    # ----------------------------------------------------------------- encoding
    def encode(self, keypoints: np.ndarray, visible: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Labels (N, K, Wx + Hy) float32 and target weights (N, K) float32.

        keypoints (N, K, 2) in input pixels; visible (N, K), > 0.5 counts as labelled. A
        single person (K, 2), (K,) works too. A zero-weight joint's labels are all zero.
        """
        keypoints, visible, single = batched_keypoints(keypoints, visible)
        labels, weights = self._encode(keypoints, visible)
        return (labels[0], weights[0]) if single else (labels, weights)

    def _encode(self, keypoints: np.ndarray, visible: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        use = (visible > 0.5) & np.isfinite(keypoints).all(-1)
        mu = np.where(use[..., None], keypoints, 0.0) * self.split  # (N, K, 2) in bins
        sigma = np.asarray(self.sigma, dtype=np.float64)
        low, high = mu - 3 * sigma, mu + 3 * sigma + 1
        size = np.asarray(self.bins)
        inside = ((low < size) & (high >= 0)).all(-1)
        weights = (use & inside).astype(np.float32)
        axes = []
        for axis, count in enumerate(self.bins):
            distance = np.arange(count) - mu[..., axis, None]  # (N, K, bins)
            gauss = np.exp(-(distance**2) / (2 * sigma[axis] ** 2))
            gauss[gauss < _NEGLIGIBLE] = 0  # no denormals in the loss (see HeatmapCodec)
            axes.append(gauss * weights[..., None])
        return np.concatenate(axes, axis=-1).astype(np.float32), weights

    # ----------------------------------------------------------------- decoding
    def split_axes(self, outputs: ArrayT) -> tuple[ArrayT, ArrayT]:
        """(..., Wx + Hy) -> the x part (..., Wx) and the y part (..., Hy)."""
        width = self.bins[0]
        return outputs[..., :width], outputs[..., width:]

    def decode(self, outputs: ArrayT, method: DecodeMethod = "dark") -> tuple[ArrayT, ArrayT]:
        """Keypoints (N, K, 2) in input pixels and scores (N, K) from logits (N, K, Wx + Hy).

        Returns numpy for numpy input, tensors on the input's device otherwise.
        """
        import torch  # lazy: see the module's note on torch

        if method not in ("dark", "argmax"):
            raise ValueError(f"decode: method must be 'dark' or 'argmax', got {method!r}")
        is_numpy = isinstance(outputs, np.ndarray)
        logits = torch.from_numpy(np.ascontiguousarray(outputs)) if is_numpy else outputs.detach()
        if logits.ndim != 3 or tuple(logits.shape[-1:]) != self.output_shape:
            raise ValueError(
                f"decode: SimCC outputs must be (N, K, {self.output_shape[0]}) for this codec "
                f"({self.bins[0]} x + {self.bins[1]} y bins), got {tuple(logits.shape)}"
            )
        logits = logits.float()
        coords, scores = [], []
        for axis_logits, sigma in zip(self.split_axes(logits), self.sigma, strict=True):
            position, score = self._decode_axis(axis_logits, sigma, method == "dark")
            coords.append(position)
            scores.append(score)
        keypoints = torch.stack(coords, dim=-1) / self.split
        score = torch.minimum(scores[0], scores[1])
        if is_numpy:
            return keypoints.cpu().numpy(), score.cpu().numpy()
        return keypoints, score

    def _decode_axis(
        self, logits: torch.Tensor, sigma: float, refine: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One axis: (N, K, bins) logits -> bin position (N, K) float64 and score (N, K)."""
        import torch  # lazy: see the module's note on torch

        bins = logits.shape[-1]
        best = logits.argmax(dim=-1)
        position = best.double()
        if refine:
            at = lambda step: logits.gather(-1, (best + step).clamp(0, bins - 1)[..., None])[..., 0]  # noqa: E731
            left, centre, right = at(-1).double(), at(0).double(), at(1).double()
            curvature = left - 2 * centre + right
            interior = (best > 0) & (best < bins - 1) & (curvature < 0)
            safe = torch.where(interior, curvature, torch.ones_like(curvature))
            offset = torch.where(interior, 0.5 * (left - right) / safe, torch.zeros_like(safe))
            position = position + offset.clamp(-0.5, 0.5)
        probability = torch.softmax(logits * self.beta, dim=-1)
        radius = math.ceil(2 * sigma)
        index = torch.arange(bins, device=logits.device)
        window = (index - best[..., None]).abs() <= radius
        return position, (probability * window).sum(-1)

    # ----------------------------------------------------------------- flip test
    def flip_back(self, outputs: ArrayT, shift: bool = True) -> ArrayT:
        """Outputs of a horizontally flipped input (N, K, Wx + Hy) -> the unflipped frame.

        Swaps left and right joints and mirrors the x bins. The image flip maps input x to
        Wi - 1 - x, bin b to Wx - split - b, while reversing the vector maps it to Wx - 1 - b:
        with `shift`, the mirrored x bins move split - 1 bins left (the edge bin repeated),
        which makes the two agree exactly (the heatmap's shift goes the other way: there a
        cell is 4 pixels, not 1/split). The y bins are unchanged.
        """
        if outputs.shape[1] != len(FLIP_INDEX):
            raise ValueError(
                f"flip_back: expected {len(FLIP_INDEX)} keypoint channels, got {outputs.shape[1]}"
            )
        steps = self.split - 1 if shift else 0
        if isinstance(outputs, np.ndarray):
            swapped = outputs[:, FLIP_INDEX]
            x_part, y_part = self.split_axes(swapped)
            mirrored = x_part[..., ::-1]
            if steps:
                edge = np.repeat(mirrored[..., -1:], steps, axis=-1)
                mirrored = np.concatenate([mirrored[..., steps:], edge], axis=-1)
            return np.ascontiguousarray(np.concatenate([mirrored, y_part], axis=-1))
        import torch  # lazy: see the module's note on torch

        index = torch.as_tensor(FLIP_INDEX, device=outputs.device)
        x_part, y_part = self.split_axes(outputs.index_select(1, index))
        mirrored = x_part.flip(-1)
        if steps:
            edge = mirrored[..., -1:].expand(*mirrored.shape[:-1], steps)
            mirrored = torch.cat([mirrored[..., steps:], edge], dim=-1)
        return torch.cat([mirrored, y_part], dim=-1)
