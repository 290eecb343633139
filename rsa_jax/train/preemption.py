"""Stopping a run cleanly on SIGTERM/SIGINT or a Cloud TPU preemption notice.

The signal handler only records the signal (it runs between two bytecodes of
the training loop, so it must not save or log through locks the loop may
hold). The loop asks ``should_stop(step)`` after every step; all hosts must
answer the same way at the same step, or one host would wait forever in the
next collective while the others checkpoint. Agreement comes from JAX's
coordination service (host RPCs only, no device work, so it does not stall the
asynchronous dispatch of the next step): a signalled host sets the key
``rsa_jax:stop:<step>`` before a barrier named after the step, and every host
reads the key after it. JAX's own notice
(``multihost_utils.reached_preemption_sync_point``) is honoured as well.

The loop then saves a checkpoint (state and data iterator) at that step inside
``guard.saving()``, during which further signals are ignored with a message,
and raises ``Preempted``; ``rsa_jax.main`` prints how to resume and exits with
``EXIT_CODE`` (docs/reliability.md).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator, Sequence

import jax
from jax.experimental import multihost_utils

from rsa_jax import parallel

# 128 + SIGTERM: what a scheduler (SLURM, Kubernetes) reports for a terminated
# job, and distinct from success (0) and from a failed run (1).
EXIT_CODE = 143
_BARRIER_TIMEOUT_MS = 30 * 60 * 1000   # a host that never arrives is dead: collectives hang too


class Preempted(Exception):
    """Raised by the training loop after the preemption checkpoint is written."""

    def __init__(self, step: int, directory: str, reason: str):
        self.step, self.directory, self.reason = step, directory, reason
        self.exit_code = EXIT_CODE
        super().__init__(
            f"{reason}: stopped at step {step}; checkpoint saved to "
            f"{os.path.join(directory, str(step))}; rerun the same command to resume")


class PreemptionGuard:
    """Context manager: catches ``signals`` while the training loop runs.

    Args:
      signals: the signals that ask for a checkpoint-and-exit.
      check_every: multi-host runs agree on stopping at steps divisible by this
        (one barrier RPC each); a single process checks its flag every step.
    """

    def __init__(self, signals: Sequence[int] = (signal.SIGTERM, signal.SIGINT),
                 check_every: int = 1):
        self._signals = tuple(signals)
        self._check_every = max(1, check_every)
        self._previous: dict[int, object] = {}
        self._signum: int | None = None
        self._saving = False
        self._use_notice = True
        self.reason: str | None = None

    def __enter__(self) -> PreemptionGuard:
        if threading.current_thread() is threading.main_thread():   # Python's rule
            for s in self._signals:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            if handler is not None:   # None: a C handler Python cannot reinstall
                signal.signal(s, handler)
        self._previous.clear()

    @property
    def signalled(self) -> bool:
        """True once this process received one of the signals."""
        return self._signum is not None

    def _handle(self, signum: int, frame) -> None:
        del frame
        name = signal.Signals(signum).name
        if self._saving:
            note = f"{name} received while writing the preemption checkpoint: ignored\n"
        elif self._signum is not None:
            note = f"{name} received again: already stopping after this step\n"
        else:
            self._signum = signum
            note = f"{name} received: will checkpoint after this step and exit\n"
        os.write(2, note.encode())   # no logging lock inside a signal handler

    @contextlib.contextmanager
    def saving(self) -> Iterator[None]:
        """While the checkpoint is written, further signals are ignored."""
        self._saving = True
        try:
            yield
        finally:
            self._saving = False

    def should_stop(self, step: int) -> bool:
        """True on every host at the same step once any host asked to stop."""
        if jax.process_count() == 1:
            if self._signum is not None:
                self.reason = signal.Signals(self._signum).name
            return self._signum is not None
        if self._jax_notice(step):
            self.reason = "preemption notice"
            return True
        if step % self._check_every:
            return False
        if self._agree(step):
            self.reason = (signal.Signals(self._signum).name if self._signum is not None
                           else "a signal on another host")
            return True
        return False

    def _jax_notice(self, step: int) -> bool:
        if not self._use_notice:
            return False
        try:
            return multihost_utils.reached_preemption_sync_point(step)
        except RuntimeError:   # preemption service disabled: signals only
            self._use_notice = False
            return False

    def _agree(self, step: int) -> bool:
        client = parallel.distributed_client()
        if client is None:   # several processes without jax.distributed: cannot agree
            return self._signum is not None
        key = f"rsa_jax:stop:{step}"
        if self._signum is not None:
            client.key_value_set(key, str(jax.process_index()), allow_overwrite=True)
        # Every host that will set the key for this step has set it before it
        # arrives here, so all hosts read the same answer after the barrier.
        client.wait_at_barrier(key, _BARRIER_TIMEOUT_MS)
        try:
            client.key_value_try_get(key)
        except jax.errors.JaxRuntimeError:   # NOT_FOUND: nobody was signalled
            return False
        return True


