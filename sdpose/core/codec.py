"""Heatmap codec: training targets, decoding and flip test of the heatmap head in one object.

Target generation and the decoder share `HeatmapCodec`, so the stride, the sub-pixel
convention and the crop mapping cannot drift apart between training and evaluation
(the MMPose 1.x `MSRAHeatmap` idea). The numbers follow mmpose 0.x top-down (non-UDP), as
the official SDPose config: Gaussian targets with unbiased (sub-pixel) encoding, DARK
("unbiased") decoding with an 11x11 modulation kernel, and the flip test's one-pixel shift.

The crop geometry (box <-> input pixels) is `sdpose.core.geometry.CropGeometry`'s;
heatmap pixel = input pixel / stride. Points are (x, y).

Shape legend: N persons, K keypoints, H x W heatmap, Hi x Wi input.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import cv2
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
class HeatmapCodec(CropGeometry):
    """Encodes keypoints into Gaussian heatmaps and decodes heatmaps into keypoints.

    Sizes are (height, width). `sigma` is in heatmap pixels; `unbiased` centres each
    Gaussian at the exact float position (DARK's encoding) instead of the rounded pixel;
    `blur_kernel` is DARK's modulation kernel at decoding.
    """

    heatmap_size: tuple[int, int] = (64, 48)
    sigma: float = 2.0
    unbiased: bool = True
    blur_kernel: int = 11

    def __post_init__(self) -> None:
        if len(self.input_size) != 2 or len(self.heatmap_size) != 2:
            raise ValueError("input_size and heatmap_size must be (height, width) pairs")
        if min(*self.input_size, *self.heatmap_size) <= 0:
            raise ValueError(f"sizes must be positive, got {self.input_size}, {self.heatmap_size}")
        if self.sigma <= 0:
            raise ValueError(f"sigma must be positive, got {self.sigma}")
        if self.blur_kernel < 1 or self.blur_kernel % 2 == 0:
            raise ValueError(f"blur_kernel must be a positive odd number, got {self.blur_kernel}")

    @property
    def output_shape(self) -> tuple[int, ...]:
        """What the network predicts per keypoint: an (H, W) heatmap."""
        return tuple(self.heatmap_size)

    @property
    def stride(self) -> np.ndarray:
        """Input pixels per heatmap pixel, (x, y): 4, 4 for 256x192 -> 64x48."""
        (in_h, in_w), (hm_h, hm_w) = self.input_size, self.heatmap_size
        return np.array([in_w / hm_w, in_h / hm_h])

    # ----------------------------------------------------------------- encoding
    def encode(self, keypoints: np.ndarray, visible: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Gaussian targets (N, K, H, W) float32 and target weights (N, K) float32.

        keypoints (N, K, 2) in input pixels; visible (N, K) bool or 0/1 (COCO's v may be
        passed as is: > 0.5 counts as visible). A single person (K, 2), (K,) works too.
        A weight is 0 for an invisible joint and for one whose 3-sigma window lies entirely
        outside the heatmap (mmpose's rule); its heatmap is then all zero.
        """
        keypoints, visible, single = batched_keypoints(keypoints, visible)
        heatmaps, weights = self._encode(keypoints, visible)
        return (heatmaps[0], weights[0]) if single else (heatmaps, weights)

    def _encode(self, keypoints: np.ndarray, visible: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`encode` for validated (N, K, 2) keypoints and (N, K) visibility."""
        hm_h, hm_w = self.heatmap_size
        finite = np.isfinite(keypoints).all(-1)
        use = (visible > 0.5) & finite
        mu = np.where(use[..., None], keypoints, 0.0) / self.stride  # (N, K, 2) heatmap px
        if not self.unbiased:
            mu = np.trunc(mu + 0.5)  # mmpose 0.x: int(x / stride + 0.5)
        radius = self.sigma * 3
        top_left, bottom_right = mu - radius, mu + radius + 1
        inside = (
            (top_left[..., 0] < hm_w)
            & (top_left[..., 1] < hm_h)
            & (bottom_right[..., 0] >= 0)
            & (bottom_right[..., 1] >= 0)
        )
        weights = (use & inside).astype(np.float32)
        # A 2-D Gaussian is the outer product of two 1-D ones: N*K*(H+W) exps, not N*K*H*W.
        dx = np.arange(hm_w) - mu[..., 0, None]  # (N, K, W)
        dy = np.arange(hm_h) - mu[..., 1, None]  # (N, K, H)
        gauss_x = np.exp(-(dx**2) / (2 * self.sigma**2))
        gauss_y = np.exp(-(dy**2) / (2 * self.sigma**2))
        if not self.unbiased:  # the biased target is cut to its (2 * 3 sigma + 1) window
            gauss_x *= np.abs(dx) <= int(radius)
            gauss_y *= np.abs(dy) <= int(radius)
        # Tails below 1e-15 go to 0 (the target changes by < 1e-15): their products, and
        # those products blurred by DARK, would be denormal floats, which make every later
        # operation on the maps (the loss, the decoder) many times slower.
        gauss_x[gauss_x < _NEGLIGIBLE] = 0
        gauss_y[gauss_y < _NEGLIGIBLE] = 0
        gauss_x = (gauss_x * weights[..., None]).astype(np.float32)
        gauss_y = gauss_y.astype(np.float32)
        return gauss_y[..., :, None] * gauss_x[..., None, :], weights

    # ----------------------------------------------------------------- decoding
    def decode(self, heatmaps: ArrayT, method: DecodeMethod = "dark") -> tuple[ArrayT, ArrayT]:
        """Keypoints (N, K, 2) in input pixels and scores (N, K) from heatmaps (N, K, H, W).

        `dark`: argmax, then DARK's second-order Taylor refinement on the log of the
        Gaussian-blurred heatmap (mmpose 0.x post_process='unbiased'). `argmax`: argmax plus
        a quarter pixel toward the higher neighbour (post_process='default'). The score is
        the heatmap maximum; a map whose maximum is <= 0 decodes to heatmap pixel (-1, -1),
        as mmpose. Returns numpy for numpy input, tensors on the input's device otherwise.
        """
        import torch  # lazy: see the module's note on torch

        if method not in ("dark", "argmax"):
            raise ValueError(f"decode: method must be 'dark' or 'argmax', got {method!r}")
        is_numpy = isinstance(heatmaps, np.ndarray)
        maps = torch.from_numpy(np.ascontiguousarray(heatmaps)) if is_numpy else heatmaps.detach()
        if maps.ndim != 4 or tuple(maps.shape[-2:]) != tuple(self.heatmap_size):
            raise ValueError(
                f"decode: heatmaps must be (N, K, {self.heatmap_size[0]}, {self.heatmap_size[1]})"
                f" for this codec, got {tuple(maps.shape)}"
            )
        maps = maps.float()
        coords, scores = _argmax(maps)
        if method == "dark":
            coords = self._dark_refine(maps, coords)
        else:
            coords = _quarter_shift(maps, coords)
        keypoints = (coords * torch.as_tensor(self.stride, device=maps.device)).float()
        if is_numpy:
            return keypoints.cpu().numpy(), scores.cpu().numpy()
        return keypoints, scores

    def _dark_refine(self, maps: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        """mmpose 0.x `_gaussian_blur` + log + `_taylor`, for all N x K maps at once."""
        import torch  # lazy: see the module's note on torch

        _, _, height, width = maps.shape
        log_maps = self._modulate(maps).clamp_min_(1e-10).log_()
        px, py = coords[..., 0].long(), coords[..., 1].long()

        def at(step_x: int, step_y: int) -> torch.Tensor:
            return _sample(log_maps, px + step_x, py + step_y).double()

        centre = at(0, 0)
        dx = 0.5 * (at(1, 0) - at(-1, 0))
        dy = 0.5 * (at(0, 1) - at(0, -1))
        dxx = 0.25 * (at(2, 0) - 2 * centre + at(-2, 0))
        dyy = 0.25 * (at(0, 2) - 2 * centre + at(0, -2))
        dxy = 0.25 * (at(1, 1) - at(1, -1) - at(-1, 1) + at(-1, -1))
        det = dxx * dyy - dxy**2
        # mmpose refines only two pixels away from the border (`1 < px < W - 2`).
        valid = (px > 1) & (px < width - 2) & (py > 1) & (py < height - 2) & (det != 0)
        safe_det = torch.where(valid, det, torch.ones_like(det))
        offset_x = -(dyy * dx - dxy * dy) / safe_det  # -inverse(Hessian) @ gradient
        offset_y = -(dxx * dy - dxy * dx) / safe_det
        offset = torch.stack([offset_x, offset_y], dim=-1) * valid[..., None]
        return coords + offset

    def _modulate(self, maps: torch.Tensor) -> torch.Tensor:
        """Gaussian blur with zero padding, rescaled to each map's original maximum."""
        import torch  # lazy: see the module's note on torch

        _, _, height, width = maps.shape
        # A zero-padded separable blur is rows @ map @ cols with banded matrices: on CPU
        # two small matmuls beat a one-channel conv2d by ~10x.
        rows = _blur_matrix(self.blur_kernel, height).to(maps.device)
        cols = _blur_matrix(self.blur_kernel, width).to(maps.device)
        blurred = torch.matmul(rows, maps @ cols.T)
        origin_max = maps.amax(dim=(2, 3), keepdim=True)
        blurred_max = blurred.amax(dim=(2, 3), keepdim=True)
        ratio = origin_max / torch.where(
            blurred_max == 0, torch.ones_like(blurred_max), blurred_max
        )
        return blurred.mul_(ratio)  # in place: each fresh full-size tensor costs page faults

    # ----------------------------------------------------------------- flip test
    def flip_back(self, heatmaps: ArrayT, shift: bool = True) -> ArrayT:
        """Heatmaps of a horizontally flipped input (N, K, H, W) -> the unflipped frame.

        Mirrors the maps, swaps left/right joints and, with `shift` (mmpose's
        shift_heatmap=True), moves them one pixel right: the image flip is x -> Wi-1-x, a
        0.75 heatmap-pixel offset from the array flip, which the shift roughly cancels.
        Without `shift` it is its own inverse.
        """
        if heatmaps.shape[1] != len(FLIP_INDEX):
            raise ValueError(
                f"flip_back: expected {len(FLIP_INDEX)} keypoint channels, got {heatmaps.shape[1]}"
            )
        if isinstance(heatmaps, np.ndarray):
            flipped = np.ascontiguousarray(heatmaps[:, FLIP_INDEX, :, ::-1])
            return np.concatenate([flipped[..., :1], flipped[..., :-1]], -1) if shift else flipped
        import torch  # lazy: see the module's note on torch

        index = torch.as_tensor(FLIP_INDEX, device=heatmaps.device)
        flipped = heatmaps.index_select(1, index).flip(-1)
        return torch.cat([flipped[..., :1], flipped[..., :-1]], -1) if shift else flipped


# --------------------------------------------------------------------- helpers
@functools.lru_cache(maxsize=16)
def _blur_matrix(kernel_size: int, size: int) -> torch.Tensor:
    """(size, size) matrix whose row i is the 1-D blur kernel centred on i, cut at the edges.

    The kernel is cv2's own for sigma=0, so the blur equals mmpose's cv2.GaussianBlur(k, 0)
    on a zero-padded map.
    """
    import torch  # lazy: see the module's note on torch

    kernel = torch.from_numpy(cv2.getGaussianKernel(kernel_size, 0).ravel()).float()
    radius = kernel_size // 2
    position = torch.arange(size)
    distance = position[None, :] - position[:, None]
    values = kernel[(distance + radius).clamp(0, kernel_size - 1)]
    return torch.where(distance.abs() <= radius, values, torch.zeros(()))


def _argmax(maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """mmpose 0.x `_get_max_preds`: integer (x, y) of the maximum, -1 where it is <= 0."""
    import torch  # lazy: see the module's note on torch

    width = maps.shape[-1]
    scores, index = maps.flatten(2).max(dim=2)
    coords = torch.stack([index % width, torch.div(index, width, rounding_mode="floor")], -1)
    coords = torch.where(scores[..., None] > 0, coords, torch.full_like(coords, -1))
    return coords.double(), scores


def _quarter_shift(maps: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Move each argmax a quarter pixel toward its higher neighbour, per axis."""
    import torch  # lazy: see the module's note on torch

    _, _, height, width = maps.shape
    px, py = coords[..., 0].long(), coords[..., 1].long()
    valid = (px > 1) & (px < width - 1) & (py > 1) & (py < height - 1)
    diff_x = _sample(maps, px + 1, py) - _sample(maps, px - 1, py)
    diff_y = _sample(maps, px, py + 1) - _sample(maps, px, py - 1)
    shift = 0.25 * torch.stack([diff_x.sign(), diff_y.sign()], -1).double()
    return coords + shift * valid[..., None]


def _sample(maps: torch.Tensor, px: torch.Tensor, py: torch.Tensor) -> torch.Tensor:
    """maps[n, k, py, px] for index maps (N, K); out-of-range indices are clamped."""
    _, _, height, width = maps.shape
    flat_index = py.clamp(0, height - 1) * width + px.clamp(0, width - 1)
    return maps.flatten(2).gather(2, flat_index[..., None])[..., 0]
