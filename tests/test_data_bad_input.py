"""Broken raw data: each problem is a counted skip reported with its file and reason
(docs/reliability.md), or with on_error='raise' one error naming the file."""

import json
import os

import data_helpers as dh
import ml_collections
import pytest

from rsa_jax import data
from rsa_jax.data import problems as problems_lib
from rsa_jax.data.builders import BadInputError, EmptySplitError
from rsa_jax.data.pipeline import tfds_builder

HOLD = 'Holding [something]'


def _cfg(name, root, tmp_path, on_error='skip'):
    return ml_collections.ConfigDict({
        'name': name, 'builder_config': None, 'data_dir': str(tmp_path / 'tfds'),
        'manual_dir': str(root), 'on_error': on_error})


@pytest.fixture
def broken_ssv2(tmp_path):
    """SSv2 with a good, a corrupt, a truncated, a missing, a mislabelled and a
    zero-byte video, an entry that is not an object and a repeated id."""
    root = tmp_path / 'raw'
    dh.write_ssv2(str(root), {'1': (HOLD, 8), '2': (HOLD, 8), '3': (HOLD, 40),
                              '4': (HOLD, 0), '5': ('Juggling [something]', 8),
                              '6': (HOLD, 0)},
                  {'9': (HOLD, 8)})
    videos = root / '20bn-something-something-v2'
    (videos / '2.webm').write_bytes(os.urandom(3000))
    dh.truncate(str(videos / '3.webm'), 0.4)
    (videos / '6.webm').write_bytes(b'')
    train = root / 'labels' / 'train.json'
    entries = json.loads(train.read_text())
    train.write_text(json.dumps(entries + ['7', entries[0]]))
    return root


def test_skip_reports_every_bad_video(broken_ssv2, tmp_path):
    cfg = _cfg('something_something_v2', broken_ssv2, tmp_path)
    builder = data.prepare(cfg)
    assert data.num_examples(cfg, 'train') == 1
    assert builder.as_data_source('train')[0]['video_id'] in (b'1', '1')
    problems = builder.problems['train']
    assert len(problems) == 7
    videos = str(broken_ssv2 / '20bn-something-something-v2')
    joined = '\n'.join(problems)
    assert f'{videos}/2.webm: cannot open video' in joined
    assert f'{videos}/3.webm: truncated' in joined
    assert f'{videos}/4.webm: video file not found' in joined
    assert f'{videos}/6.webm: empty file (zero bytes)' in joined
    assert "label 'Juggling something' is not in labels.json" in joined
    assert "train.json: video 5" in joined
    assert 'train.json: entry 6 expected an object' in joined
    assert "train.json: duplicate id '1'" in joined
    assert builder.problems['validation'] == []
    report = problems_lib.read(os.fspath(builder.data_dir))
    train = report['splits']['train']
    assert (train['listed'], train['built'], train['skipped']) == (8, 1, 7)
    assert train['reasons'] == {'unreadable video': 1, 'truncated video': 1,
                                'missing file': 1, 'empty file': 1, 'unknown label': 1,
                                'bad line': 1, 'duplicate id': 1}
    assert sorted(train['problems']) == sorted(problems)
    assert report['splits']['validation']['reasons'] == {}


def test_raise_stops_with_file_and_reason(broken_ssv2, tmp_path):
    cfg = _cfg('something_something_v2', broken_ssv2, tmp_path, 'raise')
    with pytest.raises(BadInputError, match=r'2\.webm: cannot open video'):
        data.prepare(cfg)


