"""Procedural articulated people: a 3D body model, poses within joint limits, a camera.

Why 3D: front, back and side views, foreshortening and self-occlusion then come out of
the geometry instead of being faked per view, and left/right stay exact (the person's left
is on the image right when they face the camera and on the image left from behind).

Body frame: X = the person's left, Y = up, Z = the way the person faces; origin at the hip
midpoint; 1 unit = standing height. Segment lengths are fractions of height (Drillis and
Contini's anthropometric table). Camera: yaw about Y, then pitch about X, weak perspective
(u = X, v = -Y, depth = Z, larger = nearer), then in-plane roll, scale and shift to pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np

from sdpose.core.keypoints import KEYPOINT_NAMES


class Part(IntEnum):
    """Drawn body parts of one person; the renderer's owner map stores these ids."""

    PELVIS, TORSO, NECK, HEAD, HAIR, FACE, EAR_L, EAR_R = range(8)  # FACE: eyes, mouth
    UPPER_ARM_L, UPPER_ARM_R, FOREARM_L, FOREARM_R, HAND_L, HAND_R = range(8, 14)
    THIGH_L, THIGH_R, SHANK_L, SHANK_R, FOOT_L, FOOT_R = range(14, 20)


KP = {name: index for index, name in enumerate(KEYPOINT_NAMES)}
_HEAD_PARTS = frozenset({Part.HEAD, Part.HAIR, Part.FACE, Part.EAR_L, Part.EAR_R})
# Parts whose pixels show a keypoint; any other surface at its pixel hides it (v=1).
_LIMB_PARTS: dict[str, frozenset[int]] = {
    "left_shoulder": frozenset({Part.UPPER_ARM_L}),
    "right_shoulder": frozenset({Part.UPPER_ARM_R}),
    "left_elbow": frozenset({Part.UPPER_ARM_L, Part.FOREARM_L}),
    "right_elbow": frozenset({Part.UPPER_ARM_R, Part.FOREARM_R}),
    "left_wrist": frozenset({Part.FOREARM_L, Part.HAND_L}),
    "right_wrist": frozenset({Part.FOREARM_R, Part.HAND_R}),
    "left_hip": frozenset({Part.THIGH_L}),
    "right_hip": frozenset({Part.THIGH_R}),
    "left_knee": frozenset({Part.THIGH_L, Part.SHANK_L}),
    "right_knee": frozenset({Part.THIGH_R, Part.SHANK_R}),
    "left_ankle": frozenset({Part.SHANK_L, Part.FOOT_L}),
    "right_ankle": frozenset({Part.SHANK_R, Part.FOOT_R}),
}
_TRUNK_JOINTS = ("left_shoulder", "right_shoulder", "left_hip", "right_hip")
# A shoulder or hip this far behind the trunk's mid-plane is hidden by the trunk itself.
TRUNK_HIDES_BEYOND = 0.07
# Face points are labelled only on the camera's side of the head (toward-camera component
# of their direction from the head centre above these): COCO leaves a back view's nose and
# eyes unlabelled (v=0), while ears stay labelled from behind.
FACE_LABEL_MIN_FACING = {"nose": -0.05, "left_eye": 0.05, "right_eye": 0.05}
FACE_LABEL_MIN_FACING |= {"left_ear": -0.5, "right_ear": -0.5}
# Face points in the head frame (head centre origin), for the standard head size.
FACE_POINTS = {"nose": (0.0, -0.012, 0.064), "left_eye": (0.03, 0.012, 0.052)}
FACE_POINTS |= {"right_eye": (-0.03, 0.012, 0.052), "mouth": (0.0, -0.036, 0.056)}

SIDES = (1.0, -1.0)  # left (+X), right (-X)


@dataclass(frozen=True)
class Body:
    """Proportions (fractions of height) and limb thickness of one person."""

    shoulder_half: float = 0.125
    hip_half: float = 0.088
    spine: float = 0.29  # hip midpoint to shoulder line
    upper_arm: float = 0.186
    forearm: float = 0.146
    hand: float = 0.09
    thigh: float = 0.245
    shank: float = 0.246
    foot: float = 0.12
    head: tuple[float, float, float] = (0.05, 0.068, 0.06)  # half axes: across, up, deep
    thickness: float = 1.0  # limb width multiplier


