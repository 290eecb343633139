"""Writes small raw datasets in each dataset's real on-disk format.

Frame t of every generated clip is a flat colour whose red channel is
`red_of(t)`, so tests can tell which frames were decoded after any crop.
"""

from __future__ import annotations

import json
import os

import av
import ml_collections
import numpy as np
import simplejpeg


def red_of(t: int) -> int:
    return (20 + 12 * t) % 256


def clip_frames(n: int, height: int = 48, width: int = 64) -> np.ndarray:
    frames = np.empty((n, height, width, 3), np.uint8)
    for t in range(n):
        frames[t] = (red_of(t), 90, 160)
    return frames


def write_video(path: str, n: int, codec: str = 'libvpx-vp9', fps: int = 12,
                height: int = 48, width: int = 64) -> str:
    """A real VP9 .webm or h264 .mp4 with n frames, made by PyAV."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with av.open(path, 'w') as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, 'yuv420p'
        for frame in clip_frames(n, height, width):
            vf = av.VideoFrame.from_ndarray(frame, format='rgb24')
            for packet in stream.encode(vf):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_jpegs(folder: str, n: int, template: str, skip: tuple = ()) -> str:
    os.makedirs(folder, exist_ok=True)
    for t, frame in enumerate(clip_frames(n)):
        if t + 1 not in skip:
            with open(os.path.join(folder, template.format(t + 1)), 'wb') as f:
                f.write(simplejpeg.encode_jpeg(frame, quality=95))
    return folder


def truncate(path: str, fraction: float = 0.5) -> None:
    with open(path, 'rb') as f:
        data = f.read()
    with open(path, 'wb') as f:
        f.write(data[:int(len(data) * fraction)])


SSV2_CLASSES = ['Pulling [something] from left to right',
                'Pushing [something] from right to left',
                'Holding [something]',
                'Plugging [something] into [something] but pulling it right out '
                'as you remove it']


def write_ssv2(root: str, train: dict, validation: dict,
               labels: list[str] = SSV2_CLASSES) -> str:
    """train/validation: {video id: (template, num_frames)}."""
    os.makedirs(os.path.join(root, 'labels'), exist_ok=True)
    names = sorted(t.replace('[', '').replace(']', '') for t in labels)
    with open(os.path.join(root, 'labels', 'labels.json'), 'w') as f:
        json.dump({n: str(i) for i, n in enumerate(names)}, f)
    for split, videos in (('train', train), ('validation', validation)):
        entries = []
        for vid, (template, n) in videos.items():
            entries.append({'id': vid, 'label': template.lower(),
                            'template': template, 'placeholders': ['x']})
            if n:
                write_video(os.path.join(
                    root, '20bn-something-something-v2', f'{vid}.webm'), n)
        with open(os.path.join(root, 'labels', f'{split}.json'), 'w') as f:
            json.dump(entries, f)
    return root


def synthetic_cfg(data_dir: str, **overrides) -> ml_collections.ConfigDict:
    cfg = dict(name='synthetic_motion', builder_config='tiny', data_dir=data_dir,
               manual_dir=None, num_frames=4, image_size=28, flip=True,
               test_num_clips=1, test_num_crops=1, num_workers=0, prefetch=2)
    cfg.update(overrides)
    return ml_collections.ConfigDict(cfg)


# A video_folder dataset (tests/test_video_folder.py, tests/test_documented_commands_run.py).
COLOURS = {"blue square": (40, 60, 220), "green square": (40, 200, 60),
           "red square": (220, 40, 40), "yellow square": (230, 220, 40)}


def write_clip(path: str, colour, rng, n: int = 8, h: int = 64, w: int = 80) -> None:
    """A square of the class colour moving over a noisy grey background."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    y0, x0, dx = rng.integers(4, h - 28), rng.integers(4, w - 40), rng.integers(1, 3)
    with av.open(path, "w") as c:
        s = c.add_stream("libx264", rate=8)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        for t in range(n):
            frame = rng.normal(128, 20, (h, w, 3)).clip(0, 255).astype(np.uint8)
            frame[y0:y0 + 24, x0 + dx * t:x0 + dx * t + 24] = colour
            for p in s.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def make_folder_dataset(root: str, per_class: dict, seed: int = 0) -> str:
    """A video_folder dataset: ``root/<split>/<class>/clipNN.mp4``, ``per_class[split]``
    clips per class of COLOURS; returns ``root``."""
    rng = np.random.default_rng(seed)
    for split, n in per_class.items():
        for name, colour in COLOURS.items():
            for i in range(n):
                write_clip(os.path.join(root, split, name, f"clip{i:02d}.mp4"), colour, rng)
    return root
