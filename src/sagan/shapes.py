"""`shapes`: the built-in dataset. Procedural, class-labelled, any resolution, no download.

Each image shows one coloured shape of its class and the shape's mirror image across the
image's vertical or horizontal centre line, over a two-colour gradient background. The two
copies sit far apart yet must agree in class, size, colour, rotation (mirrored) and position
(mirrored): a dependency across the whole image, which is what self-attention is for.

Image i of a dataset with seed s is a pure function of (s, i, resolution): the same on every
machine, worker and rank, so runs are reproducible and resumable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch.utils.data import Dataset

CLASSES = ("circle", "square", "triangle", "cross", "star", "ring")


def _signed_distance(name: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Approximate signed distance (negative inside) of a unit-sized shape centred at 0."""
    if name == "circle":
        return np.hypot(x, y) - 1.0
    if name == "ring":
        return np.abs(np.hypot(x, y) - 0.72) - 0.28
    if name == "square":
        return np.maximum(np.abs(x), np.abs(y)) - 0.8
    if name == "triangle":  # equilateral, pointing up: the max over its three edges' half-planes
        edges = [(0.0, -1.0), (0.866, 0.5), (-0.866, 0.5)]
        return np.max([nx * x + ny * y for nx, ny in edges], axis=0) - 0.5
    if name == "cross":
        arm = lambda a, b: np.maximum(np.abs(a) - 1.0, np.abs(b) - 0.32)
        return np.minimum(arm(x, y), arm(y, x))
    if name == "star":  # five points: the radius swings between 0.45 and 1.05 with the angle
        angle = np.arctan2(x, y)
        wave = np.abs(((angle * 5 / (2 * np.pi)) % 1.0) - 0.5) * 2  # 1 at a point, 0 between
        return (np.hypot(x, y) - (0.45 + 0.6 * wave)) * 0.8
    raise ValueError(f"unknown shape {name!r}")


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    k = (np.array([5.0, 3.0, 1.0]) + h * 6) % 6
    return v - v * s * np.clip(np.minimum(k, 4 - k), 0, 1)


@dataclass(frozen=True)
class ShapeDraw:
    """The random choices behind one image: class, mirror axis, placement, colours (coordinates on [-1, 1])."""

    label: int
    vertical_pair: bool  # True: the copies sit above each other (mirrored across the horizontal centre line)
    size: float
    cx: float  # centre of the first copy along the mirrored axis; always < 0, the mirror copy at -cx
    cy: float
    theta: float
    colour: np.ndarray
    ends: tuple[np.ndarray, np.ndarray]
    phi: float


def draw(index: int, seed: int = 0) -> ShapeDraw:
    """The choices behind image `index` of the stream with this seed (a pure function of both)."""
    rng = np.random.default_rng([seed, index])
    label = int(rng.integers(len(CLASSES)))
    vertical_pair = bool(rng.random() < 0.5)
    size = rng.uniform(0.32, 0.45)  # radius 5 to 7 pixels at 32: big enough for corners and points
    cx = -rng.uniform(size + 0.06, 0.96 - size)  # first half; the mirror copy lands in the second
    cy = rng.uniform(-0.92 + size, 0.92 - size)
    theta = rng.uniform(-0.35, 0.35)  # near the canonical pose (+-20 degrees): one look per class and mirror axis
    colour = _hsv_to_rgb(rng.random(), rng.uniform(0.6, 1.0), rng.uniform(0.75, 1.0))
    # A bright shape over a dark gradient of any two hues (docs/tuning.md: why no light backgrounds).
    ends = tuple(_hsv_to_rgb(rng.random(), rng.uniform(0.2, 0.7), rng.uniform(0.05, 0.35)) for _ in range(2))
    return ShapeDraw(label, vertical_pair, size, cx, cy, theta, colour, ends, rng.uniform(0, 2 * np.pi))


def render(index: int, resolution: int, seed: int = 0) -> tuple[np.ndarray, int]:
    """Image `index` of the stream with this seed: (resolution, resolution, 3) float32 in [0, 1], class."""
    p = draw(index, seed)
    # Pixel centres on [-1, 1]; y grows downwards as in images.
    axis = (np.arange(resolution, dtype=np.float32) + 0.5) / resolution * 2 - 1
    y, x = np.meshgrid(axis, axis, indexing="ij")
    if p.vertical_pair:  # mirror across the horizontal centre line instead: swap the roles of x and y
        x, y = y, x
    cos, sin = np.cos(p.theta), np.sin(p.theta)
    pixel = 2.0 / resolution

    def coverage(px: np.ndarray) -> np.ndarray:
        u, v = (px - p.cx) / p.size, (y - p.cy) / p.size
        d = _signed_distance(CLASSES[p.label], cos * u + sin * v, -sin * u + cos * v) * p.size
        return np.clip(0.5 - d / pixel, 0.0, 1.0)  # anti-aliased edge, one pixel wide

    mask = np.maximum(coverage(x), coverage(-x))[..., None]  # the shape and its mirror image
    t = ((np.cos(p.phi) * x + np.sin(p.phi) * y) / 2.0 + 0.5)[..., None]
    background = p.ends[0] * (1 - t) + p.ends[1] * t
    image = background * (1 - mask) + p.colour * mask
    return image.astype(np.float32), p.label


def _to_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image).permute(2, 0, 1).mul(2).sub(1)  # (3, R, R) in [-1, 1]


class ShapesDataset(Dataset):
    """`size` images of the shapes stream, as ((3, R, R) tensor in [-1, 1], class index).

    Args:
        resolution: image size R, any positive integer (8 and up look like shapes).
        size: number of images.
        seed: picks the stream; image i is the same for the same (seed, i, resolution).

    Examples::

        >>> data = ShapesDataset(32, size=1000)
        >>> image, label = data[0]
        >>> image.shape, data.classes[label] in CLASSES
        (torch.Size([3, 32, 32]), True)
    """

    classes: ClassVar[list[str]] = list(CLASSES)

    def __init__(self, resolution: int = 32, size: int = 50_000, seed: int = 0) -> None:
        if resolution < 1 or size < 1:
            raise ValueError(f"shapes needs resolution >= 1 and size >= 1, got resolution={resolution}, size={size}")
        self.resolution, self.size, self.seed = resolution, size, seed

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if not 0 <= index < self.size:
            raise IndexError(f"index {index} is outside this shapes dataset of {self.size} images")
        image, label = render(index, self.resolution, self.seed)
        return _to_tensor(image), label
