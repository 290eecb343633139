"""Sampling, augmentation and the grain pipeline on the tiny synthetic set."""

import json
import os
from unittest import mock

import data_helpers as dh
import ml_collections
import numpy as np
import pytest

from rsa_jax import data
from rsa_jax.data import pipeline, sampling, transforms
from rsa_jax.data.builders import synthetic_motion


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
    d = str(tmp_path_factory.mktemp('tfds'))
    data.prepare(dh.synthetic_cfg(d))
    return d


class _FixedRng:
    """Returns preset values for `integers`, like a mocked numpy randint."""

    def __init__(self, values):
        self.values = np.asarray(values)

    def integers(self, low, high, size):
        assert (low, size) == (0, len(self.values))
        assert (self.values < high).all()
        return self.values


# Official (1-based) indices worked out by hand from docs/data.md#pipeline, minus one.
def test_eval_indices_hand_checked():
    # tick = 50/8 = 6.25: int(3.125 + 6.25 i) + 1 = 4 10 16 22 29 35 41 47
    assert sampling.eval_indices(50, 8).tolist() == [3, 9, 15, 21, 28, 34, 40, 46]
    # tick = 3: int(1.5 + 3 i) + 1 = 2 5 8 11
    assert sampling.eval_indices(12, 4).tolist() == [1, 4, 7, 10]
    # num_frames <= T: the official code repeats frame 1.
    assert sampling.eval_indices(8, 8).tolist() == [0] * 8
    assert sampling.eval_indices(3, 8).tolist() == [0] * 8


def test_train_indices_hand_checked():
    # avg = 20 // 8 = 2: i*2 + randint(0, 1) (+1 in the official 1-based).
    rng = _FixedRng([0, 1, 1, 0, 0, 1, 0, 1])
    assert sampling.train_indices(20, 8, rng).tolist() == [
        0, 3, 5, 6, 8, 11, 12, 15]
    # Fewer frames than segments: all frame 1 (official quirk).
    assert sampling.train_indices(5, 8, np.random.default_rng(0)).tolist() == [0] * 8
    # Every draw stays inside its segment and covers it.
    rng = np.random.default_rng(0)
    draws = np.stack([sampling.train_indices(30, 4, rng) for _ in range(300)])
    for i in range(4):  # avg = 7; frames 28, 29 are never used
        assert set(draws[:, i]) == set(range(7 * i, 7 * i + 7))


def test_test_indices_two_clips():
    # tick = 4: clip offsets 1 and 3 inside each segment.
    assert sampling.test_indices(16, 4, 0, 2).tolist() == [1, 5, 9, 13]
    assert sampling.test_indices(16, 4, 1, 2).tolist() == [3, 7, 11, 15]
    assert sampling.test_indices(16, 4, 0, 1).tolist() == [2, 6, 10, 14]


def test_multiscale_crop_matches_official_tables():
    assert transforms.crop_sizes(240, 320, 224) == [
        (240, 240), (210, 240), (240, 210), (210, 210), (180, 210),
        (210, 180), (180, 180), (158, 180), (180, 158), (158, 158)]
    offsets = transforms.fixed_offsets(240, 320, 180, 158)  # steps 35, 20
    assert len(offsets) == 13 and len(set(offsets)) == 13
    assert offsets[:5] == [(0, 0), (140, 0), (0, 80), (140, 80), (70, 40)]
    assert (35, 20) in offsets and (105, 60) in offsets
    assert transforms.center_box(240, 320, 224) == (48, 8, 272, 232)
    rng = np.random.default_rng(0)
    boxes = {transforms.sample_multiscale_box(240, 320, 224, rng)
             for _ in range(3000)}
    expected = {(x, y, x + w, y + h)
                for w, h in transforms.crop_sizes(240, 320, 224)
                for x, y in transforms.fixed_offsets(240, 320, w, h)}
    assert boxes == expected  # every official crop is drawn, nothing else
    # Full-height crops have h_step = 0, so their 13 offsets collapse to 5.
    assert len(expected) == 114
    # A config's narrower scale set draws only its own sizes, all of them.
    sizes = {(x1 - x0, y1 - y0) for x0, y0, x1, y1 in (
        transforms.sample_multiscale_box(240, 320, 224, rng, (1.0, 0.875))
        for _ in range(500))}
    assert sizes == {(240, 240), (210, 240), (240, 210), (210, 210)}


def test_flip_exempt_classes_from_label_text():
    names = ['Plugging something into something but pulling it right out as '
             'you remove it', 'Pulling something from left to right',
             'Pulling something from right to left', 'Holding something',
             'Turning the camera left while filming something',
             'Turning the camera right while filming something',
             'Pushing something from left to right', 'Showing a bright light',
             'Putting something upright on the table', 'Left turn', 'RIGHT']
    assert transforms.flip_exempt_classes(names) == {1, 2, 4, 5, 6, 9, 10}


