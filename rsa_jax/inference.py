"""Inference on a trained or converted model: loading, reading inputs, forward.

Used by ``rsa_jax.predict`` (CLI), ``rsa_jax.explain`` and ``rsa_jax.export``.

A checkpoint ``PATH`` is either

- a training workdir: ``config.json`` and ``checkpoints/<step>/state`` (the
  best step by validation top-1, else the latest), class names in
  ``class_names.json`` (written by training); or
- a converted orbax directory (``python -m rsa_jax.convert``): the arrays plus
  ``model_config.json``; class names in ``class_names.json`` if someone put
  one there, else numbered.

``--labels FILE`` (one name per line, or a JSON list) overrides either.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from rsa_jax.labels import CLASS_NAMES_FILE, read_labels

# Official evaluation input when a converted directory says nothing else
# (docs/method.md#official-conventions): 8 frames, 224² centre crop of 240×320.
_DEFAULT_DATA = dict(num_frames=8, image_size=224, height=240, width=320, storage="jpeg")


@dataclasses.dataclass
class LoadedModel:
    """A model ready for inference.

    Attributes:
      model: the Flax ``ResNetTSN``.
      variables: ``{'params', 'batch_stats'}`` as NumPy/JAX arrays.
      model_cfg: the plain model config dict (``build_model`` input).
      data: preprocessing settings: num_frames, image_size, height, width
        (stored frame size the pipeline resizes to first) and storage.
      class_names: one name per output logit.
      source: the checkpoint path (and step for a workdir).
    """
    model: Any
    variables: dict
    model_cfg: dict
    data: dict
    class_names: list[str]
    source: str


def stored_frame_format(data_cfg: dict | None) -> dict:
    """The dataset's builder config (``builder_config``: how raw videos become
    records) and its height / width / storage; official 240×320 JPEG frames for
    converted checkpoints and unknown builders. Needs no data."""
    import tensorflow_datasets as tfds

    from rsa_jax.data import builders  # noqa: F401  (registers the builders)
    from rsa_jax.data.builders import base
    found = base.VideoConfig(name="default")
    if data_cfg:
        try:
            cls = tfds.builder_cls(data_cfg["name"])
        except ValueError:  # DatasetNotFoundError: an unknown builder
            cls = None
        wanted = data_cfg.get("builder_config") or getattr(cls, "DEFAULT_CONFIG_NAME", None)
        for cfg in getattr(cls, "BUILDER_CONFIGS", None) or []:
            if cfg.name == wanted and isinstance(cfg, base.VideoConfig):
                found = cfg
    return dict(builder_config=found, height=found.height, width=found.width,
                storage=found.storage)


def _class_names(directory: str, labels: str | None, num_classes: int,
                 data_cfg: dict | None) -> list[str]:
    if labels:
        names = read_labels(labels)
        where = labels
    elif os.path.isfile(os.path.join(directory, CLASS_NAMES_FILE)):
        where = os.path.join(directory, CLASS_NAMES_FILE)
        names = read_labels(where)
    else:
        names = _dataset_names(data_cfg) if data_cfg else None
        where = "the dataset"
        if names is None:
            return [f"class_{i}" for i in range(num_classes)]
    if len(names) != num_classes:
        raise ValueError(f"{where}: {len(names)} class names but the model has "
                         f"{num_classes} outputs")
    return names


def _dataset_names(data_cfg: dict) -> list[str] | None:
    """Names from a built TFDS dataset (workdirs trained before class_names.json)."""
    try:
        import ml_collections

        from rsa_jax.data import pipeline
        return pipeline.class_names(ml_collections.ConfigDict(data_cfg))
    except (FileNotFoundError, ValueError, KeyError):  # not built here: numbered names
        return None


def _restore_workdir_state(ckpt_dir: str) -> tuple[dict, int]:
    import orbax.checkpoint as ocp

    from rsa_jax.train.checkpoint import Checkpointer
    ckpt = Checkpointer(ckpt_dir, read_only=True)
    step = ckpt.best_or_latest_step()
    if step is None:
        raise FileNotFoundError(f"{ckpt_dir}: no checkpoint steps")
    out = ckpt.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore()))
    ckpt.manager.close()
    return out["state"], step


def load_for_cli(args) -> LoadedModel | None:
    """`load` with a command line's ``--checkpoint/--labels/--frames/--image_size``;
    prints ``error: reason`` on stderr and returns None when it cannot."""
    try:
        return load(args.checkpoint, labels=args.labels, num_frames=args.frames,
                    image_size=args.image_size)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return None


def load(path: str, labels: str | None = None, num_frames: int | None = None,
         image_size: int | None = None) -> LoadedModel:
    """Loads a training workdir or a converted orbax directory (see module doc).

    Raises:
      FileNotFoundError: PATH is neither (names the files looked for).
    """
    from rsa_jax.models import build_model
    path = os.path.abspath(path)
    data = dict(_DEFAULT_DATA, **stored_frame_format(None))
    data_cfg = None
    if os.path.isfile(os.path.join(path, "config.json")):
        with open(os.path.join(path, "config.json")) as f:
            config = json.load(f)
        model_cfg = config["model"]
        data_cfg = config["data"]
        data.update(num_frames=data_cfg["num_frames"], image_size=data_cfg["image_size"])
        data.update(stored_frame_format(data_cfg))
        state, step = _restore_workdir_state(os.path.join(path, "checkpoints"))
        variables = {"params": state["params"], "batch_stats": state.get("batch_stats", {})}
        source = f"{path} (step {step})"
    elif os.path.isfile(os.path.join(path, "model_config.json")):
        import orbax.checkpoint as ocp
        with open(os.path.join(path, "model_config.json")) as f:
            model_cfg = json.load(f)
        conv = os.path.join(path, "conversion.json")
        info = {}
        if os.path.isfile(conv):
            with open(conv) as f:
                info = json.load(f)
            segments = info.get("num_segments")
            if segments:
                data["num_frames"] = int(segments)
        restored = ocp.StandardCheckpointer().restore(path)
        if info.get("kind") == "torchvision" or "new_fc" not in restored.get("params", {}):
            raise ValueError(
                f"{path}: a partial backbone (ImageNet weights from `rsa_jax.convert "
                "torchvision`: no classifier, RSA blocks left to their fresh init), not a "
                "model that classifies; train from it with --config.init_from="
                f"{path}, then use the run's workdir here")
        variables = {"params": restored["params"],
                     "batch_stats": restored.get("batch_stats", {})}
        source = path
    else:
        raise FileNotFoundError(f"{path}: not a training workdir (config.json + checkpoints/) "
                                "nor a converted checkpoint (model_config.json)")
    if num_frames:
        data["num_frames"] = int(num_frames)
    if image_size:
        data["image_size"] = int(image_size)
    variables = {k: _as_numpy(v) for k, v in variables.items()}
    model = build_model(model_cfg)
    names = _class_names(path, labels, model.num_classes, data_cfg)
    return LoadedModel(model, variables, dict(model_cfg), data, names, source)


def _as_numpy(tree: Any) -> Any:
    import jax
    return jax.tree_util.tree_map(np.asarray, tree)


# --- inputs -------------------------------------------------------------------

JPEG_SUFFIXES = (".jpg", ".jpeg")


@dataclasses.dataclass
class VideoInput:
    """One decoded input: a record as the TFDS builders store it, its rate and, for
    a video file, each frame's presentation time in seconds from the first frame."""
    name: str
    record: dict
    fps: float | None
    times: np.ndarray | None = None


