"""Shared machinery of the video builders: features, storage, bad-input policy.

Every builder stores, per video: `video_id`, `label` (ClassLabel), `label_name`,
`num_frames`, and the pixels either as

- `frames`: a list of JPEG bytes, one per frame, so the pipeline decodes only
  the sampled frames (`storage='jpeg'`, the default). Frames decoded from
  videos are resized once to the config's height×width (240×320 by default,
  the paper's `GroupScale`) and encoded at `jpeg_quality`; JPEG frames of a
  frame-folder dataset are kept as they are and resized when loaded, like the
  official loader, unless they must shrink (`jpeg_frames`, see
  `decode.jpeg_folder_to_frames`); or
- `video`: the original compressed file (`storage='video'`), much smaller on
  disk; the pipeline then decodes every frame up to the last sampled one
  (see benchmarks/RESULTS.md "Data" for the speed trade-off).

Frames are plain bytes (`Tensor(dtype=object)`), not `tfds.features.Image`, so
`tfds.data_source` hands them over without decoding anything.

Bad raw input (corrupt, truncated or zero-byte videos, folders with missing
or non-JPEG frames, labels absent from the label file, bad or undecodable
list lines, negative frame counts, duplicate ids) raises `BadInputError`
naming the file and reason. With `on_error='skip'` (default) the video is
skipped, logged and counted in `builder.problems[split]` (`path: reason`
strings, `rsa_jax.data.problems.Problem`) and in `<data_dir>/problems.json`;
with `on_error='raise'` the build stops with that message. A split with no
usable video always fails (`EmptySplitError`). See docs/reliability.md.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import multiprocessing
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from etils import epath
from tqdm import auto as tqdm

from rsa_jax.data import decode
from rsa_jax.data import problems as problems_lib
from rsa_jax.data.decode import BadInputError

# (key, function, args): the function builds one example or raises
# BadInputError. Module-level functions keep items picklable for workers.
Item = tuple[str, Callable[..., dict[str, Any]], tuple]


class EmptySplitError(ValueError):
    """A split with no usable video (missing, empty or fully broken)."""


@dataclasses.dataclass(eq=False)
class VideoConfig(tfds.core.BuilderConfig):
    """Stored resolution and storage format.

    Attributes:
      height: stored frame height (official `GroupScale`: 240).
      width: stored frame width (official: 320).
      storage: 'jpeg' (one JPEG per frame) or 'video' (keep the original file;
        only for datasets whose raw data are videos).
      jpeg_quality: quality of re-encoded frames.
      jpeg_frames: for JPEG frame folders, 'auto', 'original' (store the
        files' bytes, resize to height×width when loading: no second lossy
        generation) or 'resized' (resize and re-encode once here); 'auto' keeps
        the originals unless an axis must shrink (`decode.jpeg_folder_to_frames`).
    """
    height: int = 240
    width: int = 320
    storage: str = 'jpeg'
    jpeg_quality: int = decode.JPEG_QUALITY
    jpeg_frames: str = 'auto'


def load_json(path: str) -> Any:
    """Reads a label/annotation JSON file; unreadable or malformed -> BadInputError."""
    try:
        with open(path, encoding='utf-8') as f:
            return json.load(f)
    except OSError as e:
        raise BadInputError(path, f'cannot read ({e.strerror})') from e
    except UnicodeDecodeError as e:
        raise BadInputError(path, f'not UTF-8 (byte {e.start})') from e
    except json.JSONDecodeError as e:
        raise BadInputError(path, f'invalid JSON ({e})') from e

def video_example(path: str, video_id: str, label: int | str, label_name: str,
                  cfg: VideoConfig) -> dict[str, Any]:
    """One example from a video file (webm, mp4, ...)."""
    if not os.path.isfile(path):
        raise BadInputError(path, 'video file not found')
    if os.path.getsize(path) == 0:
        raise BadInputError(path, 'empty file (zero bytes)')
    if cfg.storage == 'video':
        n = decode.count_video_frames(path)
        with open(path, 'rb') as f:
            pixels = {'video': f.read()}
    else:
        frames = decode.video_to_frames(path, cfg.height, cfg.width,
                                        cfg.jpeg_quality)
        n, pixels = len(frames), {'frames': frames}
    return dict(video_id=video_id, label=label, label_name=label_name,
                num_frames=n, **pixels)


def jpeg_folder_example(paths: Sequence[str], video_id: str, label: int | str,
                        label_name: str, cfg: VideoConfig) -> dict[str, Any]:
    """One example from a folder of JPEG frames (already listed in order)."""
    frames = decode.jpeg_folder_to_frames(paths, cfg.height, cfg.width,
                                          cfg.jpeg_quality, cfg.jpeg_frames)
    return dict(video_id=video_id, label=label, label_name=label_name,
                num_frames=len(frames), frames=frames)


def bad_input(path: str, reason: str) -> dict[str, Any]:
    """An item that is known to be bad at listing time (e.g. unknown label)."""
    raise BadInputError(path, reason)


def numbered_frames(folder: str, template: str,
                    num_frames: int | None = None) -> list[str]:
    """Paths of frames 1..N in `folder`, named by `template` (e.g. '{:05d}.jpg').

    With `num_frames` (list files give it) exactly those N files must exist;
    without it, the folder's matching files must be numbered 1..N without gaps.

    Raises:
      BadInputError: folder missing or empty, or a frame missing.
    """
    if not os.path.isdir(folder):
        raise BadInputError(folder, 'frame folder not found')
    names = set(os.listdir(folder))
    if num_frames is None:
        pattern = re.compile(
            '^' + re.escape(template).replace(r'\{:05d\}', r'(\d+)') + '$')
        numbers = sorted(int(m.group(1)) for m in map(pattern.match, names)
                         if m)
        if not numbers:
            raise BadInputError(folder, f'no frames named {template!r}')
        num_frames = numbers[-1]
    if num_frames < 1:
        raise BadInputError(folder, f'frame count {num_frames} < 1')
    missing = [template.format(i) for i in range(1, num_frames + 1)
               if template.format(i) not in names]
    if missing:
        raise BadInputError(
            folder, f'{len(missing)} of {num_frames} frames missing '
            f'(first: {missing[0]}); frames must be numbered 1..{num_frames}')
    return [os.path.join(folder, template.format(i))
            for i in range(1, num_frames + 1)]


def _run_item(item: Item):
    key, fn, args = item
    try:
        return key, fn(*args), None
    except BadInputError as e:
        return key, None, (e.path, e.reason)


def _mark_duplicates(items: list[Item], source: str) -> list[Item]:
    """Each repeat of an id becomes a bad item (TFDS needs unique keys), in place,
    so problems keep the order of the list file."""
    seen: set[str] = set()
    out = []
    for key, fn, args in items:
        if key in seen:
            out.append((key, bad_input, (source, f'duplicate id {key!r} (only its '
                                         'first entry is kept)')))
        else:
            seen.add(key)
            out.append((key, fn, args))
    return out


class VideoBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Base of the video builders; subclasses list their raw files as items."""

    VERSION = tfds.core.Version('1.0.0')
    RELEASE_NOTES = {'1.0.0': 'Initial release.'}
    BUILDER_CONFIGS = [VideoConfig(name='default')]
    DEFAULT_CONFIG_NAME = 'default'
    # Subclasses set this, or leave it None and set names in _split_generators.
    CLASS_NAMES: Sequence[str] | None = None

    def __init__(self, *, on_error: str = 'skip', num_workers: int = 1,
                 **kwargs):
        """on_error: 'skip' or 'raise'; num_workers: processes decoding raw files."""
        if on_error not in ('skip', 'raise'):
            raise ValueError(f"on_error must be 'skip' or 'raise', got {on_error!r}")
        self.on_error = on_error
        self.num_workers = num_workers
        self.problems: dict[str, list[problems_lib.Problem]] = {}
        self.listed: dict[str, int] = {}  # videos listed per split
        # ArrayRecord gives the random access grain needs.
        kwargs.setdefault('file_format', 'array_record')
        super().__init__(**kwargs)

    # TFDS resolves `code_path` through `importlib_resources`, which is not a
    # dependency here; the plain file path is what it computes anyway.
    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        return epath.Path(inspect.getfile(cls))

    def _class_names(self) -> Sequence[str] | None:
        return self.CLASS_NAMES

    def _info(self) -> tfds.core.DatasetInfo:
        names = self._class_names()
        pixels = ({'video': tfds.features.Tensor(shape=(), dtype=np.object_)}
                  if self.builder_config.storage == 'video' else
                  {'frames': tfds.features.Sequence(
                      tfds.features.Tensor(shape=(), dtype=np.object_))})
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({
                'video_id': tfds.features.Text(),
                'label': tfds.features.ClassLabel(names=names),
                'label_name': tfds.features.Text(),
                'num_frames': np.int32,
                **pixels,
            }),
            supervised_keys=None,
            homepage=getattr(self, 'HOMEPAGE', None),
        )

    def _set_class_names(self, names: Sequence[str]) -> None:
        """For builders whose class list is only known from manual_dir."""
        label = self.info.features['label']
        if label.num_classes is None:
            label.names = list(names)
        elif list(label.names) != list(names):
            raise ValueError(f'{self.name}: class names in manual_dir differ '
                             'from those of the prepared dataset')

    def _check_storage(self, raw_is_video: bool) -> None:
        if self.builder_config.storage not in ('jpeg', 'video'):
            raise ValueError(f'storage must be jpeg or video, got '
                             f'{self.builder_config.storage!r}')
        if self.builder_config.storage == 'video' and not raw_is_video:
            raise ValueError(f"{self.name}: storage='video' needs video files; "
                             'this dataset ships JPEG frames')

    def download_and_prepare(self, *args, **kwargs):
        """TFDS's build, then `problems.json` (skips by kind) next to the data.

        A build that fails on an empty split leaves no dataset directory, so
        its report goes to `<data_dir>.problems.json` and the error names it.
        """
        self.problems, self.listed = {}, {}
        final_dir = os.fspath(self.data_dir)
        try:
            super().download_and_prepare(*args, **kwargs)
        except EmptySplitError as e:
            path = problems_lib.write(final_dir + '.problems.json', self._report())
            raise EmptySplitError(f'{e}; every skip is listed in {path}') from None
        if self.listed:  # empty when the dataset was already built
            problems_lib.write(os.path.join(final_dir, problems_lib.FILE_NAME),
                               self._report())

    def _report(self) -> dict:
        return problems_lib.report(
            f'{self.name}/{self.builder_config.name}/{self.version}', self.listed,
            self.problems)

    def _skip(self, split: str, problem: problems_lib.Problem) -> None:
        if self.on_error == 'raise':
            raise BadInputError(problem.path, f"{problem.reason} (split '{split}', "
                                "on_error='raise')")
        logging.warning('%s: skipping video: %s', self.name, problem)
        self.problems[split].append(problem)

    def _generate_checked(self, split: str, source: str,
                          items: Iterable[Item]) -> Iterator[tuple[str, dict]]:
        """Runs items, applying the on_error policy; fails on an empty split."""
        problems = self.problems.setdefault(split, [])
        items = _mark_duplicates(list(items), source)
        self.listed[split] = len(items)
        if self.num_workers > 1:
            ctx = multiprocessing.get_context('spawn')
            pool = ctx.Pool(self.num_workers)
            results = pool.imap(_run_item, items, chunksize=4)
        else:
            pool, results = None, map(_run_item, items)
        ok = 0
        # tqdm hides the bar when stderr is not a terminal (logs, tests).
        bar = tqdm.tqdm(total=len(items), desc=f'{self.name} {split}',
                        unit='video', disable=None)
        try:
            for key, example, problem in results:
                bar.update()
                if problem is not None:
                    self._skip(split, problems_lib.Problem(*problem))
                    continue
                ok += 1
                yield key, example
        finally:
            bar.close()
            if pool is not None:
                pool.terminate()
        total = self.listed[split]
        if problems:
            logging.warning('%s: split %s: skipped %d of %d videos (listed in %s)',
                            self.name, split, len(problems), total, source)
        if ok == 0:
            detail = f'; first problem: {problems[0]}' if problems else ''
            raise EmptySplitError(
                f"{self.name}: split '{split}' has no usable videos "
                f'({total} listed in {source}{detail})')


