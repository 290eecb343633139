"""TSN segment sampling: which frames of a video make up a clip.

Mirrors the official `TSNDataSet` (mode 1, `new_length=1`) index rules
(docs/data.md#pipeline). The official code returns 1-based frame
numbers (`img_{:05d}.jpg`); these functions return **0-based** positions into
the stored frame list, i.e. official index − 1.

Quirks kept on purpose so numbers match the official pipeline (docs/method.md#quirks):
- train with fewer than T frames repeats the first frame T times;
- eval with T frames *or fewer* also repeats the first frame.
"""

from __future__ import annotations

import numpy as np


def train_indices(num_frames: int, num_segments: int,
                  rng: np.random.Generator) -> np.ndarray:
    """Official `_sample_indices`: one random frame inside each of T segments.

    avg = num_frames // T; index_i = i·avg + randint(0, avg − 1). When
    num_frames < T every index is the first frame (the official `elif` branch
    can never fire).
    """
    avg = num_frames // num_segments
    if avg > 0:
        return (np.arange(num_segments) * avg
                + rng.integers(0, avg, size=num_segments)).astype(np.int64)
    return np.zeros(num_segments, np.int64)


def eval_indices(num_frames: int, num_segments: int) -> np.ndarray:
    """Official `_get_val_indices`: the centre frame of each segment.

    tick = num_frames / T; index_i = int(tick / 2 + tick · i). Videos with
    num_frames <= T get the first frame repeated (official behaviour).
    """
    return test_indices(num_frames, num_segments, clip=0, num_clips=1)


def test_indices(num_frames: int, num_segments: int, clip: int,
                 num_clips: int) -> np.ndarray:
    """Clip `clip` of `num_clips` evenly shifted TSN clips.

    Clip c reads offset tick·(c + 0.5)/K inside each segment, so K = 1 is
    exactly the centre rule of `eval_indices`, and K = 2 gives the quarter and
    three-quarter points (the usual TSN reading of the paper's "2 clips";
    the official code has no multi-clip test, docs/training.md#evaluation).
    """
    if not 0 <= clip < num_clips:
        raise ValueError(f'clip {clip} out of range for num_clips={num_clips}')
    if num_frames <= num_segments:
        return np.zeros(num_segments, np.int64)
    tick = num_frames / float(num_segments)
    offset = tick * (clip + 0.5) / num_clips
    return np.array([int(offset + tick * i) for i in range(num_segments)],
                    np.int64)
