"""Something-Something V2 (webm + JSON labels) and V1 (JPEG folders + CSV).

Both use 174 classes in alphabetical order of the class name (the order of
TSM's `gen_label_sthv*.py` that the official list files and the official flip
ids [86, 87, 93, 94, 166, 167] refer to).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import tensorflow_datasets as tfds

from rsa_jax.data.builders import base
from rsa_jax.data.decode import BadInputError


def template_to_name(template: str) -> str:
    """SSv2 'template' → class name: 'Holding [something]' → 'Holding something'."""
    return template.replace('[', '').replace(']', '')



class SomethingSomethingV2(base.VideoBuilder):
    """Something-Something V2: 220,847 webm videos, 174 classes."""

    HOMEPAGE = 'https://developer.qualcomm.com/software/ai-datasets/something-something'
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
    Register and download "20BN-Something-Something V2" from the homepage
    (Qualcomm). Unpack so that manual_dir contains:
      labels/labels.json  labels/train.json  labels/validation.json
      20bn-something-something-v2/<id>.webm
    (labels.json etc. may also sit directly in manual_dir.)
    """
    BUILDER_CONFIGS = [
        base.VideoConfig(name='default', description='JPEG frames 240×320.'),
        base.VideoConfig(name='video', storage='video',
                         description='Original webm files, decoded on read.'),
    ]
    _LABEL_DIRS = ('labels/{}', '{}')
    _VIDEO_DIRS = ('20bn-something-something-v2', 'videos')

    def _class_names(self) -> Sequence[str] | None:
        return None  # read from labels.json in _split_generators

    def _labels_file(self, manual_dir, name: str) -> str:
        return base.first_existing(manual_dir, [d.format(name)
                                                for d in self._LABEL_DIRS])

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        self._check_storage(raw_is_video=True)
        manual_dir = dl_manager.manual_dir
        labels_path = self._labels_file(manual_dir, 'labels.json')
        labels = base.load_json(labels_path)
        if not isinstance(labels, dict) or not labels:
            raise BadInputError(labels_path, 'expected a non-empty JSON object '
                                '{class name: id}')
        names = sorted(labels)
        self._set_class_names(names)
        video_dir = base.first_existing(manual_dir, self._VIDEO_DIRS)
        return {split: self._generate_examples(
                    split, self._labels_file(manual_dir, f'{split}.json'),
                    video_dir, set(names))
                for split in ('train', 'validation')}

    def _generate_examples(self, split: str, list_path: str, video_dir: str,
                           names: set[str]):
        entries = base.load_json(list_path)
        if not isinstance(entries, list):
            raise BadInputError(list_path, 'expected a JSON list of videos')
        items = []
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict):
                items.append((f'#{i}', base.bad_input, (
                    list_path, f'entry {i} expected an object with "id" and '
                    f'"template", got {type(entry).__name__}')))
                continue
            vid = str(entry.get('id', f'#{i}'))
            path = os.path.join(video_dir, f'{vid}.webm')
            name = template_to_name(str(entry.get('template', '')))
            if 'id' not in entry or 'template' not in entry:
                items.append((vid, base.bad_input, (
                    list_path, f'entry {i} lacks "id" or "template"')))
            elif name not in names:
                items.append((vid, base.bad_input, (
                    list_path, f'video {vid}: label {name!r} is not in '
                    'labels.json')))
            else:
                items.append((vid, base.video_example,
                              (path, vid, name, name, self.builder_config)))
        return self._generate_checked(split, list_path, items)


class SomethingSomethingV1(base.VideoBuilder):
    """Something-Something V1: 108,499 videos as JPEG frame folders, 174 classes."""

    VERSION = tfds.core.Version('1.1.0')
    RELEASE_NOTES = {'1.0.0': 'Frames resized to 240×320 and re-encoded (JPEG q90).',
                     '1.1.0': 'Original JPEG frames kept unless they must shrink; '
                               'resized when loaded.'}

    HOMEPAGE = 'https://developer.qualcomm.com/software/ai-datasets/something-something'
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
    Download "20BN-Something-Something V1" (frames, split in parts; `cat` them
    and untar). manual_dir must contain:
      something-something-v1-labels.csv        one class name per line
      something-something-v1-train.csv         "<id>;<class name>" per line
      something-something-v1-validation.csv
      20bn-something-something-v1/<id>/00001.jpg, 00002.jpg, ...
    """
    FRAME_TEMPLATE = '{:05d}.jpg'

    def _class_names(self) -> Sequence[str] | None:
        return None

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        self._check_storage(raw_is_video=False)
        root = os.fspath(dl_manager.manual_dir)
        labels_path = os.path.join(root, 'something-something-v1-labels.csv')
        names = sorted(set(base.read_lines(labels_path)))
        if not names:
            raise BadInputError(labels_path, 'no class names')
        self._set_class_names(names)
        frames_dir = base.first_existing(dl_manager.manual_dir,
                                         ['20bn-something-something-v1'])
        return {split: self._generate_examples(
                    split, os.path.join(root, f'something-something-v1-{split}.csv'),
                    frames_dir, set(names))
                for split in ('train', 'validation')}

    def _generate_examples(self, split: str, csv_path: str, frames_dir: str,
                           names: set[str]):
        items = []
        for line_no, line in base.list_lines(csv_path):
            if line is None:
                items.append(base.undecodable(csv_path, line_no))
                continue
            vid, sep, name = line.partition(';')
            if not sep or name not in names:
                reason = ('expected "<id>;<class name>"' if not sep else
                          f'label {name!r} is not in the labels CSV')
                items.append((vid, base.bad_input,
                              (f'{csv_path}:{line_no}', reason)))
                continue
            items.append((vid, _ssv1_example, (
                os.path.join(frames_dir, vid), self.FRAME_TEMPLATE, vid, name,
                self.builder_config)))
        return self._generate_checked(split, csv_path, items)


def _ssv1_example(folder: str, template: str, vid: str, name: str,
                  cfg: base.VideoConfig) -> dict:
    paths = base.numbered_frames(folder, template)
    return base.jpeg_folder_example(paths, vid, name, name, cfg)
