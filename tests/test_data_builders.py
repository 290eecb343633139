"""Each builder built from real raw files, then read through the pipeline."""

import io
import json
import os
import pathlib

import data_helpers as dh
import ml_collections
import numpy as np
import pytest
import simplejpeg
import tensorflow_datasets as tfds
from PIL import Image

from rsa_jax import data
from rsa_jax.data import builders, decode, transforms
from rsa_jax.data.builders import synthetic_motion


def _cfg(name, manual_dir, data_dir, builder_config=None, **kw):
    cfg = dict(name=name, builder_config=builder_config, data_dir=data_dir,
               manual_dir=manual_dir, num_frames=4, image_size=224, flip=True,
               test_num_clips=1, test_num_crops=1, num_workers=0, prefetch=1)
    cfg.update(kw)
    return ml_collections.ConfigDict(cfg)


def _text(x):
    return x.decode() if isinstance(x, bytes) else x


def _records(builder, split):
    """video_id → record, with text features as str."""
    out = {}
    for r in builder.as_data_source(split):
        r = dict(r, video_id=_text(r['video_id']),
                 label_name=_text(r['label_name']))
        out[r['video_id']] = r
    return out


def _check_frames(record, height=240, width=320):
    """Stored frames are JPEGs at height×width and in temporal order."""
    assert len(record['frames']) == record['num_frames']
    for t in (0, record['num_frames'] - 1):
        frame = decode.decode_jpeg(record['frames'][t])
        assert frame.shape == (height, width, 3)
        assert abs(float(frame[..., 0].mean()) - dh.red_of(t)) < 6


def _check_batch(cfg, split, names_by_index, batch=2):
    it = data.create_iterator(cfg, split=split, mode='eval',
                              global_batch_size=batch)
    b = next(it)
    assert b['video'].shape == (batch, 4, 224, 224, 3)
    assert b['video'].dtype == np.float32 and b['label'].dtype == np.int32
    names = data.class_names(cfg)
    for label, index in zip(b['label'], b['index']):
        assert names[label] == names_by_index[int(index)]


def test_something_something_v2(tmp_path):
    train = {'11': ('Pulling [something] from left to right', 9),
             '12': ('Holding [something]', 14),
             '13': ('Pushing [something] from right to left', 6)}
    val = {'21': ('Holding [something]', 10), '22': (
        'Plugging [something] into [something] but pulling it right out as '
        'you remove it', 8)}
    root = dh.write_ssv2(str(tmp_path / 'raw'), train, val)
    cfg = _cfg('something_something_v2', root, str(tmp_path / 'tfds'))
    builder = data.prepare(cfg)
    names = data.class_names(cfg)
    assert names == sorted(names) and 'Holding something' in names
    assert transforms.flip_exempt_classes(names) == {
        names.index('Pulling something from left to right'),
        names.index('Pushing something from right to left')}
    recs = _records(builder, 'train')
    assert set(recs) == set(train)
    for vid, (template, n) in train.items():
        r = recs[vid]
        assert r['num_frames'] == n
        assert r['label_name'] == template.replace('[', '').replace(']', '')
        assert names[r['label']] == r['label_name']
        _check_frames(r)
    assert data.num_examples(cfg, 'validation') == 2
    by_index = {i: _text(r['label_name']) for i, r in enumerate(
        builder.as_data_source('validation'))}
    _check_batch(cfg, 'validation', by_index)


def test_something_something_v2_video_storage(tmp_path):
    root = dh.write_ssv2(str(tmp_path / 'raw'),
                         {'1': ('Holding [something]', 12)},
                         {'2': ('Holding [something]', 7)})
    cfg = _cfg('something_something_v2', root, str(tmp_path / 'tfds'),
               builder_config='video', image_size=200)
    builder = data.prepare(cfg)
    record = builder.as_data_source('train')[0]
    assert 'frames' not in record and record['num_frames'] == 12
    with open(os.path.join(root, '20bn-something-something-v2', '1.webm'),
              'rb') as f:
        assert record['video'] == f.read()
    frames = np.stack(decode.decode_video_frame_list(record['video'], [1, 10], 240, 320))
    assert frames.shape == (2, 240, 320, 3)
    assert abs(frames[1, ..., 0].mean() - dh.red_of(10)) < 6
    b = next(data.create_iterator(cfg, split='train', mode='train',
                                  global_batch_size=1))
    assert b['video'].shape == (1, 4, 200, 200, 3)


