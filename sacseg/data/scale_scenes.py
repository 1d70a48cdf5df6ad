"""ScaleScenes: procedurally generated street-like scenes whose object classes need context at the object's own scale."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from .transforms import IGNORE_INDEX, JointTransform, eval_transforms

CLASSES: tuple[str, ...] = ("sky", "building", "road", "stripes", "checker", "dots", "rings")
PALETTE = torch.tensor(
    [(70, 130, 180), (70, 70, 70), (128, 64, 128), (220, 20, 60), (0, 0, 142), (250, 170, 30), (107, 142, 35)],
    dtype=torch.uint8,
)
SKY, BUILDING, ROAD = 0, 1, 2
TEXTURES: tuple[str, ...] = CLASSES[3:]
OBJECT_CLASSES: tuple[int, ...] = tuple(range(3, len(CLASSES)))
# Shorter periods alias on the pixel grid (stripes and checker become indistinguishable noise).
MIN_PERIOD = 3.0
MIN_CONTRAST = 100.0
#: Each object class's silhouette and hue band (degrees, centre +- HUE_SPREAD): cues a ResNet-18 at
#: output stride 8 learns in a few hundred steps, unlike the texture alone, which is recognisable only
#: with context at the object's own scale. Silhouette, texture period and extent all scale with the
#: object, so the receptive field that sees a whole object still grows with its size.
SHAPES: dict[str, str] = {"stripes": "rectangle", "checker": "triangle", "dots": "ellipse", "rings": "ring"}
HUES: dict[str, float] = {"stripes": 0.0, "checker": 90.0, "dots": 180.0, "rings": 270.0}
HUE_SPREAD = 20.0
# Share of textured facades and road patches drawn in vivid colours of any hue (the rest muted), so
# that a saturated hue alone does not make an object.
VIVID_DISTRACTORS = 0.3


def _texture(kind: str, dx: np.ndarray, dy: np.ndarray, period: float, angle: float, phase: float) -> np.ndarray:
    """Soft two-colour pattern weight in [0, 1] at offsets (dx, dy) [h, w] from the pattern centre.

    Every pattern has spatial period ``period`` (pixels); stripes/checker/dots are rotated by ``angle``,
    rings are concentric about the centre. Soft edges (a steep sigmoid) keep short periods from aliasing.
    """
    u = dx * math.cos(angle) + dy * math.sin(angle)
    v = -dx * math.sin(angle) + dy * math.cos(angle)
    k = 2 * math.pi / period
    if kind == "stripes":
        s = np.sin(k * u + phase)
    elif kind == "checker":
        s = 2.0 * np.sin(k * u + phase) * np.sin(k * v + phase)
    elif kind == "dots":
        s = 2.0 * (np.cos(k * u + phase) + np.cos(k * v + phase)) / 2.0 - 1.0
    elif kind == "rings":
        s = np.sin(k * np.sqrt(dx * dx + dy * dy) + phase)
    else:
        raise ValueError(f"unknown texture {kind!r}; valid: {', '.join(TEXTURES)}")
    return 1.0 / (1.0 + np.exp(-4.0 * s))


class ScaleScenes(Dataset):
    """Deterministic synthetic street scenes with a perspective: ``ds[i] -> (image float [3, S, S], target long [S, S])``.

    Layout: sky above a random horizon, a row of building blocks standing on it, road below. Objects of
    the classes "stripes", "checker", "dots" and "rings" are textured with that pattern at a period of
    ``max(radius / periods_per_radius, 3 px)`` (recognisable only with context proportional to the
    object's size), and each class has its own silhouette (``SHAPES``: rectangle, upright triangle,
    ellipse, elliptic ring whose hole shows what lies behind) and hue band (``HUES`` +- ``HUE_SPREAD``
    degrees, vivid, the pattern's two colours far apart in brightness). Object radii (pixels) are log-uniform in
    ``radius_range`` (default ``(size / 64, size * 15 / 64)``: 4 to 60 px at size 256, a 15x range) and
    placed by perspective: an object's foot lies lower in the image the larger it is (near = low = large,
    far = small); objects are drawn far to near, so near ones occlude far ones. ``num_objects`` bounds
    the object count per scene. With ``distractors``, building facades and patches of road carry the same
    textures at periods from the objects' range but unrelated to the region's size, so texture alone does
    not tell stuff from objects; most stuff is drawn in muted colours, but ``VIVID_DISTRACTORS`` of the
    textured facades and patches in vivid colours of any hue, so a hue alone does not tell either (the two
    colours of a texture differ by at least 100 in RGB distance). Gaussian pixel noise of std ``noise``
    (0..255 scale) is added.

    Image ``i`` is generated from ``numpy.random.default_rng([seed, i])``, so ``ds[i]`` does not depend on the
    access order. Convention for held-out sets: train ``seed=0``, validation ``seed=1``, test ``seed=2``
    (different seeds give independent scenes).

    Object size (``objects(i)``): ``"size"`` is the drawn radius in pixels: whatever its silhouette and
    aspect ratio, an object that is neither occluded nor cut by the border covers about ``pi * size**2``
    pixels (a disc of that radius).
    """

    ignore_index: int = IGNORE_INDEX
    classes: tuple[str, ...] = CLASSES
    palette: torch.Tensor = PALETTE

    def __init__(
        self,
        num_images: int,
        size: int = 256,
        seed: int = 0,
        transforms: JointTransform | None = None,
        *,
        radius_range: tuple[float, float] | None = None,
        num_objects: tuple[int, int] = (6, 14),
        periods_per_radius: float = 1.5,
        distractors: bool = True,
        noise: float = 8.0,
    ) -> None:
        if num_images < 0:
            raise ValueError(f"num_images must be >= 0, got {num_images}")
        if size < 16:
            raise ValueError(f"size must be >= 16, got {size}")
        if radius_range is None:
            radius_range = (size / 64, size * 15 / 64)
        r_min, r_max = (float(r) for r in radius_range)
        if not 1.0 <= r_min <= r_max <= size / 2:
            raise ValueError(f"radius_range must satisfy 1 <= min <= max <= size/2 = {size / 2}, got {radius_range}")
        if not 0 <= num_objects[0] <= num_objects[1]:
            raise ValueError(f"num_objects must be (low, high) with 0 <= low <= high, got {num_objects}")
        if periods_per_radius <= 0 or noise < 0:
            raise ValueError(f"periods_per_radius must be > 0 and noise >= 0, got {periods_per_radius}, {noise}")
        self.num_images, self.size, self.seed = int(num_images), int(size), int(seed)
        self.radius_range = (r_min, r_max)
        self.num_objects = (int(num_objects[0]), int(num_objects[1]))
        self.periods_per_radius = float(periods_per_radius)
        self.distractors = bool(distractors)
        self.noise = float(noise)
        self.transforms = transforms if transforms is not None else eval_transforms()

    def __len__(self) -> int:
        return self.num_images

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, target = self.load(index)
        return self.transforms(image, target)

    def load(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Untransformed scene: (image uint8 [3, S, S], target uint8 [S, S])."""
        image, label, _, _ = self._render(index)
        return torch.from_numpy(image), torch.from_numpy(label)

    def objects(self, index: int) -> tuple[torch.Tensor, list[dict[str, Any]]]:
        """Objects of the untransformed scene ``index``: (instance ids long [S, S], 0 = no object; records).

        Each record: ``{"id", "class", "size" (drawn radius, px), "area" (visible pixels in the id map),
        "drawn_area" (pixels of the whole ellipse inside the image, before occlusion), "center" (x, y)}``.
        """
        _, _, instances, records = self._render(index)
        return torch.from_numpy(instances).long(), records

    def _render(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[dict[str, Any]]]:
        if not 0 <= index < self.num_images:
            raise IndexError(f"index {index} out of range for {self.num_images} scenes")
        rng = np.random.default_rng([self.seed, index])
        s = self.size
        ys, xs = np.mgrid[0:s, 0:s].astype(np.float32)
        image = np.empty((s, s, 3), dtype=np.float32)
        label = np.empty((s, s), dtype=np.uint8)
        horizon = rng.uniform(0.3, 0.45) * s

        sky = ys < horizon
        label[sky], label[~sky] = SKY, ROAD
        for region in (sky, ~sky):  # sky and road: smooth vertical gradients of their own colours
            top, bottom = _colour(rng), _colour(rng)
            image[region] = (top + (bottom - top) * (ys / s)[..., None])[region]
        self._buildings(rng, image, label, xs, ys, horizon)
        if self.distractors:
            self._road_patches(rng, image, label, xs, ys, horizon)
        instances, records = self._objects(rng, image, label, xs, ys, horizon)

        image += rng.normal(0.0, self.noise, size=image.shape).astype(np.float32)
        image = np.clip(image, 0, 255).round().astype(np.uint8).transpose(2, 0, 1).copy()
        return image, label, instances, records

    def _buildings(
        self, rng: np.random.Generator, image: np.ndarray, label: np.ndarray, xs: np.ndarray, ys: np.ndarray, horizon: float
    ) -> None:
        """A row of blocks standing on the horizon, some gaps; textured facades at random periods."""
        s = self.size
        edges = np.sort(rng.uniform(0, s, size=rng.integers(2, 6)))
        edges = np.concatenate([[0.0], edges, [float(s)]])
        for left, right in zip(edges[:-1], edges[1:]):
            if rng.random() < 0.2:
                continue
            roof = horizon * rng.uniform(0.05, 0.8)
            base = horizon + rng.uniform(0.0, 0.05) * s
            x0, x1, y0, y1 = int(left), int(math.ceil(right)), int(roof), int(math.ceil(base))
            region = (slice(y0, y1), slice(x0, x1))
            inside = (xs[region] >= left) & (xs[region] < right) & (ys[region] >= roof) & (ys[region] < base)
            label[region][inside] = BUILDING
            c1, c2 = _colour_pair(rng, vivid=self.distractors and rng.random() < VIVID_DISTRACTORS)
            if self.distractors and rng.random() < 0.8:
                w = _texture(
                    TEXTURES[rng.integers(len(TEXTURES))],
                    xs[region] - rng.uniform(left, right),
                    ys[region] - rng.uniform(roof, base),
                    period=self._distractor_period(rng),
                    angle=rng.choice([0.0, math.pi / 2, rng.uniform(0, math.pi)]),
                    phase=rng.uniform(0, 2 * math.pi),
                )[..., None]
                image[region][inside] = (c1 + (c2 - c1) * w)[inside]
            else:
                image[region][inside] = c1

    def _distractor_period(self, rng: np.random.Generator) -> float:
        """Log-uniform over the range of object texture periods, so the period alone does not tell stuff from objects."""
        return _log_uniform(rng, MIN_PERIOD, max(MIN_PERIOD, self.radius_range[1] / self.periods_per_radius))

    def _road_patches(
        self, rng: np.random.Generator, image: np.ndarray, label: np.ndarray, xs: np.ndarray, ys: np.ndarray, horizon: float
    ) -> None:
        """Textured rectangles on the road (markings, manholes...) at periods unrelated to their size; label road."""
        s = self.size
        for _ in range(rng.integers(0, 4)):
            cy = rng.uniform(horizon, s)
            extent = max(3.0, (cy - horizon) / (s - horizon) * rng.uniform(0.2, 0.6) * s)
            cx = rng.uniform(0, s)
            x0, x1 = int(max(0, cx - extent)), int(min(s, cx + extent))
            y0, y1 = int(max(horizon, cy - extent * 0.4)), int(min(s, cy + extent * 0.4))
            if x1 <= x0 or y1 <= y0:
                continue
            region = (slice(y0, y1), slice(x0, x1))
            c1, c2 = _colour_pair(rng, vivid=rng.random() < VIVID_DISTRACTORS)
            w = _texture(
                TEXTURES[rng.integers(len(TEXTURES))],
                xs[region] - cx,
                ys[region] - cy,
                period=self._distractor_period(rng),
                angle=rng.uniform(0, math.pi),
                phase=rng.uniform(0, 2 * math.pi),
            )[..., None]
            image[region] = c1 + (c2 - c1) * w
            label[region] = ROAD

    def _objects(
        self, rng: np.random.Generator, image: np.ndarray, label: np.ndarray, xs: np.ndarray, ys: np.ndarray, horizon: float
    ) -> tuple[np.ndarray, list[dict[str, Any]]]:
        """Draw the objects far to near; return the instance id map int32 [S, S] and the records."""
        s = self.size
        r_min, r_max = self.radius_range
        count = int(rng.integers(self.num_objects[0], self.num_objects[1] + 1))
        radii = np.sort(np.exp(rng.uniform(math.log(r_min), math.log(r_max), size=count)))  # far (small) first
        instances = np.zeros((s, s), dtype=np.int32)
        drawn_areas: list[int] = []
        records: list[dict[str, Any]] = []
        for number, radius in enumerate(radii, start=1):
            cls = int(rng.choice(OBJECT_CLASSES))
            texture = TEXTURES[cls - OBJECT_CLASSES[0]]
            aspect = rng.uniform(0.6, 1.6)
            half_w, half_h = _half_extent(SHAPES[texture], radius, aspect)
            # Perspective: the foot's height below the horizon grows linearly with the object's size.
            foot = horizon + (s - horizon) * (radius / r_max) * rng.uniform(0.85, 1.1)
            cx, cy = rng.uniform(0, s), foot - half_h
            x0, x1 = max(0, int(cx - half_w)), min(s, int(math.ceil(cx + half_w)) + 1)
            y0, y1 = max(0, int(cy - half_h)), min(s, int(math.ceil(cy + half_h)) + 1)
            region = (slice(y0, y1), slice(x0, x1))
            dx, dy = xs[region] - cx, ys[region] - cy
            inside = _silhouette(SHAPES[texture], dx, dy, half_w, half_h)
            c1, c2 = _class_colours(rng, HUES[texture])
            w = _texture(
                texture,
                dx,
                dy,
                period=max(radius / self.periods_per_radius, MIN_PERIOD),
                angle=rng.uniform(0, math.pi),
                phase=rng.uniform(0, 2 * math.pi),
            )[..., None]
            image[region][inside] = (c1 + (c2 - c1) * w)[inside]
            label[region][inside] = cls
            instances[region][inside] = number
            drawn_areas.append(int(inside.sum()))
            records.append({"id": number, "class": cls, "size": float(radius), "center": (float(cx), float(cy))})
        visible = np.bincount(instances.ravel(), minlength=count + 1)
        for record, drawn in zip(records, drawn_areas):
            record["area"] = int(visible[record["id"]])
            record["drawn_area"] = drawn
        return instances, records

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.num_images} scenes, size={self.size}, seed={self.seed})"


