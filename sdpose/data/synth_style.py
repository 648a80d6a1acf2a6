"""Looks of the synthetic images: skin, clothing and textures, cluttered backgrounds.

Colours never affect labels: they are painted from the owner map after all geometry is
decided. Clutter deliberately includes limb-like sticks in skin and cloth colours so that
a model must find people by their whole structure, not by "a skin-coloured bar".
Colours are BGR floats in [0, 255] (OpenCV's order); `Palette.compose` returns uint8.
"""

from __future__ import annotations

import colorsys
import itertools

import cv2
import numpy as np

from sdpose.data.synth_people import Part, PersonGeometry

# Written as RGB, stored BGR (OpenCV's order, used throughout).
SKIN_TONES = np.array(
    [(255, 219, 172), (241, 194, 125), (224, 172, 105), (198, 134, 66), (141, 85, 36),
     (92, 51, 23)], dtype=np.float32)[:, ::-1].copy()  # fmt: skip
HAIR_TONES = np.array(
    [(25, 20, 18), (60, 40, 28), (110, 75, 45), (200, 165, 105), (150, 150, 150), (140, 60, 35)],
    dtype=np.float32,
)[:, ::-1].copy()
TEXTURE_KINDS = ("stripes", "checks", "noise")


class Palette:
    """Materials (colour x texture) and the owner id -> (material, shade) assignment."""

    def __init__(self, rng: np.random.Generator, width: int, height: int) -> None:
        self.rng, self.width, self.height = rng, width, height
        self.x = np.arange(width, dtype=np.float32)[None, :]  # broadcast grids
        self.y = np.arange(height, dtype=np.float32)[:, None]
        self.colors: list[np.ndarray] = [np.zeros(3, np.float32)]
        self.textures: dict[int, np.ndarray] = {}  # material -> (H, W) pattern
        self.owner_material: dict[int, tuple[int, float]] = {}

    def material(self, color, textured: bool = False) -> int:
        self.colors.append(np.clip(np.asarray(color, np.float32), 0, 255))
        if textured:
            self.textures[len(self.colors) - 1] = self.pattern()
        return len(self.colors) - 1

    def random_color(self, value: tuple[float, float] = (0.2, 0.95)) -> np.ndarray:
        hue, sat, val = self.rng.random(), self.rng.uniform(0.1, 0.9), self.rng.uniform(*value)
        return np.array(colorsys.hsv_to_rgb(hue, sat, val)[::-1], np.float32) * 255  # BGR

    def object_material(self) -> int:
        return self.material(self.random_color(), textured=self.rng.random() < 0.5)

    def assign(self, owner_id: int, material: int, shade: float) -> None:
        self.owner_material[owner_id] = (material, float(shade))

    def pattern(self, kind: str | None = None) -> np.ndarray:
        """A multiplicative (H, W) pattern around 1: stripes, checks or blotchy noise."""
        rng, height, width = self.rng, self.height, self.width
        contrast, drawn = rng.uniform(0.08, 0.3), TEXTURE_KINDS[int(rng.integers(3))]
        kind = kind or drawn
        if kind == "noise":
            small = rng.standard_normal((max(2, height // 6), max(2, width // 6)), np.float32)
            pattern = cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)
        else:
            period, angle = rng.uniform(3, 14), rng.uniform(0, np.pi)
            cos, sin = np.float32(np.cos(angle)), np.float32(np.sin(angle))
            turns = np.float32(2 * np.pi / period)
            pattern = np.sign(np.sin(turns * (self.x * cos + self.y * sin)))
            if kind == "checks":
                pattern *= np.sign(np.sin(turns * (self.y * cos - self.x * sin)))
        return (1 + np.float32(contrast) * pattern).astype(np.float32)

    def compose(self, owner: np.ndarray, background: np.ndarray) -> np.ndarray:
        """Paint owned pixels by material, texture and shade over the background; outline
        every region border (the cue real photos give at occlusion edges); add light, blur
        and sensor noise. Returns BGR uint8."""
        rng = self.rng
        size = max(self.owner_material, default=0) + 1
        colors = np.stack(self.colors)
        color_lut, material_lut = np.zeros((size, 3), np.float32), np.zeros(size, np.int32)
        for owner_id, (material, shade) in self.owner_material.items():
            color_lut[owner_id], material_lut[owner_id] = colors[material] * shade, material
        owner = np.minimum(owner, size - 1)
        painted = color_lut[owner]
        if self.textures:
            material = material_lut[owner]
            for textured, pattern in self.textures.items():
                where = material == textured
                painted[where] *= pattern[where][:, None]
        image = np.where((owner > 0)[..., None], painted, background.astype(np.float32))
        border = np.zeros(owner.shape, dtype=bool)
        border[:, :-1] |= owner[:, :-1] != owner[:, 1:]
        border[:-1] |= owner[:-1] != owner[1:]
        light = np.linspace(1 - rng.uniform(0, 0.25), 1 + rng.uniform(0, 0.2), self.width)
        light = (light if rng.random() < 0.5 else light[::-1]).astype(np.float32)
        outline = np.float32(rng.uniform(0.55, 0.8))
        image *= (np.where(border, outline, np.float32(1)) * light[None, :])[..., None]
        image = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.3, 1.0))
        noise = np.empty(owner.shape, np.float32)
        cv2.setRNGSeed(int(rng.integers(2**31)))  # several times faster than numpy's normal
        cv2.randn(noise, 0.0, rng.uniform(1.5, 6.0))
        image += noise[..., None]
        return np.clip(image, 0, 255, out=image).astype(np.uint8)


