"""Synthetic motion: moving shapes whose class only motion can tell.

Deterministic from the config's seed, needs no raw files, builds in seconds
and trains on CPU in minutes: the README's demo dataset.

Eight classes in four time-reversed pairs. Each clip of the second class of a
pair is a clip of the first class played backwards (same generator, frames
reversed), so the distribution of any *single* frame is identical for both
classes of a pair: a frame-by-frame 2D model is at chance within each pair,
while a model that relates frames (RSA) can separate them.

| ids | forward (even id) | reversed (odd id) |
| --- | --- | --- |
| 0/1 | moving left → right | moving right → left |
| 2/3 | moving down | moving up |
| 4/5 | approaching (growing) | moving away (shrinking) |
| 6/7 | appearing | disappearing |

Nuisances: background colour and static texture, a static distractor shape,
object shape (disc or square), colour, size, speed, start position, and
per-frame noise. Names of classes 0/1 mention left/right, so the pipeline never
flips them (a flipped left→right clip is a right→left clip).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from rsa_jax.data import decode
from rsa_jax.data.builders import base

CLASS_NAMES = (
    'Moving something from left to right',
    'Moving something from right to left',
    'Moving something down',
    'Moving something up',
    'Something approaching the camera',
    'Something moving away from the camera',
    'Something appearing',
    'Something disappearing',
)
_SPLIT_CODES = {'train': 0, 'validation': 1}


@dataclasses.dataclass(eq=False)
class SyntheticConfig(base.VideoConfig):
    """Size of the synthetic set; `height`/`width` are the stored frames."""
    num_train: int = 1536
    num_validation: int = 384
    num_frames: int = 16
    seed: int = 0


def _shape_mask(yy, xx, cy, cx, r, square):
    if square:
        return (np.abs(yy - cy) <= r) & (np.abs(xx - cx) <= r)
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def _contrasting_colour(rng, background):
    while True:
        c = rng.uniform(0, 255, 3)
        if np.abs(c - background).sum() > 180:
            return c


def render_clip(label: int, n: int, height: int, width: int,
                rng: np.random.Generator) -> np.ndarray:
    """Renders one clip of class `label` as uint8 `(n, height, width, 3)`."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    bg_colour = rng.uniform(30, 225, 3)
    texture = rng.normal(0, 12, (height // 4 + 1, width // 4 + 1, 1))
    texture = np.kron(texture, np.ones((4, 4, 1)))[:height, :width]
    background = np.clip(bg_colour + texture, 0, 255)
    # A static distractor: shape cues alone cannot identify the mover.
    d_mask = _shape_mask(yy, xx, rng.uniform(0, height), rng.uniform(0, width),
                         rng.uniform(0.06, 0.12) * height, rng.random() < 0.5)
    background[d_mask] = _contrasting_colour(rng, bg_colour)

    colour = _contrasting_colour(rng, bg_colour)
    square = rng.random() < 0.5
    side = min(height, width)
    r = rng.uniform(0.10, 0.16) * side
    t = np.arange(n) / max(n - 1, 1)
    pair = label // 2
    cy = np.full(n, rng.uniform(r, height - r))
    cx = np.full(n, rng.uniform(r, width - r))
    radius = np.full(n, r)
    visible = np.ones(n, bool)
    if pair == 0:  # left → right
        dist = rng.uniform(0.35, 0.6) * (width - 2 * r)
        cx = rng.uniform(r, width - r - dist) + dist * t
    elif pair == 1:  # down (top → bottom)
        dist = rng.uniform(0.35, 0.6) * (height - 2 * r)
        cy = rng.uniform(r, height - r - dist) + dist * t
    elif pair == 2:  # approaching: grows
        r0 = rng.uniform(0.06, 0.09) * side
        radius = r0 * (1 + rng.uniform(1.2, 1.8) * t)
        cy = np.full(n, rng.uniform(0.3, 0.7) * height)
        cx = np.full(n, rng.uniform(0.3, 0.7) * width)
    else:  # appearing
        visible = np.arange(n) >= rng.integers(n // 4, max(3 * n // 4, n // 4 + 1))
    frames = np.empty((n, height, width, 3), np.float32)
    for i in range(n):
        frame = background.copy()
        if visible[i]:
            frame[_shape_mask(yy, xx, cy[i], cx[i], radius[i], square)] = colour
        frames[i] = frame
    frames += rng.normal(0, 3, frames.shape)
    clip = np.clip(frames, 0, 255).astype(np.uint8)
    # Odd classes are the time reversal of their pair's even class.
    return clip[::-1] if label % 2 else clip


def synthetic_example(split: str, index: int,
                      cfg: SyntheticConfig) -> dict:
    """Example `index` of `split`; depends only on (seed, split, index)."""
    rng = np.random.default_rng([cfg.seed, _SPLIT_CODES[split], index])
    label = index % len(CLASS_NAMES)
    clip = render_clip(label, cfg.num_frames, cfg.height, cfg.width, rng)
    return dict(video_id=f'{split}_{index:06d}', label=label,
                label_name=CLASS_NAMES[label], num_frames=cfg.num_frames,
                frames=[decode.encode_jpeg(f, cfg.jpeg_quality) for f in clip])


class SyntheticMotion(base.VideoBuilder):
    """Moving shapes; classes need motion (direction, size change, (dis)appearance)."""

    BUILDER_CONFIGS = [
        SyntheticConfig(name='default', height=64, width=80,
                        description='1536/384 clips of 16 frames, 64×80.'),
        SyntheticConfig(name='tiny', height=32, width=40, num_train=32,
                        num_validation=16, num_frames=8,
                        description='For tests: 32/16 clips of 8 frames.'),
    ]
    CLASS_NAMES = CLASS_NAMES

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        cfg = self.builder_config
        return {
            'train': self._generate_examples('train', cfg.num_train),
            'validation': self._generate_examples('validation',
                                                  cfg.num_validation),
        }

    def _generate_examples(self, split: str, count: int):
        items = [(f'{split}_{i:06d}', synthetic_example,
                  (split, i, self.builder_config)) for i in range(count)]
        return self._generate_checked(split, f'seed {self.builder_config.seed}',
                                      items)
