"""Orbax checkpoints of the train state together with the grain iterator state.

``<workdir>/checkpoints/<step>/`` holds two items: ``state`` (the sharded
TrainState, written cooperatively by all processes) and ``data`` (each
process's grain iterator position, ``process_<i>-of-<n>.json``). Kept: the last
``keep`` checkpoints plus the best one by validation top-1.

``restore_latest`` falls back from a damaged newest checkpoint to the newest
usable one (docs/reliability.md); ``config_mismatch`` tells a resumed run whose
config changes array shapes from a harmless change.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils
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

    def best_or_latest_step(self) -> int | None:
        """The step to load from a finished or stopped run: the best by the metric,
        else the latest; None if there is no checkpoint."""
        return self.best_step() or self.latest_step()

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

    def restore_latest(self, abstract_state: Any, data_iter: Any = None
                       ) -> tuple[int | None, Any, Any]:
        """Restores the newest usable checkpoint: (step, state, data_iter).

        A damaged one (truncated or missing array file, cut metadata) is
        skipped with one warning naming the step and the problem. Returns
        (None, None, data_iter) when there is no checkpoint at all.
        Raises:
          CheckpointError: checkpoints exist but none can be restored.
        """
        steps = sorted(self.manager.all_steps(), reverse=True)
        found, data_iter_out = [], data_iter
        for step in steps:
            problem = _damage(os.path.join(self.directory, str(step)))
            state = None
            if problem is None:
                try:
                    state, data_iter_out = self.restore(step, abstract_state, data_iter)
                except Exception as e:  # noqa: BLE001 -- orbax/tensorstore raise many kinds
                    problem = _one_line(e)
            if _all_hosts_ok(problem is None):
                return step, state, data_iter_out
            problem = problem or "unusable on another host"
            found.append(f"step {step}: {problem}")
            logging.warning("checkpoint %s/%d is unusable (%s); trying the next older one",
                            self.directory, step, problem)
        if found:
            raise CheckpointError(
                f"no usable checkpoint in {self.directory}: " + "; ".join(found)
                + ". Move that folder away to train from the start.")
        return None, None, data_iter

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


class CheckpointError(RuntimeError):
    """Checkpoints exist but none is usable, or the config changed their shapes."""


def _one_line(error: Exception, limit: int = 300) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    text = text if len(text) <= limit else text[:limit] + "..."
    return f"{type(error).__name__}: {text}"


def _damage(step_dir: str) -> str | None:
    """Cheap checks for damage orbax reports without the file's name.

    Only the state's metadata and this process's iterator state are read: a cut
    ``_CHECKPOINT_METADATA`` does not prevent a restore, so it is not checked.
    """
    for item in ("state", "data"):
        if not os.path.isdir(os.path.join(step_dir, item)):
            return f"item folder '{item}/' is missing"
    own = f"process_{jax.process_index()}-of-{jax.process_count()}.json"   # grain's name
    paths = [os.path.join(step_dir, "state", "_METADATA"), os.path.join(step_dir, "data", own)]
    for path in paths:
        rel = os.path.relpath(path, step_dir)
        try:
            with open(path) as f:
                json.load(f)
        except FileNotFoundError:
            return f"{rel} is missing"
        except (ValueError, UnicodeDecodeError) as e:
            return f"{rel} is not valid JSON ({e}): cut short?"
    return None


def _all_hosts_ok(ok: bool) -> bool:
    """Every host must resume from the same step: a step counts only if all could read it."""
    if jax.process_count() == 1:
        return ok
    return bool(np.all(multihost_utils.process_allgather(np.array(ok))))


# Changing these changes array shapes or what the parameters mean: a resumed
# run with different values would fail to restore or silently train another
# model. Anything else (eval/log cadence, workers, paths, dtype) may change.
# Sharding (mesh, partition rules) may change: orbax restores into the new layout.
SHAPE_FIELDS = ("model.", "data.name", "data.builder_config", "data.num_frames",
                "data.image_size")
_COMPUTE_ONLY = ("dtype", "implementation", "conv_strategy")   # same parameters either way


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in tree.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _shape_relevant(key: str) -> bool:
    if key.rsplit(".", 1)[-1] in _COMPUTE_ONLY:
        return False
    return any(key == f or (f.endswith(".") and key.startswith(f)) for f in SHAPE_FIELDS)


def _norm(value: Any) -> Any:
    """JSON round trip: tuples and lists compare equal, as config.json stores both as lists."""
    return json.loads(json.dumps(value, default=str))


def config_mismatch(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """Shape-relevant fields that differ: ['model.depth: 18 -> 50', ...]."""
    a, b = _flatten(saved), _flatten(current)
    return [f"{k}: {_norm(a.get(k))!r} -> {_norm(b.get(k))!r}" for k in sorted(set(a) | set(b))
            if _shape_relevant(k) and _norm(a.get(k)) != _norm(b.get(k))]


def check_resume_config(workdir: str, config: Any) -> None:
    """Stops a resume whose config changes shapes relative to ``<workdir>/config.json``.

    Raises:
      CheckpointError: listing every differing shape-relevant field.
    """
    path = os.path.join(workdir, "config.json")
    ckpt_dir = os.path.join(workdir, "checkpoints")
    if not (os.path.isfile(path) and os.path.isdir(ckpt_dir)
            and any(s.isdigit() for s in os.listdir(ckpt_dir))):
        return   # nothing to resume: the run starts afresh and rewrites config.json
    with open(path) as f:
        saved = json.load(f)
    diff = config_mismatch(saved, json.loads(config.to_json_best_effort()))
    if diff:
        raise CheckpointError(
            f"{workdir} holds a run with a different model or input shape ({'; '.join(diff)}); "
            "use a new --workdir, or restore these values to resume it")