_RING_HOLE = 0.5  # inner / outer radius of a ring


def _half_extent(shape: str, radius: float, aspect: float) -> tuple[float, float]:
    """Half width and half height of a silhouette of area ``pi * radius**2`` and width/height ratio ~``aspect``."""
    stretch = math.sqrt(aspect)
    if shape == "ellipse":
        side = radius
    elif shape == "ring":
        side = radius / math.sqrt(1.0 - _RING_HOLE**2)
    elif shape == "rectangle":  # 4 * half_w * half_h = pi r^2
        side = radius * math.sqrt(math.pi) / 2.0
    elif shape == "triangle":  # base 2 * half_w, height 2 * half_h: area 2 * half_w * half_h = pi r^2
        side = radius * math.sqrt(math.pi / 2.0)
    else:
        raise ValueError(f"unknown shape {shape!r}; valid: {', '.join(sorted(set(SHAPES.values())))}")
    return side * stretch, side / stretch


def _silhouette(shape: str, dx: np.ndarray, dy: np.ndarray, half_w: float, half_h: float) -> np.ndarray:
    """Boolean mask [h, w] of the silhouette centred at offsets (0, 0) of (dx, dy) [h, w]."""
    if shape == "rectangle":
        return (np.abs(dx) <= half_w) & (np.abs(dy) <= half_h)
    if shape == "triangle":  # apex up, base down
        depth = (dy + half_h) / (2.0 * half_h)  # 0 at the apex, 1 at the base
        return (depth >= 0) & (depth <= 1) & (np.abs(dx) <= half_w * depth)
    r2 = (dx / half_w) ** 2 + (dy / half_h) ** 2
    if shape == "ring":
        return (r2 <= 1.0) & (r2 >= _RING_HOLE**2)
    return r2 <= 1.0


