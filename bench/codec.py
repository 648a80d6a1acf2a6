"""Heatmap codec throughput: vectorised HeatmapCodec against per-joint loops (mmpose 0.x style).

Encoding runs in the data feed for every training sample and decoding in every validation
batch, so both must cost far less than the model step. Prints persons/s for a batch of 64
and the speedup over the loop baseline.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import cv2
import numpy as np
import torch

from sdpose.core.codec import HeatmapCodec

BATCH, JOINTS, SIGMA = 64, 17, 2.0


def loop_encode(keypoints: np.ndarray, visible: np.ndarray) -> np.ndarray:
    """Baseline: one full-size Gaussian per joint, as mmpose 0.x's unbiased target."""
    target = np.zeros((*visible.shape, 64, 48), np.float32)
    xs, ys = np.arange(48, dtype=np.float32), np.arange(64, dtype=np.float32)[:, None]
    for n, k in np.ndindex(*visible.shape):
        if visible[n, k]:
            mu_x, mu_y = keypoints[n, k] / 4
            target[n, k] = np.exp(-((xs - mu_x) ** 2 + (ys - mu_y) ** 2) / (2 * SIGMA**2))
    return target


def loop_decode_dark(heatmaps: np.ndarray) -> np.ndarray:
    """Baseline: per-map cv2 blur and a 2x2 solve, as mmpose 0.x post_process='unbiased'."""
    coords = np.zeros((*heatmaps.shape[:2], 2))
    for n, k in np.ndindex(*heatmaps.shape[:2]):
        heatmap = heatmaps[n, k]
        py, px = np.unravel_index(np.argmax(heatmap), heatmap.shape)
        padded = cv2.copyMakeBorder(heatmap, 5, 5, 5, 5, cv2.BORDER_CONSTANT, value=0)
        log_map = np.log(np.maximum(cv2.GaussianBlur(padded, (11, 11), 0)[5:-5, 5:-5], 1e-10))
        g = log_map[py - 2 : py + 3, px - 2 : px + 3].astype(np.float64)
        gradient = 0.5 * np.array([g[2, 3] - g[2, 1], g[3, 2] - g[1, 2]])
        dxy = 0.25 * (g[3, 3] - g[1, 3] - g[3, 1] + g[1, 1])
        hessian = 0.25 * np.array(
            [[g[2, 4] - 2 * g[2, 2] + g[2, 0], 4 * dxy], [4 * dxy, g[4, 2] - 2 * g[2, 2] + g[0, 2]]]
        )
        coords[n, k] = [px, py] - np.linalg.solve(hessian, gradient)
    return coords


def per_second(function: Callable[[], object], repeats: int) -> float:
    """Batches per CPU second, best of five rounds after a warm-up call."""
    function()
    best = float("inf")
    for _ in range(5):
        start = time.process_time()
        for _ in range(repeats):
            function()
        best = min(best, (time.process_time() - start) / repeats)
    return 1.0 / best


def report(name: str, fast: float, baseline: float | None = None) -> None:
    line = f"{name:<30} {fast * BATCH:>8,.0f} persons/s  {1e3 / fast:7.2f} ms/batch"
    if baseline is not None:
        line += f"  x{fast / baseline:.1f} vs loop"
    print(line)


def main() -> None:
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    codec = HeatmapCodec()
    rng = np.random.default_rng(0)
    keypoints = rng.uniform([16, 16], [176, 240], size=(BATCH, JOINTS, 2))
    visible = np.ones((BATCH, JOINTS), bool)
    heatmaps, _ = codec.encode(keypoints, visible)
    heatmaps_torch = torch.from_numpy(heatmaps)
    print(
        f"batch {BATCH}, {JOINTS} joints, 256x192 -> 64x48, torch threads {torch.get_num_threads()}"
    )

    encode = per_second(lambda: codec.encode(keypoints, visible), 50)
    report("encode (numpy)", encode, per_second(lambda: loop_encode(keypoints, visible), 3))
    encode_one = per_second(lambda: codec.encode(keypoints[0], visible[0]), 500)
    print(f"{'encode one person':<30} {encode_one:>8,.0f} persons/s")

    dark = per_second(lambda: codec.decode(heatmaps, "dark"), 20)
    report("decode dark (numpy in/out)", dark, per_second(lambda: loop_decode_dark(heatmaps), 2))
    report("decode dark (torch cpu)", per_second(lambda: codec.decode(heatmaps_torch), 20))
    report("decode argmax (numpy)", per_second(lambda: codec.decode(heatmaps, "argmax"), 20))
    report("flip_back (torch cpu)", per_second(lambda: codec.flip_back(heatmaps_torch), 50))


if __name__ == "__main__":
    main()
