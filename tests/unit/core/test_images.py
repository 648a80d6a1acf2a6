"""`read_image`: one reader for the crops stage and `predict`, BGR as OpenCV decodes, and a
reason (`kind`) for each file it cannot use."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from sdpose.core.errors import InputError
from sdpose.core.images import ImageError, read_image

pytestmark = pytest.mark.unit


def test_an_image_comes_back_in_bgr_order_as_written(tmp_path) -> None:
    pixels = np.zeros((6, 8, 3), np.uint8)
    pixels[..., 0], pixels[..., 2] = 200, 10  # blue in OpenCV's order: channel 0
    pixels[2, 3] = (1, 2, 3)
    cv2.imwrite(str(tmp_path / "blue.png"), pixels)
    image = read_image(tmp_path / "blue.png")
    assert image.dtype == np.uint8 and np.array_equal(image, pixels)


def test_a_grey_image_comes_back_with_three_channels(tmp_path) -> None:
    cv2.imwrite(str(tmp_path / "grey.png"), np.full((4, 5), 77, np.uint8))
    image = read_image(tmp_path / "grey.png")
    assert image.shape == (4, 5, 3) and (image == 77).all()


@pytest.mark.parametrize(
    ("make", "kind", "message"),
    [
        (lambda path: None, "unreadable", r"missing\.jpg: image file not found"),
        (lambda path: path.mkdir(), "unreadable", r"missing\.jpg: cannot read the image file"),
        (lambda path: path.write_bytes(b""), "undecodable", r"not a readable image .* 0 bytes"),
        (lambda path: path.write_bytes(b"not a jpeg"), "undecodable", r"its 10 bytes"),
    ],
    ids=["missing", "folder", "empty", "not-an-image"],
)
def test_each_unusable_file_has_its_kind(tmp_path, make, kind, message) -> None:
    path = tmp_path / "missing.jpg"
    make(path)
    with pytest.raises(ImageError, match=message) as caught:
        read_image(path)
    assert caught.value.kind == kind and isinstance(caught.value, InputError)
