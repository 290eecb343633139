"""Orbax checkpoints of the train state together with the grain iterator state.

``<workdir>/checkpoints/<step>/`` holds two items: ``state`` (the sharded
TrainState, written cooperatively by all processes) and ``data`` (each
process's grain iterator position, ``process_<i>-of-<n>.json``). Kept: the last
``keep`` checkpoints plus the best one by validation top-1.
"""

from __future__ import annotations

import os
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as cm

from rsa_jax import parallel


def abstract_like(state: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs (with shardings) to restore ``state`` into its layout."""
    return jax.tree_util.tree_map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings)


class Checkpointer:
    """Thin wrapper around ``ocp.CheckpointManager`` for (state, data iterator)."""

    def __init__(self, directory: str, *, keep: int = 3, best_metric: str = "top1",
                 read_only: bool = False):
        policy = cm.AnyPreservationPolicy([
            cm.LatestN(n=keep),
            cm.BestN(get_metric_fn=lambda m: m[best_metric], n=1,
                     keep_checkpoints_without_metrics=False),
        ])
        # best_fn as well: without it orbax neither writes the metrics nor answers
        # best_step() with anything but the latest step.
        options = ocp.CheckpointManagerOptions(preservation_policy=policy, create=not read_only,
                                               read_only=read_only,
                                               best_fn=lambda m: m[best_metric], best_mode="max")
        self.directory = os.path.abspath(directory)
        # orbax's first multi-host sync is a device collective, which on CPU
        # (gloo) fails if a host is 30 s late: line the hosts up first.
        parallel.barrier("checkpoint manager")
        self.manager = ocp.CheckpointManager(self.directory, item_names=("state", "data"),
                                             options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def best_step(self) -> int | None:
        """Step of the best checkpoint by the metric; None if none has metrics."""
        return self.manager.best_step()

    def save(self, step: int, state: Any, data_iter: Any = None,
             metrics: dict[str, float] | None = None) -> None:
        items = {"state": ocp.args.StandardSave(state)}
        if data_iter is not None:
            items["data"] = grain.checkpoint.CheckpointSave(data_iter)
        self.manager.save(step, args=ocp.args.Composite(**items), metrics=metrics, force=True)

    def restore(self, step: int, abstract_state: Any, data_iter: Any = None) -> tuple[Any, Any]:
        """Restores the state (into the layout of ``abstract_state``) and, if given,
        the iterator in place. Returns (state, data_iter)."""
        items = {"state": ocp.args.StandardRestore(abstract_state)}
        if data_iter is not None:
            items["data"] = grain.checkpoint.CheckpointRestore(data_iter)
        out = self.manager.restore(step, args=ocp.args.Composite(**items))
        return out["state"], (out["data"] if data_iter is not None else None)

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
