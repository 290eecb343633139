"""What the model sees: a PNG grid of pipeline clips, class balance, frame counts.

Used by `python -m rsa_jax.data inspect` (docs/reliability.md). The clips come
from `pipeline.create_iterator` itself (train: random sampling, multi-scale
crop and flip; eval: centre clip), so the grid shows the real input, not a
re-implementation of it.
"""

from __future__ import annotations

from typing import Any

import ml_collections
import numpy as np

from rsa_jax.data import pipeline


def split_stats(data_cfg: Any, split: str, limit: int = 1000) -> dict[str, Any]:
    """Label and frame-count statistics of `split`.

    Reads at most `limit` records, evenly spaced over the split (reading a
    record reads its frames too, so a full pass over SSv2 would take long).
    """
    builder = pipeline.prepared_builder(data_cfg)
    source = builder.as_data_source(split)
    n = len(source)
    picks = np.unique(np.linspace(0, n - 1, min(n, limit)).round().astype(int))
    names = list(builder.info.features['label'].names)
    counts = np.zeros(len(names), np.int64)
    frames = []
    for i in picks:
        record = source[int(i)]
        counts[int(record['label'])] += 1
        frames.append(int(record['num_frames']))
    return {'split': split, 'videos': n, 'read': len(picks), 'names': names,
            'class_counts': counts, 'num_frames': np.asarray(frames)}


def format_stats(stats: dict[str, Any]) -> str:
    """Two lines: class balance, then frames per video."""
    counts, names = stats['class_counts'], stats['names']
    present = counts > 0
    lo, hi = int(np.argmin(np.where(present, counts, counts.max() + 1))), int(np.argmax(counts))
    scope = ('' if stats['read'] == stats['videos']
             else f" (from {stats['read']} evenly spaced)")
    f = stats['num_frames']
    return (f"{stats['split']}: {stats['videos']} videos{scope}; {int(present.sum())} of "
            f"{len(names)} classes present, videos per class min {counts[present].min()} "
            f"({names[lo]!r}) median {np.median(counts[present]):g} max {counts.max()} "
            f"({names[hi]!r})\n"
            f"frames per video: min {f.min()} median {np.median(f):g} mean {f.mean():.1f} "
            f"max {f.max()}")


def _clips(data_cfg: Any, split: str, mode: str, count: int, seed: int) -> dict:
    cfg = ml_collections.ConfigDict(data_cfg.to_dict())
    cfg.uint8_output = True  # raw pixels: what the crops and flips produced
    cfg.num_workers = 0
    it = pipeline.create_iterator(cfg, split=split, mode=mode, global_batch_size=count,
                                  seed=seed)
    return next(it)


def write_grid(data_cfg: Any, split: str, out: str, num_clips: int = 4,
               seed: int = 0) -> str:
    """PNG: `num_clips` augmented train clips over as many eval clips, one frame a column.

    Returns:
      a one-line description of what was written.
    """
    import matplotlib
    matplotlib.use('Agg')  # files only, no display
    from matplotlib import pyplot as plt

    names = pipeline.class_names(data_cfg)
    count = max(1, min(num_clips, pipeline.num_examples(data_cfg, split)))
    rows = [(mode, _clips(data_cfg, split, mode, count, seed)) for mode in ('train', 'eval')]
    t = data_cfg.num_frames
    fig, axes = plt.subplots(2 * count, t, figsize=(1.3 * t, 1.5 * 2 * count),
                             squeeze=False)
    for block, (mode, batch) in enumerate(rows):
        for c in range(count):
            r = block * count + c
            label = int(batch['label'][c])
            for j in range(t):
                ax = axes[r, j]
                ax.imshow(batch['video'][c, j])
                ax.set_xticks([])
                ax.set_yticks([])
            axes[r, 0].set_ylabel(f'{mode} #{int(batch["index"][c])}', fontsize=7)
            axes[r, 0].set_title(f'{label}: {names[label]}'[:60], fontsize=7, loc='left')
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    plt.close(fig)
    size = data_cfg.image_size
    return (f'wrote {out}: {count} train clips (augmented) above {count} eval clips '
            f'(centre), {t} frames of {size}x{size} each, from {split!r}')
