"""What the entry points print when stderr is a log file, not a terminal
(docs/reliability.md#where-time-goes): a FATAL line alone, without TensorFlow's oneDNN
notice before it; no TFDS progress bars; the flag the user typed named in the message."""

from __future__ import annotations

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Runs a module as `python -m` does, noting the TF_* variables at the moment
# TensorFlow is first imported (the C++ runtime reads them then, once).
_RUN_RECORDING_TF_ENV = """
import importlib.abc, json, os, runpy, sys
out, module = sys.argv[1], sys.argv[2]
class Hook(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "tensorflow" and not os.path.exists(out):
            with open(out, "w") as f:
                json.dump({k: os.environ.get(k) for k in
                           ("TF_CPP_MIN_LOG_LEVEL", "TF_ENABLE_ONEDNN_OPTS")}, f)
        return None
sys.meta_path.insert(0, Hook())
sys.argv = [module] + sys.argv[3:]
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""


def _run(module: str, args: list[str], record: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TF_")}
    env.update(PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-c", _RUN_RECORDING_TF_ENV, record, module, *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_main_fatal_is_alone_and_tf_is_imported_without_onednn_notices(tmp_path):
    """TF 2.21 logs "oneDNN custom operations are on" (2 lines, twice) through absl before
    TF_CPP_MIN_LOG_LEVEL filters anything; where oneDNN is on by default (Intel CPUs)
    only TF_ENABLE_ONEDNN_OPTS=0, set before TensorFlow is imported, keeps it away."""
    record = str(tmp_path / "env.json")
    r = _run("rsa_jax.main", ["--config", "configs/ssv2.py", "--workdir",
                              str(tmp_path / "w")], record)
    assert r.returncode == 1
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("FATAL: ") and "torchvision_init" in lines[0]
    with open(record) as f:
        assert json.load(f) == {"TF_CPP_MIN_LOG_LEVEL": "1", "TF_ENABLE_ONEDNN_OPTS": "0"}


def test_data_prepare_names_the_flag_the_user_typed(tmp_path):
    record = str(tmp_path / "env.json")
    base = ["prepare", "--config", "configs/ssv2.py", "--data_dir", str(tmp_path / "tfds")]
    r = _run("rsa_jax.data", [*base, "--manual_dir", "/nonexistent"], record)
    assert r.returncode == 1 and r.stderr.startswith("FATAL: "), r.stderr
    assert "--manual_dir '/nonexistent' is not a directory" in r.stderr.splitlines()[0]
    assert "--config.data.manual_dir" not in r.stderr
    with open(record) as f:
        assert json.load(f) == {"TF_CPP_MIN_LOG_LEVEL": "1", "TF_ENABLE_ONEDNN_OPTS": "0"}
    os.remove(record)
    r = _run("rsa_jax.data", [*base, "--config.data.manual_dir=/nonexistent"], record)
    assert r.returncode == 1
    assert "--config.data.manual_dir '/nonexistent' is not a directory" in r.stderr


def test_prepare_draws_no_progress_bars_into_a_log(tmp_path):
    """stderr to a pipe: neither TFDS's bars ("Generating splits", "Shuffling") nor ours."""
    r = _run("rsa_jax.data", ["prepare", "--config", "configs/synthetic.py", "--builder_config",
                              "tiny", "--data_dir", str(tmp_path / "tfds")],
             str(tmp_path / "env.json"))
    assert r.returncode == 0, r.stderr
    assert "synthetic_motion" in r.stdout                 # the closing summary line
    for bar in ("Generating", "Shuffling", "examples/s", "%|", "\r"):
        assert bar not in r.stderr, r.stderr
