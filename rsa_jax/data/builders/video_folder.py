"""Bring your own videos: one folder per class.

    <manual_dir>/<split>/<class name>/<video file>

with ``<split>`` among ``train``, ``validation`` and ``test`` (those present
are built), any format PyAV decodes, and class names taken from the folder
names (sorted; the union over all splits, so a class missing from one split
keeps its id). Used by ``configs/finetune.py``; see docs/using.md.
"""

from __future__ import annotations

import os

import tensorflow_datasets as tfds

from rsa_jax.data.builders import base
from rsa_jax.data.decode import BadInputError

SPLITS = ('train', 'validation', 'test')
VIDEO_SUFFIXES = ('.mp4', '.webm', '.avi', '.mkv', '.mov', '.m4v', '.mpg', '.mpeg',
                  '.ogv', '.gif')


def _class_dirs(split_dir: str) -> list[str]:
    return sorted(d for d in os.listdir(split_dir)
                  if os.path.isdir(os.path.join(split_dir, d)) and not d.startswith('.'))


class VideoFolder(base.VideoBuilder):
    """Videos sorted into class folders, per split."""

    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
    Put videos in manual_dir as <split>/<class name>/<video file>, split being
    train, validation and/or test; e.g. train/waving/clip001.mp4. Class names
    are the folder names. Files PyAV cannot decode are skipped and logged
    (on_error='skip') or stop the build (on_error='raise').
    """
    BUILDER_CONFIGS = [
        base.VideoConfig(name='default', description='Frames stored as 240×320 JPEG.'),
        base.VideoConfig(name='video', storage='video',
                         description='Original video files kept, decoded at load time.'),
        base.VideoConfig(name='small', height=64, width=80,
                         description='Frames stored as 64×80 JPEG (CPU demos, tests).'),
    ]

    def _class_names(self):
        return None  # known only from manual_dir

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        self._check_storage(raw_is_video=True)
        root = os.fspath(dl_manager.manual_dir)
        splits = [s for s in SPLITS if os.path.isdir(os.path.join(root, s))]
        if not splits:
            raise BadInputError(root, f'no {"/".join(SPLITS)} folder in manual_dir '
                                '(expected <split>/<class name>/<video file>)')
        names = sorted({c for s in splits for c in _class_dirs(os.path.join(root, s))})
        if not names:
            raise BadInputError(root, 'no class folders under the split folders')
        self._set_class_names(names)
        return {s: self._generate_examples(s, os.path.join(root, s), names) for s in splits}

    def _generate_examples(self, split: str, split_dir: str, names: list[str]):
        items = []
        for label, name in enumerate(names):
            folder = os.path.join(split_dir, name)
            if not os.path.isdir(folder):
                continue
            for f in sorted(os.listdir(folder)):
                if f.startswith('.'):  # .DS_Store and the like
                    continue
                path = os.path.join(folder, f)
                key = f'{name}/{f}'
                if not f.lower().endswith(VIDEO_SUFFIXES):
                    items.append((key, base.bad_input, (path, 'not a video file name '
                                                        f'(suffixes: {VIDEO_SUFFIXES})')))
                else:
                    items.append((key, base.video_example,
                                  (path, key, label, name, self.builder_config)))
        return self._generate_checked(split, split_dir, items)
