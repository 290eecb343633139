"""Config checks that run before any data build or compile (docs/reliability.md).

``validate(config, workdir)`` raises ``ConfigError`` with one clear message for
each mistake that would otherwise surface minutes later as a long traceback
(or, for a crop larger than the stored frames, as a silent upscale that runs
out of memory before step 1): the workdir, the init, the model, the schedule,
the mesh and batch sizes here, the data block through `rsa_jax.data.checks`.
``finished_run`` tells a rerun of a finished training run where its results are.
Typo'd ``--config.x=y`` keys and flag parsing: `rsa_jax.cli`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

from etils import epath

from rsa_jax.cli import ConfigError, suggest

DONE_FILE = "DONE.json"
TORCHVISION_URL = "https://download.pytorch.org/models/resnet50-19c8e357.pth"
# Mirrors rsa_jax.models (compute dtypes; parameters stay float32). Kept here so
# the check needs no JAX import; tests/test_validate.py pins that they agree.
DTYPES = ("float32", "bfloat16", "float16")
# `model.precision` of convolutions and matmuls (jax.lax.Precision names); None is the
# backend's default: TF32 on Ampere/Hopper GPUs, bf16 passes on TPU, float32 on CPU.
# 'highest' is true float32, as the official V100 run (docs/training.md#recipe-audit).
PRECISIONS = ("default", "high", "highest")
SYNTHETIC = "synthetic_motion"


# ---------------------------------------------------------------------- checks

# Workdirs and init_from may be gs:// paths (TPU pods): epath reads both.

def _check_workdir(workdir: str) -> None:
    path = epath.Path(workdir)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--workdir {workdir!r} is a file, not a directory")


def _has_checkpoint(workdir: str) -> bool:
    ckpt = epath.Path(workdir) / "checkpoints"
    return ckpt.is_dir() and any(p.name.isdigit() for p in ckpt.iterdir())


def _check_init(config: Any, workdir: str, mode: str) -> None:
    """Paper configs start from ImageNet weights (docs/method.md#imagenet-init)."""
    tv, init = config.get("torchvision_init"), config.get("init_from")
    if tv and not os.path.isfile(tv):
        raise ConfigError(f"--config.torchvision_init: file {tv!r} not found; get "
                          f"resnet50-19c8e357.pth from {TORCHVISION_URL}")
    if init and not epath.Path(init).is_dir():
        raise ConfigError(f"--config.init_from: directory {init!r} not found")
    if mode != "train":
        if not (init or _has_checkpoint(workdir)):
            raise ConfigError(f"--mode={mode}: no checkpoint in {workdir}/checkpoints and no "
                              "--config.init_from=DIR: nothing to evaluate")
        return
    from_scratch = config.get("from_scratch", config.data.name == SYNTHETIC)
    if tv or init or from_scratch or _has_checkpoint(workdir):
        return
    raise ConfigError(
        "this config trains from ImageNet weights: pass --config.torchvision_init=PATH to "
        f"torchvision's resnet50-19c8e357.pth (download {TORCHVISION_URL}) or "
        "--config.init_from=DIR (an orbax checkpoint from rsa_jax.convert), or train from "
        "random weights on purpose with --config.from_scratch=True")


def _check_model(model: Any) -> None:
    from rsa_jax.models.resnet_tsn import BACKBONES, STAGE_BLOCKS
    backbone = model.get("backbone", "rsa")
    if backbone not in BACKBONES:
        raise ConfigError(f"--config.model.backbone={backbone!r} is not one of "
                          f"{', '.join(BACKBONES)}{suggest(str(backbone), BACKBONES)}")
    dtype = model.get("dtype", "float32")
    if dtype not in DTYPES:
        raise ConfigError(f"--config.model.dtype={dtype!r} is not one of {', '.join(DTYPES)}"
                          f"{suggest(str(dtype), DTYPES)}")
    precision = model.get("precision")
    if precision is not None and precision not in PRECISIONS:
        raise ConfigError(f"--config.model.precision={precision!r} is not one of "
                          f"{', '.join(PRECISIONS)} (or None, the backend's default)"
                          f"{suggest(str(precision), PRECISIONS)}")
    depth = model.get("depth", 50)
    if depth not in STAGE_BLOCKS:
        raise ConfigError(f"--config.model.depth={depth} is not one of "
                          f"{', '.join(str(d) for d in sorted(STAGE_BLOCKS))} (ResNet layouts)")
    for key in ("width", "num_classes"):
        value = model.get(key, 1)
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"--config.model.{key}={value!r} must be an integer >= 1")
    _check_rsa_blocks(model)


