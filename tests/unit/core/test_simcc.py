"""SimCCCodec: labels against a per-joint loop of MMPose's SimCCLabel, decoding, scores,
the flip test's exact mirror, and the codec records the model card carries."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sdpose.core.codecs import (
    codec_for_model,
    codec_for_output,
    codec_from_record,
    codec_record,
    simcc_sigma,
)
from sdpose.core.keypoints import FLIP_INDEX, NUM_KEYPOINTS
from sdpose.core.presets import resolve_model_config
from sdpose.core.simcc import SimCCCodec

pytestmark = pytest.mark.unit

INPUT_H, INPUT_W = 128, 96


@pytest.fixture
def codec() -> SimCCCodec:
    return SimCCCodec(input_size=(INPUT_H, INPUT_W), split=2, sigma=(2.45, 2.83))


def random_keypoints(seed: int, num: int = 3, margin: float = 6.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    low, high = [margin, margin], [INPUT_W - margin, INPUT_H - margin]
    return rng.uniform(low, high, size=(num, NUM_KEYPOINTS, 2))


def loop_labels(codec: SimCCCodec, keypoints: np.ndarray, visible: np.ndarray) -> np.ndarray:
    """MMPose SimCCLabel._generate_gaussian (normalize=False), one joint at a time."""
    width, height = codec.bins
    labels = np.zeros((*visible.shape, width + height))
    for n, k in np.ndindex(visible.shape):
        if visible[n, k] < 0.5:
            continue
        mu_x, mu_y = keypoints[n, k] * codec.split
        xs, ys = np.arange(width), np.arange(height)
        labels[n, k, :width] = np.exp(-((xs - mu_x) ** 2) / (2 * codec.sigma[0] ** 2))
        labels[n, k, width:] = np.exp(-((ys - mu_y) ** 2) / (2 * codec.sigma[1] ** 2))
    return labels


def test_labels_match_mmpose_per_joint_loop(codec):
    keypoints = random_keypoints(0)
    visible = np.ones(keypoints.shape[:2])
    visible[0, 3] = 0
    labels, weights = codec.encode(keypoints, visible)
    assert labels.shape == (3, NUM_KEYPOINTS, INPUT_W * 2 + INPUT_H * 2)
    np.testing.assert_allclose(labels, loop_labels(codec, keypoints, visible), atol=1e-6)
    assert weights[0, 3] == 0 and not labels[0, 3].any()
    assert weights.sum() == visible.sum()


def test_a_joint_whose_window_misses_the_bins_gets_no_weight(codec):
    keypoints = random_keypoints(1, num=1)
    keypoints[0, 5] = [INPUT_W + 20.0, 50.0]  # 3 sigma (3.7 px) short of the last bin
    labels, weights = codec.encode(keypoints, np.ones((1, NUM_KEYPOINTS)))
    assert weights[0, 5] == 0 and not labels[0, 5].any()
    assert weights[0, 4] == 1


@pytest.mark.parametrize("method, tolerance", [("dark", 1e-4), ("argmax", 0.25)])
def test_decoding_log_labels_recovers_the_keypoints(codec, method, tolerance):
    """The log of a Gaussian is a parabola: the 1-D Taylor step is exact on it."""
    keypoints = random_keypoints(2)
    labels, _ = codec.encode(keypoints, np.ones(keypoints.shape[:2]))
    decoded, scores = codec.decode(np.log(np.maximum(labels, 1e-30)), method)
    assert np.abs(decoded - keypoints).max() <= tolerance
    assert scores.min() > 0.999  # all the mass within two sigmas of the decoded bin
    tensor_points, _ = codec.decode(torch.from_numpy(np.log(np.maximum(labels, 1e-30))), method)
    np.testing.assert_allclose(tensor_points.numpy(), decoded, atol=1e-5)


def test_a_flat_prediction_scores_its_window_share(codec):
    logits = np.zeros((2, NUM_KEYPOINTS, sum(codec.bins)), np.float32)
    width = codec.bins[0]
    logits[..., width // 2] = logits[..., width + codec.bins[1] // 2] = 1e-6  # argmax: middle
    _, scores = codec.decode(logits)
    radius_x, radius_y = (np.ceil(2 * np.asarray(codec.sigma))).astype(int)
    expected = min((2 * radius_x + 1) / codec.bins[0], (2 * radius_y + 1) / codec.bins[1])
    assert scores == pytest.approx(np.full((2, NUM_KEYPOINTS), expected), abs=1e-6)
    assert scores.max() < 0.1  # far below the rescoring's vis_thr (0.2)


def test_decode_refuses_outputs_of_another_size(codec):
    with pytest.raises(ValueError, match=r"\(N, K, 448\)"):
        codec.decode(np.zeros((1, NUM_KEYPOINTS, 400), np.float32))


@pytest.mark.parametrize("split", [1, 2, 3])
def test_flip_back_undoes_an_image_flip_exactly(split):
    """Labels of the mirrored crop, flipped back, are the original labels (sub-bin exact)."""
    codec = SimCCCodec(input_size=(INPUT_H, INPUT_W), split=split, sigma=(2.0 * split, 2.0 * split))
    keypoints = random_keypoints(3)
    visible = np.ones(keypoints.shape[:2])
    mirrored = keypoints.copy()
    mirrored[..., 0] = INPUT_W - 1 - mirrored[..., 0]  # the augmentation's and flip test's flip
    mirrored = mirrored[:, FLIP_INDEX]
    labels, _ = codec.encode(keypoints, visible)
    flipped_labels, _ = codec.encode(mirrored, visible)
    back = codec.flip_back(flipped_labels)
    decoded, _ = codec.decode(np.log(np.maximum(back, 1e-30)))
    assert np.abs(decoded - keypoints).max() < 1e-4
    # bin for bin, but for the split - 1 x bins at the right border that the shift fills
    kept = np.r_[0 : codec.bins[0] - (split - 1), codec.bins[0] : sum(codec.bins)]
    np.testing.assert_allclose(back[..., kept], labels[..., kept], atol=1e-6)
    torch_back = codec.flip_back(torch.from_numpy(flipped_labels)).numpy()
    np.testing.assert_array_equal(torch_back, back)


def test_codec_records_round_trip_and_shapes_imply_a_codec():
    for head in ("heatmap", "simcc"):
        config = resolve_model_config("sdpose-nano", head=head)
        codec = codec_for_model(config)
        assert codec.output_shape == config.output_shape
        assert codec_from_record(codec_record(codec)) == codec
        implied = codec_for_output(codec.input_size, codec.output_shape)
        assert type(implied) is type(codec) and implied.output_shape == codec.output_shape
    with pytest.raises(ValueError, match="neither"):
        codec_for_output((128, 96), (450,))
    with pytest.raises(ValueError, match="head"):
        codec_from_record({"head": "regression", "input_size": [128, 96]})


def test_default_sigmas_are_rtmposes_scaled_to_the_input():
    assert simcc_sigma((256, 192), 2) == pytest.approx((4.9, 5.66))
    assert simcc_sigma((128, 96), 2) == pytest.approx((2.45, 2.83))
    assert simcc_sigma((128, 96), 3) == pytest.approx((3.675, 4.245))