def person_materials(
    rng: np.random.Generator, palette: Palette, geometry: PersonGeometry
) -> dict[int, tuple[int, float]]:
    """part -> (material, shade): skin, hair, a shirt with some sleeve length, trousers or
    shorts, shoes. Parts behind the trunk are shaded darker, a depth cue."""
    skin = palette.material(SKIN_TONES[int(rng.integers(len(SKIN_TONES)))] * rng.uniform(0.9, 1.08))
    hair = palette.material(
        HAIR_TONES[int(rng.integers(len(HAIR_TONES)))] * rng.uniform(0.85, 1.15)
    )
    shirt = palette.material(palette.random_color(), textured=rng.random() < 0.45)
    pants = palette.material(palette.random_color((0.15, 0.8)), textured=rng.random() < 0.25)
    shoes = palette.material(palette.random_color((0.05, 0.45)))
    marks = palette.material((35, 28, 28))
    sleeves = rng.choice(["none", "short", "long"], p=[0.2, 0.45, 0.35])
    long_pants = rng.random() < 0.65
    by_part = {
        Part.PELVIS: pants,
        Part.TORSO: shirt,
        Part.NECK: skin,
        Part.HEAD: skin,
        Part.HAIR: hair if rng.random() > 0.05 else skin,
        Part.FACE: marks,
        Part.EAR_L: skin,
        Part.EAR_R: skin,
        Part.UPPER_ARM_L: skin if sleeves == "none" else shirt,
        Part.UPPER_ARM_R: skin if sleeves == "none" else shirt,
        Part.FOREARM_L: shirt if sleeves == "long" else skin,
        Part.FOREARM_R: shirt if sleeves == "long" else skin,
        Part.HAND_L: skin,
        Part.HAND_R: skin,
        Part.THIGH_L: pants,
        Part.THIGH_R: pants,
        Part.SHANK_L: pants if long_pants else skin,
        Part.SHANK_R: pants if long_pants else skin,
        Part.FOOT_L: shoes,
        Part.FOOT_R: shoes,
    }
    trunk = next(shape.depth for shape in geometry.shapes if shape.part == Part.TORSO)
    result = {}
    for shape in geometry.shapes:
        shade = np.clip(1 + 1.2 * (shape.depth - trunk), 0.8, 1.12) * rng.uniform(0.94, 1.06)
        result[int(shape.part)] = (by_part[shape.part], float(shade))
    return result


