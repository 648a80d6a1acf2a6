"""Joint angles for synthetic people: everyday pose families, all within joint limits.

A mixture of families (standing, walking, running, sitting, crouching, reaching) and free
poses drawn across the whole joint range: the families make people look like people, the
free share keeps a mean pose from fitting them.
Angles in degrees; sided angles are arrays (left, right).
"""

from __future__ import annotations

import numpy as np

# Arms: elevation from hanging down, azimuth 0 = forward / 90 = sideways out / < 0 = across
# the body, twist turns the elbow's bend plane toward the midline. Legs: flexion forward,
# abduction outward, rotation turns the knee outward. Knees and elbows only bend one way.
POSE_LIMITS: dict[str, tuple[float, float]] = {
    "torso_flex": (-20, 70),
    "torso_side": (-25, 25),
    "torso_twist": (-35, 35),
    "head_yaw": (-60, 60),
    "head_pitch": (-35, 40),
    "arm_elevation": (0, 175),
    "arm_azimuth": (-45, 180),
    "arm_twist": (-40, 100),
    "elbow": (0, 150),
    "wrist": (-40, 40),
    "hip_flex": (-30, 125),
    "hip_abd": (-10, 50),
    "hip_rotation": (-15, 40),
    "knee": (0, 150),
    "ankle": (-20, 40),
}
SIDED = (
    "arm_elevation",
    "arm_azimuth",
    "arm_twist",
    "elbow",
    "wrist",
    "hip_flex",
    "hip_abd",
    "hip_rotation",
    "knee",
    "ankle",
)
# A shoulder can swing backward only while the arm is low.
ARM_BACKWARD_AZIMUTH, ARM_BACKWARD_MAX_ELEVATION = 120.0, 60.0

FAMILY_WEIGHTS = {
    "stand": 0.17,
    "walk": 0.17,
    "run": 0.11,
    "sit": 0.12,
    "crouch": 0.08,
    "reach": 0.15,
    "free": 0.20,
}


def sample_pose(rng: np.random.Generator, family: str | None = None) -> dict[str, np.ndarray]:
    """One pose: a family's angles plus jitter, clipped to POSE_LIMITS."""
    if family is None:
        names = list(FAMILY_WEIGHTS)
        weights = np.array([FAMILY_WEIGHTS[name] for name in names])
        family = names[rng.choice(len(names), p=weights / weights.sum())]
    pose = _relaxed(rng)
    pose.update(_FAMILIES[family](rng))
    return clip_pose(pose)


