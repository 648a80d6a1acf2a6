"""One synthetic image: people, occluders and clutter -> pixels and exact COCO labels.

Everything is first drawn into an *owner map* (which person part or object covers each
pixel, painter's order far to near), and both the colours and the labels are read from it:
the silhouette of person p is exactly the pixels it owns, and a keypoint is visible (v=2)
exactly when its pixel shows one of its own parts; inside the image but covered by anything
else (another person, an object, the person's own trunk) it is occluded (v=1); outside the
image, or a face point on the far side of the head, it is unlabelled (v=0 at 0,0).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from sdpose.data.synth_people import PersonGeometry, View, place_person, sample_body
from sdpose.data.synth_poses import sample_pose
from sdpose.data.synth_style import Palette, draw_background, person_materials

PART_SLOTS = 32  # owner id of part q of person p: 1 + p * PART_SLOTS + q
MAX_PEOPLE = 8
OBJECT_BASE = 1 + MAX_PEOPLE * PART_SLOTS  # owner ids of occluding objects start here
MIN_PERSON_PIXELS = 16  # a person with less showing is not annotated
# Like COCO, whose annotators skipped keypoints on small people: below this visible area a
# person is annotated (box, mask) with no keypoints, so training and AP ignore them.
MIN_KEYPOINT_AREA = 24 * 24
SHIFT = 3  # cv2 sub-pixel bits: coordinates are drawn at 1/8 pixel


@dataclass
class Scene:
    """A rendered image (BGR uint8) and its person annotations (COCO fields, no ids)."""

    image: np.ndarray
    annotations: list[dict]


def render_scene(
    rng: np.random.Generator,
    width: int,
    height: int,
    max_people: int,
    occluders: bool = True,
    clutter: bool = True,
) -> Scene:
    """Draw 1..max_people people, with occluders unless `occluders` is off, over a cluttered
    background (a plain gradient with `clutter` off: the easier quick-start scenes)."""
    people = _sample_people(rng, width, height, int(rng.integers(1, max_people + 1)))
    objects = _sample_occluders(rng, people, width, height) if occluders else []
    layers = [("person", i, key) for i, (_, key) in enumerate(people)]
    layers += [("object", j, key) for j, (_, key) in enumerate(objects)]
    owner = np.zeros((height, width), dtype=np.uint16)
    for kind, index, _ in sorted(layers, key=lambda layer: layer[2]):
        if kind == "person":
            draw_person(owner, people[index][0], 1 + index * PART_SLOTS)
        else:
            _draw_shape(owner, objects[index][0], OBJECT_BASE + index)
    palette = Palette(rng, width, height)
    for slot, (geometry, _) in enumerate(people):
        for part, (material, shade) in person_materials(rng, palette, geometry).items():
            palette.assign(1 + slot * PART_SLOTS + part, material, shade)
    for index in range(len(objects)):
        palette.assign(OBJECT_BASE + index, palette.object_material(), rng.uniform(0.85, 1.1))
    background = draw_background(rng, palette, width, height, [g for g, _ in people], clutter)
    image = palette.compose(owner, background)
    annotations = [
        annotation
        for slot, (geometry, _) in enumerate(people)
        if (annotation := label_person(owner, slot, geometry)) is not None
    ]
    return Scene(image=image, annotations=annotations)


def sample_view(rng: np.random.Generator, width: int, height: int, anchors: list[View]) -> View:
    """Any yaw (front, back, side); mostly upright; sizes from small to over the frame;
    often next to someone already placed, so that people overlap."""
    height_px = height * float(np.exp(rng.uniform(np.log(0.2), np.log(1.6))))
    draw = rng.random()
    if draw < 0.65:
        roll = rng.normal(0, 8)  # upright
    elif draw < 0.9:
        roll = rng.uniform(-45, 45)  # leaning, bending, photographed askew
    else:
        roll = rng.uniform(-180, 180)  # lying, falling, upside down
    if anchors and rng.random() < 0.6:
        anchor = anchors[int(rng.integers(len(anchors)))]
        spread = max(anchor.height_px, height_px)
        x = anchor.pelvis[0] + rng.choice([-1, 1]) * rng.uniform(0.1, 0.45) * spread
        y = anchor.pelvis[1] + rng.normal(0, 0.1) * spread
    else:
        x, y = rng.uniform(-0.05, 1.05) * width, rng.uniform(0.25, 0.85) * height
    return View(
        yaw=rng.uniform(0, 360),
        pitch=rng.uniform(-15, 25),
        roll=roll,
        height_px=height_px,
        pelvis=(float(x), float(y)),
    )


def _sample_people(rng, width: int, height: int, count: int) -> list[tuple[PersonGeometry, float]]:
    """(geometry, depth key) per person; bigger people tend to stand nearer."""
    views: list[View] = []
    people = []
    for _ in range(count):
        view = sample_view(rng, width, height, views)
        views.append(view)
        geometry = place_person(sample_body(rng), sample_pose(rng), view)
        people.append((geometry, view.height_px * rng.uniform(0.7, 1.3)))
    return people


def _sample_occluders(rng, people, width: int, height: int) -> list[tuple[dict, float]]:
    """(shape, depth key) of objects just in front of a chosen person (maybe behind others)."""
    objects = []
    for _ in range(int(rng.choice([0, 1, 2], p=[0.5, 0.35, 0.15]))):
        geometry, key = people[int(rng.integers(len(people)))]
        size = float(np.ptp(geometry.keypoints, axis=0).max()) + 8.0
        target = geometry.keypoints[int(rng.integers(17))] + rng.normal(0, 0.1 * size, 2)
        objects.append((_occluder(rng, target, size, height), key + rng.uniform(0.01, 0.2) * key))
    return objects


def _occluder(rng, target: np.ndarray, size: float, height: int) -> dict:
    """A post, a counter, a bag or ball, or a stick over `target`; `size` is the person's."""
    kind = rng.choice(["post", "counter", "blob", "stick"])
    x, y = target
    if kind == "post":  # full height, slightly tilted
        half, tilt = rng.uniform(0.03, 0.1) * size, rng.normal(0, 0.15) * height
        corners = [
            (x - half - tilt, -2),
            (x + half - tilt, -2),
            (x + half + tilt, height + 2),
            (x - half + tilt, height + 2),
        ]
        return {"kind": "hull", "points": np.array(corners)}
    if kind == "counter":  # everything below a line, like a table or a wall
        left, right = np.sort(x + rng.uniform(-1.0, 1.0, 2) * size)
        corners = [(left, y), (right, y), (right, height + 2), (left, height + 2)]
        return {"kind": "hull", "points": np.array(corners)}
    if kind == "blob":
        axes = rng.uniform(0.06, 0.2, 2) * size
        return {
            "kind": "ellipse",
            "points": target[None],
            "size": axes,
            "angle": rng.uniform(0, 180),
        }
    end = target + rng.normal(0, 0.3 * size, 2)
    return {
        "kind": "limb",
        "points": np.stack([target, end]),
        "size": rng.uniform(0.03, 0.08, 2) * size,
    }