def test_ssv2_names_give_the_official_flip_ids():
    """The name rule on the 174 real SSv2 class names (alphabetical, as labels.json
    sorted) yields exactly the official no-flip list, which the configs set."""
    from configs import ssv1, ssv2
    path = os.path.join(os.path.dirname(__file__), 'data', 'ssv2_labels.json')
    with open(path, encoding='utf-8') as f:
        names = json.load(f)
    assert len(set(names)) == 174 and names == sorted(names)
    official = (86, 87, 93, 94, 166, 167)
    assert sorted(transforms.flip_exempt_classes(names)) == list(official)
    # Class 50 says "pulling it right out" and is flipped by the official code.
    assert 'right out' in names[50] and 50 not in transforms.flip_exempt_classes(names)
    for config in (ssv2, ssv1):
        assert tuple(config.get_config().data.flip_exempt_classes) == official


def _flip_cfg(**kw):
    return ml_collections.ConfigDict({'name': 'video_list', 'flip': True,
                                      'flip_exempt_classes': None, **kw})


def test_flip_exempt_ids_explicit_derived_and_warnings():
    placeholders = [f'class_{i}' for i in range(5)]
    named = ['Holding something', 'Pulling something from left to right',
             'Pushing something from right to left']
    with mock.patch.object(pipeline.logging, 'warning') as warn:
        # Placeholder names, flipping on, no list: nothing is exempt, and it says so.
        assert pipeline.flip_exempt_ids(_flip_cfg(), placeholders) == frozenset()
        assert warn.call_count == 1
        assert 'data.flip_exempt_classes' in warn.call_args[0][0] % warn.call_args[0][1:]
        warn.reset_mock()
        assert pipeline.flip_exempt_ids(_flip_cfg(flip_exempt_classes=(3, 1)),
                                        placeholders) == {1, 3}
        cfg = _flip_cfg()
        cfg.flip = False
        assert pipeline.flip_exempt_ids(cfg, placeholders) == frozenset()
        assert pipeline.flip_exempt_ids(_flip_cfg(), named) == {1, 2}
        assert pipeline.flip_exempt_ids(_flip_cfg(flip_exempt_classes=(1, 2)), named) == {1, 2}
        assert warn.call_count == 0
        # Ids that do not match the names that say left/right: another label order?
        assert pipeline.flip_exempt_ids(_flip_cfg(flip_exempt_classes=(0,)), named) == {0}
        assert warn.call_count == 1
    with pytest.raises(ValueError, match=r'data.flip_exempt_classes: ids \[5\]'):
        pipeline.flip_exempt_ids(_flip_cfg(flip_exempt_classes=(1, 5)), placeholders)


def test_create_iterator_uses_the_explicit_flip_list(data_dir, monkeypatch):
    specs = []
    real = pipeline.ClipLoader

    def recording(source, spec):
        specs.append(spec)
        return real(source, spec)

    monkeypatch.setattr(pipeline, 'ClipLoader', recording)
    for exempt, expected in ((None, {0, 1}), ((4, 5), {4, 5})):
        cfg = dh.synthetic_cfg(data_dir, flip_exempt_classes=exempt)
        pipeline.create_iterator(cfg, split='train', mode='train', global_batch_size=4)
        assert specs[-1].flip_exempt == expected


def test_normalize_and_flip():
    frames = np.zeros((1, 2, 3, 3), np.uint8)
    frames[0, :, 0] = 255
    out = transforms.normalize(frames)
    np.testing.assert_allclose(out[0, 0, 0], (1 - transforms.IMAGENET_MEAN)
                               / transforms.IMAGENET_STD, rtol=1e-6)
    np.testing.assert_allclose(transforms.normalize(frames, flip=True)[0, :, 2],
                               out[0, :, 0])


def _loader(data_dir, **kw):
    it_cfg = dh.synthetic_cfg(data_dir, **kw)
    builder = pipeline.tfds_builder(it_cfg)
    spec = pipeline.ClipSpec(
        num_frames=4, image_size=28, height=32, width=40, flip=kw.get('flip', True),
        flip_exempt=transforms.flip_exempt_classes(synthetic_motion.CLASS_NAMES))
    return pipeline.ClipLoader(builder.as_data_source('train'), spec)


