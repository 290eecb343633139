"""Input pipeline: `tfds` ArrayRecord data source → grain → batches of clips.

One video becomes one example (docs/data.md#pipeline):

- train: per-host disjoint shard → seeded shuffle (reshuffled every epoch) →
  repeat → TSN sampling with a random offset per segment → decode only the
  sampled frames → official multi-scale crop resized to `image_size` →
  horizontal flip with p = 0.5 except for the classes of
  `data.flip_exempt_classes` (default: those whose name says left/right)
  → ImageNet normalisation → batch (remainder dropped);
- eval: centre frame of each segment, centre crop; one pass, every video
  exactly once across hosts, padded to full batches with `mask` = 0;
- test: `test_num_clips` shifted clips × `test_num_crops` (1 centre or 3
  full-height crops) views per video, like eval otherwise.

Randomness comes from grain's per-element generators (seed, host, position
in the epoch-repeated stream), so a run is reproducible and the iterator state
(`it.get_state()`) resumes on exactly the next batch. Save it with orbax via
`grain.checkpoint.CheckpointSave(it)` / `grain.checkpoint.CheckpointRestore(it)`
(handler `grain.checkpoint.CheckpointHandler`), e.g. as one item of
`ocp.args.Composite(..., data=grain.checkpoint.CheckpointSave(it))`.

No JAX here: the train loop turns host batches into global arrays.
"""

from __future__ import annotations

import dataclasses
import logging as std_logging
import os
import sys
from typing import Any

import grain
import numpy as np
import tensorflow_datasets as tfds
from absl import flags, logging

from rsa_jax.data import (
    builders,  # noqa: F401  (registers the builders)
    decode,
    sampling,
    transforms,
)

MODES = ('train', 'eval', 'test')


class _NotBuiltIsNoWarning(std_logging.Filter):
    """``tfds.builder`` warns "Variant folder X has no dataset_info.json" also when X
    does not exist, i.e. for every dataset not built yet: noise before a build or a
    FATAL line. Kept when X exists (a damaged build)."""

    def filter(self, record: std_logging.LogRecord) -> bool:
        text = record.getMessage()
        head, tail = 'Variant folder ', ' has no dataset_info.json'
        if text.startswith(head) and text.endswith(tail):
            return os.path.isdir(text[len(head):-len(tail)])
        return True


std_logging.getLogger('absl').addFilter(_NotBuiltIsNoWarning())


def tfds_builder(data_cfg: Any, data_dir: str | None = None):
    """The TFDS builder of ``data_cfg`` (``name``, ``builder_config``, ``data_dir``),
    built or not."""
    name = data_cfg.name
    if data_cfg.get('builder_config'):
        name = f'{name}/{data_cfg.builder_config}'
    return tfds.builder(name, data_dir=data_dir or data_cfg.get('data_dir'),
                        on_error=data_cfg.get('on_error', 'skip'),
                        num_workers=data_cfg.get('build_workers', 1))


def prepared_builder(data_cfg: Any, data_dir: str | None = None):
    """`tfds_builder` of a built dataset.

    Raises:
      FileNotFoundError: the dataset is not built (says how to build it).
    """
    builder = tfds_builder(data_cfg, data_dir)
    if not builder.is_prepared():
        raise FileNotFoundError(
            f'dataset {builder.name}/{builder.builder_config.name} is not built '
            f'in {builder.data_dir}; run rsa_jax.data.prepare(data_cfg) first '
            '(raw files in data_cfg.manual_dir)')
    return builder


def prepare(data_cfg: Any, data_dir: str | None = None):
    """Builds the TFDS dataset unless it is already built; returns the builder.

    Raw files are read from `data_cfg.manual_dir` (not needed for
    'synthetic_motion', which is generated from its seed).
    """
    builder = tfds_builder(data_cfg, data_dir)
    manual_dir = data_cfg.get('manual_dir')
    if not sys.stderr.isatty():
        # TFDS draws its bars ("Generating splits", "Shuffling ...") whatever stderr
        # is; in a log file they are screens of carriage returns. Ours (one per split,
        # builders/base.py) already hide there.
        tfds.disable_progress_bar()
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
    return builder


