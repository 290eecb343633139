"""The official list-file format as a generic builder.

Any dataset already extracted to frames the TSN/TSM/RSA way can be built with
this, whatever its classes.
"""

from __future__ import annotations

import os

import tensorflow_datasets as tfds

from rsa_jax.data.builders import base
from rsa_jax.data.decode import BadInputError

SPLIT_FILES = {'train': 'train.txt', 'validation': 'val.txt', 'test': 'test.txt'}


class VideoList(base.VideoBuilder):
    """Frame folders listed as `<frame_dir> <num_frames> <label>` (official format)."""

    VERSION = tfds.core.Version('1.1.0')
    RELEASE_NOTES = {'1.0.0': 'Frames resized to 240×320 and re-encoded (JPEG q90).',
                     '1.1.0': 'Original JPEG frames kept unless they must shrink; '
                               'resized when loaded.'}

    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
    Extract frames as <frame_dir>/img_00001.jpg, img_00002.jpg, ... (1-based)
    and put in manual_dir:
      train.txt, val.txt and optionally test.txt: one video per line,
        "<frame_dir> <num_frames> <label>" (space separated, 0-based int label;
        frame_dir relative to manual_dir or absolute) — the official
        data/something_v2_{train,val}.txt files work unchanged;
      classes.txt (optional): class names, one per line, in label order.
    """
    FRAME_TEMPLATE = 'img_{:05d}.jpg'

    def _class_names(self):
        return None

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        self._check_storage(raw_is_video=False)
        root = os.fspath(dl_manager.manual_dir)
        lists = {split: os.path.join(root, name)
                 for split, name in SPLIT_FILES.items()
                 if os.path.exists(os.path.join(root, name))}
        if 'train' not in lists and 'validation' not in lists:
            raise BadInputError(os.path.join(root, 'train.txt'),
                                'no train.txt or val.txt in manual_dir')
        parsed = {split: self._parse(path) for split, path in lists.items()}
        classes_path = os.path.join(root, 'classes.txt')
        if os.path.exists(classes_path):
            names = base.read_lines(classes_path)
        else:
            top = max((r[2] for rows in parsed.values() for r in rows
                       if isinstance(r[2], int)), default=-1)
            names = [f'class_{i}' for i in range(top + 1)]
        if not names:
            raise BadInputError(classes_path, 'no classes')
        self._set_class_names(names)
        return {split: self._generate_examples(split, lists[split], rows, root,
                                               names)
                for split, rows in parsed.items()}

    @staticmethod
    def _parse(path: str) -> list[tuple[str, int | None, int | str]]:
        """Rows (frame_dir, num_frames or None, label int or the reason it is bad)."""
        rows = []
        for line_no, line in base.list_lines(path):
            where = f'{path}:{line_no}'
            if line is None:
                rows.append((where, None, 'not UTF-8; line skipped'))
                continue
            try:
                frame_dir, n, label = line.split(' ')
                n, label = int(n), int(label)
            except ValueError:
                rows.append((where, None, 'expected "<frame_dir> <num_frames> '
                             f'<label>" with integer count and label, got {line!r}'))
                continue
            if n < 1:
                rows.append((where, None, f'{frame_dir}: frame count {n} < 1'))
            else:
                rows.append((frame_dir, n, label))
        return rows

    def _generate_examples(self, split, list_path, rows, root, names):
        items = []
        for frame_dir, n, label in rows:
            if n is None:  # frame_dir is 'list:line', label the reason
                items.append((frame_dir, base.bad_input, (frame_dir, label)))
            elif not 0 <= label < len(names):
                items.append((frame_dir, base.bad_input, (
                    list_path, f'{frame_dir}: label {label} is not one of the '
                    f'{len(names)} classes')))
            else:
                folder = os.path.join(root, frame_dir)
                items.append((frame_dir, _list_example, (
                    folder, self.FRAME_TEMPLATE, n, frame_dir, label,
                    names[label], self.builder_config)))
        return self._generate_checked(split, list_path, items)


def _list_example(folder, template, n, vid, label, name, cfg):
    paths = base.numbered_frames(folder, template, num_frames=n)
    return base.jpeg_folder_example(paths, vid, label, name, cfg)