def _check_rsa_blocks(model: Any) -> None:
    """Block layout and every RSA layer's head sizes, as the model will resolve them
    (no JAX computation: `block_specs` and `resolve_dims` are plain Python)."""
    from rsa_jax.layers.rsa import resolve_dims
    from rsa_jax.models import build_model
    try:
        net = build_model(model)
        specs = net.block_specs()
    except (ValueError, TypeError) as e:
        raise ConfigError(f"--config.model: {e}") from None
    rsa = dict(net.rsa)
    for spec in specs:
        if not spec["rsa"]:
            continue
        try:
            resolve_dims(spec["planes"], rsa.get("num_heads", 8), rsa.get("key_dim"),
                         rsa.get("value_dim"), rsa.get("latent_dim"), rsa["kernel_size"],
                         rsa.get("kernel_type", "VplusR"), rsa.get("context_type", "VplusR"))
        except ValueError as e:
            raise ConfigError(f"--config.model.rsa: RSA block {spec['name']} "
                              f"({spec['planes']} channels): {e}") from None


def _check_schedule(config: Any) -> None:
    steps, epochs = config.get("num_train_steps", -1), config.get("num_epochs")
    if steps is not None and steps > 0:
        return
    if epochs is None or epochs <= 0:
        raise ConfigError(f"--config.num_epochs={epochs} must be > 0 (or set "
                          "--config.num_train_steps to a positive step count)")


