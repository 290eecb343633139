"""How faithful and how fast are the two ways of storing JPEG frame folders?

The official loader opens each original JPEG with PIL and resizes it in memory to
240×320 (`GroupScale`), then crops. A frame-folder dataset can be stored two ways
by our builders (`VideoConfig.jpeg_frames`):

- `original`: the files' own bytes; the pipeline resizes each decoded frame to
  240×320 when it loads it (the official order of operations; growing axes with
  OpenCV, ±1 grey level of PIL, shrinking axes with PIL itself);
- `resized`: resized to 240×320 at build time and re-encoded as JPEG q90, a second
  lossy generation (SSv1 frames are ~100 px high, so most of a stored frame is
  then JPEG artefacts of an upscaled image);
- `auto` (the default): `original` for frames that only grow, `resized` for
  frames with an axis to shrink.

Raw frames in the real formats: a natural photo (matplotlib's `grace_hopper.jpg`)
panned by a few pixels per frame, cut to SSv1's 100×176 and to SSv2-like
240×427 frames, written by PIL at `--src_quality`, in `video_list` folders. Both
stores are built by the real builder. For each, against the official PIL chain on
the original files:

- `frame_mae` / `frame_max`: mean / max abs error (grey levels) of the 240×320
  frame the loader hands over;
- `clip_mae` / `clip_max`: the same after the full crop → 224 resize, over the
  centre crop and `--boxes` random multi-scale training boxes per frame;
- `fps_cpu`: training transform (decode T sampled frames, crop, resize, flip,
  normalise) frames per CPU-second of one thread, the stores timed in interleaved
  rounds.

Prints one JSON line.

  python benchmarks/bench_frame_storage.py [--videos 8] [--frames 8] [--seconds 4]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

import numpy as np
import tensorflow_datasets as tfds
from matplotlib import cbook
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench_pipeline import rates

from rsa_jax.data import builders, pipeline, transforms

H, W, SIZE, LENGTH = 240, 320, 224, 16
RAW_SIZES = {'ssv1_100x176': (100, 176), 'ssv2_240x427': (240, 427)}
STORES = ('original', 'resized', 'auto')


def _write_raw(root: str, height: int, width: int, videos: int, quality: int) -> None:
    """`videos` folders of LENGTH panned crops of a photo, as height×width JPEGs."""
    photo = Image.open(cbook.get_sample_data('grace_hopper.jpg', asfileobj=False))
    pw, ph = photo.size
    win_h = int(ph * 0.7)
    win_w = min(pw - 2 * LENGTH - 1, int(win_h * width / height))
    win_h = int(win_w * height / width)
    rows = []
    for v in range(videos):
        folder = os.path.join(root, f'v{v}')
        os.makedirs(folder)
        for t in range(LENGTH):
            x, y = 2 * t + v, (3 * v + t) % max(1, ph - win_h)
            frame = photo.crop((x, y, x + win_w, y + win_h)).resize((width, height),
                                                                    Image.LANCZOS)
            frame.save(os.path.join(folder, f'img_{t + 1:05d}.jpg'), quality=quality)
        rows.append(f'v{v} {LENGTH} 0\n')
    with open(os.path.join(root, 'train.txt'), 'w') as f:
        f.writelines(rows)


def _build(root: str, store: str):
    config = builders.VideoConfig(name=store, jpeg_frames=store)
    builder = builders.VideoList(config=config, data_dir=os.path.join(root, 'tfds'))
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=os.path.join(root, 'raw')))
    return builder.as_data_source('train')


def _official(path: str, box) -> tuple[np.ndarray, np.ndarray]:
    """PIL open → RGB → GroupScale((240, 320)); and its crop(box) → 224."""
    img = Image.open(path).convert('RGB').resize((W, H), Image.BILINEAR)
    return np.asarray(img), np.asarray(img.crop(box).resize((SIZE, SIZE), Image.BILINEAR))


def _errors(source, raw: str, videos: int, boxes: int) -> dict:
    spec = pipeline.ClipSpec(num_frames=1, image_size=SIZE, height=H, width=W)
    loader = pipeline.ClipLoader(source, spec)
    rng = np.random.default_rng(0)
    frame_err, clip_err = [], []
    for v in range(videos):
        record = loader.record(v)
        vid = record['video_id']
        folder = os.path.join(raw, vid.decode() if isinstance(vid, bytes) else vid)
        for t in range(LENGTH):
            frame = loader.load(record, v, np.array([t]))[0][0]
            path = os.path.join(folder, f'img_{t + 1:05d}.jpg')
            box_list = [transforms.center_box(H, W, SIZE)] + [
                transforms.sample_multiscale_box(H, W, SIZE, rng) for _ in range(boxes)]
            for k, box in enumerate(box_list):
                want_frame, want_clip = _official(path, box)
                if k == 0:
                    frame_err.append(np.abs(frame.astype(int) - want_frame))
                got = transforms.crop_resize([frame], box, SIZE)[0]
                clip_err.append(np.abs(got.astype(int) - want_clip))
    frame_err, clip_err = np.stack(frame_err), np.stack(clip_err)
    return {'frame_mae': round(float(frame_err.mean()), 3), 'frame_max': int(frame_err.max()),
            'clip_mae': round(float(clip_err.mean()), 3), 'clip_max': int(clip_err.max())}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument('--videos', type=int, default=8)
    ap.add_argument('--frames', type=int, default=8)
    ap.add_argument('--boxes', type=int, default=3)
    ap.add_argument('--src_quality', type=int, default=90)
    ap.add_argument('--seconds', type=float, default=4.0)
    args = ap.parse_args()
    out = {'benchmark': 'jpeg_frame_storage',
           'unit': 'abs error in grey levels vs the official PIL chain; frames/s per '
                   'CPU-second of one thread (training transform, float32)',
           'src_quality': args.src_quality, 'frames_per_clip': args.frames}
    for label, (h, w) in RAW_SIZES.items():
        with tempfile.TemporaryDirectory() as root:
            raw = os.path.join(root, 'raw')
            _write_raw(raw, h, w, args.videos, args.src_quality)
            transforms_by_store = {}
            for store in STORES:
                source = _build(root, store)
                out[f'{label}_{store}'] = _errors(source, raw, args.videos, args.boxes)
                out[f'{label}_{store}']['stored_bytes_per_video'] = sum(
                    len(b) for b in source[0]['frames'])
                spec = pipeline.ClipSpec(num_frames=args.frames, image_size=SIZE,
                                         height=H, width=W)
                transforms_by_store[store] = pipeline.TrainTransform(
                    pipeline.ClipLoader(source, spec))
            rng = np.random.default_rng(0)
            _, cpu = rates({s: (lambda i, tr=tr, rng=rng: tr.random_map(i, rng))
                             for s, tr in transforms_by_store.items()},
                            args.videos, args.frames, args.seconds)
            for store in STORES:
                out[f'{label}_{store}']['fps_cpu'] = round(cpu[store], 1)
            for store in ('original', 'auto'):
                out[f'{label}_{store}_vs_resized_speed'] = round(
                    cpu[store] / cpu['resized'], 3)
    out['cpu_count'] = os.cpu_count()
    out['load_avg_1min'] = round(os.getloadavg()[0], 2)
    print(json.dumps(out))


if __name__ == '__main__':
    main()