def draw_person(owner: np.ndarray, geometry: PersonGeometry, base_id: int) -> None:
    """Fill the person's parts into the owner map, back to front; part q gets base_id + q."""
    for shape in geometry.shapes:
        _draw_shape(owner, vars(shape), base_id + int(shape.part))


def _draw_shape(canvas: np.ndarray, shape: dict, value) -> None:
    """Fill one primitive (see synth_people.Shape) with `value` at 1/8-pixel precision."""
    scale = 1 << SHIFT
    points = np.round(np.asarray(shape["points"]) * scale).astype(np.int32)
    kind = shape["kind"]
    if kind == "hull":
        cv2.fillConvexPoly(canvas, cv2.convexHull(points), value, cv2.LINE_8, SHIFT)
    elif kind == "ellipse":
        axes = tuple(int(v) for v in np.maximum(np.round(shape["size"] * scale), scale // 2))
        cv2.ellipse(
            canvas,
            tuple(points[0]),
            axes,
            shape.get("angle", 0.0),
            0,
            360,
            value,
            -1,
            cv2.LINE_8,
            SHIFT,
        )
    elif kind == "dots":
        for point, radius in zip(points, shape["size"], strict=True):
            cv2.circle(canvas, tuple(point), round(radius * scale), value, -1, cv2.LINE_8, SHIFT)
    else:  # limb: a tapered capsule
        (a, b), (wa, wb) = np.asarray(shape["points"], dtype=np.float64), shape["size"]
        normal = np.array([b[1] - a[1], a[0] - b[0]]) / (np.hypot(*(b - a)) + 1e-9)
        quad = np.array(
            [a + normal * wa / 2, b + normal * wb / 2, b - normal * wb / 2, a - normal * wa / 2]
        )
        cv2.fillConvexPoly(
            canvas, np.round(quad * scale).astype(np.int32), value, cv2.LINE_8, SHIFT
        )
        for end, w in ((points[0], wa), (points[1], wb)):
            cv2.circle(canvas, tuple(end), round(w / 2 * scale), value, -1, cv2.LINE_8, SHIFT)


def label_person(owner: np.ndarray, slot: int, geometry: PersonGeometry) -> dict | None:
    """COCO fields of one person, read from the owner map; None when too little shows."""
    height, width = owner.shape
    base = 1 + slot * PART_SLOTS
    in_person = (owner >= base) & (owner < base + PART_SLOTS)
    area = int(in_person.sum())
    if area < MIN_PERSON_PIXELS:
        return None
    points = np.round(geometry.keypoints, 2)
    pixel = np.floor(points + 0.5).astype(np.int64)
    # Labelled keypoints lie within [0, W-1] x [0, H-1], as COCO's do; their pixel is in range.
    inside = np.all((points >= 0) & (points <= [width - 1, height - 1]), axis=1)
    labels = np.zeros((len(points), 3))
    labelled = inside & geometry.face_labelled & (area >= MIN_KEYPOINT_AREA)
    for k in np.flatnonzero(labelled):
        part = int(owner[pixel[k, 1], pixel[k, 0]]) - base
        shows = 0 <= part < PART_SLOTS and part in geometry.visible_parts[k]
        labels[k] = (points[k, 0], points[k, 1], 2 if shows else 1)
    rle = mask_utils.encode(np.asfortranarray(in_person.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return {
        "segmentation": rle,
        "num_keypoints": int((labels[:, 2] > 0).sum()),
        "area": area,
        "iscrowd": 0,
        "keypoints": [float(v) if i % 3 < 2 else int(v) for i, v in enumerate(labels.reshape(-1))],
        "bbox": _box_around(in_person, labels, width, height),
        "category_id": 1,
    }


def _box_around(mask: np.ndarray, labels: np.ndarray, width: int, height: int) -> list[float]:
    """The silhouette's box grown to hold every labelled keypoint (occluded ones too)."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    x0, x1, y0, y1 = cols[0], cols[-1] + 1.0, rows[0], rows[-1] + 1.0
    labelled = labels[labels[:, 2] > 0]
    if len(labelled):
        x0, y0 = min(x0, labelled[:, 0].min()), min(y0, labelled[:, 1].min())
        x1, y1 = max(x1, labelled[:, 0].max()), max(y1, labelled[:, 1].max())
    x0, y0 = max(0.0, float(x0)), max(0.0, float(y0))
    x1, y1 = min(float(width), float(x1)), min(float(height), float(y1))
    return [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)]
