"""Reading an image file: one reader for the crops stage and `sdpose predict`.

An image stays in OpenCV's BGR order from the file through the crops, the feed and the
overlays; `normalize_images` (sdpose.core.inputs) turns it into the network's RGB, the one
colour conversion on every path.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from sdpose.core.errors import InputError


class ImageError(InputError):
    """An image that cannot be used; `kind` groups the reasons in the crops stage's summary."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def read_image(path: Path) -> np.ndarray:
    """An image file as (H, W, 3) uint8 BGR; ImageError `unreadable` or `undecodable`.

    The bytes are read by numpy and decoded by `cv2.imdecode` (the same pixels as
    `cv2.imread`, EXIF orientation included), so a file that cannot be read is told apart
    from one that cannot be decoded: `cv2.imread` returns None for both.
    """
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except FileNotFoundError:
        raise ImageError("unreadable", f"{path}: image file not found") from None
    except OSError as error:
        reason = error.strerror or error
        raise ImageError("unreadable", f"{path}: cannot read the image file ({reason})") from None
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise ImageError(
            "undecodable",
            f"{path}: not a readable image (OpenCV cannot decode its {data.size} bytes)",
        )
    return image
