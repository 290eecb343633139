"""Diving48 (V2 annotations, mp4) and FineGym (Gym99 / Gym288 element clips)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import tensorflow_datasets as tfds

from rsa_jax.data.builders import base
from rsa_jax.data.decode import BadInputError


def _labelled_video_items(split: str, list_path: str,
                          entries: Sequence[tuple[str, str]], video_dir: str,
                          names: Sequence[str], cfg: base.VideoConfig,
                          ext: str = '.mp4') -> list[base.Item]:
    """(video id, label text) pairs → items, rejecting out-of-range labels."""
    items = []
    for vid, label in entries:
        try:
            label_id = int(label)
            if not 0 <= label_id < len(names):
                raise ValueError
        except ValueError:
            items.append((vid, base.bad_input, (
                list_path, f'video {vid}: label {label!r} is not one of the '
                f'{len(names)} classes of the label file')))
            continue
        items.append((vid, base.video_example, (
            os.path.join(video_dir, vid + ext), vid, label_id, names[label_id],
            cfg)))
    return items


class Diving48(base.VideoBuilder):
    """Diving48: 18k trimmed dive clips, 48 classes (V2 annotations)."""

    HOMEPAGE = 'http://www.svcl.ucsd.edu/projects/resound/dataset.html'
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
    From the Diving48 page download the rgb videos (Diving48_rgb.tar.gz) and
    the V2 annotations. manual_dir must contain:
      Diving48_vocab.json  Diving48_V2_train.json  Diving48_V2_test.json
      rgb/<vid_name>.mp4
    """
    BUILDER_CONFIGS = [
        base.VideoConfig(name='default', description='JPEG frames 240×320.'),
        base.VideoConfig(name='video', storage='video',
                         description='Original mp4 files, decoded on read.'),
    ]

    def _class_names(self):
        return None

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        self._check_storage(raw_is_video=True)
        root = os.fspath(dl_manager.manual_dir)
        vocab_path = os.path.join(root, 'Diving48_vocab.json')
        vocab = base.load_json(vocab_path)
        # Each class is [takeoff, somersault, twist, flight]; join as its name.
        names = [' '.join(map(str, v)) if isinstance(v, list) else str(v)
                 for v in vocab]
        if not names or len(set(names)) != len(names):
            raise BadInputError(vocab_path, 'expected a list of distinct classes')
        self._set_class_names(names)
        video_dir = base.first_existing(dl_manager.manual_dir, ['rgb'])
        return {split: self._generate_examples(
                    split, os.path.join(root, f'Diving48_V2_{split}.json'),
                    video_dir, names)
                for split in ('train', 'test')}

    def _generate_examples(self, split, list_path, video_dir, names):
        entries = base.load_json(list_path)
        if not isinstance(entries, list):
            raise BadInputError(list_path, 'expected a JSON list of videos')
        pairs, bad = [], []
        for i, e in enumerate(entries):
            if isinstance(e, dict) and 'vid_name' in e:
                pairs.append((str(e['vid_name']), e.get('label')))
            else:
                bad.append((f'#{i}', base.bad_input, (
                    list_path, f'entry {i} expected an object with "vid_name" '
                    'and "label"')))
        items = _labelled_video_items(split, list_path, pairs, video_dir,
                                      names, self.builder_config)
        return self._generate_checked(split, list_path, bad + items)


@dataclasses.dataclass(eq=False)
class GymConfig(base.VideoConfig):
    """Which FineGym element set: 'gym99' or 'gym288'."""
    subset: str = 'gym99'


class FineGym(base.VideoBuilder):
    """FineGym element-level clips, Gym99 or Gym288 (v1.1 train, v1.0 val)."""

    HOMEPAGE = 'https://sdolivia.github.io/FineGym/'
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
    FineGym ships YouTube ids and timestamps, not videos. Download the event
    videos, then cut the element (sub-action) clips, e.g. with mmaction2's
    tools/data/gym (download.py, trim_event.py, trim_subaction.py).
    manual_dir must contain:
      gym99_categories.txt   gym99_train_element_v1.1.txt   gym99_val_element.txt
      gym288_categories.txt  gym288_train_element_v1.1.txt  gym288_val_element.txt
      subactions/<clip id>.mp4
    where each split file line is "<clip id> <label>".
    """
    BUILDER_CONFIGS = [
        GymConfig(name='gym99', subset='gym99', description='99 elements.'),
        GymConfig(name='gym288', subset='gym288', description='288 elements.'),
    ]
    DEFAULT_CONFIG_NAME = 'gym99'
    _SPLIT_FILES = {'train': '{}_train_element_v1.1.txt',
                    'validation': '{}_val_element.txt'}

    def _class_names(self):
        return None

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        self._check_storage(raw_is_video=True)
        root = os.fspath(dl_manager.manual_dir)
        subset = self.builder_config.subset
        cat_path = os.path.join(root, f'{subset}_categories.txt')
        names = [self._category_name(cat_path, line)
                 for line in base.read_lines(cat_path)]
        self._set_class_names(names)
        video_dir = base.first_existing(dl_manager.manual_dir, ['subactions'])
        return {split: self._generate_examples(
                    split, os.path.join(root, pattern.format(subset)),
                    video_dir, names)
                for split, pattern in self._SPLIT_FILES.items()}

    @staticmethod
    def _category_name(path: str, line: str) -> str:
        """'Clabel: 3; set: 1; Glabel: 4; (VT) round-off ...' → '(VT) round-off ...'."""
        parts = [p.strip() for p in line.split(';')]
        if len(parts) < 4 or not parts[0].startswith('Clabel:'):
            raise BadInputError(path, f'unexpected category line {line!r}')
        return ';'.join(parts[3:]).strip()

    def _generate_examples(self, split, list_path, video_dir, names):
        pairs, bad = [], []
        for line_no, line in base.list_lines(list_path):
            if line is None:
                bad.append(base.undecodable(list_path, line_no))
                continue
            vid, _, label = line.rpartition(' ')
            if not vid:
                where = f'{list_path}:{line_no}'
                bad.append((where, base.bad_input,
                            (where, f'expected "<clip id> <label>", got {line!r}')))
                continue
            pairs.append((vid, label))
        items = _labelled_video_items(split, list_path, pairs, video_dir,
                                      names, self.builder_config)
        return self._generate_checked(split, list_path, bad + items)