def num_examples(data_cfg: Any, split: str, data_dir: str | None = None) -> int:
    """Number of videos in `split` (TFDS split syntax such as 'train[:10%]' works)."""
    return len(prepared_builder(data_cfg, data_dir).as_data_source(split))


def class_names(data_cfg: Any, data_dir: str | None = None) -> list[str]:
    """Class names indexed by label id."""
    return list(prepared_builder(data_cfg, data_dir).info.features['label'].names)


def flip_exempt_ids(data_cfg: Any, names: list[str]) -> frozenset[int]:
    """Class ids never flipped: `data_cfg.flip_exempt_classes`, or derived from names.

    The official code lists the ids (86, 87, 93, 94, 166, 167 for
    Something-Something, docs/data.md#pipeline); names are only a fallback, and
    a `video_list` dataset without `classes.txt` has placeholder names that say
    nothing about direction, so flipping it without explicit ids is warned about.
    """
    explicit = data_cfg.get('flip_exempt_classes')
    if explicit is not None and len(explicit) and all(i is None for i in explicit):
        explicit = None   # `--config.data.flip_exempt_classes=None` parses as (None,)
    flip = data_cfg.get('flip', True)
    derived = transforms.flip_exempt_classes(names)
    if explicit is None:
        if flip and transforms.placeholder_names(names):
            logging.warning(
                '%s: flipping is on but the class names are placeholders (%s, ...), so no '
                'left/right class can be found by name; set data.flip_exempt_classes '
                '(e.g. --config.data.flip_exempt_classes="(86, 87, 93, 94, 166, 167)" for '
                "Something-Something's official order) or data.flip=False",
                data_cfg.name, names[0] if names else '')
        return derived
    ids = frozenset(int(i) for i in explicit)
    out = sorted(i for i in ids if not 0 <= i < len(names))
    if out:
        raise ValueError(f'data.flip_exempt_classes: ids {out} are not classes of '
                         f'{data_cfg.name} (0..{len(names) - 1})')
    if flip and not ids:
        # () says "flip every class", as the official code for any dataset but
        # Something-Something (configs/diving48.py, finegym.py): not a label-order slip.
        if derived:
            logging.info('%s: data.flip_exempt_classes=(): every class is flipped, also '
                         '%s whose names mention left/right', data_cfg.name, sorted(derived))
    elif flip and ids != derived and not transforms.placeholder_names(names):
        # Real names that disagree with the ids usually mean another label order.
        logging.warning(
            '%s: data.flip_exempt_classes %s name %s, but the classes naming '
            'left/right are %s; check the label order',
            data_cfg.name, sorted(ids), [names[i] for i in sorted(ids)], sorted(derived))
    return ids


@dataclasses.dataclass(frozen=True)
class ClipSpec:
    """What one example should look like; everything the transforms need."""
    num_frames: int
    image_size: int
    height: int  # frame size every decoded frame is resized to (GroupScale)
    width: int
    flip: bool = True
    flip_exempt: frozenset[int] = frozenset()
    num_clips: int = 1
    num_crops: int = 1
    uint8_output: bool = False
    crop_scales: tuple[float, ...] = transforms.SCALES


def _finish(clip: np.ndarray, uint8_output: bool) -> np.ndarray:
    """ImageNet-normalise to float32 (or keep raw uint8 pixels)."""
    if uint8_output:
        return np.ascontiguousarray(clip)
    return transforms.normalize(clip)


