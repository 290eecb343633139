"""A tiny training run (configs/synthetic.py:tiny), in this process or as two real
``python -m rsa_jax.main`` processes on 127.0.0.1 (the harness of
tests/test_multihost_train.py and tests/test_preemption.py).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import ml_collections
import portpicker
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT_S = 600   # per two-process run; ~1 min idle, several on a loaded 2-core CI runner
# The two-process runs: 6 steps, every step logged, a checkpoint every 2, no evaluation.
MULTIHOST_STEPS = 6
MULTIHOST_OVERRIDES = {
    "num_train_steps": MULTIHOST_STEPS, "log_every_steps": 1, "eval_every_epochs": 100,
    "checkpoint_every_steps": 2, "keep_checkpoints": 5,
}
# The config file the processes load (``--config=<dir>/tiny_config.py``).
CONFIG_PY = """
import configs.synthetic as synthetic

def get_config():
    c = synthetic.get_config("tiny")
    c.update_from_flattened_dict({overrides!r})
    return c
"""


def tiny_config(data_dir: str, **overrides) -> ml_collections.ConfigDict:
    """configs/synthetic.py:tiny with its data in ``data_dir``; ``overrides`` are
    top-level fields (``num_train_steps=6``)."""
    import configs.synthetic as synthetic
    c = synthetic.get_config("tiny")
    c.data.data_dir = data_dir
    c.update(overrides)
    return c


def write_config_py(directory, **flat_overrides) -> str:
    """``<directory>/tiny_config.py``: configs/synthetic.py:tiny with dotted-key
    overrides (``{"data.data_dir": ...}``); returns its path."""
    path = os.path.join(directory, "tiny_config.py")
    with open(path, "w") as f:
        f.write(CONFIG_PY.format(overrides=flat_overrides))
    return path


def process_env(cache_dir):
    """The environment of one process: 4 simulated CPU devices, the shared compile cache."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "RSA_", "JAX_", "TPU_"))}
    env.update(XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu",
               PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1",
               JAX_COMPILATION_CACHE_DIR=str(cache_dir),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    return env


def start(setup_dir, workdir, tag):
    """Starts processes 0 and 1 of one run; their output goes to <workdir>.<tag>.<i>.log."""
    port = portpicker.pick_unused_port()
    procs = []
    for i in range(2):
        log = open(f"{workdir}.{tag}.{i}.log", "w")
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "rsa_jax.main", f"--config={setup_dir}/tiny_config.py",
             f"--workdir={workdir}", f"--coordinator_address=127.0.0.1:{port}",
             "--num_processes=2", f"--process_id={i}", "--alsologtostderr"],
            cwd=ROOT, env=process_env(setup_dir / "jit_cache"), stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True))
        procs[-1].log_path = log.name
        log.close()
    return procs


def kill(procs):
    """SIGKILLs every process (group) still running."""
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def tail(procs):
    """The end of every process's log, for a failure message."""
    return "\n".join(f"--- process {i} ({p.log_path}):\n" + open(p.log_path).read()[-3000:]
                     for i, p in enumerate(procs))


def wait(procs, timeout=TIMEOUT_S, until=None):
    """Waits until all exit 0 (or ``until()`` is true); kills all on failure."""
    deadline = time.time() + timeout
    try:
        while time.time() < deadline:
            codes = [p.poll() for p in procs]
            if any(c not in (None, 0) for c in codes):
                pytest.fail(f"a process exited with {codes}\n{tail(procs)}")
            if all(c == 0 for c in codes) or (until is not None and until()):
                return
            time.sleep(0.05)
        pytest.fail(f"timed out after {timeout}s\n{tail(procs)}")
    except BaseException:
        kill(procs)
        raise