def test_flip_never_touches_left_right_classes(data_dir):
    flipping = pipeline.TrainTransform(_loader(data_dir, flip=True))
    plain = pipeline.TrainTransform(_loader(data_dir, flip=False))
    flipped_other = 0
    for index in range(32):
        for seed in range(6):
            a = flipping.random_map(index, np.random.default_rng(seed))
            b = plain.random_map(index, np.random.default_rng(seed))
            same = np.array_equal(a['video'], b['video'])
            if a['label'] in (0, 1):  # left→right / right→left
                assert same, f'record {index} (class {a["label"]}) was flipped'
            elif not same:
                np.testing.assert_array_equal(a['video'], b['video'][:, :, ::-1])
                flipped_other += 1
    assert flipped_other > 50  # ~half of the 144 other-class draws


def test_train_batches_shape_and_labels(data_dir):
    cfg = dh.synthetic_cfg(data_dir)
    names = data.class_names(cfg)
    src = pipeline.tfds_builder(cfg).as_data_source('train')
    it = data.create_iterator(cfg, split='train', mode='train',
                              global_batch_size=8, seed=1)
    seen = []
    for _ in range(8):  # 2 epochs of 32
        b = next(it)
        assert b['video'].shape == (8, 4, 28, 28, 3)
        assert b['video'].dtype == np.float32 and b['index'].dtype == np.int64
        assert abs(float(b['video'].mean())) < 3
        for label, index in zip(b['label'], b['index']):
            assert names[label] == src[int(index)]['label_name'].decode()
        seen += b['index'].tolist()
    assert sorted(seen[:32]) == list(range(32))  # each epoch is a permutation
    assert sorted(seen[32:]) == list(range(32))
    assert seen[:32] != seen[32:]  # reshuffled per epoch


def test_train_shards_are_disjoint(data_dir):
    cfg = dh.synthetic_cfg(data_dir)
    shards = []
    for p in range(2):
        it = data.create_iterator(cfg, split='train', mode='train',
                                  global_batch_size=8, process_index=p,
                                  process_count=2, num_epochs=1)
        batches = list(it)
        assert len(batches) == 4 and batches[0]['video'].shape[0] == 4
        shards.append({i for b in batches for i in b['index'].tolist()})
    assert not shards[0] & shards[1] and len(shards[0] | shards[1]) == 32


def test_iterator_state_restores_next_batch(data_dir):
    cfg = dh.synthetic_cfg(data_dir)
    kw = dict(split='train', mode='train', global_batch_size=6, seed=7)
    it = data.create_iterator(cfg, **kw)
    for _ in range(6):  # crosses the epoch boundary (32 / 6)
        next(it)
    state = json.loads(json.dumps(it.get_state()))  # survives serialisation
    expected = [next(it) for _ in range(2)]
    resumed = data.create_iterator(cfg, **kw)
    resumed.set_state(state)
    for want in expected:
        got = next(resumed)
        np.testing.assert_array_equal(got['index'], want['index'])
        np.testing.assert_array_equal(got['video'], want['video'])
    fresh = data.create_iterator(cfg, **dict(kw, seed=8))
    assert not np.array_equal(next(fresh)['index'],
                              next(data.create_iterator(cfg, **kw))['index'])


