"""Decoding and encoding of frames: JPEG (simplejpeg) and video files (PyAV).

Used by the builders (raw files → stored 240×320 JPEG frames or the original
compressed video) and by the pipeline (stored record → only the sampled
frames as uint8 `(n, H, W, 3)`). Every failure is raised as `BadInputError`
naming the file and the reason, so builders can skip or fail cleanly.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import av
import numpy as np
import simplejpeg
from PIL import Image

JPEG_QUALITY = 90
# A video whose decoded frames cover less than this fraction of the duration
# its container header announces is reported as truncated.
_MIN_DURATION_FRACTION = 0.9


class BadInputError(ValueError):
    """A raw file a builder cannot use; the message names the file and why."""

    def __init__(self, path: str, reason: str):
        super().__init__(f'{path}: {reason}')
        self.path = path
        self.reason = reason


def resize(frame: np.ndarray, height: int, width: int) -> np.ndarray:
    """`GroupScale((h, w))`: PIL bilinear resize, aspect ratio not kept."""
    if frame.shape[:2] == (height, width):
        return frame
    img = Image.fromarray(frame).resize((width, height), Image.BILINEAR)
    return np.asarray(img)


def encode_jpeg(frame: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    """uint8 RGB `(H, W, 3)` → JPEG bytes."""
    return simplejpeg.encode_jpeg(np.ascontiguousarray(frame), quality=quality,
                                  colorspace='RGB')


def decode_jpeg(data: bytes, path: str = '<jpeg>') -> np.ndarray:
    """JPEG bytes → uint8 RGB `(H, W, 3)`; grayscale/CMYK are converted."""
    try:
        return simplejpeg.decode_jpeg(data, colorspace='RGB')
    except ValueError as e:
        raise BadInputError(path, f'not a decodable JPEG ({e})') from e


JPEG_FRAMES = ('auto', 'original', 'resized')


def jpeg_folder_to_frames(paths: Sequence[str], height: int, width: int,
                          quality: int = JPEG_QUALITY,
                          mode: str = 'auto') -> list[bytes]:
    """Reads and validates JPEG files; returns the bytes to store.

    The official loader resizes each original JPEG in memory (`GroupScale`).
    `mode` says where that happens here:

    - 'original': store the files' bytes; the pipeline resizes when loading;
    - 'resized': resize to height×width now and re-encode at `quality` (a
      second lossy generation);
    - 'auto': 'original' for frames no larger than height×width on either axis
      (loading enlarges them cheaply, within ±1 grey level of PIL), 'resized'
      for frames with an axis to shrink (PIL's antialiased shrink at load time
      cost 41-45 % of the pipeline's speed; docs/data.md#pipeline).

    Frames already at height×width are stored unchanged in every mode.
    """
    if mode not in JPEG_FRAMES:
        raise ValueError(f'jpeg_frames must be one of {JPEG_FRAMES}, got {mode!r}')
    out = []
    for path in paths:
        try:
            with open(path, 'rb') as f:
                data = f.read()
        except OSError as e:
            raise BadInputError(path, f'cannot read frame ({e.strerror})') from e
        frame = decode_jpeg(data, path)  # a corrupt frame fails the build, not training
        h, w = frame.shape[:2]
        keep = (mode == 'original' or (h, w) == (height, width)
                or (mode == 'auto' and h <= height and w <= width))
        out.append(data if keep else encode_jpeg(resize(frame, height, width), quality))
    return out


def _open(path_or_bytes: str | bytes, name: str):
    src = io.BytesIO(path_or_bytes) if isinstance(path_or_bytes, bytes) \
        else path_or_bytes
    try:
        container = av.open(src)
    except (av.FFmpegError, OSError) as e:
        raise BadInputError(name, f'cannot open video ({e})') from e
    if not container.streams.video:
        container.close()
        raise BadInputError(name, 'no video stream')
    return container


def _quarter_turns(frame) -> int:
    """Counter-clockwise quarter turns that show ``frame`` upright: the container's
    display matrix (phone videos are stored landscape with a 90° rotation)."""
    return int(round((getattr(frame, 'rotation', 0) or 0) / 90)) % 4


def upright_rgb(frame, width: int | None = None, height: int | None = None) -> np.ndarray:
    """``frame`` as uint8 RGB as it is displayed (display rotation applied), resized by
    swscale to ``height``×``width`` (after the rotation) when both are given."""
    k = _quarter_turns(frame)
    if width is None or height is None:
        rgb = frame.to_ndarray(format='rgb24')
    elif k % 2:   # decode at the transposed size: the rotation swaps it back
        rgb = frame.to_ndarray(format='rgb24', width=height, height=width)
    else:
        rgb = frame.to_ndarray(format='rgb24', width=width, height=height)
    return np.ascontiguousarray(np.rot90(rgb, k)) if k else rgb


def _expected_frames(container) -> int | None:
    """Frame count announced by the container header, if it has one."""
    stream = container.streams.video[0]
    if stream.frames:
        return int(stream.frames)
    rate = stream.average_rate or stream.guessed_rate
    if container.duration and rate:
        return int(round(container.duration / av.time_base * float(rate)))
    return None


def video_to_frames(path: str, height: int, width: int,
                    quality: int = JPEG_QUALITY) -> list[bytes]:
    """Decodes every frame of a video file, resized to height×width, as JPEG.

    Raises:
      BadInputError: if the file cannot be opened or decoded, has no frames,
        or decodes to clearly fewer frames than its header announces
        (a truncated download).
    """
    frames = []
    container = _open(path, path)
    with container:
        expected = _expected_frames(container)
        try:
            for frame in container.decode(video=0):
                rgb = upright_rgb(frame)
                frames.append(encode_jpeg(resize(rgb, height, width), quality))
        except av.FFmpegError as e:
            raise BadInputError(
                path, f'decoding failed after {len(frames)} frames ({e}); '
                'the file is corrupt or truncated') from e
    if not frames:
        raise BadInputError(path, 'video has no decodable frames')
    if expected and len(frames) < _MIN_DURATION_FRACTION * expected:
        raise BadInputError(
            path, f'truncated: header announces ~{expected} frames but only '
            f'{len(frames)} decode')
    return frames


def count_video_frames(path: str) -> int:
    """Decodes a video fully (validating it) and returns its frame count."""
    container = _open(path, path)
    with container:
        expected = _expected_frames(container)
        n = 0
        try:
            for _ in container.decode(video=0):
                n += 1
        except av.FFmpegError as e:
            raise BadInputError(path, f'decoding failed after {n} frames '
                                f'({e}); corrupt or truncated') from e
    if n == 0:
        raise BadInputError(path, 'video has no decodable frames')
    if expected and n < _MIN_DURATION_FRACTION * expected:
        raise BadInputError(path, f'truncated: header announces ~{expected} '
                            f'frames but only {n} decode')
    return n


def decode_frame_list(jpegs: Sequence[bytes], indices: Sequence[int],
                      name: str = '<record>') -> list[np.ndarray]:
    """Decodes only `jpegs[i]` for i in indices → uint8 `(H, W, 3)` frames.

    A frame sampled twice is decoded once; both positions hold the same array.
    """
    cache: dict[int, np.ndarray] = {}
    for i in indices:
        if i not in cache:
            cache[i] = decode_jpeg(jpegs[i], f'{name} frame {i}')
    return [cache[i] for i in indices]


def decode_video_frame_list(data: bytes, indices: Sequence[int], height: int,
                            width: int, name: str = '<video>') -> list[np.ndarray]:
    """Decodes a compressed video up to the last wanted frame.

    Inter-frame codecs must decode every frame up to the last one asked for,
    but only the sampled ones are converted to RGB and resized (by swscale).
    Indices past the end repeat the last decoded frame.
    """
    wanted = {int(i) for i in indices}
    last = max(wanted)
    got: dict[int, np.ndarray] = {}
    container = _open(data, name)
    with container:
        # Single-threaded on purpose: parallelism comes from grain workers.
        stream = container.streams.video[0]
        frame_i = -1
        for frame_i, frame in enumerate(container.decode(stream)):
            if frame_i in wanted:
                got[frame_i] = upright_rgb(frame, width, height)
            if frame_i >= last:
                break
    if not got:
        raise BadInputError(name, 'no frames decoded')
    fallback = got[max(got)]
    return [got.get(int(i), fallback) for i in indices]