def draw_background(
    rng: np.random.Generator,
    palette: Palette,
    width: int,
    height: int,
    people: list[PersonGeometry],
    clutter: bool = True,
) -> np.ndarray:
    """A gradient, a floor, furniture-like blocks, lines and limb-like sticks: (H, W, 3).

    Without `clutter`, only the gradient and the floor: nothing that looks like a limb.
    """
    angle = rng.uniform(0, 2 * np.pi)
    ramp = palette.x * np.float32(np.cos(angle)) + palette.y * np.float32(np.sin(angle))
    ramp = (ramp - ramp.min()) / (np.ptp(ramp) + 1e-6)
    top, bottom = palette.random_color(), palette.random_color()
    image = top * (1 - ramp[..., None]) + bottom * ramp[..., None]
    if rng.random() < 0.5:
        horizon = int(rng.uniform(0.35, 0.8) * height)
        image[horizon:] = palette.random_color((0.2, 0.8))
    if not clutter:
        return image
    for _ in range(int(rng.integers(3, 11))):
        color = tuple(float(c) for c in palette.random_color())
        center = (int(rng.uniform(0, width)), int(rng.uniform(0, height)))
        if rng.random() < 0.5:
            corner = (
                center[0] + int(rng.uniform(10, width / 2)),
                center[1] + int(rng.uniform(10, height / 2)),
            )
            cv2.rectangle(image, center, corner, color, -1)
        else:
            axes = (int(rng.uniform(5, width / 4)), int(rng.uniform(5, height / 4)))
            cv2.ellipse(image, center, axes, rng.uniform(0, 180), 0, 360, color, -1, cv2.LINE_8)
    for _ in range(int(rng.integers(2, 10))):
        ends = rng.uniform(0, 1, 4) * [width, height, width, height]
        cv2.line(
            image,
            tuple(ends[:2].astype(int)),
            tuple(ends[2:].astype(int)),
            tuple(float(c) for c in palette.random_color()),
            int(rng.integers(1, 5)),
            cv2.LINE_8,
        )
    if rng.random() < 0.5:
        image *= palette.pattern(kind="noise" if rng.random() < 0.7 else None)[..., None]
    _draw_sticks(rng, palette, image, people, width, height)
    return image


def _draw_sticks(rng, palette: Palette, image: np.ndarray, people, width: int, height: int) -> None:
    """Two-segment bent sticks sized and coloured like the people's limbs."""
    sizes = [float(np.ptp(person.keypoints, axis=0).max()) for person in people] or [height / 2]
    for _ in range(int(rng.integers(2, 8))):
        size = float(np.clip(sizes[int(rng.integers(len(sizes)))], 20, 2 * height))
        if rng.random() < 0.5:
            color = SKIN_TONES[int(rng.integers(len(SKIN_TONES)))] * rng.uniform(0.85, 1.1)
        else:
            color = palette.random_color()
        color = tuple(float(c) for c in color)
        start = rng.uniform(0, 1, 2) * [width, height]
        heading = rng.uniform(0, 2 * np.pi)
        points = [start]
        for _segment in range(2):
            heading += rng.uniform(-2.2, 2.2)
            length = rng.uniform(0.12, 0.3) * size
            points.append(points[-1] + length * np.array([np.cos(heading), np.sin(heading)]))
        thickness = max(2, int(rng.uniform(0.03, 0.07) * size))
        outline = tuple(0.6 * c for c in color)
        for a, b in itertools.pairwise(points):
            pa, pb = tuple(int(v) for v in a), tuple(int(v) for v in b)
            cv2.line(image, pa, pb, outline, thickness + 2, cv2.LINE_8)
            cv2.line(image, pa, pb, color, thickness, cv2.LINE_8)
