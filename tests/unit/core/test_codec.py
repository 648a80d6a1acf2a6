"""HeatmapCodec: encode/decode against loop re-derivations of mmpose 0.x, round trips,
the flip test and the crop geometry."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from sdpose.core.codec import HeatmapCodec
from sdpose.core.geometry import apply_affine, invert_affine
from sdpose.core.keypoints import FLIP_PAIRS, NUM_KEYPOINTS

pytestmark = pytest.mark.unit

INPUT_W, INPUT_H = 192, 256
STRIDE = 4.0


@pytest.fixture
def codec() -> HeatmapCodec:
    return HeatmapCodec()


def random_keypoints(rng: np.random.Generator, num: int, margin_px: float) -> np.ndarray:
    """(num, 17, 2) float input-pixel keypoints at least `margin_px` from the input border."""
    low, high = [margin_px, margin_px], [INPUT_W - margin_px, INPUT_H - margin_px]
    return rng.uniform(low, high, size=(num, NUM_KEYPOINTS, 2))


# ----------------------------------------------------------------- loop references
def loop_encode(keypoints: np.ndarray, visible: np.ndarray, sigma: float = 2.0):
    """mmpose 0.x `_msra_generate_target(unbiased_encoding=True)`, one joint at a time."""
    num, joints = visible.shape
    target = np.zeros((num, joints, 64, 48))
    weight = np.zeros((num, joints))
    ys, xs = np.mgrid[0:64, 0:48]
    for n in range(num):
        for k in range(joints):
            weight[n, k] = float(visible[n, k])
            mu_x, mu_y = keypoints[n, k] / STRIDE
            if mu_x - 3 * sigma >= 48 or mu_y - 3 * sigma >= 64:
                weight[n, k] = 0
            if mu_x + 3 * sigma + 1 < 0 or mu_y + 3 * sigma + 1 < 0:
                weight[n, k] = 0
            if weight[n, k] > 0.5:
                target[n, k] = np.exp(-((xs - mu_x) ** 2 + (ys - mu_y) ** 2) / (2 * sigma**2))
    return target, weight


def loop_argmax(heatmap: np.ndarray) -> tuple[np.ndarray, float]:
    y, x = np.unravel_index(np.argmax(heatmap), heatmap.shape)
    score = float(heatmap[y, x])
    return (np.array([x, y], dtype=np.float64) if score > 0 else np.array([-1.0, -1.0])), score


def taylor_offset(log_map: np.ndarray, px: int, py: int) -> np.ndarray:
    """mmpose 0.x `_taylor`: -inverse(Hessian) @ gradient at the integer maximum."""

    def g(dx: int, dy: int) -> float:
        return log_map[py + dy, px + dx]

    gradient = np.array([g(1, 0) - g(-1, 0), g(0, 1) - g(0, -1)]) * 0.5
    dxx = 0.25 * (g(2, 0) - 2 * g(0, 0) + g(-2, 0))
    dyy = 0.25 * (g(0, 2) - 2 * g(0, 0) + g(0, -2))
    dxy = 0.25 * (g(1, 1) - g(1, -1) - g(-1, 1) + g(-1, -1))
    hessian = np.array([[dxx, dxy], [dxy, dyy]])
    if np.linalg.det(hessian) == 0:
        return np.zeros(2)
    return -np.linalg.inv(hessian) @ gradient


def loop_decode(heatmaps: np.ndarray, method: str) -> tuple[np.ndarray, np.ndarray]:
    """mmpose 0.x keypoints_from_heatmaps in heatmap pixels, with cv2 and np.linalg."""
    num, joints, height, width = heatmaps.shape
    coords, scores = np.zeros((num, joints, 2)), np.zeros((num, joints))
    for n in range(num):
        for k in range(joints):
            heatmap = heatmaps[n, k].astype(np.float32)
            coord, scores[n, k] = loop_argmax(heatmap)
            px, py = int(coord[0]), int(coord[1])
            if method == "argmax":
                if 1 < px < width - 1 and 1 < py < height - 1:
                    coord += 0.25 * np.sign(
                        [
                            heatmap[py, px + 1] - heatmap[py, px - 1],
                            heatmap[py + 1, px] - heatmap[py - 1, px],
                        ]
                    )
            else:
                padded = np.zeros((height + 10, width + 10), np.float32)
                padded[5:-5, 5:-5] = heatmap
                blurred = cv2.GaussianBlur(padded, (11, 11), 0)[5:-5, 5:-5]
                blurred *= heatmap.max() / blurred.max()
                log_map = np.log(np.maximum(blurred, 1e-10)).astype(np.float64)
                if 1 < px < width - 2 and 1 < py < height - 2:
                    coord += taylor_offset(log_map, px, py)
            coords[n, k] = coord
    return coords, scores


# ----------------------------------------------------------------- encoding
def test_encode_matches_loop_reference(codec: HeatmapCodec) -> None:
    rng = np.random.default_rng(0)
    keypoints = rng.uniform(-40, 240, size=(6, NUM_KEYPOINTS, 2))
    visible = rng.random((6, NUM_KEYPOINTS)) > 0.3
    heatmaps, weights = codec.encode(keypoints, visible)
    expected_heatmaps, expected_weights = loop_encode(keypoints, visible)
    assert heatmaps.shape == (6, NUM_KEYPOINTS, 64, 48) and heatmaps.dtype == np.float32
    assert weights.shape == (6, NUM_KEYPOINTS) and weights.dtype == np.float32
    np.testing.assert_array_equal(weights, expected_weights)
    np.testing.assert_allclose(heatmaps, expected_heatmaps, atol=1e-6)


def test_unbiased_peak_is_off_grid(codec: HeatmapCodec) -> None:
    keypoint = np.array([[[101.0, 122.0]]])  # heatmap (25.25, 30.5): between pixels
    heatmaps, _ = HeatmapCodec().encode(
        np.repeat(keypoint, NUM_KEYPOINTS, 1), np.ones((1, NUM_KEYPOINTS))
    )
    row = heatmaps[0, 0, 30]
    assert row[25] > row[26] and row[25] < 1.0  # centred at 25.25, not on a pixel
    np.testing.assert_allclose(heatmaps[0, 0, 30, 25], np.exp(-(0.25**2 + 0.5**2) / 8), rtol=1e-6)


def test_biased_encoding_rounds_and_truncates() -> None:
    codec = HeatmapCodec(unbiased=False)
    keypoints = np.full((1, NUM_KEYPOINTS, 2), [101.0, 122.0])  # heatmap (25.25, 30.5)
    heatmaps, _ = codec.encode(keypoints, np.ones((1, NUM_KEYPOINTS)))
    # mmpose 0.x: mu = int(x / 4 + 0.5) -> (25, 31); a 13x13 window around it
    assert heatmaps[0, 0, 31, 25] == pytest.approx(1.0)
    assert heatmaps[0, 0, 31, 31] > 0 and heatmaps[0, 0, 31, 32] == 0
    assert heatmaps[0, 0, 25, 25] > 0 and heatmaps[0, 0, 24, 25] == 0


def test_weights_zero_for_invisible_and_out_of_range(codec: HeatmapCodec) -> None:
    keypoints = np.full((1, NUM_KEYPOINTS, 2), 100.0)
    visible = np.ones((1, NUM_KEYPOINTS))
    visible[0, 0] = 0
    # heatmap x = mu; the 3-sigma window [mu - 6, mu + 7) must touch [0, 48)
    keypoints[0, 1] = [-30.0, 100]  # mu -7.5: window ends at -0.5 -> outside
    keypoints[0, 2] = [-20.0, 100]  # mu -5: window ends at 2 -> partly inside
    keypoints[0, 3] = [216.0, 100]  # mu 54: window starts at 48 -> outside
    keypoints[0, 4] = [215.0, 100]  # mu 53.75: starts at 47.75 -> inside
    keypoints[0, 5] = [100.0, 281]  # y mu 70.25: starts at 64.25 -> outside
    keypoints[0, 6] = [np.nan, np.nan]  # a visible but missing coordinate
    heatmaps, weights = codec.encode(keypoints, visible)
    assert weights[0, :7].tolist() == [0, 0, 1, 0, 1, 0, 0]
    assert np.all(weights[0, 7:] == 1)
    for joint in (0, 1, 3, 5, 6):
        assert not heatmaps[0, joint].any()
    assert np.isfinite(heatmaps).all()
    assert heatmaps[0, 2, :, 0].max() > 0.01  # the partly visible Gaussian is drawn


def test_encode_single_person_and_bad_shape(codec: HeatmapCodec) -> None:
    keypoints = random_keypoints(np.random.default_rng(1), 1, 20)
    batch_maps, batch_weights = codec.encode(keypoints, np.ones((1, NUM_KEYPOINTS)))
    maps, weights = codec.encode(keypoints[0], np.ones(NUM_KEYPOINTS))
    np.testing.assert_array_equal(maps, batch_maps[0])
    np.testing.assert_array_equal(weights, batch_weights[0])
    with pytest.raises(ValueError, match="visible"):
        codec.encode(keypoints, np.ones((1, 5)))


# ----------------------------------------------------------------- decoding
@pytest.mark.parametrize("method", ["dark", "argmax"])
def test_decode_matches_loop_reference(codec: HeatmapCodec, method: str) -> None:
    rng = np.random.default_rng(2)
    keypoints = rng.uniform(-4, 196, size=(4, NUM_KEYPOINTS, 2))  # borders included
    heatmaps, _ = codec.encode(keypoints, np.ones((4, NUM_KEYPOINTS)))
    heatmaps = heatmaps + rng.normal(0, 0.02, heatmaps.shape).astype(np.float32)
    heatmaps[0, 0] = -0.5  # no positive maximum
    decoded, scores = codec.decode(heatmaps, method=method)
    expected, expected_scores = loop_decode(heatmaps, method)
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-6)
    np.testing.assert_allclose(decoded, expected * STRIDE, atol=1e-4)
    assert decoded[0, 0].tolist() == [-STRIDE, -STRIDE]


def test_round_trip_dark_within_a_tenth_pixel(codec: HeatmapCodec) -> None:
    # DARK's zero-padded blur biases the last few pixels; mmpose's behaviour, kept.
    keypoints = random_keypoints(np.random.default_rng(3), 64, margin_px=4 * STRIDE)
    heatmaps, _ = codec.encode(keypoints, np.ones((64, NUM_KEYPOINTS)))
    decoded, scores = codec.decode(heatmaps, method="dark")
    error = np.abs(decoded - keypoints) / STRIDE
    assert error.max() < 0.1
    assert np.median(error) < 0.01
    assert scores.min() > 0.9


def test_round_trip_argmax_within_a_third_pixel(codec: HeatmapCodec) -> None:
    keypoints = random_keypoints(np.random.default_rng(4), 64, margin_px=2 * STRIDE)
    heatmaps, _ = codec.encode(keypoints, np.ones((64, NUM_KEYPOINTS)))
    decoded, _ = codec.decode(heatmaps, method="argmax")
    error = np.abs(decoded - keypoints) / STRIDE
    assert error.max() <= 0.3
    assert error.mean() < 0.15  # the quarter shift helps: plain argmax averages 0.25


def test_torch_and_numpy_decode_agree(codec: HeatmapCodec) -> None:
    keypoints = random_keypoints(np.random.default_rng(5), 8, margin_px=10)
    heatmaps, _ = codec.encode(keypoints, np.ones((8, NUM_KEYPOINTS)))
    for method in ("dark", "argmax"):
        np_points, np_scores = codec.decode(heatmaps, method=method)
        torch_points, torch_scores = codec.decode(torch.from_numpy(heatmaps), method=method)
        assert isinstance(torch_points, torch.Tensor)
        np.testing.assert_allclose(torch_points.numpy(), np_points, atol=1e-5)
        np.testing.assert_allclose(torch_scores.numpy(), np_scores)
    with pytest.raises(ValueError, match="method"):
        codec.decode(heatmaps, method="soft")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="64, 48"):
        codec.decode(heatmaps[..., :32])


# ----------------------------------------------------------------- flip test
def mirror_setup(keypoints: np.ndarray) -> np.ndarray:
    """Keypoints of the horizontally flipped input image: x -> W - 1 - x, left <-> right."""
    mirrored = keypoints.copy()
    mirrored[..., 0] = INPUT_W - 1 - mirrored[..., 0]
    for left, right in FLIP_PAIRS:
        mirrored[:, [left, right]] = mirrored[:, [right, left]]
    return mirrored


def test_flip_back_of_flipped_image_recovers_keypoints(codec: HeatmapCodec) -> None:
    rng = np.random.default_rng(6)
    keypoints = random_keypoints(rng, 16, margin_px=20)
    visible = rng.random((16, NUM_KEYPOINTS)) > 0.3
    flipped_visible = visible.copy()
    for left, right in FLIP_PAIRS:
        flipped_visible[:, [left, right]] = flipped_visible[:, [right, left]]
    flipped_maps, _ = codec.encode(mirror_setup(keypoints), flipped_visible)
    decoded, scores = codec.decode(codec.flip_back(flipped_maps), method="dark")
    # left/right swapped back: a joint is found exactly where the original was visible
    np.testing.assert_array_equal(scores > 0.5, visible)
    # x -> 191 - x is 0.75 heatmap px away from the array flip; the 1-px shift leaves +0.25
    expected = keypoints + np.array([0.25 * STRIDE, 0.0])
    np.testing.assert_allclose(decoded[visible], expected[visible], atol=0.1 * STRIDE)


def test_flip_back_is_array_flip_and_shift(codec: HeatmapCodec) -> None:
    rng = np.random.default_rng(7)
    heatmaps = rng.random((2, NUM_KEYPOINTS, 64, 48)).astype(np.float32)
    unshifted = codec.flip_back(heatmaps, shift=False)
    np.testing.assert_array_equal(codec.flip_back(unshifted, shift=False), heatmaps)
    assert codec.decode(unshifted)[0].shape == (2, NUM_KEYPOINTS, 2)  # numpy views decode
    for left, right in FLIP_PAIRS:
        np.testing.assert_array_equal(unshifted[:, left], heatmaps[:, right, :, ::-1])
    np.testing.assert_array_equal(unshifted[:, 0], heatmaps[:, 0, :, ::-1])
    shifted = codec.flip_back(heatmaps)
    np.testing.assert_array_equal(shifted[..., 1:], unshifted[..., :-1])
    np.testing.assert_array_equal(shifted[..., 0], unshifted[..., 0])
    torch_shifted = codec.flip_back(torch.from_numpy(heatmaps))
    np.testing.assert_array_equal(torch_shifted.numpy(), shifted)


def test_flip_back_keeps_gradients(codec: HeatmapCodec) -> None:
    heatmaps = torch.rand(1, NUM_KEYPOINTS, 8, 6, requires_grad=True)
    codec.flip_back(heatmaps).sum().backward()
    assert heatmaps.grad is not None and heatmaps.grad[..., 0].sum() == 0  # column 0 dropped


# ----------------------------------------------------------------- geometry
def test_to_image_and_to_input_are_inverse(codec: HeatmapCodec) -> None:
    rng = np.random.default_rng(8)
    center = rng.uniform(100, 500, size=(5, 2))
    scale = rng.uniform(50, 300, size=(5, 1)) * [1.0, INPUT_H / INPUT_W]
    corners = np.array([[[0.0, 0.0], [INPUT_W, INPUT_H], [INPUT_W / 2, INPUT_H / 2]]] * 5)
    in_image = codec.to_image(corners, center, scale)
    np.testing.assert_allclose(in_image[:, 0], center - scale / 2)
    np.testing.assert_allclose(in_image[:, 1], center + scale / 2)
    np.testing.assert_allclose(in_image[:, 2], center)
    keypoints = rng.uniform(0, 256, size=(5, NUM_KEYPOINTS, 2))
    back = codec.to_input(codec.to_image(keypoints, center, scale), center, scale)
    np.testing.assert_allclose(back, keypoints, atol=1e-9)
    as_torch = codec.to_image(torch.from_numpy(keypoints), torch.from_numpy(center), scale)
    np.testing.assert_allclose(as_torch.numpy(), codec.to_image(keypoints, center, scale))


def mmpose_affine(center, scale, rotation, out_w, out_h) -> np.ndarray:
    """mmpose 0.x get_affine_transform's three-point construction, in original pixels."""
    angle = np.deg2rad(rotation)
    up = np.array([0.0, -scale[0] / 2])
    src_dir = np.array(
        [
            up[0] * np.cos(angle) - up[1] * np.sin(angle),
            up[0] * np.sin(angle) + up[1] * np.cos(angle),
        ]
    )
    third = lambda a, b: b + np.array([-(a - b)[1], (a - b)[0]])  # noqa: E731
    src = [center, center + src_dir]
    dst = [np.array([out_w / 2, out_h / 2]), np.array([out_w / 2, out_h / 2 - out_w / 2])]
    src, dst = [*src, third(*src)], [*dst, third(*dst)]
    return cv2.getAffineTransform(np.float32(src), np.float32(dst))


