"""COCO-17 keypoint conventions shared by data, codec, evaluation and drawing.

One place for the order, flip pairs, skeleton and OKS sigmas so that a flip in the
augmentation and a flip in the flip test can never disagree.
"""

from __future__ import annotations

import numpy as np

KEYPOINT_NAMES: tuple[str, ...] = (
    "nose",
    "left_eye",
    "right_eye",
    "left_ear",
    "right_ear",
    "left_shoulder",
    "right_shoulder",
    "left_elbow",
    "right_elbow",
    "left_wrist",
    "right_wrist",
    "left_hip",
    "right_hip",
    "left_knee",
    "right_knee",
    "left_ankle",
    "right_ankle",
)
NUM_KEYPOINTS = len(KEYPOINT_NAMES)

FLIP_PAIRS: tuple[tuple[int, int], ...] = (
    (1, 2),
    (3, 4),
    (5, 6),
    (7, 8),
    (9, 10),
    (11, 12),
    (13, 14),
    (15, 16),
)


def _flip_index() -> np.ndarray:
    index = np.arange(NUM_KEYPOINTS)
    for left, right in FLIP_PAIRS:
        index[left], index[right] = right, left
    return index


# FLIP_INDEX[k] is the joint that k becomes after a horizontal flip.
FLIP_INDEX: np.ndarray = _flip_index()

# COCO's own skeleton, 1-based, exactly as in person_keypoints_*.json.
COCO_SKELETON: tuple[tuple[int, int], ...] = (
    (16, 14), (14, 12), (17, 15), (15, 13), (12, 13), (6, 12), (7, 13), (6, 7),
    (6, 8), (7, 9), (8, 10), (9, 11), (2, 3), (1, 2), (1, 3), (2, 4), (3, 5), (4, 6), (5, 7),
)  # fmt: skip
# The same edges 0-based, for drawing.
SKELETON: tuple[tuple[int, int], ...] = tuple((a - 1, b - 1) for a, b in COCO_SKELETON)

# pycocotools' per-keypoint OKS sigmas (COCOeval.Params.kpt_oks_sigmas).
OKS_SIGMAS: np.ndarray = (
    np.array(
        [.26, .25, .25, .35, .35, .79, .79, .72, .72, .62, .62, 1.07, 1.07, .87, .87, .89, .89]
    )
    / 10.0
)  # fmt: skip

# Half-body augmentation splits the body here (MMPose's COCO dataset info).
UPPER_BODY_IDS: tuple[int, ...] = tuple(range(0, 11))
LOWER_BODY_IDS: tuple[int, ...] = tuple(range(11, 17))

# MMPose's COCO joint weights (used by the loss when `train.use_joint_weights` is on).
JOINT_WEIGHTS: np.ndarray = np.array(
    [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.2, 1.2, 1.5, 1.5, 1.0, 1.0, 1.2, 1.2, 1.5, 1.5],
    dtype=np.float32,
)

# The category entry of COCO's person_keypoints_*.json.
PERSON_CATEGORY: dict = {
    "supercategory": "person",
    "id": 1,
    "name": "person",
    "keypoints": list(KEYPOINT_NAMES),
    "skeleton": [list(edge) for edge in COCO_SKELETON],
}
