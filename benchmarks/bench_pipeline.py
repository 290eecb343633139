"""Decode + augment throughput of the data pipeline, per worker (one core).

Builds two small datasets with the real builders from generated raw files,
240×320 and 48 frames per video (SSv2-like): `video_list` (JPEG frame
folders → stored JPEG frames) and `something_something_v2/video` (VP9 webm
kept compressed). Times the training transform (TSN sampling of T frames,
decoding only those, multi-scale crop → 224, flip, ImageNet normalisation) in
one thread, and, in the same run, a PIL per-frame loader equivalent to the
official one (`Image.open(...).convert('RGB')`, `GroupScale`,
`GroupMultiScaleCrop`, flip, `ToTorchFormatTensor` + `GroupNormalize`) on the
same JPEG files. `jpeg_uint8` is the same pipeline with `uint8_output`
(normalisation left to the accelerator). `max_dev_vs_pil_levels` is the
largest per-pixel difference (grey levels, before normalisation) between our
uint8 training clips and the official PIL chain on the same files with the
same random draws. Prints one JSON line.

  python benchmarks/bench_pipeline.py [--videos 16] [--frames 8] [--seconds 4]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time

import av
import ml_collections
import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from rsa_jax.data import pipeline, sampling, transforms  # noqa: E402
from rsa_jax.data.decode import encode_jpeg  # noqa: E402

H, W, SIZE, LENGTH = 240, 320, 224, 48


def _natural_frames(rng: np.random.Generator, n: int) -> np.ndarray:
    """Smooth, slowly moving textures with JPEG sizes like real video frames."""
    base = rng.uniform(0, 255, (H // 16 + n, W // 16 + n, 3)).astype(np.uint8)
    big = np.asarray(Image.fromarray(base).resize(
        ((W // 16 + n) * 16, (H // 16 + n) * 16), Image.BICUBIC))
    noise = rng.normal(0, 1.5, (n, H, W, 3))
    frames = [big[2 * t:2 * t + H, 3 * t:3 * t + W] + noise[t] for t in range(n)]
    return np.clip(np.stack(frames), 0, 255).astype(np.uint8)


def write_raw(root: str, videos: int) -> None:
    """``videos`` raw videos of natural-looking frames, as JPEG folders (video_list) and
    as WebM files (Something-Something v2), under ``root``."""
    rng = np.random.default_rng(0)
    os.makedirs(os.path.join(root, 'ssv2', 'labels'))
    os.makedirs(os.path.join(root, 'ssv2', '20bn-something-something-v2'))
    rows, entries = [], []
    for v in range(videos):
        frames = _natural_frames(rng, LENGTH)
        folder = os.path.join(root, 'list', f'v{v}')
        os.makedirs(folder)
        for t, frame in enumerate(frames):
            with open(os.path.join(folder, f'img_{t + 1:05d}.jpg'), 'wb') as f:
                f.write(encode_jpeg(frame))
        rows.append(f'v{v} {LENGTH} {v % 2}\n')
        path = os.path.join(root, 'ssv2', '20bn-something-something-v2', f'{v}.webm')
        with av.open(path, 'w') as c:
            s = c.add_stream('libvpx-vp9', rate=12,
                             options={'deadline': 'realtime', 'cpu-used': '8',
                                      'crf': '32', 'b': '0'})
            s.width, s.height, s.pix_fmt = W, H, 'yuv420p'
            for frame in frames:
                for p in s.encode(av.VideoFrame.from_ndarray(frame, format='rgb24')):
                    c.mux(p)
            for p in s.encode():
                c.mux(p)
        entries.append({'id': str(v), 'template': ['Holding [something]',
                        'Pushing [something]'][v % 2], 'label': 'x'})
    with open(os.path.join(root, 'list', 'train.txt'), 'w') as f:
        f.writelines(rows)
    json.dump({'Holding something': '0', 'Pushing something': '1'},
              open(os.path.join(root, 'ssv2', 'labels', 'labels.json'), 'w'))
    for split in ('train', 'validation'):
        json.dump(entries, open(os.path.join(root, 'ssv2', 'labels',
                                             f'{split}.json'), 'w'))


def _official_pil_clip(folder: str, num_frames: int, t_len: int,
                       rng: np.random.Generator) -> np.ndarray:
    """The official TSNDataSet.__getitem__ + train transforms, per frame in PIL."""
    idx = sampling.train_indices(num_frames, t_len, rng) + 1
    images = [Image.open(os.path.join(folder, f'img_{i:05d}.jpg')).convert('RGB')
              for i in idx]
    images = [im.resize((W, H), Image.BILINEAR) for im in images]  # GroupScale
    pairs = transforms.crop_sizes(H, W, SIZE)
    w, h = random.choice(pairs)
    x, y = random.choice(transforms.fixed_offsets(H, W, w, h))
    images = [im.crop((x, y, x + w, y + h)).resize((SIZE, SIZE), Image.BILINEAR)
              for im in images]
    if random.random() < 0.5:
        images = [im.transpose(Image.FLIP_LEFT_RIGHT) for im in images]
    # Stack(roll=False) + ToTorchFormatTensor(div=True) + GroupNormalize.
    clip = np.stack([np.asarray(im) for im in images]).astype(np.float32) / 255.
    return (clip - transforms.IMAGENET_MEAN) / transforms.IMAGENET_STD


def _max_deviation(transform: pipeline.TrainTransform, root: str, videos: int,
                   t_len: int, seeds: int = 4) -> int:
    """Max |ours − official PIL| in grey levels over videos × seeds (uint8)."""
    worst = 0
    for v in range(videos):
        vid = transform.loader.record(v)['video_id']
        vid = vid.decode() if isinstance(vid, bytes) else vid
        folder = os.path.join(root, 'list', os.path.basename(vid))
        for seed in range(seeds):
            got = transform.random_map(v, np.random.default_rng(seed))['video']
            rng = np.random.default_rng(seed)  # replay the same draws
            idx = sampling.train_indices(LENGTH, t_len, rng)
            box = transforms.sample_multiscale_box(H, W, SIZE, rng)
            flip = rng.random() < 0.5
            want = np.stack([np.asarray(
                Image.open(os.path.join(folder, f'img_{i + 1:05d}.jpg'))
                .convert('RGB').crop(box).resize((SIZE, SIZE), Image.BILINEAR))
                for i in idx])
            if flip:
                want = want[:, :, ::-1]
            worst = max(worst, int(np.abs(got.astype(int) - want).max()))
    return worst


def rates(fns: dict, n_items: int, frames_per_item: int, seconds: float,
           rounds: int = 5) -> tuple[dict, dict]:
    """Frames per second of each fn: wall clock and per CPU-second.

    The loaders run in interleaved rounds so that load from other processes
    on a shared machine hits all of them alike; CPU time (`time.process_time`,
    all threads of this process) is what one free core would deliver.
    """
    done = dict.fromkeys(fns, 0)
    wall = dict.fromkeys(fns, 0.0)
    cpu = dict.fromkeys(fns, 0.0)
    for fn in fns.values():
        fn(0)  # warm up
    for _ in range(rounds):
        for k, fn in fns.items():
            w0, c0 = time.perf_counter(), time.process_time()
            while time.perf_counter() - w0 < seconds / rounds:
                fn(done[k] % n_items)
                done[k] += 1
            wall[k] += time.perf_counter() - w0
            cpu[k] += time.process_time() - c0
    return ({k: done[k] * frames_per_item / wall[k] for k in fns},
            {k: done[k] * frames_per_item / cpu[k] for k in fns})


def train_transform(name: str, config: str | None, root: str, manual: str,
                    t_len: int, uint8: bool = False) -> tuple[pipeline.TrainTransform, int]:
    """The training transform over dataset ``name`` built from ``root/manual``, and the
    stored bytes of its first video."""
    cfg = ml_collections.ConfigDict(dict(
        name=name, builder_config=config, data_dir=os.path.join(root, 'tfds'),
        manual_dir=os.path.join(root, manual)))
    builder = pipeline.prepare(cfg)
    source = builder.as_data_source('train')
    spec = pipeline.ClipSpec(num_frames=t_len, image_size=SIZE, height=H,
                             width=W, uint8_output=uint8)
    stored = sum(len(b) for b in source[0].get('frames', [])) or len(
        source[0]['video'])
    return pipeline.TrainTransform(pipeline.ClipLoader(source, spec)), stored


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument('--videos', type=int, default=16)
    ap.add_argument('--frames', type=int, default=8)
    ap.add_argument('--seconds', type=float, default=5.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as root:
        write_raw(root, args.videos)
        jpeg, jpeg_bytes = train_transform('video_list', None, root, 'list', args.frames)
        jpeg_u8, _ = train_transform('video_list', None, root, 'list', args.frames,
                                uint8=True)
        webm, webm_bytes = train_transform('something_something_v2', 'video', root,
                                      'ssv2', args.frames)
        max_dev = _max_deviation(jpeg_u8, root, args.videos, args.frames)
        rng = np.random.default_rng(0)
        random.seed(0)
        t = args.frames
        wall, cpu = rates({
            'jpeg': lambda i: jpeg.random_map(i, rng),
            'jpeg_uint8': lambda i: jpeg_u8.random_map(i, rng),
            'webm': lambda i: webm.random_map(i, rng),
            'pil_official': lambda i: _official_pil_clip(
                os.path.join(root, 'list', f'v{i}'), LENGTH, t, rng),
        }, args.videos, t, args.seconds)
    print(json.dumps({
        'benchmark': 'data_pipeline_train_transform',
        'unit': 'decoded+augmented frames/s of one worker thread; *_cpu = per '
                'CPU-second (one free core), *_wall = wall clock here',
        'input': f'{H}x{W} -> {SIZE}, T={t} of {LENGTH}-frame videos',
        **{f'{k}_fps_cpu': round(v, 1) for k, v in cpu.items()},
        **{f'{k}_fps_wall': round(v, 1) for k, v in wall.items()},
        'jpeg_vs_pil': round(cpu['jpeg'] / cpu['pil_official'], 2),
        'jpeg_uint8_vs_pil': round(cpu['jpeg_uint8'] / cpu['pil_official'], 2),
        'webm_vs_pil': round(cpu['webm'] / cpu['pil_official'], 2),
        'max_dev_vs_pil_levels': max_dev,
        'stored_bytes_per_video_jpeg': jpeg_bytes,
        'stored_bytes_per_video_webm': webm_bytes,
        'cpu_count': os.cpu_count(),
        'load_avg_1min': round(os.getloadavg()[0], 2),
    }))


if __name__ == '__main__':
    main()
