"""One codec per head: what every stage asks for to encode targets and decode outputs.

`codec_for_model` picks the head's codec for a model config (MMPose 1.x's pairing of a
head with its codec): `HeatmapCodec` for the heatmap head, `SimCCCodec` for SimCC. Both
share the crop geometry (`sdpose.core.geometry`) and the `Codec` protocol below, so the
feed, validation, evaluation, export and predict take either without asking which.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from sdpose.core.codec import HeatmapCodec
from sdpose.core.geometry import ArrayT
from sdpose.core.presets import ModelConfig
from sdpose.core.simcc import SimCCCodec

# RTMPose's SimCC label sigmas (x, y) in bins at 192x256 input and 2 bins per pixel; other
# sizes and splits scale them (`simcc_sigma`).
RTMPOSE_SIGMA = (4.9, 5.66)
RTMPOSE_INPUT_WH = (192, 256)
RTMPOSE_SPLIT = 2


class Codec(Protocol):
    """What a head's codec offers (`HeatmapCodec`, `SimCCCodec`)."""

    input_size: tuple[int, int]

    @property
    def output_shape(self) -> tuple[int, ...]: ...

    def encode(
        self, keypoints: np.ndarray, visible: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]: ...

    def decode(self, outputs: ArrayT, method: str = "dark") -> tuple[ArrayT, ArrayT]: ...

    def flip_back(self, outputs: ArrayT, shift: bool = True) -> ArrayT: ...

    def to_image(self, keypoints: ArrayT, center: ArrayT, scale: ArrayT) -> ArrayT: ...

    def to_input(self, keypoints: ArrayT, center: ArrayT, scale: ArrayT) -> ArrayT: ...

    def affine_matrix(
        self,
        center: np.ndarray,
        scale: np.ndarray,
        rotation: float | np.ndarray = 0.0,
        output_size: tuple[int, int] | None = None,
    ) -> np.ndarray: ...


def simcc_sigma(input_size: tuple[int, int], split: int) -> tuple[float, float]:
    """RTMPose's label sigmas scaled to an input (height, width) and a split, (x, y) bins."""
    height, width = input_size
    scale = split / RTMPOSE_SPLIT
    return (
        RTMPOSE_SIGMA[0] * width / RTMPOSE_INPUT_WH[0] * scale,
        RTMPOSE_SIGMA[1] * height / RTMPOSE_INPUT_WH[1] * scale,
    )


def codec_for_model(
    config: ModelConfig,
    sigma: float = 2.0,
    simcc_sigma_bins: tuple[float, float] | None = None,
    simcc_beta: float = 10.0,
) -> HeatmapCodec | SimCCCodec:
    """The codec of a model's head, at its input (and heatmap or bin) sizes.

    `sigma` is the heatmap target's (heatmap pixels); `simcc_sigma_bins` the SimCC labels'
    (x, y) in bins (None: RTMPose's, scaled) and `simcc_beta` their logits' temperature.
    """
    input_size = tuple(config.input_size)
    if config.head == "simcc":
        bins_sigma = simcc_sigma_bins or simcc_sigma(input_size, config.simcc_split)
        return SimCCCodec(
            input_size=input_size,
            split=config.simcc_split,
            sigma=tuple(float(value) for value in bins_sigma),
            beta=simcc_beta,
        )
    return HeatmapCodec(input_size=input_size, heatmap_size=tuple(config.heatmap_size), sigma=sigma)


class LabelSettings(Protocol):
    """The training labels' settings a codec takes: `params.train` (sigma, simcc_*)."""

    sigma: float
    simcc_sigma: Sequence[float] | None
    simcc_beta: float


def codec_for_labels(config: ModelConfig, labels: LabelSettings) -> HeatmapCodec | SimCCCodec:
    """The codec of a model's head with the run's label settings: every stage's (the
    configured model's is `codec_for_labels(params.model.resolve(), params.train)`)."""
    return codec_for_model(
        config,
        sigma=labels.sigma,
        simcc_sigma_bins=tuple(labels.simcc_sigma) if labels.simcc_sigma else None,
        simcc_beta=labels.simcc_beta,
    )


def codec_record(codec: HeatmapCodec | SimCCCodec) -> dict[str, Any]:
    """A codec as plain JSON values, for the model card: what a deployment decodes with."""
    if isinstance(codec, SimCCCodec):
        return {
            "head": "simcc",
            "input_size": list(codec.input_size),
            "split": codec.split,
            "sigma": list(codec.sigma),
            "beta": codec.beta,
        }
    return {
        "head": "heatmap",
        "input_size": list(codec.input_size),
        "heatmap_size": list(codec.heatmap_size),
        "sigma": codec.sigma,
    }


def codec_from_record(record: dict[str, Any]) -> HeatmapCodec | SimCCCodec:
    """`codec_record`'s inverse; a malformed record raises ValueError naming the field."""
    try:
        input_size = tuple(int(size) for size in record["input_size"])
        if record["head"] == "simcc":
            return SimCCCodec(
                input_size=input_size,
                split=int(record["split"]),
                sigma=tuple(float(value) for value in record["sigma"]),
                beta=float(record["beta"]),
            )
        if record["head"] == "heatmap":
            heatmap_size = tuple(int(size) for size in record["heatmap_size"])
            return HeatmapCodec(input_size, heatmap_size, float(record["sigma"]))
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"codec record {record!r}: {error!r}") from None
    raise ValueError(f"codec record: head {record.get('head')!r} is not 'heatmap' or 'simcc'")


def codec_for_output(
    input_size: tuple[int, int], output_shape: tuple[int, ...]
) -> HeatmapCodec | SimCCCodec:
    """The codec of a network known only by its shapes (an ONNX file without a card):
    (H, W) heatmaps, or Wx + Hy SimCC bins at an integer split with RTMPose's sigmas."""
    if len(output_shape) == 2:
        return HeatmapCodec(input_size=input_size, heatmap_size=tuple(output_shape))
    height, width = input_size
    bins = output_shape[0] if len(output_shape) == 1 else 0
    if bins <= 0 or bins % (height + width):
        raise ValueError(
            f"output {list(output_shape)} per keypoint is neither an (h, w) heatmap nor "
            f"SimCC bins (a multiple of {height} + {width}) for input {list(input_size)}"
        )
    split = bins // (height + width)
    return SimCCCodec(input_size=input_size, split=split, sigma=simcc_sigma(input_size, split))