def _natural_key(name: str) -> list:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def read_input(path: str, data: dict, keep_video: bool = True) -> VideoInput:
    """Reads a video file or a folder of JPEG frames into a builder-style record.

    The record is made by the builders' own functions (``base.video_example`` /
    ``base.jpeg_folder_example``) with the dataset's builder config, so frames
    are resized and stored exactly as in the dataset; ``keep_video=False``
    forces a frame list (needed for windows) when the dataset keeps videos.

    Raises:
      BadInputError: missing path, not a video, no frames, unreadable frames.
    """
    from rsa_jax.data import decode
    from rsa_jax.data.builders import base
    cfg = data["builder_config"]
    if os.path.isdir(path):
        try:
            names = sorted((n for n in os.listdir(path)
                            if n.lower().endswith(JPEG_SUFFIXES)), key=_natural_key)
        except OSError as e:
            raise decode.BadInputError(path, f"cannot list folder ({e.strerror})") from e
        if not names:
            raise decode.BadInputError(path, "folder has no JPEG frames (*.jpg, *.jpeg)")
        record = base.jpeg_folder_example([os.path.join(path, n) for n in names], path, 0,
                                          "", cfg)
        return VideoInput(path, record, None)
    if not os.path.exists(path):
        raise decode.BadInputError(path, "file not found")
    fps = _video_fps(path)
    if not keep_video and cfg.storage == "video":
        cfg = dataclasses.replace(cfg, storage="jpeg")
    record = base.video_example(path, path, 0, "", cfg)
    return VideoInput(path, record, fps, _frame_times(path, int(record["num_frames"])))


def _frame_times(path: str, num_frames: int) -> np.ndarray | None:
    """Presentation times (s, first frame at 0) of the video's frames from its packets'
    timestamps (sorted: B-frames come out of order); None when they do not account
    for every decoded frame (then windows fall back to index / average rate)."""
    import av
    try:
        with av.open(path) as c:
            stream = c.streams.video[0]
            pts = sorted(p.pts for p in c.demux(stream) if p.pts is not None and p.size)
            base = stream.time_base
    except (av.FFmpegError, OSError, IndexError):
        return None
    if len(pts) != num_frames or base is None or len(set(pts)) != len(pts):
        return None
    t = np.asarray(pts, np.float64) * float(base)
    return t - t[0]