class ClipLoader:
    """Reads a record and decodes the frames at given 0-based positions."""

    def __init__(self, source, spec: ClipSpec):
        self.source = source
        self.spec = spec

    def record(self, index: int) -> dict:
        return self.source[int(index)]

    def load(self, record: dict, index: int,
             indices: np.ndarray) -> tuple[list[np.ndarray], int]:
        """uint8 `(H, W, 3)` frames of a record at `indices`, and its label.

        A frame sampled twice is the same array at both positions.
        """
        vid = record['video_id']
        vid = vid.decode() if isinstance(vid, bytes) else vid
        name = f'record {index} (video {vid})'
        if 'frames' in record:
            frames = decode.decode_frame_list(record['frames'], indices, name)
            # Original JPEGs are stored at their own size: the official GroupScale
            # happens here, once per distinct decoded frame.
            scaled: dict[int, np.ndarray] = {}
            for f in frames:
                if id(f) not in scaled:
                    scaled[id(f)] = transforms.scale_frame(f, self.spec.height,
                                                           self.spec.width)
            frames = [scaled[id(f)] for f in frames]
        else:
            frames = decode.decode_video_frame_list(
                record['video'], indices, self.spec.height, self.spec.width, name)
        return frames, int(record['label'])


class TrainTransform(grain.transforms.RandomMap):
    """Record index → augmented training clip."""

    def __init__(self, loader: ClipLoader):
        self.loader = loader

    def random_map(self, index: int, rng: np.random.Generator) -> dict:
        spec = self.loader.spec
        record = self.loader.record(index)
        idx = sampling.train_indices(int(record['num_frames']), spec.num_frames,
                                     rng)
        frames, label = self.loader.load(record, index, idx)
        h, w = frames[0].shape[:2]
        box = transforms.sample_multiscale_box(h, w, spec.image_size, rng,
                                               spec.crop_scales)
        flip = (spec.flip and label not in spec.flip_exempt
                and rng.random() < 0.5)
        video = transforms.augment(frames, box, spec.image_size, flip,
                                   spec.uint8_output)
        return {'video': video,
                'label': np.int32(label), 'index': np.int64(index)}


class EvalTransform(grain.transforms.Map):
    """Record index (or -1 for padding) → centre clip(s), with a mask."""

    def __init__(self, loader: ClipLoader, test: bool):
        self.loader = loader
        self.test = test

    def _shape(self) -> tuple[int, ...]:
        spec = self.loader.spec
        shape = (spec.num_frames, spec.image_size, spec.image_size, 3)
        return (spec.num_clips * spec.num_crops, *shape) if self.test else shape

    def map(self, index: int) -> dict:
        if index < 0:  # padding so every host yields the same full batches
            dtype = np.uint8 if self.loader.spec.uint8_output else np.float32
            return {'video': np.zeros(self._shape(), dtype),
                    'label': np.int32(0), 'index': np.int64(-1),
                    'mask': np.float32(0)}
        spec = self.loader.spec
        record = self.loader.record(index)
        n = int(record['num_frames'])
        clips = spec.num_clips if self.test else 1
        per_clip = [sampling.test_indices(n, spec.num_frames, c, clips)
                    for c in range(clips)]
        frames, label = self.loader.load(record, index,
                                         np.concatenate(per_clip))
        h, w = frames[0].shape[:2]
        if self.test and spec.num_crops == 3:
            boxes = transforms.three_crop_boxes(h, w, spec.image_size)
        elif spec.num_crops in (1, 3):
            boxes = [transforms.center_box(h, w, spec.image_size)]
        else:
            raise ValueError(f'test_num_crops must be 1 or 3, got {spec.num_crops}')
        t = spec.num_frames
        views = [transforms.crop_resize(frames[c * t:(c + 1) * t], box,
                                        spec.image_size)
                 for c in range(clips) for box in boxes]
        video = np.stack(views) if self.test else views[0]
        return {'video': _finish(video, spec.uint8_output),
                'label': np.int32(label),
                'index': np.int64(index), 'mask': np.float32(1)}


