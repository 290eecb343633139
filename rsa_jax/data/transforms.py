"""Spatial augmentation for clips of uint8 frames `(T, H, W, 3)`.

Follows the official TSN transforms (docs/data.md#pipeline):
`GroupMultiScaleCrop(fix_crop, more_fix_crop)` → resize, label-aware
`GroupRandomHorizontalFlip`, ImageNet normalisation; `GroupCenterCrop` for
evaluation and the three `GroupFullResSample` crops for testing.

Resizing reproduces the official `img.crop(box).resize(size, BILINEAR)` (PIL)
to within ±1 grey level: axes that are enlarged (and every axis of the usual
240×320 → 224 crops except a 240 side) use OpenCV's `INTER_LINEAR`, which is
the same half-pixel bilinear filter in fixed point and ~6× faster; axes that
shrink use PIL itself, whose bilinear filter widens with the scale
(antialiasing, which `INTER_LINEAR` lacks). Crop → resize → flip →
normalise write straight into one preallocated clip array.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import cv2
import numpy as np
from PIL import Image

# Parallelism comes from grain workers (one process per core); OpenCV's own
# thread pool would only oversubscribe the cores.
cv2.setNumThreads(1)

SCALES = (1.0, 0.875, 0.75, 0.66)
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
# Folded so normalisation is one subtract and one multiply on uint8 input.
_MEAN_255 = IMAGENET_MEAN * 255.0
_INV_STD_255 = 1.0 / (IMAGENET_STD * 255.0)
# _NORMALIZE_LUT[c, x] = (x − 255·mean_c) / (255·std_c) in float32.
_NORMALIZE_LUT = ((np.arange(256, dtype=np.float32)[None, :] - _MEAN_255[:, None])
                  * _INV_STD_255[:, None]).astype(np.float32)
# The same table as OpenCV wants it for 3-channel input: (1, 256, 3).
_NORMALIZE_LUT_CV = np.ascontiguousarray(_NORMALIZE_LUT.T[None])

# "left"/"right" as a direction. SSv2 class 50 ("... pulling it right out
# ...") uses "right" as an intensifier and is flipped by the official code,
# so these adverbial uses do not count.
_DIRECTION_RE = re.compile(
    r'\b(left|right)\b(?!\s+(out|away|after|now)\b)', re.IGNORECASE)
# Names the video_list builder gives when the dataset has no classes.txt.
_PLACEHOLDER_RE = re.compile(r'class_\d+')


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
                          rng: np.random.Generator,
                          scales: Sequence[float] = SCALES) -> tuple[int, int, int, int]:
    """Draws an official multi-scale crop; returns PIL box (x0, y0, x1, y1)."""
    pairs = crop_sizes(height, width, out_size, scales)
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


def _pil_resize(img: np.ndarray, width: int, height: int) -> np.ndarray:
    return np.asarray(Image.fromarray(np.ascontiguousarray(img)).resize(
        (width, height), Image.BILINEAR))


def resize_like_pil(img: np.ndarray, width: int, height: int,
                    out: np.ndarray | None = None) -> np.ndarray:
    """`Image.fromarray(img).resize((width, height), BILINEAR)`, ±1 grey level.

    Shrinking axes go through PIL (bit-exact: its filter widens with the scale),
    growing axes through `cv2.resize(INTER_LINEAR)` (±1 from fixed-point
    rounding, ~7× faster), in PIL's order: horizontal pass, then vertical.
    Writes into `out` (uint8 `(height, width, 3)`, C-contiguous) when given.
    """
    h, w = img.shape[:2]
    if out is None:
        out = np.empty((height, width, 3), np.uint8)
    if w > width and h > height:
        out[...] = _pil_resize(img, width, height)
    elif w > width:  # PIL horizontal pass, then OpenCV vertical (h ≤ height)
        cv2.resize(_pil_resize(img, width, h), (width, height), dst=out,
                   interpolation=cv2.INTER_LINEAR)
    elif h > height:  # OpenCV horizontal (w ≤ width), then PIL vertical pass
        grown = cv2.resize(img, (width, h), interpolation=cv2.INTER_LINEAR)
        out[...] = _pil_resize(grown, width, height)
    elif (w, h) == (width, height):
        out[...] = img
    else:
        cv2.resize(img, (width, height), dst=out, interpolation=cv2.INTER_LINEAR)
    return out


def resize_crop(frame: np.ndarray, box: tuple[int, int, int, int], size: int,
                out: np.ndarray | None = None) -> np.ndarray:
    """`Image.fromarray(frame).crop(box).resize((size, size), BILINEAR)`, ±1.

    See `resize_like_pil`. Pixels outside `box` are never used, as in the
    official crop-then-resize. Writes into `out` (uint8 `(size, size, 3)`,
    C-contiguous) when given.
    """
    x0, y0, x1, y1 = box
    return resize_like_pil(frame[y0:y1, x0:x1], size, size, out)


def scale_frame(frame: np.ndarray, height: int, width: int) -> np.ndarray:
    """The official `GroupScale((height, width))` of one decoded frame, ±1 grey level."""
    if frame.shape[:2] == (height, width):
        return frame
    return resize_like_pil(np.ascontiguousarray(frame), width, height)


def crop_resize(frames: Sequence[np.ndarray] | np.ndarray,
                box: tuple[int, int, int, int], size: int,
                out: np.ndarray | None = None) -> np.ndarray:
    """Crops `box` from every frame and resizes it to size×size (see `resize_crop`).

    `frames` is a uint8 `(T, H, W, 3)` array or a sequence of `(H, W, 3)`
    frames; returns uint8 `(T, size, size, 3)` (written into `out` if given).
    """
    if out is None:
        out = np.empty((len(frames), size, size, 3), np.uint8)
    first: dict[int, int] = {}  # id of a decoded frame → its first position
    for t, frame in enumerate(frames):
        if isinstance(frames, np.ndarray):
            resize_crop(frame, box, size, out[t])
        elif id(frame) in first:  # the same decoded frame sampled twice
            out[t] = out[first[id(frame)]]
        else:
            first[id(frame)] = t
            resize_crop(frame, box, size, out[t])
    return out


def normalize(frames: np.ndarray, flip: bool = False,
              out: np.ndarray | None = None) -> np.ndarray:
    """uint8 `(..., H, W, 3)` → float32 ImageNet-normalised, optionally h-flipped.

    A 256-entry table per channel replaces the float arithmetic (`cv2.LUT`, one
    pass, ~2.7× faster than the NumPy gather, more than convert, subtract and
    multiply) and gives the same float32 values as `(x / 255 − mean) / std` up to float rounding.
    """
    frames = np.asarray(frames)
    if out is None:
        out = np.empty(frames.shape, np.float32)
    if frames.size == 0:
        return out
    h, w = frames.shape[-3:-1]
    src = frames.reshape(-1, h, w, 3)
    dst = out.reshape(-1, h, w, 3)
    if src.flags.c_contiguous and not flip:
        cv2.LUT(src.reshape(-1, w, 3), _NORMALIZE_LUT_CV,
                dst=dst.reshape(-1, w, 3))
        return out
    for t in range(src.shape[0]):
        frame = np.ascontiguousarray(src[t])
        if flip:
            frame = cv2.flip(frame, 1)
        cv2.LUT(frame, _NORMALIZE_LUT_CV, dst=dst[t])
    return out


def augment(frames: Sequence[np.ndarray] | np.ndarray,
            box: tuple[int, int, int, int], size: int, flip: bool = False,
            uint8_output: bool = False) -> np.ndarray:
    """Crop → resize (per frame, into one clip array) → flip → normalise.

    A frame that appears twice in the `frames` list is resized once. Returns
    float32 ImageNet-normalised `(T, size, size, 3)`, or the raw uint8 pixels with
    `uint8_output`.
    """
    clip = crop_resize(frames, box, size)
    if flip:
        flat = clip.reshape(-1, size, 3)
        cv2.flip(flat, 1, dst=flat)
    if uint8_output:
        return clip
    return normalize(clip)


def mentions_left_right(name: str) -> bool:
    """True when a class name uses "left" or "right" as a direction."""
    return _DIRECTION_RE.search(name) is not None


def placeholder_names(names: Sequence[str]) -> bool:
    """True when class names are generated stand-ins (`class_0`, `class_1`, ...)."""
    return bool(names) and all(_PLACEHOLDER_RE.fullmatch(n) for n in names)


def flip_exempt_classes(names: Sequence[str]) -> frozenset[int]:
    """Class ids that must never be flipped (flipping would change the label).

    For Something-Something this yields the official list
    [86, 87, 93, 94, 166, 167] under the alphabetical 174-class order.
    """
    return frozenset(i for i, n in enumerate(names) if mentions_left_right(n))