def _flip_ids(data: Any) -> None:
    """``--config.data.flip_exempt_classes=None`` reaches the config as ``(None,)``:
    it means None (exemptions derived from class names), as documented."""
    ids = data.get("flip_exempt_classes")
    if ids is None:
        return
    if isinstance(ids, (tuple, list)) and all(i is None for i in ids) and ids:
        data.flip_exempt_classes = None
        return
    if not isinstance(ids, (tuple, list)) or not all(
            isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise ConfigError(f"--config.data.flip_exempt_classes={ids!r} must be class ids "
                          "such as (86, 87), () for none, or None to find left/right "
                          "classes by name")


def check_classes(config: Any, names: Sequence[str] | None = None) -> None:
    """The dataset's classes against ``model.num_classes`` and the flip-exempt ids.

    Needs the built dataset (``names`` default: its class names). `validate` runs it
    when the dataset is built already; training runs it right after building one,
    before anything is written to the workdir.

    Raises:
      ConfigError: a class-count mismatch, or flip ids that are not classes.
    """
    from rsa_jax.data import checks, pipeline
    names = list(pipeline.class_names(config.data) if names is None else names)
    want = config.get("model", {}).get("num_classes")
    if want is not None and want != len(names):
        raise ConfigError(f"--config.model.num_classes={want} but dataset {config.data.name} "
                          f"has {len(names)} classes; set --config.model.num_classes="
                          f"{len(names)}")
    checks.check_flip_ids(config.data, names)


def mesh_sizes(mesh_shape: Any, num_devices: int) -> dict[str, int]:
    """Axis sizes of ``mesh_shape`` on ``num_devices`` devices (-1 resolved).

    Raises:
      ConfigError: no 'data' axis, several -1, or a product other than num_devices.
    """
    shape = dict(mesh_shape or {"data": -1})
    if "data" not in shape:
        raise ConfigError(f"--config.mesh_shape ({shape}) needs a 'data' axis")
    if list(shape.values()).count(-1) > 1:
        raise ConfigError(f"--config.mesh_shape ({shape}): at most one axis may be -1")
    known = 1
    for size in shape.values():
        known *= size if size != -1 else 1
    sizes = {k: (num_devices // known if v == -1 else v) for k, v in shape.items()}
    total = 1
    for size in sizes.values():
        total *= size
    if total != num_devices or min(sizes.values()) < 1:
        need = f"a multiple of {known}" if -1 in shape.values() else str(known)
        raise ConfigError(f"--config.mesh_shape ({shape}) needs {need} devices but this run "
                          f"has {num_devices}")
    return sizes


def _check_batches(config: Any, num_devices: int, num_processes: int) -> None:
    data = mesh_sizes(config.get("mesh_shape"), num_devices)["data"]
    accum = config.get("grad_accum_steps", 1)
    if accum < 1:
        raise ConfigError(f"--config.grad_accum_steps={accum} must be >= 1")
    checks = (("global_batch_size", data * accum,
               f"{data} data-parallel devices x grad_accum_steps {accum}"),
              ("global_batch_size", num_processes, f"{num_processes} processes"),
              ("eval_batch_size", data, f"{data} data-parallel devices"),
              ("test_batch_size", data, f"{data} data-parallel devices"))
    for key, divisor, why in checks:
        value = config.get(key)
        if value is not None and (value < 1 or value % divisor):
            raise ConfigError(f"--config.{key}={value} must be a positive multiple of "
                              f"{divisor} ({why})")
    group = config.get("model", {}).get("bn_group_clips", 0) or 0
    micro = config.get("global_batch_size", 0) // accum
    if group and micro % group:
        raise ConfigError(f"--config.model.bn_group_clips={group} must divide the clips of "
                          f"one micro-batch, global_batch_size / grad_accum_steps = {micro}")


def validate(config: Any, workdir: str, *, mode: str = "train",
             num_devices: int | None = None, num_processes: int = 1) -> None:
    """All checks; cheap (no data read, no JAX device touched).

    Args:
      config: the run's ConfigDict.
      workdir: the --workdir value.
      mode: 'train', 'eval' or 'test' (eval/test need a checkpoint, not an init).
      num_devices: global device count; None skips the mesh and batch checks.
      num_processes: process count (the global batch is split over processes).
    Raises:
      ConfigError: the first problem found, in one message naming the flag.
    """
    _check_workdir(workdir)
    _check_init(config, workdir, mode)
    _check_model(config.model)
    if mode == "train":
        _check_schedule(config)
    _flip_ids(config.data)
    from rsa_jax.data import checks  # imports the pipelines: not at module level
    checks.check_data(config.data)
    if num_devices is not None:
        _check_batches(config, num_devices, num_processes)
    if checks.is_prepared(config.data):   # else training checks them once it has built it
        check_classes(config)


def write_done(workdir: str, config: Any, metrics: dict[str, float]) -> str:
    """Marks a training run finished (main.py calls it after train_and_evaluate)."""
    path = epath.Path(workdir) / DONE_FILE
    path.write_text(json.dumps({"num_epochs": config.get("num_epochs"),
                                "num_train_steps": config.get("num_train_steps"),
                                "metrics": {k: float(v) for k, v in metrics.items()}},
                               indent=2))
    return str(path)


def finished_run(config: Any, workdir: str) -> str | None:
    """A message if ``workdir`` holds a finished run of this schedule, else None.

    A run whose ``num_epochs``/``num_train_steps`` were raised since is not
    finished: training resumes from its last checkpoint.
    """
    path = epath.Path(workdir) / DONE_FILE
    if not path.is_file():
        return None
    done = json.loads(path.read_text())
    if (done.get("num_epochs"), done.get("num_train_steps")) != (
            config.get("num_epochs"), config.get("num_train_steps")):
        return None
    found = done.get("metrics", {})
    shown = {k: found[k] for k in ("top1", "top5") if k in found} or found
    metrics = ", ".join(f"{k} {v:.2f}" for k, v in shown.items())
    return (f"{workdir} holds a finished run ({metrics}): checkpoints in "
            f"{os.path.join(workdir, 'checkpoints')}, eval scores in "
            f"{os.path.join(workdir, 'eval')}; use --mode=test to evaluate it, or a new "
            f"--workdir (or delete {path}) to train again")