def eval_shard_indices(n: int, per_host_batch: int, process_index: int,
                       process_count: int) -> list[int]:
    """Records `process_index::process_count`, padded with -1 to equal full batches.

    Every host gets the same number of batches (ceil(ceil(n / P) / b)), so a
    multi-host eval loop never waits on a host that ran out.
    """
    mine = list(range(process_index, n, process_count))
    per_host = -(-n // process_count)
    batches = max(1, -(-per_host // per_host_batch))
    return mine + [-1] * (batches * per_host_batch - len(mine))


def create_iterator(data_cfg: Any, *, split: str, mode: str,
                    global_batch_size: int, process_index: int = 0,
                    process_count: int = 1, seed: int = 0,
                    num_epochs: int | None = None,
                    data_dir: str | None = None) -> grain.DatasetIterator:
    """A checkpointable iterator of per-host batches (dicts of NumPy arrays).

    Yields `video` float32 `(b, T, S, S, 3)` (test: `(b, V, T, S, S, 3)`,
    V = test_num_clips · test_num_crops, clip-major), `label` int32 `(b,)`,
    `index` int64 `(b,)` (record index; -1 for padding) and, for eval/test,
    `mask` float32 `(b,)`, with b = global_batch_size // process_count.
    With `data_cfg.uint8_output = True` the video is raw uint8 pixels instead
    (normalise on the accelerator: a quarter of the host→device bytes and
    less host CPU per frame, see benchmarks/RESULTS.md).
    The dataset must be built already (see `prepare`).
    """
    if mode not in MODES:
        raise ValueError(f'mode must be one of {MODES}, got {mode!r}')
    if global_batch_size % process_count:
        raise ValueError(f'global_batch_size {global_batch_size} is not '
                         f'divisible by process_count {process_count}')
    if not 0 <= process_index < process_count:
        raise ValueError(f'process_index {process_index} not in '
                         f'[0, {process_count})')
    batch = global_batch_size // process_count
    builder = prepared_builder(data_cfg, data_dir)
    source = builder.as_data_source(split)
    n = len(source)
    if n == 0:
        raise ValueError(f'{data_cfg.name}: split {split!r} is empty')
    names = builder.info.features['label'].names
    cfg = builder.builder_config
    spec = ClipSpec(
        num_frames=data_cfg.num_frames, image_size=data_cfg.image_size,
        height=getattr(cfg, 'height', 240), width=getattr(cfg, 'width', 320),
        flip=data_cfg.get('flip', True),
        # Only training flips (and warns about the list).
        flip_exempt=(flip_exempt_ids(data_cfg, list(names)) if mode == 'train'
                     else frozenset()),
        num_clips=data_cfg.get('test_num_clips', 1),
        num_crops=data_cfg.get('test_num_crops', 1),
        uint8_output=data_cfg.get('uint8_output', False),
        crop_scales=tuple(data_cfg.get('crop_scales') or transforms.SCALES))
    loader = ClipLoader(source, spec)

    if mode == 'train':
        ds = grain.MapDataset.range(n)[process_index::process_count]
        if len(ds) < batch:
            raise ValueError(f'{split!r} shard has {len(ds)} videos, fewer '
                             f'than one batch of {batch}')
        host_seed = int(np.random.SeedSequence([seed, process_index])
                        .generate_state(1)[0])
        ds = ds.shuffle(seed=host_seed).repeat(num_epochs)
        ds = ds.random_map(TrainTransform(loader), seed=host_seed)
    else:
        ids = eval_shard_indices(n, batch, process_index, process_count)
        ds = grain.MapDataset.source(ids).map(
            EvalTransform(loader, test=mode == 'test'))

    prefetch = max(1, data_cfg.get('prefetch', 2))
    read = grain.ReadOptions(num_threads=data_cfg.get('num_threads', 2),
                             prefetch_buffer_size=prefetch * batch)
    it_ds = ds.to_iter_dataset(read)
    workers = data_cfg.get('num_workers', 0)
    if workers > 0:
        # grain's worker processes read absl flags; outside an absl app (tests,
        # notebooks) they are unparsed, so use their defaults.
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        # Workers produce single examples, interleaved in index order, and the
        # main process batches them: batches do not depend on num_workers.
        it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(
            num_workers=workers, per_worker_buffer_size=prefetch * batch))
    it_ds = it_ds.batch(batch, drop_remainder=mode == 'train')
    return iter(it_ds)