@dataclass(frozen=True)
class View:
    """Where the camera sees a person from, and where they land in the image."""

    yaw: float  # degrees; 0 = facing the camera, 180 = back view
    pitch: float  # degrees; camera looking down > 0
    roll: float  # degrees; in-plane rotation
    height_px: float  # standing height in pixels
    pelvis: tuple[float, float]  # hip midpoint in image pixels


@dataclass
class Shape:
    """One drawing primitive in pixels.

    limb: points (2, 2) ends, size (2,) widths; hull: points (P, 2); ellipse: points (1, 2)
    centre, size (2,) half axes, angle in degrees; dots: points (P, 2), size (P,) radii.
    """

    part: Part
    kind: str
    points: np.ndarray
    size: np.ndarray = field(default_factory=lambda: np.zeros(0))
    angle: float = 0.0
    depth: float = 0.0  # painter's order key: larger is drawn later (nearer)


@dataclass(frozen=True)
class Camera:
    """Body frame -> pixels for one person: weak perspective, then roll, scale, shift."""

    rotation: np.ndarray  # (3, 3) body frame -> camera frame (z toward the camera)
    to_pixels: np.ndarray  # (2, 3)
    origin: np.ndarray  # (2,) where the hip midpoint lands

    @classmethod
    def from_view(cls, view: View) -> Camera:
        rotation = rot_x(view.pitch) @ rot_y(view.yaw)
        c, s = np.cos(np.radians(view.roll)), np.sin(np.radians(view.roll))
        flip_roll = np.array([[c, -s], [s, c]]) @ np.array([[1.0, 0, 0], [0, -1.0, 0]])
        return cls(rotation, view.height_px * flip_roll @ rotation, np.asarray(view.pelvis, float))

    @property
    def toward(self) -> np.ndarray:
        """The direction to the camera, in the body frame."""
        return self.rotation[2]

    @property
    def scale(self) -> float:
        """Pixels per body-height unit."""
        return float(np.linalg.norm(self.to_pixels[0]))

    def pixels(self, points: np.ndarray) -> np.ndarray:
        return self.origin + np.asarray(points) @ self.to_pixels.T

    def depth(self, points: np.ndarray) -> np.ndarray:
        return np.asarray(points) @ self.rotation[2]

    def ellipsoid(self, part: Part, center, rotation, half_axes, key: float) -> Shape:
        """The exact outline of a rotated ellipsoid under this camera."""
        spread = self.to_pixels @ rotation @ np.diag(np.asarray(half_axes) ** 2)
        values, vectors = np.linalg.eigh(spread @ rotation.T @ self.to_pixels.T)
        axes = np.sqrt(np.maximum(values[::-1], 0.25))  # major first
        angle = float(np.degrees(np.arctan2(vectors[1, 1], vectors[0, 1])))
        return Shape(part, "ellipse", self.pixels(center[None]), axes, angle, key)


@dataclass
class PersonGeometry:
    """A posed, projected person. K = 17 COCO keypoints."""

    keypoints: np.ndarray  # (K, 2) image pixels
    face_labelled: np.ndarray  # (K,) False for face points on the far side of the head
    visible_parts: list[frozenset[int]]  # per keypoint: parts whose pixels show it
    shapes: list[Shape]  # back to front
    facing: float  # toward-camera component of the face direction: 1 front, -1 back


def rot_x(deg: float) -> np.ndarray:
    c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def rot_y(deg: float) -> np.ndarray:
    c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def rot_z(deg: float) -> np.ndarray:
    c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def _about(axis: np.ndarray, deg: float) -> np.ndarray:
    """Rotation by `deg` about a unit axis (Rodrigues)."""
    x, y, z = axis
    cross = np.array([[0, -z, y], [z, 0, -x], [-y, x, 0]])
    angle = np.radians(deg)
    return np.eye(3) + np.sin(angle) * cross + (1 - np.cos(angle)) * cross @ cross