def clip_pose(pose: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Clip every angle to its limit, and backward arm swings to a low arm."""
    clipped = {name: np.clip(value, *POSE_LIMITS[name]) for name, value in pose.items()}
    backward = clipped["arm_azimuth"] > ARM_BACKWARD_AZIMUTH
    clipped["arm_elevation"] = np.where(
        backward,
        np.minimum(clipped["arm_elevation"], ARM_BACKWARD_MAX_ELEVATION),
        clipped["arm_elevation"],
    )
    return clipped


def _pair(rng: np.random.Generator, low: float, high: float) -> np.ndarray:
    return rng.uniform(low, high, size=2)


def _relaxed(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Standing at ease; families override what they change."""
    return {
        "torso_flex": rng.uniform(-5, 10),
        "torso_side": rng.uniform(-6, 6),
        "torso_twist": rng.uniform(-12, 12),
        "head_yaw": rng.uniform(-35, 35),
        "head_pitch": rng.uniform(-15, 20),
        "arm_elevation": _pair(rng, 0, 25),
        "arm_azimuth": _pair(rng, -10, 90),
        "arm_twist": _pair(rng, -10, 40),
        "elbow": _pair(rng, 0, 40),
        "wrist": _pair(rng, -20, 20),
        "hip_flex": _pair(rng, -8, 15),
        "hip_abd": _pair(rng, 0, 12),
        "hip_rotation": _pair(rng, -5, 25),
        "knee": _pair(rng, 0, 20),
        "ankle": _pair(rng, -10, 10),
    }


def _stand(rng: np.random.Generator) -> dict:
    if rng.random() < 0.3:  # hands on hips / arms folded
        return {
            "arm_elevation": _pair(rng, 20, 50),
            "arm_azimuth": _pair(rng, 40, 90),
            "elbow": _pair(rng, 90, 140),
            "arm_twist": _pair(rng, 40, 90),
        }
    return {}


def _walk(rng: np.random.Generator) -> dict:
    phase = rng.uniform(-1, 1)
    stride = np.array([phase, -phase])
    return {
        "hip_flex": 28 * stride + rng.normal(0, 4, 2),
        "knee": np.maximum(0, -stride) * 40 + rng.uniform(0, 15, 2),
        "arm_elevation": np.abs(30 * stride) + rng.uniform(0, 8, 2),
        "arm_azimuth": np.where(stride < 0, 0, 180) + rng.normal(0, 10, 2),
        "elbow": _pair(rng, 5, 40),
    }


def _run(rng: np.random.Generator) -> dict:
    front = rng.integers(2)
    hip = np.where(np.arange(2) == front, rng.uniform(45, 85), rng.uniform(-30, -8))
    knee = np.where(np.arange(2) == front, rng.uniform(30, 100), rng.uniform(60, 130))
    return {
        "torso_flex": rng.uniform(5, 25),
        "hip_flex": hip,
        "knee": knee,
        "arm_elevation": _pair(rng, 25, 70),
        "arm_azimuth": np.where(np.arange(2) == front, 180, 0) + rng.normal(0, 12, 2),
        "elbow": _pair(rng, 70, 115),
    }


def _sit(rng: np.random.Generator) -> dict:
    return {
        "torso_flex": rng.uniform(-15, 25),
        "hip_flex": _pair(rng, 70, 105),
        "hip_abd": _pair(rng, 0, 22),
        "knee": _pair(rng, 65, 115),
        "arm_elevation": _pair(rng, 5, 60),
        "arm_azimuth": _pair(rng, -20, 40),
        "elbow": _pair(rng, 20, 100),
    }


def _crouch(rng: np.random.Generator) -> dict:
    return {
        "torso_flex": rng.uniform(20, 60),
        "hip_flex": _pair(rng, 90, 125),
        "hip_abd": _pair(rng, 5, 35),
        "knee": _pair(rng, 105, 150),
        "arm_elevation": _pair(rng, 10, 90),
        "elbow": _pair(rng, 10, 110),
    }


def _reach(rng: np.random.Generator) -> dict:
    """One or both arms up, out or forward: waving, pointing, throwing."""
    raised = rng.random(2) < np.array([0.7, 0.7]) if rng.random() < 0.5 else rng.random(2) < 0.5
    return {
        "arm_elevation": np.where(raised, rng.uniform(70, 175, 2), rng.uniform(0, 30, 2)),
        "arm_azimuth": np.where(raised, rng.uniform(-30, 110, 2), rng.uniform(-10, 80, 2)),
        "elbow": np.where(raised, rng.uniform(0, 120, 2), rng.uniform(0, 50, 2)),
        "arm_twist": _pair(rng, -30, 90),
        "hip_abd": _pair(rng, 0, 25),
    }


def _free(rng: np.random.Generator) -> dict:
    """Anywhere in the joint range (sports, dance, falls)."""
    pose = {}
    for name, (low, high) in POSE_LIMITS.items():
        pose[name] = rng.uniform(low, high, size=2) if name in SIDED else rng.uniform(low, high)
    pose["torso_flex"] = rng.uniform(-20, 45)  # deep bends mostly come with the legs'
    return pose


_FAMILIES = {
    "stand": _stand,
    "walk": _walk,
    "run": _run,
    "sit": _sit,
    "crouch": _crouch,
    "reach": _reach,
    "free": _free,
}
