"""Chaos test of resuming: SIGKILL a training run N times, restart it each time,
and compare the end with an uninterrupted run.

    python benchmarks/chaos_resume.py --kills 20

Trains configs/synthetic.py:tiny (as tests/test_train_loop.py; one CPU device, a
checkpoint every step) with ``python -m rsa_jax.main``. Kill moments come from
a seeded RNG: after 1-3 new logged steps plus up to 1 s,
or, for about a third of the kills, the moment an orbax temporary checkpoint
folder appears (a checkpoint write in progress). After the N kills the run is
restarted once more and left to finish; then the final parameters, batch
statistics and optimiser state, and the last logged train metrics of every
step and the final eval metrics, must equal the uninterrupted run's bit for
bit. Prints one JSON line: kills, kills_in_checkpoint_write, restarts,
bit_identical, metrics_identical, seconds (docs/reliability.md).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_PY = """
import configs.synthetic as synthetic

def get_config():
    c = synthetic.get_config("tiny")
    c.update_from_flattened_dict({overrides!r})
    return c
"""
TMP_MARK = "orbax-checkpoint-tmp"
RUN_TIMEOUT_S = 900


def _overrides(data_dir: str, steps: int) -> dict:
    """configs/synthetic.py:tiny, with a checkpoint and a log line every step."""
    return {"data.data_dir": data_dir, "num_train_steps": steps, "log_every_steps": 1,
            "eval_every_epochs": 1000, "checkpoint_every_steps": 1, "keep_checkpoints": 3}


def _snapshot(root: str) -> str:
    """A copy of the code: every attempt must run the same code, even if the
    working tree is edited during the (long) benchmark."""
    src = os.path.join(root, "src")
    for name in ("rsa_jax", "configs"):
        shutil.copytree(os.path.join(ROOT, name), os.path.join(src, name), dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("__pycache__"))
    return src


def _env(root: str) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "RSA_", "JAX_", "TPU_", "XLA_"))}
    env.update(JAX_PLATFORMS="cpu", PYTHONPATH=os.path.join(root, "src"), TF_CPP_MIN_LOG_LEVEL="3",
               PYTHONUNBUFFERED="1", JAX_COMPILATION_CACHE_DIR=os.path.join(root, "jit_cache"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    return env


def _start(root: str, workdir: str, tag: str) -> subprocess.Popen:
    log = open(f"{workdir}.{tag}.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "rsa_jax.main", f"--config={root}/tiny_config.py",
         f"--workdir={workdir}"], cwd=os.path.join(root, "src"), env=_env(root), stdout=log,
        stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    return proc


def _rows(workdir: str) -> list[dict]:
    """metrics.jsonl rows; a line cut by a kill is skipped."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    out = []
    for line in open(path):
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def _writing(workdir: str) -> bool:
    d = os.path.join(workdir, "checkpoints")
    return os.path.isdir(d) and any(TMP_MARK in name for name in os.listdir(d))


def _wait_exit(proc: subprocess.Popen, what: str) -> None:
    try:
        code = proc.wait(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise SystemExit(f"chaos_resume: {what} timed out after {RUN_TIMEOUT_S}s") from None
    if code != 0:
        raise SystemExit(f"chaos_resume: {what} exited with {code}; see its .log")


def _kill_once(proc, workdir: str, rng: np.random.Generator) -> str | None:
    """Kills ``proc`` at a random moment; returns 'step' / 'write', or None if it finished."""
    in_write = rng.random() < 1 / 3
    wait_rows, delay = int(rng.integers(1, 4)), float(rng.uniform(0, 1.0))
    seen = len(_rows(workdir))
    while proc.poll() is None and len(_rows(workdir)) < seen + (1 if in_write else wait_rows):
        time.sleep(0.01)
    if in_write:
        while proc.poll() is None and not _writing(workdir):
            time.sleep(0.001)
    else:
        t = time.time() + delay
        while proc.poll() is None and time.time() < t:
            time.sleep(0.01)
    if proc.poll() is not None:
        return None
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return "write" if in_write and _writing(workdir) else "step"


def _final_state(workdir: str, step: int) -> list[np.ndarray]:
    import jax
    import orbax.checkpoint as ocp
    restored = ocp.StandardCheckpointer().restore(
        os.path.join(workdir, "checkpoints", str(step), "state"))
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(restored)]


def _last_metrics(workdir: str) -> dict:
    """The last logged value of every metric at every step (timings excluded)."""
    timing = ("_ms", "_per_s", "per_device", "core_hours", "mfu")  # wall-clock dependent
    out = {}
    for row in _rows(workdir):
        for k, v in row.items():
            if k != "step" and not k.endswith(timing):
                out[(row["step"], k)] = v
    return out


def run(kills: int, seed: int, steps: int, root: str) -> dict:
    """The benchmark; returns the JSON row."""
    data_dir = os.path.join(root, "tfds")
    _snapshot(root)
    with open(os.path.join(root, "tiny_config.py"), "w") as f:
        f.write(CONFIG_PY.format(overrides=_overrides(data_dir, steps)))
    reference, chaos = os.path.join(root, "reference"), os.path.join(root, "chaos")
    t0 = time.time()
    _wait_exit(_start(root, reference, "run"), "the uninterrupted run")   # also builds the data
    t_ref = time.time() - t0
    rng = np.random.default_rng(seed)
    done = {"step": 0, "write": 0}
    starts = 0
    t1 = time.time()
    for i in range(kills):
        proc = _start(root, chaos, f"attempt{i}")
        starts += 1
        kind = _kill_once(proc, chaos, rng)
        if kind is None:   # finished before this kill
            _wait_exit(proc, f"attempt {i}")
            break
        done[kind] += 1
    else:
        starts += 1
        _wait_exit(_start(root, chaos, "final"), "the final restart")
    t_chaos = time.time() - t1
    a, b = _final_state(reference, steps), _final_state(chaos, steps)
    same_state = len(a) == len(b) > 0 and all(np.array_equal(x, y) for x, y in zip(a, b))
    ma, mb = _last_metrics(reference), _last_metrics(chaos)
    same_metrics = bool(ma) and ma == mb
    return {"benchmark": "chaos_resume", "kills": done["step"] + done["write"],
            "kills_in_checkpoint_write": done["write"], "restarts": starts - 1, "steps": steps,
            "bit_identical": bool(same_state), "metrics_identical": bool(same_metrics),
            "arrays_compared": len(a), "metric_values_compared": len(ma),
            "seconds": round(t_chaos, 1), "uninterrupted_seconds": round(t_ref, 1),
            "seed": seed}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kills", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=0,
                   help="train steps (default 4 per kill + 10: the run must outlast the kills)")
    p.add_argument("--workdir", default=None, help="kept if given; default a temporary folder")
    args = p.parse_args(argv)
    root = args.workdir or tempfile.mkdtemp(prefix="chaos_resume_")
    os.makedirs(root, exist_ok=True)
    try:
        row = run(args.kills, args.seed, args.steps or 4 * args.kills + 10, root)
    finally:
        if args.workdir is None:
            shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(row), flush=True)
    return row


if __name__ == "__main__":
    main()