def test_frame_folders_and_list_lines(tmp_path):
    root = tmp_path / 'raw'
    dh.write_jpegs(str(root / 'f' / 'ok'), 6, 'img_{:05d}.jpg')
    dh.write_jpegs(str(root / 'f' / 'gap'), 6, 'img_{:05d}.jpg', skip=(4,))
    png = dh.write_jpegs(str(root / 'f' / 'png'), 6, 'img_{:05d}.jpg')
    with open(os.path.join(png, 'img_00003.jpg'), 'wb') as f:
        f.write(b'\x89PNG\r\n\x1a\n' + os.urandom(200))
    (root / 'train.txt').write_bytes(
        b'f/ok 6 0\nf/gap 6 1\nf/none 3 1\nf/ok2 6 7\nf/ok six 1\n'
        b'f/png 6 0\nf/neg -2 0\nf/\xe9t\xe9 6 0\nf/ok 6 1\n')
    (root / 'val.txt').write_text('f/ok 6 1\n')
    (root / 'classes.txt').write_text('a\nb\n')
    builder = data.prepare(_cfg('video_list', root, tmp_path))
    problems = builder.problems['train']
    assert len(builder.as_data_source('train')) == 1
    assert len(problems) == 8
    joined = '\n'.join(problems)
    assert 'f/gap: 1 of 6 frames missing (first: img_00004.jpg)' in joined
    assert 'f/none: frame folder not found' in joined
    assert 'f/ok2: label 7 is not one of the 2 classes' in joined
    assert "train.txt:5: expected" in joined
    assert 'f/png/img_00003.jpg: not a decodable JPEG' in joined
    assert 'train.txt:7: f/neg: frame count -2 < 1' in joined
    assert 'train.txt:8: not UTF-8' in joined
    assert "train.txt: duplicate id 'f/ok'" in joined
    reasons = problems_lib.read(os.fspath(builder.data_dir))['splits']['train']['reasons']
    assert reasons == {'frame folder gap': 1, 'missing file': 1, 'unknown label': 1,
                       'bad line': 1, 'not a JPEG': 1, 'bad frame count': 1,
                       'bad encoding': 1, 'duplicate id': 1}


def test_raise_on_a_list_line(tmp_path):
    root = tmp_path / 'raw'
    dh.write_jpegs(str(root / 'f' / 'ok'), 6, 'img_{:05d}.jpg')
    (root / 'train.txt').write_text('f/ok 6 0\nf/ok -1 0\n')
    with pytest.raises(BadInputError, match=r"train\.txt:2: f/ok: frame count -1 < 1 "
                       r"\(split 'train', on_error='raise'\)"):
        data.prepare(_cfg('video_list', root, tmp_path, 'raise'))


def test_label_files_with_bad_encoding_name_the_line(tmp_path):
    root = tmp_path / 'raw'
    dh.write_jpegs(str(root / 'f' / 'ok'), 6, 'img_{:05d}.jpg')
    (root / 'train.txt').write_text('f/ok 6 0\n')
    (root / 'classes.txt').write_bytes(b'a\nb\xff\n')
    with pytest.raises(BadInputError, match=r'classes\.txt:2: not UTF-8'):
        data.prepare(_cfg('video_list', root, tmp_path))
    ssv2 = tmp_path / 'ssv2'
    dh.write_ssv2(str(ssv2), {'1': (HOLD, 0)}, {})
    (ssv2 / 'labels' / 'labels.json').write_bytes(b'{"Holding \xe9": "0"}')
    with pytest.raises(BadInputError, match=r'labels\.json: not UTF-8'):
        data.prepare(_cfg('something_something_v2', ssv2, tmp_path))


def test_ssv1_folder_gap_and_unknown_label(tmp_path):
    root = tmp_path / 'raw'
    frames = root / '20bn-something-something-v1'
    dh.write_jpegs(str(frames / '1'), 5, '{:05d}.jpg')
    dh.write_jpegs(str(frames / '2'), 5, '{:05d}.jpg', skip=(2,))
    (root / 'something-something-v1-labels.csv').write_text('Holding something\n')
    (root / 'something-something-v1-train.csv').write_text(
        '1;Holding something\n2;Holding something\n3;Dancing\n')
    (root / 'something-something-v1-validation.csv').write_text(
        '1;Holding something\n')
    builder = data.prepare(_cfg('something_something_v1', root, tmp_path))
    joined = '\n'.join(builder.problems['train'])
    assert len(builder.problems['train']) == 2
    assert '00002.jpg' in joined and "label 'Dancing' is not in" in joined