def test_something_something_v1(tmp_path):
    root = tmp_path / 'raw'
    dh.write_jpegs(str(root / '20bn-something-something-v1' / '7'), 11, '{:05d}.jpg')
    dh.write_jpegs(str(root / '20bn-something-something-v1' / '8'), 5, '{:05d}.jpg')
    (root / 'something-something-v1-labels.csv').write_text(
        'Pushing something from right to left\nHolding something\n')
    (root / 'something-something-v1-train.csv').write_text(
        '7;Holding something\n8;Pushing something from right to left\n')
    (root / 'something-something-v1-validation.csv').write_text(
        '8;Holding something\n')
    cfg = _cfg('something_something_v1', str(root), str(tmp_path / 'tfds'))
    builder = data.prepare(cfg)
    assert data.class_names(cfg) == ['Holding something',
                                     'Pushing something from right to left']
    recs = _records(builder, 'train')
    assert (recs['7']['num_frames'], recs['7']['label']) == (11, 0)
    assert (recs['8']['num_frames'], recs['8']['label']) == (5, 1)
    _check_frames(recs['7'], 48, 64)  # the raw 48×64 JPEGs, kept as they are
    b = next(data.create_iterator(cfg, split='train', mode='train',
                                  global_batch_size=2))
    assert b['video'].shape == (2, 4, 224, 224, 3)
    assert sorted(b['label'].tolist()) == [0, 1]


def test_diving48(tmp_path):
    root = tmp_path / 'raw'
    vocab = [['Back', '15som', 'NoTwis', 'PIKE'], ['Forward', '25som', '1Twis', 'FREE']]
    (root).mkdir()
    (root / 'Diving48_vocab.json').write_text(json.dumps(vocab))
    split_vids = {'train': [('a_001', 1, 9), ('a_002', 0, 7)],
                  'test': [('b_001', 0, 8)]}
    for split, vids in split_vids.items():
        entries = [{'vid_name': v, 'label': ln, 'start_frame': 0,
                    'end_frame': n - 1} for v, ln, n in vids]
        (root / f'Diving48_V2_{split}.json').write_text(json.dumps(entries))
        for v, _, n in vids:
            dh.write_video(str(root / 'rgb' / f'{v}.mp4'), n, codec='libx264')
    cfg = _cfg('diving48', str(root), str(tmp_path / 'tfds'))
    builder = data.prepare(cfg)
    assert data.class_names(cfg)[1] == 'Forward 25som 1Twis FREE'
    recs = _records(builder, 'train')
    assert (recs['a_001']['label'], recs['a_001']['num_frames']) == (1, 9)
    _check_frames(recs['a_001'])
    assert data.num_examples(cfg, 'test') == 1


@pytest.mark.parametrize('subset', ['gym99', 'gym288'])
def test_fine_gym(tmp_path, subset):
    root = tmp_path / 'raw'
    root.mkdir()
    (root / f'{subset}_categories.txt').write_text(
        'Clabel: 0; set: 1; Glabel: 1; (VT) round-off, flic-flac\n'
        'Clabel: 1; set: 21; Glabel: 12; (FX) switch leap with 0.5 turn\n')
    clips = {'train': [('A0xAXXysHUo_002184_002237_A_0006_0008', 1)],
             'validation': [('B1yBYYztIUp_000010_000050_A_0001_0002', 0)]}
    files = {'train': f'{subset}_train_element_v1.1.txt',
             'validation': f'{subset}_val_element.txt'}
    for split, rows in clips.items():
        (root / files[split]).write_text(''.join(f'{c} {ln}\n' for c, ln in rows))
        for c, _ in rows:
            dh.write_video(str(root / 'subactions' / f'{c}.mp4'), 6,
                           codec='libx264')
    cfg = _cfg('fine_gym', str(root), str(tmp_path / 'tfds'),
               builder_config=subset)
    builder = data.prepare(cfg)
    assert data.class_names(cfg) == ['(VT) round-off, flic-flac',
                                     '(FX) switch leap with 0.5 turn']
    r = builder.as_data_source('train')[0]
    assert (r['label'], r['num_frames']) == (1, 6)
    assert _text(r['label_name']) == '(FX) switch leap with 0.5 turn'


def test_video_list(tmp_path):
    root = tmp_path / 'raw'
    dh.write_jpegs(str(root / 'frames' / 'v1'), 10, 'img_{:05d}.jpg')
    dh.write_jpegs(str(root / 'frames' / 'v2'), 6, 'img_{:05d}.jpg')
    (root / 'train.txt').write_text('frames/v1 10 2\nframes/v2 6 0\n')
    (root / 'val.txt').write_text('frames/v2 6 1\n')
    cfg = _cfg('video_list', str(root), str(tmp_path / 'tfds'))
    builder = data.prepare(cfg)
    assert data.class_names(cfg) == ['class_0', 'class_1', 'class_2']
    recs = _records(builder, 'train')
    assert (recs['frames/v1']['label'], recs['frames/v1']['num_frames']) == (2, 10)
    _check_frames(recs['frames/v1'], 48, 64)
    by_index = {0: 'class_1'}
    _check_batch(cfg, 'validation', by_index, batch=1)