def list_lines(path: str) -> list[tuple[int, str | None]]:
    """(line number, stripped text) of a list file's non-empty lines.

    A line that is not UTF-8 has text None, so the caller skips that one video
    (`path:line: not UTF-8`) rather than failing the whole file.

    Raises:
      BadInputError: the file is missing or unreadable.
    """
    try:
        with open(path, 'rb') as f:
            raw = f.read()
    except OSError as e:
        raise BadInputError(path, f'cannot read ({e.strerror})') from e
    out = []
    for no, line in enumerate(raw.splitlines(), 1):
        try:
            text = line.decode('utf-8').strip()
        except UnicodeDecodeError:
            out.append((no, None))
            continue
        if text:
            out.append((no, text.lstrip('\ufeff')))
    return out


def read_lines(path: str) -> list[str]:
    """Non-empty stripped lines of a label file (all must be UTF-8).

    Raises:
      BadInputError: missing, unreadable, or a line that is not UTF-8.
    """
    lines = []
    for no, text in list_lines(path):
        if text is None:
            raise BadInputError(f'{path}:{no}', 'not UTF-8')
        lines.append(text)
    return lines


def undecodable(split_path: str, line_no: int) -> Item:
    """The item of a list line that is not UTF-8: a counted skip."""
    where = f'{split_path}:{line_no}'
    return where, bad_input, (where, 'not UTF-8; line skipped')


def first_existing(manual_dir: epath.Path, candidates: Sequence[str]) -> str:
    """The first of `candidates` (relative to manual_dir) that exists."""
    for c in candidates:
        p = os.path.join(os.fspath(manual_dir), c)
        if os.path.exists(p):
            return p
    raise BadInputError(os.path.join(os.fspath(manual_dir), candidates[0]),
                        f'not found (also tried {list(candidates[1:])}); see '
                        'the builder\'s MANUAL_DOWNLOAD_INSTRUCTIONS')
