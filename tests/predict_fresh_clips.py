"""Checks ``predict`` on clips the model has never seen (not in the dataset).

    python tests/predict_fresh_clips.py --workdir /tmp/rsa_synth [--generate 64] [--out DIR]

Renders ``--generate`` new clips with the synthetic_motion builder's own
generator (``render_clip``, 16 frames of 64×80 as the 'default' config) from
a seed no dataset split uses, writes each as a folder of JPEG frames (the
builder's storage), runs ``python -m rsa_jax.predict --json`` on all of them
and prints one JSON line: top-1 accuracy and whether every printed class name
is the synthetic dataset's name for its index. Exit code 0 when the accuracy
is >= ``--min_acc`` (default 0.9) and the names are right, else 1.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
from contextlib import redirect_stdout

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from rsa_jax import predict
from rsa_jax.data import decode
from rsa_jax.data.builders import synthetic_motion as sm

FRESH_SPLIT_CODE = 7  # the builder uses 0 (train) and 1 (validation)


def generate(out: str, n: int, seed: int = 0, frames: int = 16, height: int = 64,
             width: int = 80) -> list[tuple[str, int]]:
    """Writes n fresh clips (labels cycling over the 8 classes); returns (folder, label)."""
    clips = []
    for i in range(n):
        label = i % len(sm.CLASS_NAMES)
        rng = np.random.default_rng([seed, FRESH_SPLIT_CODE, i])
        clip = sm.render_clip(label, frames, height, width, rng)
        folder = os.path.join(out, f"fresh_{i:04d}")
        os.makedirs(folder, exist_ok=True)
        for t, frame in enumerate(clip):
            with open(os.path.join(folder, f"{t + 1:05d}.jpg"), "wb") as f:
                f.write(decode.encode_jpeg(frame))
        clips.append((folder, label))
    return clips


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdir", required=True, help="the synthetic demo's workdir")
    p.add_argument("--generate", type=int, default=64, help="number of fresh clips")
    p.add_argument("--seed", type=int, default=2026)
    p.add_argument("--out", default=None, help="keep the clips here (default: a temp dir)")
    p.add_argument("--min_acc", type=float, default=0.9)
    args = p.parse_args(argv)
    out = args.out or tempfile.mkdtemp(prefix="rsa_fresh_")
    clips = generate(out, args.generate, args.seed)
    buf = io.StringIO()
    with redirect_stdout(buf):
        rc = predict.main(["--checkpoint", args.workdir, "--json", "--top_k", "1"]
                          + [c for c, _ in clips])
    lines = [json.loads(line) for line in buf.getvalue().splitlines() if line.startswith("{")]
    results = {r["input"]: r["top_k"][0] for r in lines if "input" in r}
    correct = sum(results[c]["index"] == y for c, y in clips if c in results)
    names_ok = all(r["label"] == sm.CLASS_NAMES[r["index"]] for r in results.values())
    acc = correct / len(clips)
    bench = next((r["benchmark"] for r in lines if "benchmark" in r), None)
    print(json.dumps({"clips": len(clips), "predicted": len(results), "top1": acc,
                      "names_ok": names_ok, "predict_rc": rc, "clips_dir": out,
                      "benchmark": bench}))
    return 0 if rc == 0 and names_ok and acc >= args.min_acc else 1


if __name__ == "__main__":
    sys.exit(main())