def test_synthetic_is_deterministic_and_time_reversed():
    cfg = synthetic_motion.SyntheticConfig(name='t', height=24, width=32,
                                           num_frames=6, seed=5)
    a = synthetic_motion.synthetic_example('train', 3, cfg)
    b = synthetic_motion.synthetic_example('train', 3, cfg)
    assert a['frames'] == b['frames'] and a['num_frames'] == 6
    # Odd classes are their even partner played backwards: identical frames.
    for label in range(0, 8, 2):
        fwd = synthetic_motion.render_clip(label, 6, 24, 32,
                                           np.random.default_rng(label))
        rev = synthetic_motion.render_clip(label + 1, 6, 24, 32,
                                           np.random.default_rng(label))
        np.testing.assert_array_equal(fwd[::-1], rev)
        assert not np.array_equal(fwd[0], fwd[-1])  # something does move
    names = synthetic_motion.CLASS_NAMES
    assert transforms.flip_exempt_classes(names) == {0, 1}


def test_synthetic_builds(tmp_path):
    cfg = dh.synthetic_cfg(str(tmp_path))
    builder = data.prepare(cfg)
    assert isinstance(builder, builders.SyntheticMotion)
    assert data.num_examples(cfg, 'train') == 32
    assert data.num_examples(cfg, 'validation') == 16
    labels = [r['label'] for r in builder.as_data_source('train')]
    assert np.bincount(labels).tolist() == [4] * 8
    r = builder.as_data_source('validation')[0]
    assert decode.decode_jpeg(r['frames'][0]).shape == (32, 40, 3)
    assert tfds.builder('synthetic_motion/tiny', data_dir=str(tmp_path)).is_prepared()


def _texture_jpegs(folder, n, height, width):
    """Smooth random textures (JPEG artefacts and resampling both show on them)."""
    os.makedirs(folder)
    rng = np.random.default_rng(height)
    for t in range(n):
        small = rng.integers(0, 256, (height // 8, width // 8, 3), dtype=np.uint8)
        frame = np.asarray(Image.fromarray(small).resize((width, height), Image.BICUBIC))
        with open(os.path.join(folder, f'img_{t + 1:05d}.jpg'), 'wb') as f:
            f.write(simplejpeg.encode_jpeg(np.ascontiguousarray(frame), quality=90))
    return folder


@pytest.mark.parametrize('jpeg_frames', ['auto', 'original', 'resized'])
def test_jpeg_frame_storage(tmp_path, jpeg_frames):
    """Frames that only grow (48×64) and frames that shrink (256×400) to 240×320.

    'original' stores the raw bytes and resizes when loading (the official
    in-memory GroupScale); 'resized' stores a 240×320 re-encode; 'auto' keeps the
    growing ones and re-encodes the shrinking ones. The loader always hands over
    240×320 frames."""
    root = tmp_path / 'raw'
    small = _texture_jpegs(str(root / 'small'), 3, 48, 64)
    large = _texture_jpegs(str(root / 'large'), 3, 256, 400)
    (root / 'train.txt').write_text('small 3 0\nlarge 3 1\n')
    config = builders.VideoConfig(name=jpeg_frames, jpeg_frames=jpeg_frames)
    builder = builders.VideoList(config=config, data_dir=str(tmp_path / 'tfds'))
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(root)))
    spec = data.pipeline.ClipSpec(num_frames=2, image_size=224, height=240, width=320)
    loader = data.pipeline.ClipLoader(builder.as_data_source('train'), spec)
    kept = {'auto': {'small'}, 'original': {'small', 'large'}, 'resized': set()}[jpeg_frames]
    for index in range(2):
        record = loader.record(index)
        folder = {'small': small, 'large': large}[_text(record['video_id'])]
        raw = [pathlib.Path(folder, f'img_{t:05d}.jpg').read_bytes() for t in (1, 3)]
        official = [np.asarray(Image.open(io.BytesIO(r)).convert('RGB').resize(
            (320, 240), Image.BILINEAR)).astype(int) for r in raw]
        got = loader.load(record, index, np.array([0, 2, 0]))[0]
        assert got[0] is got[2]  # a frame sampled twice is decoded and resized once
        dev = max(np.abs(g.astype(int) - o).max() for g, o in zip(got[:2], official))
        if _text(record['video_id']) in kept:
            assert [record['frames'][0], record['frames'][2]] == raw
            assert dev <= 1  # PIL exactly when shrinking, OpenCV ±1 when growing
        else:
            assert decode.decode_jpeg(record['frames'][0]).shape == (240, 320, 3)
            assert dev > 1  # the second JPEG generation shows