def _video_fps(path: str) -> float | None:
    import av

    from rsa_jax.data import decode
    try:
        with av.open(path) as c:
            if not c.streams.video:
                raise decode.BadInputError(path, "no video stream")
            rate = c.streams.video[0].average_rate or c.streams.video[0].guessed_rate
            return float(rate) if rate else None
    except (av.FFmpegError, OSError) as e:
        raise decode.BadInputError(path, f"not a readable video ({e})") from e


def windows(video: VideoInput, window_s: float, stride_s: float,
            default_fps: float) -> list[tuple[float, float, dict]]:
    """Splits a frame-list record into (start_s, end_s, record) windows of time.

    Frame times are the video's timestamps (variable frame rates included), else
    index / rate (``default_fps`` for JPEG folders). A window holds the frames
    whose time falls in [start, end); the last window ends where the video does
    (last frame time + its duration); a video shorter than one window is one window.

    Raises:
      ValueError: a window or stride that is not > 0, or a record without frames.
    """
    if not window_s > 0 or not stride_s > 0:
        raise ValueError(f"--window_s ({window_s}) and --stride_s ({stride_s}) must be > 0")
    rec = video.record
    if "frames" not in rec:
        raise ValueError("windows need a frame-list record (read_input keep_video=False)")
    n = rec["num_frames"]
    fps = video.fps or default_fps
    times = video.times if video.times is not None and len(video.times) == n \
        else np.arange(n) / fps
    last = float(times[-1] - times[-2]) if n > 1 else 1.0 / fps
    end = float(times[-1]) + last
    eps = 1e-6 * max(end, 1.0)
    starts = [0.0]
    while starts[-1] + stride_s + window_s <= end + eps:
        starts.append(starts[-1] + stride_s)
    if starts[-1] + window_s < end - eps:
        starts.append(end - window_s)
    out = []
    for a in starts:
        b = min(a + window_s, end)
        idx = np.flatnonzero((times >= a - eps) & (times < b - eps))
        if len(idx) == 0:   # a window between two frames: the frame shown then
            idx = np.array([max(0, int(np.searchsorted(times, a, side="right")) - 1)])
        lo, hi = int(idx[0]), int(idx[-1]) + 1
        out.append((a, b, dict(rec, frames=rec["frames"][lo:hi], num_frames=hi - lo)))
    return out


def views_of(record: dict, data: dict, num_clips: int = 1,
             num_crops: int = 1) -> np.ndarray:
    """Evaluation views of a record: float32 (V, T, S, S, 3), V = clips · crops.

    Runs the evaluation pipeline's own transform (``pipeline.EvalTransform``, the
    code of ``--mode eval`` / ``--mode test``): same frame sampling, centre or
    three crops, resize and ImageNet normalisation. 1×1 is exactly ``eval``.
    """
    from rsa_jax.data import pipeline
    spec = pipeline.ClipSpec(num_frames=data["num_frames"], image_size=data["image_size"],
                             height=data["height"], width=data["width"], flip=False,
                             num_clips=num_clips, num_crops=num_crops)
    loader = pipeline.ClipLoader([record], spec)
    return pipeline.EvalTransform(loader, test=True).map(0)["video"]


# --- forward ------------------------------------------------------------------

def make_forward(loaded: LoadedModel, return_features: bool = False):
    """jitted ``forward(variables, video)``: the evaluation step's view averaging
    (``step.eval_step``) on (B, V, T, S, S, 3) float32 input -> (B, C) logits;
    with ``return_features`` also the per-frame logits (B, V, T, C)."""
    import jax

    from rsa_jax.train import step as step_lib

    def forward(variables, video):
        state = step_lib.TrainState(step=0, apply_fn=loaded.model.apply,
                                    params=variables["params"], tx=None, opt_state=None,
                                    batch_stats=variables["batch_stats"], rng=None)
        logits = step_lib.eval_step(state, video)
        if not return_features:
            return logits
        b, v = video.shape[:2]
        _, feats = loaded.model.apply(variables, video.reshape((-1,) + video.shape[2:]),
                                      train=False, return_features=True)
        frame = feats["frame_logits"]
        return logits, frame.reshape((b, v) + frame.shape[1:])

    return jax.jit(forward)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def top_k(logits: np.ndarray, names: Sequence[str], k: int) -> list[dict]:
    """[{'label', 'index', 'prob'}] of the k most probable classes of one row."""
    probs = softmax(np.asarray(logits, np.float64))
    order = np.argsort(-probs, kind="stable")[:k]
    return [{"label": names[i], "index": int(i), "prob": float(probs[i])} for i in order]