@pytest.mark.parametrize("rotation", [0.0, 30.0, -75.0, 180.0])
def test_affine_matrix_matches_mmpose_construction(codec: HeatmapCodec, rotation: float) -> None:
    center, scale = np.array([320.0, 240.0]), np.array([150.0, 200.0])
    matrix = codec.affine_matrix(center, scale, rotation)
    expected = mmpose_affine(center, scale, rotation, INPUT_W, INPUT_H)
    np.testing.assert_allclose(matrix, expected, atol=1e-3)
    assert apply_affine(center, matrix) == pytest.approx([INPUT_W / 2, INPUT_H / 2])


def test_affine_matrix_corners_and_rotation_sign(codec: HeatmapCodec) -> None:
    center, scale = np.array([300.0, 200.0]), np.array([120.0, 160.0])
    matrix = codec.affine_matrix(center, scale)
    corners = np.array([center - scale / 2, center + scale / 2, [240.0, 280.0]])
    np.testing.assert_allclose(
        apply_affine(corners, matrix), [[0, 0], [INPUT_W, INPUT_H], [0, INPUT_H]], atol=1e-9
    )
    np.testing.assert_allclose(
        apply_affine(corners[None], matrix), codec.to_input(corners[None], center, scale)
    )
    # +90 degrees: the point half a box height right of the centre goes to the top edge
    # (the content turns counter-clockwise on screen)
    rotated = codec.affine_matrix(center, scale, rotation=90.0)
    right_of_center = center + np.array([scale[1] / 2, 0])
    np.testing.assert_allclose(apply_affine(right_of_center, rotated), [INPUT_W / 2, 0], atol=1e-9)
    np.testing.assert_allclose(
        rotated[:, :2] / (INPUT_W / scale[0]), cv2.getRotationMatrix2D((0, 0), 90, 1)[:, :2]
    )


