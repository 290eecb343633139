"""Spatial augmentation for clips of uint8 frames `(T, H, W, 3)`.

Follows the official TSN transforms (shared/docs/rsa-method.md §4.4):
`GroupMultiScaleCrop(fix_crop, more_fix_crop)` → resize, label-aware
`GroupRandomHorizontalFlip`, ImageNet normalisation; `GroupCenterCrop` for
evaluation and the three `GroupFullResSample` crops for testing. Resizing uses
PIL bilinear (the official loader's resampler), crop and resize in one call.
"""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np
from PIL import Image

SCALES = (1.0, 0.875, 0.75, 0.66)
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
# Folded so normalisation is one subtract and one multiply on uint8 input.
_MEAN_255 = IMAGENET_MEAN * 255.0
_INV_STD_255 = 1.0 / (IMAGENET_STD * 255.0)
# _NORMALIZE_LUT[c, x] = (x − 255·mean_c) / (255·std_c) in float32.
_NORMALIZE_LUT = ((np.arange(256, dtype=np.float32)[None, :] - _MEAN_255[:, None])
                  * _INV_STD_255[:, None]).astype(np.float32)

# "left"/"right" as a direction. SSv2 class 50 ("... pulling it right out
# ...") uses "right" as an intensifier and is flipped by the official code,
# so these adverbial uses do not count.
_DIRECTION_RE = re.compile(
    r'\b(left|right)\b(?!\s+(out|away|after|now)\b)', re.IGNORECASE)


def crop_sizes(height: int, width: int, out_size: int,
               scales: Sequence[float] = SCALES,
               max_distort: int = 1) -> list[tuple[int, int]]:
    """The (w, h) crop pairs `GroupMultiScaleCrop._sample_crop_size` draws from."""
    base = min(height, width)
    sides = [int(base * s) for s in scales]
    sides = [out_size if abs(x - out_size) < 3 else x for x in sides]
    return [(w, h) for i, h in enumerate(sides) for j, w in enumerate(sides)
            if abs(i - j) <= max_distort]


def fixed_offsets(height: int, width: int, crop_w: int,
                  crop_h: int) -> list[tuple[int, int]]:
    """The 13 (x, y) offsets of `fill_fix_offset(more_fix_crop=True)`."""
    ws, hs = (width - crop_w) // 4, (height - crop_h) // 4
    grid = [(0, 0), (4, 0), (0, 4), (4, 4), (2, 2),  # corners, centre
            (0, 2), (4, 2), (2, 4), (2, 0),  # edge midpoints
            (1, 1), (3, 1), (1, 3), (3, 3)]  # quarter points
    return [(i * ws, j * hs) for i, j in grid]


def sample_multiscale_box(height: int, width: int, out_size: int,
                          rng: np.random.Generator) -> tuple[int, int, int, int]:
    """Draws an official multi-scale crop; returns PIL box (x0, y0, x1, y1)."""
    pairs = crop_sizes(height, width, out_size)
    w, h = pairs[rng.integers(len(pairs))]
    offsets = fixed_offsets(height, width, w, h)
    x, y = offsets[rng.integers(len(offsets))]
    return x, y, x + w, y + h


def center_box(height: int, width: int, size: int) -> tuple[int, int, int, int]:
    """`torchvision.CenterCrop` box: rows 8–231, cols 48–271 for 240×320→224."""
    if size > height or size > width:
        raise ValueError(f'crop {size} larger than frames {height}x{width}')
    y = int(round((height - size) / 2.0))
    x = int(round((width - size) / 2.0))
    return x, y, x + size, y + size


def three_crop_boxes(height: int, width: int,
          size: int) -> list[tuple[int, int, int, int]]:
    """`GroupFullResSample` crops in the official order: left, right, centre."""
    if size > height or size > width:
        raise ValueError(f'crop {size} larger than frames {height}x{width}')
    ws, hs = (width - size) // 4, (height - size) // 4
    return [(x, 2 * hs, x + size, 2 * hs + size) for x in (0, 4 * ws, 2 * ws)]


def crop_resize(frames: np.ndarray, box: tuple[int, int, int, int],
                size: int) -> np.ndarray:
    """Crops `box` from every frame and resizes it to size×size (PIL bilinear)."""
    x0, y0, x1, y1 = box
    if (x1 - x0, y1 - y0) == (size, size):
        return frames[:, y0:y1, x0:x1]
    out = np.empty((frames.shape[0], size, size, 3), np.uint8)
    for t, frame in enumerate(frames):
        img = Image.fromarray(frame)
        out[t] = np.asarray(img.resize((size, size), Image.BILINEAR, box=box))
    return out


def normalize(frames: np.ndarray, flip: bool = False) -> np.ndarray:
    """uint8 `(..., H, W, 3)` → float32 ImageNet-normalised, optionally h-flipped.

    A 256-entry table per channel replaces the float arithmetic: one gather
    per channel is ~2× faster than convert, subtract and multiply, and gives
    the same float32 values.
    """
    if flip:
        frames = frames[..., ::-1, :]
    out = np.empty(frames.shape, np.float32)
    for c in range(3):
        np.take(_NORMALIZE_LUT[c], frames[..., c], out=out[..., c])
    return out


def mentions_left_right(name: str) -> bool:
    """True when a class name uses "left" or "right" as a direction."""
    return _DIRECTION_RE.search(name) is not None


def flip_exempt_classes(names: Sequence[str]) -> frozenset[int]:
    """Class ids that must never be flipped (flipping would change the label).

    For Something-Something this yields the official list
    [86, 87, 93, 94, 166, 167] under the alphabetical 174-class order.
    """
    return frozenset(i for i, n in enumerate(names) if mentions_left_right(n))
