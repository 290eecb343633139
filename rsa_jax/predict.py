"""Classify videos with a trained or converted model.

    python -m rsa_jax.predict --checkpoint PATH [--top_k 5] [--json] [--views 1x1]
        [--window_s S --stride_s S] [--explain OUT_DIR] INPUT...

``PATH`` is a training workdir or a ``python -m rsa_jax.convert`` directory
(``rsa_jax.inference.load``). ``INPUT`` is a video file PyAV decodes, a
folder of JPEG frames, or ``-`` for paths on stdin, one per line.
Preprocessing is the evaluation pipeline's own transform, so ``--views 1x1``
reproduces ``--mode eval`` and ``--views 2x3`` ``--mode test`` with 2 clips ×
3 crops. Clips are batched across inputs and the model compiles once (all
clips have one shape; the last batch is padded). A bad input prints one line
``error: INPUT: reason`` on stderr, the others still run, and the exit code
is 1. See docs/using.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections.abc import Iterator, Sequence

import numpy as np

from rsa_jax import inference


def _parse_views(text: str) -> tuple[int, int]:
    try:
        clips, crops = (int(v) for v in text.lower().split("x"))
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"--views wants CLIPSxCROPS such as 2x3, got {text!r}") \
            from e
    if clips < 1 or crops not in (1, 3):
        raise argparse.ArgumentTypeError(f"--views {text}: clips >= 1 and crops 1 or 3")
    return clips, crops


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m rsa_jax.predict", description=__doc__.split(
        "\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="video files, JPEG-frame folders, or - (paths on stdin)")
    p.add_argument("--checkpoint", required=True, help="training workdir or converted dir")
    p.add_argument("--labels", default=None, help="class names: JSON list or one per line")
    p.add_argument("--top_k", type=int, default=5)
    p.add_argument("--json", action="store_true", help="one JSON object per input")
    p.add_argument("--views", type=_parse_views, default=(1, 1), metavar="CLIPSxCROPS",
                   help="1x1 = --mode eval (default); e.g. 2x3 = 2 clips × 3 crops")
    p.add_argument("--frames", type=int, default=None, help="override the frame count")
    p.add_argument("--image_size", type=int, default=None, help="override the crop size")
    p.add_argument("--window_s", type=float, default=None,
                   help="one prediction per window of this many seconds (a timeline)")
    p.add_argument("--stride_s", type=float, default=None, help="window stride (default: window)")
    p.add_argument("--fps", type=float, default=25.0,
                   help="frame rate of JPEG folders (for --window_s)")
    p.add_argument("--batch_size", type=int, default=8, help="clips per forward pass")
    p.add_argument("--benchmark", action="store_true", help="print a clips/s line at the end")
    p.add_argument("--explain", default=None, metavar="OUT_DIR",
                   help="write kernel and per-frame evidence PNGs per input")
    p.add_argument("--explain_layer", default=None,
                   help="RSA block to draw, e.g. layer4_1 (default: the first, whose "
                        "grid is finest: layer1_1 in the demo net)")
    p.add_argument("--explain_at", default=None, metavar="t,y,x",
                   help="query position in the layer's grid (default: strongest output)")
    p.add_argument("--explain_heads", default=None, metavar="h,h,...",
                   help="heads to draw, e.g. 0,1,2,3 (default: every head of the layer)")
    return p


def _expand_inputs(inputs: Sequence[str]) -> list[str]:
    out = []
    for item in inputs:
        if item == "-":
            out.extend(line.strip() for line in sys.stdin if line.strip())
        else:
            out.append(item)
    return out


class _Batcher:
    """Collects clips of many inputs and runs them in fixed-size batches."""

    def __init__(self, forward, variables, batch_size: int):
        self.forward, self.variables, self.batch_size = forward, variables, batch_size
        self.pending: list[tuple[int, np.ndarray]] = []
        self.results: dict[int, np.ndarray] = {}
        self.model_s, self.model_clips, self.first_s = 0.0, 0, None

    def add(self, key: int, views: np.ndarray) -> None:
        self.pending.append((key, views))
        if len(self.pending) == self.batch_size:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        x = np.stack([v for _, v in self.pending])
        n = len(x)
        if n < self.batch_size:  # same shape every call: one compilation
            x = np.concatenate([x, np.zeros((self.batch_size - n,) + x.shape[1:], x.dtype)])
        t0 = time.perf_counter()
        logits = np.asarray(self.forward(self.variables, x))
        dt = time.perf_counter() - t0
        if self.first_s is None:
            self.first_s = dt  # includes compilation
        else:
            self.model_s += dt
            self.model_clips += n
        for (key, _), row in zip(self.pending, logits[:n]):
            self.results[key] = row
        self.pending = []


def _jobs(paths, loaded, args, errors) -> Iterator[tuple[int, str, dict, list]]:
    """(input id, path, input info, [(start, end, record)]) per readable input."""
    from rsa_jax.data.decode import BadInputError
    for i, path in enumerate(paths):
        try:
            video = inference.read_input(path, loaded.data, keep_video=not args.window_s)
        except (BadInputError, OSError) as e:
            errors.append((i, path, str(e)))
            msg = str(e) if str(e).startswith(f"{path}: ") else f"{path}: {e}"
            print(f"error: {msg}", file=sys.stderr, flush=True)
            continue
        info = {"input": path, "num_frames": int(video.record["num_frames"])}
        if args.window_s:
            parts = inference.windows(video, args.window_s, args.stride_s or args.window_s,
                                      args.fps)
        else:
            parts = [(None, None, video.record)]
        yield i, video, info, parts


def _emit(info: dict, preds: list[tuple], names, args) -> None:
    if args.window_s:
        windows = [{"start_s": round(a, 3), "end_s": round(b, 3),
                    "top_k": inference.top_k(row, names, args.top_k)} for a, b, row in preds]
        clip = np.mean([row for _, _, row in preds], axis=0)
        out = dict(info, top_k=inference.top_k(clip, names, args.top_k), windows=windows)
    else:
        out = dict(info, top_k=inference.top_k(preds[0][2], names, args.top_k))
    if args.json:
        print(json.dumps(out), flush=True)
        return
    print(f"{info['input']} ({info['num_frames']} frames)")
    for t in out["top_k"]:
        print(f"  {t['prob']:6.3f}  {t['label']}")
    for w in out.get("windows", []):
        best = w["top_k"][0]
        print(f"  [{w['start_s']:7.2f}-{w['end_s']:7.2f} s] {best['prob']:6.3f}  {best['label']}")
    sys.stdout.flush()


def run(args: argparse.Namespace) -> int:
    """Runs the CLI; returns the exit code (0 ok, 1 some inputs failed, 2 setup error)."""
    loaded = inference.load_for_cli(args)
    if loaded is None:
        return 2
    if args.explain:   # before any prediction: a typo must not cost the whole run
        from rsa_jax import explain
        try:
            explain.check_request(loaded.model, args.explain_layer, _heads(args))
        except ValueError as e:
            print(f"error: --explain: {e}", file=sys.stderr)
            return 2
    paths = _expand_inputs(args.inputs)
    forward = inference.make_forward(loaded)
    batcher = _Batcher(forward, loaded.variables, args.batch_size)
    errors: list = []
    open_jobs: list = []  # (info, parts, first key) in input order, printed when complete
    key, clips, t_start = 0, 0, time.perf_counter()
    explained = []

    def drain(final: bool = False) -> None:
        if final:
            batcher.flush()
        while open_jobs and all(k in batcher.results for k in open_jobs[0][2]):
            info, parts, keys = open_jobs.pop(0)
            preds = [(a, b, batcher.results.pop(k)) for (a, b, _), k in zip(parts, keys)]
            _emit(info, preds, loaded.class_names, args)

    for _, video, info, parts in _jobs(paths, loaded, args, errors):
        keys = []
        for _, _, record in parts:
            batcher.add(key, inference.views_of(record, loaded.data, *args.views))
            keys.append(key)
            key += 1
        clips += len(keys)
        open_jobs.append((info, parts, keys))
        if args.explain:
            explained.append(video)
        drain()
    drain(final=True)
    total_s = time.perf_counter() - t_start
    if args.benchmark or args.json:
        bench = {"clips": clips, "views_per_clip": args.views[0] * args.views[1],
                 "batch_size": args.batch_size, "seconds": round(total_s, 3),
                 "clips_per_s": round(clips / total_s, 3) if total_s else None,
                 "first_batch_s": None if batcher.first_s is None else round(batcher.first_s, 3),
                 "model_clips_per_s": round(batcher.model_clips / batcher.model_s, 3)
                 if batcher.model_s else None}
        print(json.dumps({"benchmark": bench}), flush=True)
    if args.explain:
        from rsa_jax import explain
        at = tuple(int(v) for v in args.explain_at.split(",")) if args.explain_at else None
        heads = _heads(args)
        for video in explained:
            try:
                paths = explain.explain(loaded, video, args.explain, layer=args.explain_layer,
                                        at=at, heads=heads)
            except ValueError as e:     # a layer or head the model does not have
                print(f"error: --explain: {e}", file=sys.stderr)
                return 2
            for path in paths:
                print(f"wrote {path}", file=sys.stderr)
    return 1 if errors else 0


def _heads(args: argparse.Namespace) -> list[int] | None:
    return [int(h) for h in args.explain_heads.split(",")] if args.explain_heads else None


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.window_s is not None and not args.window_s > 0:
        print(f"error: --window_s must be > 0 seconds, got {args.window_s:g}", file=sys.stderr)
        return 2
    if args.stride_s is not None and not (args.stride_s > 0 and args.window_s):
        print(f"error: --stride_s must be > 0 seconds and needs --window_s, got "
              f"{args.stride_s:g}", file=sys.stderr)
        return 2
    if args.explain_heads and not re.fullmatch(r"\d+(,\d+)*", args.explain_heads):
        print(f"error: --explain_heads takes head numbers like 0,1,2, got {args.explain_heads!r}",
              file=sys.stderr)
        return 2
    if args.top_k < 1 or args.batch_size < 1:
        print("error: --top_k and --batch_size must be >= 1", file=sys.stderr)
        return 2
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
