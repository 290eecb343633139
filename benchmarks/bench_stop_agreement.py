"""Per-step cost of the multi-host stop agreement (rsa_jax/train/preemption.py).

    python benchmarks/bench_stop_agreement.py [--processes 2] [--steps 300]

Starts that many JAX processes on 127.0.0.1 (CPU); each calls
``PreemptionGuard.should_stop(step)`` once per "step" with no signal pending
(the common case: one coordination-service barrier plus one key lookup), and
process 0 prints one JSON line with the median and 90th percentile per call.
The barrier also waits for the slowest process, as the next collective would.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _worker(address: str, n: int, i: int, steps: int) -> None:
    import jax
    import numpy as np
    jax.distributed.initialize(address, n, i)
    from rsa_jax.train import preemption
    guard = preemption.PreemptionGuard()
    times = []
    with guard:
        for step in range(1, steps + 1):
            t = time.perf_counter()
            stop = guard.should_stop(step)
            times.append(time.perf_counter() - t)
            assert not stop
    if i == 0:
        ms = 1e3 * np.array(times[10:])   # the first calls connect
        print(json.dumps({"bench": "stop_agreement", "processes": n, "steps": len(ms),
                          "median_ms": round(float(np.median(ms)), 3),
                          "p90_ms": round(float(np.percentile(ms, 90)), 3),
                          "cpu_count": os.cpu_count(),
                          "load_avg_1min": round(os.getloadavg()[0], 2)}), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--worker", nargs=2, metavar=("ADDRESS", "INDEX"),
                   help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        _worker(args.worker[0], args.processes, int(args.worker[1]), args.steps)
        return
    import portpicker
    address = f"127.0.0.1:{portpicker.pick_unused_port()}"
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
    procs = [subprocess.Popen([sys.executable, __file__, "--processes", str(args.processes),
                               "--steps", str(args.steps), "--worker", address, str(i)],
                              env=env, cwd=ROOT) for i in range(args.processes)]
    codes = [q.wait(timeout=600) for q in procs]
    if any(codes):
        sys.exit(f"bench_stop_agreement: worker exit codes {codes}")


if __name__ == "__main__":
    main()
