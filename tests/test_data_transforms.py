"""The fast crop → resize → flip → normalise path against the official PIL one.

The official loader does `img.crop(box).resize((S, S), Image.BILINEAR)`, then
flips and normalises in float. Ours may differ from it by interpolation
rounding only: at most 1 grey level per pixel before normalisation.
"""

import data_helpers as dh
import numpy as np
import pytest
from PIL import Image

from rsa_jax import data
from rsa_jax.data import pipeline, sampling, transforms

MAX_DEVIATION = 1  # grey levels, vs the official PIL crop-then-resize


def _official(frame, box, size):
    return np.asarray(Image.fromarray(frame).crop(box).resize(
        (size, size), Image.BILINEAR))


def _official_normalize(clip):
    return (clip.astype(np.float32) / 255. - transforms.IMAGENET_MEAN) \
        / transforms.IMAGENET_STD


def _worst_frames(rng, h, w):
    """Uniform noise and a black/white pattern: edges everywhere."""
    noise = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    binary = np.where(rng.random((h, w, 3)) < 0.5, 0, 255).astype(np.uint8)
    return noise, binary


@pytest.mark.parametrize('h,w,size', [(240, 320, 224), (32, 40, 28),
                                      (256, 340, 224), (128, 171, 112)])
def test_every_multiscale_crop_within_one_level_of_pil(h, w, size):
    rng = np.random.default_rng(h)
    for frame in _worst_frames(rng, h, w):
        for cw, ch in transforms.crop_sizes(h, w, size):
            for x, y in transforms.fixed_offsets(h, w, cw, ch):
                box = (x, y, x + cw, y + ch)
                got = transforms.resize_crop(frame, box, size).astype(int)
                want = _official(frame, box, size).astype(int)
                dev = np.abs(got - want)
                assert dev.max() <= MAX_DEVIATION, (box, dev.max())
                assert dev.mean() < 0.5


def test_shrinking_axes_are_bit_exact():
    """Crops larger than the output on both axes go through PIL unchanged."""
    rng = np.random.default_rng(1)
    frame, _ = _worst_frames(rng, 240, 320)
    box = (40, 0, 280, 240)  # 240×240 → 224
    np.testing.assert_array_equal(transforms.resize_crop(frame, box, 224),
                                  _official(frame, box, 224))


@pytest.mark.parametrize('h,w', [(100, 176), (240, 427), (256, 455), (300, 200),
                                 (240, 320)])
def test_scale_frame_is_group_scale_within_one_level(h, w):
    """Load-time GroupScale((240, 320)) of stored original frames of any size:
    within 1 grey level of PIL's resize, and bit-exact when no axis grows."""
    rng = np.random.default_rng(w)
    for frame in _worst_frames(rng, h, w):
        got = transforms.scale_frame(frame, 240, 320)
        want = np.asarray(Image.fromarray(frame).resize((320, 240), Image.BILINEAR))
        assert got.shape == (240, 320, 3)
        assert np.abs(got.astype(int) - want).max() <= (MAX_DEVIATION if h < 240 or w < 320
                                                        else 0)


def test_random_boxes_and_scales_within_one_level():
    rng = np.random.default_rng(2)
    for _ in range(150):
        h, w = (int(v) for v in rng.integers(8, 200, 2))
        size = int(rng.integers(4, 240))
        cw, ch = int(rng.integers(1, w + 1)), int(rng.integers(1, h + 1))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        frame = _worst_frames(rng, h, w)[int(rng.integers(2))]
        box = (x, y, x + cw, y + ch)
        dev = np.abs(transforms.resize_crop(frame, box, size).astype(int)
                     - _official(frame, box, size).astype(int))
        assert dev.max() <= MAX_DEVIATION, (h, w, size, box)


def test_pixels_outside_the_box_are_not_used():
    frame = np.zeros((240, 320, 3), np.uint8)
    frame[:, :40] = 255
    frame[:, 250:] = 255
    for box in [(40, 0, 250, 240), (40, 30, 220, 210), (40, 0, 280, 240)]:
        out = transforms.resize_crop(frame, box, 224)
        want = _official(frame, box, 224)
        assert np.abs(out.astype(int) - want.astype(int)).max() <= MAX_DEVIATION
        if box[2] <= 250:
            assert not out.any()


def test_augment_matches_official_transform_chain():
    rng = np.random.default_rng(3)
    frames = [_worst_frames(rng, 240, 320)[0] for _ in range(3)]
    frames.append(frames[1])  # a frame sampled twice (short videos)
    box = (35, 20, 215, 200)
    for flip in (False, True):
        clip = np.stack([_official(f, box, 224) for f in frames])
        if flip:
            clip = clip[:, :, ::-1]
        want = _official_normalize(clip)
        got = transforms.augment(frames, box, 224, flip)
        assert got.dtype == np.float32 and got.flags.c_contiguous
        tol = MAX_DEVIATION / 255. / transforms.IMAGENET_STD.min() + 1e-5
        assert np.abs(got - want).max() <= tol
        u8 = transforms.augment(frames, box, 224, flip, uint8_output=True)
        np.testing.assert_array_equal(transforms.normalize(u8), got)
        np.testing.assert_array_equal(u8[3], u8[1])


def test_normalize_views_and_flip_match_float_formula():
    rng = np.random.default_rng(4)
    frames = rng.integers(0, 256, (2, 3, 40, 50, 3), dtype=np.uint8)
    view = frames[:, :, 5:33, 7:35]  # not contiguous
    for x in (frames, view):
        np.testing.assert_allclose(transforms.normalize(x),
                                   _official_normalize(x), atol=1e-6)
        np.testing.assert_allclose(transforms.normalize(x, flip=True),
                                   _official_normalize(x[..., ::-1, :]),
                                   atol=1e-6)


def test_train_clip_matches_official_pil_pipeline(tmp_path):
    """TrainTransform output vs the official chain on the same frames/draws."""
    d = str(tmp_path)
    cfg = dh.synthetic_cfg(d)
    data.prepare(cfg)
    builder = pipeline.tfds_builder(cfg)
    source = builder.as_data_source('train')
    spec = pipeline.ClipSpec(num_frames=4, image_size=28, height=32, width=40)
    transform = pipeline.TrainTransform(pipeline.ClipLoader(source, spec))
    tol = MAX_DEVIATION / 255. / transforms.IMAGENET_STD.min() + 1e-5
    for index in range(8):
        for seed in range(4):
            got = transform.random_map(index, np.random.default_rng(seed))
            rng = np.random.default_rng(seed)  # replay the same draws
            rec = source[index]
            idx = sampling.train_indices(int(rec['num_frames']), 4, rng)
            box = transforms.sample_multiscale_box(32, 40, 28, rng)
            flip = rng.random() < 0.5
            clip = np.stack([_official(data.decode.decode_jpeg(rec['frames'][i]),
                                       box, 28) for i in idx])
            want = _official_normalize(clip[:, :, ::-1] if flip else clip)
            assert np.abs(got['video'] - want).max() <= tol