def sample_body(rng: np.random.Generator) -> Body:
    """Proportions within the normal adult spread (a few percent per segment)."""

    def jitter(value: float, spread: float = 0.05) -> float:
        return float(value * rng.uniform(1 - spread, 1 + spread))

    base = Body()
    head = float(rng.uniform(0.92, 1.12))
    return Body(
        shoulder_half=jitter(base.shoulder_half, 0.1),
        hip_half=jitter(base.hip_half, 0.12),
        spine=jitter(base.spine),
        upper_arm=jitter(base.upper_arm),
        forearm=jitter(base.forearm),
        hand=jitter(base.hand),
        thigh=jitter(base.thigh),
        shank=jitter(base.shank),
        foot=jitter(base.foot),
        head=tuple(head * axis for axis in base.head),
        thickness=float(rng.uniform(0.75, 1.4)),
    )


def limb_frame(direction: np.ndarray, forward: np.ndarray, twist: float, side: float):
    """The bend direction of a hinge joint: `forward` turned about the limb by `twist`,
    positive toward the body's midline."""
    inward = side * np.cross(direction, forward)
    angle = np.radians(twist)
    return np.cos(angle) * forward + np.sin(angle) * inward


def skeleton_3d(body: Body, pose: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Joints (17, 3) and surface points in the body frame for a pose (synth_poses)."""
    upper = rot_y(pose["torso_twist"]) @ rot_z(pose["torso_side"]) @ rot_x(pose["torso_flex"])
    waist = rot_z(pose["torso_side"] / 2) @ rot_x(pose["torso_flex"] / 2)
    head_rotation = upper @ rot_y(pose["head_yaw"]) @ rot_x(pose["head_pitch"])
    neck_base = upper @ np.array([0.0, body.spine + 0.012, 0.0])
    head_center = neck_base + head_rotation @ np.array([0.0, 0.118, 0.004])
    points = {"head_rotation": head_rotation, "neck_base": neck_base, "head_center": head_center}
    joints = np.zeros((len(KEYPOINT_NAMES), 3))
    head_scale = body.head[1] / Body().head[1]
    for name, local in FACE_POINTS.items():
        if name in KP:
            joints[KP[name]] = head_center + head_rotation @ np.array(local) * head_scale
    for name, side in (("left_ear", 1.0), ("right_ear", -1.0)):
        ear = np.array([side * body.head[0] * 0.98, 0.0, -0.004])
        joints[KP[name]] = head_center + head_rotation @ ear
    for index, (side, name) in enumerate(zip(SIDES, ("left", "right"), strict=True)):
        angles = {key: value[index] for key, value in pose.items() if np.ndim(value)}
        _arm(body, upper, angles, side, name, joints, points)
        _leg(body, angles, side, name, joints, points)
    points["joints"] = joints
    points["torso_corners"] = _box(
        (upper, body.spine, body.shoulder_half * 1.06, 0.06), (waist, 0.1, 0.1, 0.052)
    )
    points["pelvis_corners"] = _box(
        (waist, 0.1, 0.1, 0.052), (np.eye(3), -0.045, body.hip_half + 0.032, 0.06)
    )
    return points


def _arm(body: Body, upper, angles: dict, side: float, name: str, joints, points) -> None:
    """Shoulder, elbow, wrist and hand tip; the elbow bends toward the arm's front."""
    shoulder = upper @ np.array([side * body.shoulder_half, body.spine, 0.0])
    to_arm = upper @ rot_y(side * angles["arm_azimuth"]) @ rot_x(-angles["arm_elevation"])
    upper_arm, forward = to_arm @ (0.0, -1.0, 0.0), to_arm @ (0.0, 0.0, 1.0)
    bend = limb_frame(upper_arm, forward, angles["arm_twist"], side)
    elbow_angle = np.radians(angles["elbow"])
    forearm = np.cos(elbow_angle) * upper_arm + np.sin(elbow_angle) * bend
    hand = _about(np.cross(forearm, bend), angles["wrist"]) @ forearm
    joints[KP[f"{name}_shoulder"]] = shoulder
    joints[KP[f"{name}_elbow"]] = shoulder + body.upper_arm * upper_arm
    joints[KP[f"{name}_wrist"]] = joints[KP[f"{name}_elbow"]] + body.forearm * forearm
    points[f"{name}_hand_tip"] = joints[KP[f"{name}_wrist"]] + body.hand * hand


def _leg(body: Body, angles: dict, side: float, name: str, joints, points) -> None:
    """Hip, knee, ankle and toe; the knee bends backward only."""
    hip = np.array([side * body.hip_half, 0.0, 0.0])
    to_leg = rot_z(side * angles["hip_abd"]) @ rot_x(-angles["hip_flex"])
    thigh = to_leg @ (0.0, -1.0, 0.0)
    knee_forward = _about(thigh, side * -angles["hip_rotation"]) @ to_leg @ (0.0, 0.0, 1.0)
    knee_angle = np.radians(angles["knee"])
    shank = np.cos(knee_angle) * thigh - np.sin(knee_angle) * knee_forward
    instep = np.sin(knee_angle) * thigh + np.cos(knee_angle) * knee_forward
    foot = instep + np.tan(np.radians(angles["ankle"])) * shank
    joints[KP[f"{name}_hip"]] = hip
    joints[KP[f"{name}_knee"]] = hip + body.thigh * thigh
    joints[KP[f"{name}_ankle"]] = joints[KP[f"{name}_knee"]] + body.shank * shank
    points[f"{name}_toe"] = joints[KP[f"{name}_ankle"]] + body.foot * _unit(foot)


def _box(top: tuple, bottom: tuple) -> np.ndarray:
    """8 corners of a tapered trunk segment; each end is (rotation, y, half width, depth)."""
    corners = []
    for rotation, y, half, depth in (top, bottom):
        for x in (-half, half):
            for z in (-depth, depth):
                corners.append(rotation @ np.array([x, y, z]))
    return np.array(corners)


def _unit(vector: np.ndarray) -> np.ndarray:
    return vector / (np.linalg.norm(vector) + 1e-12)


def place_person(body: Body, pose: dict[str, np.ndarray], view: View) -> PersonGeometry:
    """Pose, view and project one person into drawing shapes and keypoint labels."""
    points = skeleton_3d(body, pose)
    camera = Camera.from_view(view)
    joints, head_center = points["joints"], points["head_center"]
    facing = float(points["head_rotation"][:, 2] @ camera.toward)
    face_labelled = np.ones(len(KEYPOINT_NAMES), dtype=bool)
    for name, threshold in FACE_LABEL_MIN_FACING.items():
        face_labelled[KP[name]] = _unit(joints[KP[name]] - head_center) @ camera.toward > threshold
    trunk_depth = float(camera.depth(points["torso_corners"]).mean())
    visible_parts = [_HEAD_PARTS] * 5 + [_LIMB_PARTS[name] for name in KEYPOINT_NAMES[5:]]
    for name in _TRUNK_JOINTS:
        if camera.depth(joints[KP[name]]) >= trunk_depth - TRUNK_HIDES_BEYOND:
            visible_parts[KP[name]] = visible_parts[KP[name]] | {Part.TORSO, Part.PELVIS}
    shapes = _body_shapes(body, points, camera, trunk_depth)
    shapes += _head_shapes(body, points, camera, trunk_depth, facing)
    shapes.sort(key=lambda shape: shape.depth)
    return PersonGeometry(camera.pixels(joints), face_labelled, visible_parts, shapes, facing)


# (part, start point, end point, width at start, width at end), widths in body heights.
_LIMBS = (
    (Part.UPPER_ARM_L, "left_shoulder", "left_elbow", 0.065, 0.05),
    (Part.UPPER_ARM_R, "right_shoulder", "right_elbow", 0.065, 0.05),
    (Part.FOREARM_L, "left_elbow", "left_wrist", 0.05, 0.038),
    (Part.FOREARM_R, "right_elbow", "right_wrist", 0.05, 0.038),
    (Part.HAND_L, "left_wrist", "left_hand_tip", 0.04, 0.034),
    (Part.HAND_R, "right_wrist", "right_hand_tip", 0.04, 0.034),
    (Part.THIGH_L, "left_hip", "left_knee", 0.1, 0.068),
    (Part.THIGH_R, "right_hip", "right_knee", 0.1, 0.068),
    (Part.SHANK_L, "left_knee", "left_ankle", 0.066, 0.042),
    (Part.SHANK_R, "right_knee", "right_ankle", 0.066, 0.042),
    (Part.FOOT_L, "left_ankle", "left_toe", 0.045, 0.036),
    (Part.FOOT_R, "right_ankle", "right_toe", 0.045, 0.036),
)


def _body_shapes(body: Body, points: dict, camera: Camera, trunk_depth: float) -> list[Shape]:
    """Trunk, neck and limbs with painter's keys: limbs by their mean depth, the trunk a
    little behind its centre (limbs beside it win ties), the neck just in front of it."""
    named = {name: points["joints"][KP[name]] for name in KEYPOINT_NAMES} | points
    neck_top = points["head_center"] - points["head_rotation"] @ np.array([0, 0.04, 0.01])
    ends = [(Part.NECK, points["neck_base"], neck_top, 0.055, 0.05)]
    ends += [(part, named[a], named[b], w0, w1) for part, a, b, w0, w1 in _LIMBS]
    shapes = [
        Shape(
            Part.PELVIS, "hull", camera.pixels(points["pelvis_corners"]), depth=trunk_depth - 0.031
        ),
        Shape(Part.TORSO, "hull", camera.pixels(points["torso_corners"]), depth=trunk_depth - 0.03),
    ]
    for part, start, end, width0, width1 in ends:
        key = trunk_depth - 0.029 if part == Part.NECK else float(camera.depth((start + end) / 2))
        widths = np.maximum(np.array([width0, width1]) * body.thickness * camera.scale, 1.5)
        shapes.append(Shape(part, "limb", camera.pixels(np.stack([start, end])), widths, depth=key))
    return shapes


def _head_shapes(body: Body, points: dict, camera: Camera, trunk_depth: float, facing: float):
    """Head, hair, ears and face marks; the hair covers the head except from the front."""
    center, rotation = points["head_center"], points["head_rotation"]
    head_key = max(float(camera.depth(center)), trunk_depth - 0.028)
    head_scale = body.head[1] / Body().head[1]
    hair_front = _unit(rotation @ np.array([0.0, 0.5, -1.0])) @ camera.toward > -0.35
    shapes = [
        camera.ellipsoid(Part.HEAD, center, rotation, body.head, head_key),
        camera.ellipsoid(
            Part.HAIR,
            center + rotation @ np.array([0.0, 0.024, -0.02]),
            rotation,
            np.array(body.head) * (1.03, 0.97, 1.02),
            head_key + 0.001 * (2 * hair_front - 1),
        ),
    ]
    for part, name in ((Part.EAR_L, "left_ear"), (Part.EAR_R, "right_ear")):
        ear = points["joints"][KP[name]]
        near = _unit(ear - center) @ camera.toward > 0.25
        axes = np.array([0.012, 0.024, 0.016]) * head_scale
        shapes.append(
            camera.ellipsoid(part, ear, rotation, axes, head_key + 0.002 * (2 * near - 1))
        )
    marks = [
        rotation @ np.array(FACE_POINTS[name]) * head_scale
        for name in ("left_eye", "right_eye", "mouth")
    ]
    shown = [offset for offset in marks if _unit(offset) @ camera.toward > 0.15]
    if shown and facing > -0.2:
        radii = np.full(len(shown), max(0.6, 0.0085 * camera.scale * head_scale))
        pixels = camera.pixels(center + np.stack(shown))
        shapes.append(Shape(Part.FACE, "dots", pixels, radii, depth=head_key + 0.003))
    return shapes