@pytest.mark.parametrize('hosts,batch', [(1, 5), (3, 6)])
def test_eval_covers_every_video_once(data_dir, hosts, batch):
    cfg = dh.synthetic_cfg(data_dir)
    seen, counts = [], set()
    for p in range(hosts):
        batches = list(data.create_iterator(
            cfg, split='validation', mode='eval', global_batch_size=batch,
            process_index=p, process_count=hosts))
        counts.add(len(batches))
        for b in batches:
            assert b['video'].shape == (batch // hosts, 4, 28, 28, 3)
            assert ((b['mask'] == 1) == (b['index'] >= 0)).all()
            assert not b['video'][b['mask'] == 0].any()
            seen += b['index'][b['mask'] == 1].tolist()
    assert sorted(seen) == list(range(16))
    assert len(counts) == 1  # every host yields the same number of batches


def test_eval_is_centre_crop_of_centre_frames(data_dir):
    cfg = dh.synthetic_cfg(data_dir)
    b = next(data.create_iterator(cfg, split='validation', mode='eval',
                                  global_batch_size=2))
    src = pipeline.tfds_builder(cfg).as_data_source('validation')
    rec = src[int(b['index'][0])]
    frames = np.stack([data.decode.decode_jpeg(rec['frames'][i])
                       for i in sampling.eval_indices(8, 4)])
    want = transforms.normalize(frames[:, 2:30, 6:34])  # 32×40 → 28 centre
    np.testing.assert_allclose(b['video'][0], want, rtol=1e-6)


def test_test_mode_views(data_dir):
    cfg = dh.synthetic_cfg(data_dir, test_num_clips=2, test_num_crops=3)
    b = next(data.create_iterator(cfg, split='validation', mode='test',
                                  global_batch_size=2))
    assert b['video'].shape == (2, 6, 4, 28, 28, 3)
    src = pipeline.tfds_builder(cfg).as_data_source('validation')
    rec = src[int(b['index'][1])]
    idx = sampling.test_indices(8, 4, 1, 2)  # second clip
    frames = np.stack([data.decode.decode_jpeg(rec['frames'][i]) for i in idx])
    # views are clip-major; crops left, right, centre (x = 0, 12, 6 at y = 2).
    for k, x in enumerate((0, 12, 6)):
        want = transforms.normalize(frames[:, 2:30, x:x + 28])
        np.testing.assert_allclose(b['video'][1, 3 + k], want, rtol=1e-6)


def test_default_test_views_two_clips_one_centre_crop(data_dir):
    """Every paper config tests 2 clips (1/4 and 3/4 of each segment) x 1 centre crop."""
    from configs import diving48, finegym, ssv1, ssv2
    for config in (ssv2, ssv1, diving48, finegym):
        c = config.get_config().data
        assert (c.test_num_clips, c.test_num_crops) == (2, 1), config.__name__
    cfg = dh.synthetic_cfg(data_dir, test_num_clips=2, test_num_crops=1)
    b = next(data.create_iterator(cfg, split='validation', mode='test',
                                  global_batch_size=2))
    assert b['video'].shape == (2, 2, 4, 28, 28, 3)
    rec = pipeline.tfds_builder(cfg).as_data_source('validation')[int(b['index'][0])]
    for clip, positions in enumerate(([0, 2, 4, 6], [1, 3, 5, 7])):  # 8 frames, 4 segments
        assert sampling.test_indices(8, 4, clip, 2).tolist() == positions
        frames = np.stack([data.decode.decode_jpeg(rec['frames'][i]) for i in positions])
        want = transforms.normalize(frames[:, 2:30, 6:34])  # 32×40 → 28 centre
        np.testing.assert_allclose(b['video'][0, clip], want, rtol=1e-6)


def test_uint8_output_is_the_unnormalised_clip(data_dir):
    kw = dict(split='validation', mode='eval', global_batch_size=4)
    f32 = next(data.create_iterator(dh.synthetic_cfg(data_dir), **kw))
    u8 = next(data.create_iterator(
        dh.synthetic_cfg(data_dir, uint8_output=True), **kw))
    assert u8['video'].dtype == np.uint8
    np.testing.assert_array_equal(transforms.normalize(u8['video']), f32['video'])


def test_orbax_checkpoint_restores_iterator(data_dir, tmp_path):
    import grain
    import orbax.checkpoint as ocp
    cfg = dh.synthetic_cfg(data_dir)
    kw = dict(split='train', mode='train', global_batch_size=4, seed=3)
    it = data.create_iterator(cfg, **kw)
    next(it), next(it)
    mgr = ocp.CheckpointManager(str(tmp_path / 'ckpt'))
    mgr.save(2, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
    mgr.wait_until_finished()
    want = next(it)
    resumed = data.create_iterator(cfg, **kw)
    mgr.restore(2, args=ocp.args.Composite(
        data=grain.checkpoint.CheckpointRestore(resumed)))
    np.testing.assert_array_equal(next(resumed)['video'], want['video'])


def test_unbuilt_dataset_says_how_to_build(tmp_path):
    cfg = dh.synthetic_cfg(str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r'is not built in .*prepare'):
        data.create_iterator(cfg, split='train', mode='train',
                             global_batch_size=2)


def test_rejects_bad_arguments(data_dir):
    cfg = dh.synthetic_cfg(data_dir)
    with pytest.raises(ValueError, match='mode must be one of'):
        data.create_iterator(cfg, split='train', mode='val', global_batch_size=2)
    with pytest.raises(ValueError, match='not divisible by process_count'):
        data.create_iterator(cfg, split='train', mode='train',
                             global_batch_size=3, process_count=2)


def test_worker_processes_give_the_same_batches(data_dir):
    kw = dict(split='train', mode='train', global_batch_size=4, seed=3)
    inline = data.create_iterator(dh.synthetic_cfg(data_dir), **kw)
    workers = data.create_iterator(dh.synthetic_cfg(data_dir, num_workers=2),
                                   **kw)
    for _ in range(2):
        a, b = next(inline), next(workers)
        np.testing.assert_array_equal(a['index'], b['index'])
        np.testing.assert_array_equal(a['video'], b['video'])
    state = workers.get_state()
    want = next(inline)
    resumed = data.create_iterator(dh.synthetic_cfg(data_dir, num_workers=2),
                                   **kw)
    resumed.set_state(state)
    np.testing.assert_array_equal(next(resumed)['video'], want['video'])
    workers.close()
    resumed.close()
