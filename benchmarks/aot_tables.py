"""Compiles the RESULTS.md TPU tables with `rsa_jax.aot` and renders them.

    python benchmarks/aot_tables.py run [--only NAME ...]    # append JSON lines
    python benchmarks/aot_tables.py table                    # markdown from them

``run`` compiles the train step of every row below that is not yet in ``aot.jsonl``
of the results folder beside this script (one JSON line per compile,
`rsa_jax.aot.summary` plus the row's name), in the order listed, so an interrupted
run resumes where it stopped.  A full RSA-R50 compile at 16×224² takes ~25 minutes on
2 idle CPU cores (72 minutes on a loaded VM, RESULTS.md).

Rows are per clip: one chip, per-chip batch 1, ``bn_group_clips = 0`` (a batch of one
clip has no group of 8; batch-norm grouping does not change the buffers).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "aot.jsonl")
SSV2_TRAIN_CLIPS = 168_913        # Something-Something v2 train videos (one clip each)


def _row(name, topology, frames=16, remat="none", backbone="rsa", size=224):
    return dict(name=name, topology=topology, frames=frames, remat=remat, backbone=backbone,
                size=size)


# Priority order: what the other rows are compared with comes first.
ROWS = [
    _row("v5e-16f-none", "v5e:1x1"),
    _row("v5e-16f-block", "v5e:1x1", remat="block"),
    _row("v5e-16f-tsn2d", "v5e:1x1", backbone="tsn2d"),
    _row("v5e-16f-rsa", "v5e:1x1", remat="rsa"),
    _row("v5p-16f-none", "v5p:1x1x1"),
    _row("v6e-16f-none", "v6e:1x1"),
    _row("v4-16f-none", "v4:1x1x1"),
    _row("v5e-8f-none", "v5e:1x1", frames=8),
    _row("v5e-8f-block", "v5e:1x1", frames=8, remat="block"),
]


def config_for(row: dict):
    import configs.ssv2 as ssv2
    c = ssv2.get_config(str(row["frames"]))
    c.data.image_size = row["size"]
    c.model.dtype = "bfloat16"
    c.model.remat = row["remat"]
    c.model.backbone = row["backbone"]
    c.model.bn_group_clips = 0
    return c


def run(only: list[str]) -> None:
    from rsa_jax import aot
    aot.set_compile_only_env()
    done = set()
    if os.path.exists(OUT):
        with open(OUT) as f:
            done = {json.loads(line)["name"] for line in f if line.strip()}
    for row in ROWS:
        if row["name"] in done or (only and row["name"] not in only):
            continue
        pcb = 2 if row["topology"].startswith("v4") else 1   # 2 TensorCores per v4 chip
        try:
            out = aot.run(config_for(row), row["topology"], per_chip_batch=pcb)
        except aot.AotError as e:
            out = {"error": str(e)}
        out["name"] = row["name"]
        print(json.dumps(out, sort_keys=True), flush=True)
        with open(OUT, "a") as f:
            f.write(json.dumps(out, sort_keys=True) + "\n")


def table() -> None:
    from rsa_jax import chips
    with open(OUT) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    print("| row | chip | frames | backbone | remat | temporaries / clip | HBM total (batch) "
          "| GFLOP / clip | GB / clip | FLOP/byte | roofline ms / clip | clips/s per chip "
          "| batch that fits (linear estimate) | compile s |")
    print("|---" * 14 + "|")
    for r in rows:
        if "error" in r:
            print(f"| {r['name']} | {r['error']} |" + " |" * 12)
            continue
        b = r["per_chip_batch"]
        cap = chips.by_name(r["chip"]).hbm_bytes
        fixed = r["hbm"]["total"] - r["hbm"]["temporaries"]
        est = int((cap - fixed) // r["temp_per_clip"]) if r["temp_per_clip"] else "-"
        print(f"| {r['name']} | {r['chip']} | {r['frames']} | {r['backbone']} | {r['remat']} "
              f"| {r['temp_per_clip'] / 2**30:.2f} GiB | {r['hbm']['total'] / 2**30:.2f} GiB "
              f"({b}) | {r['flops'] / b / 1e9:.0f} | {r['hbm_bytes'] / b / 1e9:.1f} "
              f"| {r['intensity']:.1f} | {1e3 * r['roofline_s'] / b:.1f} "
              f"| {r['clips_per_s_chip']:.1f} | {est} | {r['compile_s']:.0f} |")
    print(f"\nSSv2 epoch ({SSV2_TRAIN_CLIPS} clips) at the roofline, per chip: "
          + ", ".join(f"{r['name']} {SSV2_TRAIN_CLIPS / r['clips_per_s_chip'] / 60:.0f} min"
                      for r in rows if "error" not in r))


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=["run", "table"])
    p.add_argument("--only", nargs="*", default=[])
    a = p.parse_args()
    run(a.only) if a.what == "run" else table()