def _hsv(hue: float, saturation: float, value: float) -> np.ndarray:
    """An RGB colour (0..255, float32 [3]) from hue in degrees, saturation and value in [0, 1]."""
    channel = [(n + hue / 60.0) % 6 for n in (5.0, 3.0, 1.0)]
    return np.array([255 * value * (1 - saturation * max(0.0, min(k, 4 - k, 1.0))) for k in channel], dtype=np.float32)


def _class_colours(rng: np.random.Generator, hue: float) -> tuple[np.ndarray, np.ndarray]:
    """An object's two colours: vivid, in its class's hue band, one bright and one dark."""
    h = hue + rng.uniform(-HUE_SPREAD, HUE_SPREAD)
    return (_hsv(h, rng.uniform(0.7, 1.0), rng.uniform(0.8, 1.0)),
            _hsv(h + rng.uniform(-10, 10), rng.uniform(0.6, 1.0), rng.uniform(0.2, 0.4)))  # fmt: skip


def _colour(rng: np.random.Generator, vivid: bool = False) -> np.ndarray:
    """A random colour: ``vivid`` of any hue, else muted (saturation <= 0.3)."""
    saturation = rng.uniform(0.6, 1.0) if vivid else rng.uniform(0.0, 0.3)
    return _hsv(rng.uniform(0, 360), saturation, rng.uniform(0.15, 0.95))


def _colour_pair(rng: np.random.Generator, vivid: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Two random colours at least MIN_CONTRAST apart (RGB distance), so every texture is visible above the noise."""
    first = _colour(rng, vivid)
    while True:
        second = _colour(rng, vivid)
        if np.linalg.norm(second - first) >= MIN_CONTRAST:
            return first, second


def _log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(math.exp(rng.uniform(math.log(low), math.log(high))))