def test_empty_split_fails_clearly(tmp_path):
    root = tmp_path / 'raw'
    dh.write_ssv2(str(root), {'1': (HOLD, 8)}, {})
    with pytest.raises(EmptySplitError, match=r"split 'validation' has no "
                       r"usable videos \(0 listed in .*validation\.json"):
        data.prepare(_cfg('something_something_v2', root, tmp_path))


def test_all_broken_split_names_first_problem(tmp_path):
    root = tmp_path / 'raw'
    dh.write_ssv2(str(root), {'1': (HOLD, 8)}, {'2': (HOLD, 0), '3': (HOLD, 0)})
    report = tmp_path / 'tfds' / 'something_something_v2' / 'default' / '1.0.0.problems.json'
    with pytest.raises(EmptySplitError, match=r'first problem: .*2\.webm.*; every skip is '
                       f'listed in {report}$'):
        data.prepare(_cfg('something_something_v2', root, tmp_path))
    validation = json.loads(report.read_text())['splits']['validation']
    assert (validation['listed'], validation['built']) == (2, 0)
    assert validation['reasons'] == {'missing file': 2}


def test_missing_label_file_names_path(tmp_path):
    (tmp_path / 'raw').mkdir()
    (tmp_path / 'raw' / 'notes.txt').write_text('labels are elsewhere')
    with pytest.raises(BadInputError, match=r'labels\.json: not found'):
        data.prepare(_cfg('something_something_v2', tmp_path / 'raw', tmp_path))


def test_bad_on_error_value(tmp_path):
    cfg = _cfg('synthetic_motion', tmp_path, tmp_path, on_error='ignore')
    with pytest.raises(ValueError, match="on_error must be 'skip' or 'raise'"):
        tfds_builder(cfg)


def test_fine_gym_and_diving48_list_problems(tmp_path):
    gym = tmp_path / 'gym'
    gym.mkdir()
    (gym / 'gym99_categories.txt').write_text(
        'Clabel: 0; set: 1; Glabel: 1; (VT) round-off\n'
        'Clabel: 1; set: 21; Glabel: 12; (FX) switch leap\n')
    dh.write_video(str(gym / 'subactions' / 'c1.mp4'), 6, codec='libx264')
    (gym / 'gym99_train_element_v1.1.txt').write_bytes(
        b'c1 1\nc2\nc\xff3 0\nc4 99\n')
    (gym / 'gym99_val_element.txt').write_text('c1 0\n')
    builder = data.prepare(_cfg('fine_gym', gym, tmp_path))
    train = '\n'.join(builder.problems['train'])
    assert len(builder.problems['train']) == 3
    assert """gym99_train_element_v1.1.txt:2: expected "<clip id> <label>", got 'c2'""" in train
    assert 'gym99_train_element_v1.1.txt:3: not UTF-8; line skipped' in train
    assert "video c4: label '99' is not one of the 2 classes" in train

    dive = tmp_path / 'dive'
    dive.mkdir()
    (dive / 'Diving48_vocab.json').write_text(json.dumps([['Back'], ['Forward']]))
    dh.write_video(str(dive / 'rgb' / 'a.mp4'), 6, codec='libx264')
    (dive / 'Diving48_V2_train.json').write_text(json.dumps(
        [{'vid_name': 'a', 'label': 1}, ['a', 1], {'label': 0}]))
    (dive / 'Diving48_V2_test.json').write_text(json.dumps([{'vid_name': 'a', 'label': 0}]))
    builder = data.prepare(_cfg('diving48', dive, tmp_path / 'd'))
    assert [p.reason for p in builder.problems['train']] == [
        'entry 1 expected an object with "vid_name" and "label"',
        'entry 2 expected an object with "vid_name" and "label"']
