"""benchmarks/device_suite.py --smoke runs every part on CPU and records each as it goes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_device_suite_smoke(tmp_path):
    env = dict(os.environ, XLA_FLAGS="")  # one CPU device, as on a real host
    r = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "device_suite.py"),
                        "--smoke", "--out_dir", str(tmp_path)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((tmp_path / "smoke_cpu.json").read_text())["records"]
    lines = [json.loads(ln) for ln in (tmp_path / "smoke_cpu.jsonl").read_text().splitlines()]
    assert lines == summary  # every record was appended as it came
    parts = [rec["part"] for rec in summary]
    assert parts[0] == "host" and parts[-1] == "done"
    layer = [rec for rec in summary if rec["part"] == "layer"]
    # Every implementation/strategy variant in both dtypes, each timed.
    assert {(rec["dtype"], rec["variant"]) for rec in layer} == {
        (d, v) for d in ("float32", "bfloat16")
        for v in ("conv/auto", "conv/native", "conv/taps2d", "patches/lax", "patches/stack")}
    assert all(rec["fwd_bwd_ms"] > 0 for rec in layer)
    tune = [rec for rec in summary if rec["part"] == "autotune"]
    assert [rec["dtype"] for rec in tune] == ["float32"]    # bfloat16 too without --smoke
    for rec in tune:  # every RSA layer shape of the train model, every candidate timed
        assert len(rec["table"]) == 2
        for e in rec["table"].values():
            assert set(e["fwd_bwd_ms"]) == set(rec["candidates"])
            assert e["fwd_bwd_ms"][e["choice"]] == min(e["fwd_bwd_ms"].values())
    train = [rec for rec in summary if rec["part"] == "train"]
    assert [rec["batch"] for rec in train] == [1, 2]  # --smoke caps the sweep at 2
    for rec in train:
        assert rec["clips_per_s"] > 0 and rec["temp_gib"] > 0 and 0 < rec["mfu"] < 1
    remat = [rec for rec in summary if rec["part"] == "remat"]
    assert [(rec["remat"], rec["batch"]) for rec in remat] == [("rsa", 2), ("block", 2)]
    pipe = [rec for rec in summary if rec["part"] == "pipeline"]
    assert {rec["loader"] for rec in pipe} == {"jpeg", "jpeg_uint8"}
    assert all(rec["clips_per_s_host"] > 0 for rec in pipe)
    # The Markdown table closes the output: one row per train/remat/layer/pipeline record.
    rows = [ln for ln in r.stdout.splitlines() if ln.startswith("| ") and "---" not in ln]
    assert len(rows) == 3 + len(train) + len(remat) + len(layer) + len(pipe)