def test_warped_pixels_and_points_agree(codec: HeatmapCodec) -> None:
    image = np.zeros((480, 640), np.float32)
    point = np.array([350.0, 170.0])
    image[170, 350] = 1.0
    image = cv2.GaussianBlur(image, (0, 0), 3)
    matrix = codec.affine_matrix([320.0, 200.0], [180.0, 240.0], rotation=25.0)
    crop = cv2.warpAffine(image, matrix, (INPUT_W, INPUT_H), flags=cv2.INTER_LINEAR)
    peak_y, peak_x = np.unravel_index(np.argmax(crop), crop.shape)
    np.testing.assert_allclose([peak_x, peak_y], apply_affine(point, matrix), atol=1.0)


def test_batched_affine_and_inverse(codec: HeatmapCodec) -> None:
    rng = np.random.default_rng(9)
    centers, scales = rng.uniform(100, 400, (4, 2)), rng.uniform(80, 200, (4, 2))
    rotations = rng.uniform(-45, 45, 4)
    batch = codec.affine_matrix(centers, scales, rotations, output_size=(128, 96))
    assert batch.shape == (4, 2, 3)
    points = rng.uniform(0, 500, (4, NUM_KEYPOINTS, 2))
    moved = apply_affine(points, batch)
    for i in range(4):
        single = codec.affine_matrix(centers[i], scales[i], rotations[i], output_size=(128, 96))
        np.testing.assert_allclose(batch[i], single)
        np.testing.assert_allclose(moved[i], apply_affine(points[i], single))
    np.testing.assert_allclose(apply_affine(moved, invert_affine(batch)), points, atol=1e-9)
