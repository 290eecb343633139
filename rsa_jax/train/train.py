"""The training loop: ``train_and_evaluate(config, workdir)`` and ``evaluate_checkpoint``.

Reads top to bottom: mesh → data → model + optax → state (fresh, pretrained or
restored with its data iterator) → jitted steps → loop of train step, metrics,
periodic evaluation and checkpoints. Only process 0 writes logs and summaries;
all processes take part in checkpoints and evaluation.
"""

from __future__ import annotations

import json
import os

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from clu import parameter_overview

from rsa_jax import labels, parallel, validate
from rsa_jax.data import pipeline
from rsa_jax.models import build_model
from rsa_jax.train import capacity, compiled, optim, preemption, progress, tuning, writers
from rsa_jax.train import evaluate as eval_lib
from rsa_jax.train import mfu as mfu_lib
from rsa_jax.train import step as step_lib
from rsa_jax.train.checkpoint import Checkpointer, abstract_like, check_resume_config
from rsa_jax.train.writers import create_writer


def _input_shape(config) -> tuple[int, ...]:
    d = config.data
    return (1, d.num_frames, d.image_size, d.image_size, 3)


def _is_step_dir(path: str) -> bool:
    return os.path.basename(path).isdigit() and os.path.isdir(os.path.join(path, "state"))


def resolve_init_from(path: str) -> str:
    """The orbax state folder that ``--config.init_from=path`` names.

    Accepts a run's workdir (its best checkpoint by top-1, else the latest), its
    ``checkpoints`` folder (same choice), one step folder (``checkpoints/<step>``),
    that step's ``state`` folder, or a directory written by ``rsa_jax.convert``.
    """
    path = os.path.abspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"--config.init_from={path}: no such directory")
    if os.path.isdir(os.path.join(path, "checkpoints")):
        path = os.path.join(path, "checkpoints")
    if any(_is_step_dir(os.path.join(path, d)) for d in os.listdir(path)):
        ckpt = Checkpointer(path, read_only=True)
        step = ckpt.best_or_latest_step()
        path = os.path.join(path, str(step))
    if _is_step_dir(path):
        path = os.path.join(path, "state")
    return path


def load_pretrained(config, state: step_lib.TrainState, shardings) -> step_lib.TrainState:
    """Overwrites matching variables with ``config.init_from`` (see `resolve_init_from`:
    a ``rsa_jax.convert`` directory or a previous run) or ``config.torchvision_init``
    (an ImageNet ResNet-50 ``.pth``)."""
    if not (config.get("init_from") or config.get("torchvision_init")):
        return state
    from rsa_jax import convert  # needs torch only for torchvision files
    fresh = {"params": jax.device_get(state.params),
             "batch_stats": jax.device_get(state.batch_stats)}
    if config.get("init_from"):
        path = resolve_init_from(config.init_from)
        pretrained = ocp.StandardCheckpointer().restore(path)
        pretrained = {k: pretrained[k] for k in ("params", "batch_stats") if k in pretrained}
        pretrained = _drop_other_classifier(pretrained, fresh, path)
        logging.info("Initialising from orbax checkpoint %s", path)
    else:
        pretrained = convert.torchvision_to_backbone(config.torchvision_init, config.model)
        logging.info("Initialising backbone from torchvision file %s", config.torchvision_init)
    merged = convert.merge_pretrained(fresh, pretrained)
    return state.replace(params=jax.device_put(merged["params"], shardings.params),
                         batch_stats=jax.device_put(merged["batch_stats"], shardings.batch_stats))


def _drop_other_classifier(pretrained: dict, fresh: dict, path: str) -> dict:
    """Fine-tuning to another class count: keeps the fresh ``new_fc`` (logged).
    Only a classifier whose shape differs is dropped; everything else loads strictly."""
    fc, own = pretrained.get("params", {}).get("new_fc"), fresh["params"].get("new_fc")
    if fc is None or own is None or fc["kernel"].shape == own["kernel"].shape:
        return pretrained
    logging.warning("init_from %s: classifier new_fc has %d classes, the model %d: "
                    "keeping the freshly initialised classifier", path,
                    fc["kernel"].shape[-1], own["kernel"].shape[-1])
    return dict(pretrained, params={k: v for k, v in pretrained["params"].items()
                                    if k != "new_fc"})


def _write_class_names(config, workdir: str) -> None:
    """``<workdir>/class_names.json`` for predict/analyze (the class count is checked
    before, by `validate.check_classes`)."""
    names = pipeline.class_names(config.data)
    if parallel.is_main_process():
        labels.write_class_names(workdir, names)


def _prepare_data(config) -> None:
    """Builds the TFDS dataset once (process 0); the others wait for it."""
    if parallel.is_main_process():
        pipeline.prepare(config.data)
    # A coordination-service barrier, not sync_global_devices: on CPU that is a
    # gloo collective, which gives up after 30 s (building takes longer).
    parallel.barrier("dataset prepared")


def setup(config, mesh, steps_per_epoch: int):
    """Model, optimiser, sharded state and jitted steps (shared by train and eval)."""
    model = build_model(config.model, platform=parallel.mesh_platform(mesh))
    tx = optim.create_optimizer(config, steps_per_epoch)
    state, shardings = step_lib.create_train_state(
        model, tx, jax.random.PRNGKey(config.seed), _input_shape(config), mesh,
        [tuple(r) for r in config.get("partition_rules", ())], config.get("fsdp_min_size", 0))
    train_fn, eval_fn = step_lib.compile_steps(
        mesh, shardings, learning_rate_fn=optim.lr_schedule(config, steps_per_epoch),
        label_smoothing=config.label_smoothing, grad_accum_steps=config.grad_accum_steps)
    return state, shardings, train_fn, eval_fn


def _save_config(config, workdir: str) -> None:
    if parallel.is_main_process():
        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=2))


def _progress(step, num_steps, summary, clips_per_s, eta_s) -> str:
    return (f"step {step}/{num_steps}  loss {summary['loss']:.4f}  "
            f"acc {summary['accuracy']:.1f}%  lr {summary['learning_rate']:.3g}  "
            f"{clips_per_s:.1f} clips/s  ETA {eta_s / 60:.1f} min")


def is_eval_step(step: int, num_steps: int, steps_per_epoch: int, config) -> bool:
    """The official validation schedule (docs/training.md#evaluation): every
    ``eval_every_epochs``, at every epoch end of the last ``eval_last_epochs``
    epochs, and after the last step."""
    eval_every = max(1, int(config.eval_every_epochs * steps_per_epoch))
    last = config.get("eval_last_epochs", 0) * steps_per_epoch
    return (step % eval_every == 0 or step == num_steps
            or (step % steps_per_epoch == 0 and step > num_steps - last))


def _check_precision(config) -> None:
    if config.model.get("dtype") == "float16":
        raise ValueError("--config.model.dtype=float16: training in float16 needs loss "
                         "scaling, which this loop does not do; use bfloat16 (same speed, "
                         "float32 range) or float32")


def _run_eval(config, eval_fn, state, mesh, writer, step: int, best: dict, workdir: str,
              write_scores: bool) -> dict[str, float]:
    metrics, scores = eval_lib.evaluate(
        eval_fn, state, config.data, mesh, split=config.eval_split, mode="eval",
        global_batch_size=config.eval_batch_size, label_smoothing=config.label_smoothing)
    if metrics["top1"] > best.get("top1", -1.0):     # strict, as the official is_best
        best.update(top1=metrics["top1"], step=step)
    writer.write_scalars(step, {f"eval/{k}": v for k, v in metrics.items()}
                         | {"eval/best_top1": best["top1"]})
    if parallel.is_main_process():
        print(f"step {step}: {config.eval_split} top1 {metrics['top1']:.2f}% "
              f"top5 {metrics['top5']:.2f}%  loss {metrics['loss_smoothed']:.4f} "
              f"(best top1 {best['top1']:.2f}% at step {best['step']})", flush=True)
    if write_scores:
        eval_lib.write_scores(eval_lib.scores_path(workdir, config.eval_split), scores,
                              num_frames=config.data.num_frames)
    return metrics


def _timing_text(timing: dict[str, float], rates: dict[str, float], clock) -> str:
    """Where the time goes (docs/reliability.md#where-time-goes)."""
    return (f"  data {timing['data_wait_ms']:.0f} + device {timing['device_wait_ms']:.0f} "
            f"of {timing['step_ms']:.0f} ms/step  "
            f"{rates['images_per_s_per_device']:.1f} img/s/device  "
            f"{clock.core_hours():.2f} core-h")


def _log_train(config, writer, ckpt, clock, timer, acc, step: int, num_steps: int,
               first_interval: bool, meter=None) -> None:
    """Progress line and train/* scalars for the steps since the last call.

    Throughput, MFU, the ETA and progress.json's ``sec_per_step`` all use the
    timer's step time, measured once the interval's last step has finished: the
    host runs a step ahead of the device, so wall time read before ``drain``
    misses up to a whole step (a 1-step interval showed MFU 75065 %).
    """
    timer.drain()
    summary = {k: float(v) for k, v in acc.compute().items()}
    summary["accuracy"] *= 100   # percent, as eval top1/top5
    _check_finite(summary["loss"], step, ckpt)
    timing = timer.interval()
    sec_per_step = timing["step_ms"] / 1e3
    rates = progress.throughput(timing, config.global_batch_size, config.data.num_frames,
                                jax.device_count())
    eta = clock.eta_s(num_steps - step, sec_per_step, first_interval)
    clock.save(step)
    writer.write_scalars(step, {f"train/{k}": v for k, v in summary.items()}
                         | {f"train/{k}": v for k, v in timing.items() if k != "steps"}
                         | {f"train/{k}": v for k, v in rates.items()}
                         | {"train/core_hours": clock.core_hours()}
                         | ({f"train/{k}": v for k, v in meter.scalars(sec_per_step).items()}
                            if meter else {}))
    if parallel.is_main_process():
        # MFU of the interval (the first one includes compiling).
        print(_progress(step, num_steps, summary, rates["clips_per_s"], eta)
              + _timing_text(timing, rates, clock)
              + (f"  {meter.format(sec_per_step)}" if meter else ""), flush=True)


def _restore_or_init(config, workdir, ckpt, state, shardings, train_iter):
    """Newest usable checkpoint (skipping damaged ones), else the initial weights."""
    start, restored, train_iter = ckpt.restore_latest(abstract_like(state, shardings), train_iter)
    if start is not None:
        logging.info("Resumed from %s/%d", ckpt.directory, start)
        return start, restored, train_iter
    return 0, load_pretrained(config, state, shardings), train_iter


def _log_start(config, writer, state, start: int) -> None:
    if start == 0:
        writer.write_hparams(writers.flat_hparams(config))
    if parallel.is_main_process():
        # Shapes and sizes only: no device-to-host copy, works for sharded params.
        logging.info("Parameters:\n%s", parameter_overview.get_parameter_overview(
            state.params, include_stats=False))


def _stop_for_preemption(guard, ckpt, step, state, train_iter) -> None:
    """Saves (state + iterator) at ``step`` unless already saved, then raises Preempted."""
    with guard.saving():
        if ckpt.latest_step() != step:
            ckpt.save(step, state, train_iter)
        ckpt.wait()
    raise preemption.Preempted(step, ckpt.directory, guard.reason or "stop requested")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Trains (resuming from ``workdir`` if it holds a checkpoint) and evaluates.

    Evaluates on the `is_eval_step` schedule and checkpoints at every evaluation
    (with its metrics, so the best top-1 checkpoint is kept) and every
    ``checkpoint_every_steps``. With ``official_epoch_step`` the official extra
    zero-gradient optimiser step precedes every epoch after the first.

    Returns:
      the final validation metrics ({'top1', 'top5', ...}).
    Raises:
      FloatingPointError: when the training loss becomes NaN/inf; the last good
        checkpoint is kept in ``<workdir>/checkpoints``.
      preemption.Preempted: after SIGTERM/SIGINT or a preemption notice, once
        the checkpoint of the step where all hosts stopped is written.
      CheckpointError: the workdir's checkpoints are all unusable, or its
        config.json differs in a shape-relevant field.
    """
    check_resume_config(workdir, config)
    _check_precision(config)
    _prepare_data(config)
    # Checks that need the built dataset, before anything is written to the workdir.
    validate.check_classes(config)
    _save_config(config, workdir)
    mesh = parallel.create_mesh(config.get("mesh_shape"))
    config = tuning.resolve_config(   # conv_strategy='autotune' only
        config, workdir, platform=parallel.mesh_platform(mesh))
    _write_class_names(config, workdir)
    n_train = pipeline.num_examples(config.data, config.train_split)
    steps_per_epoch = max(1, n_train // config.global_batch_size)
    num_steps = config.num_train_steps if config.num_train_steps > 0 else int(
        config.num_epochs * steps_per_epoch)
    ckpt_every = config.checkpoint_every_steps or max(
        1, int(config.eval_every_epochs * steps_per_epoch))

    clock = progress.RunClock(workdir, jax.device_count(), write=parallel.is_main_process())
    profiler = progress.Profiler(config.get("profile_steps"), workdir)
    state, shardings, train_fn, eval_fn = setup(config, mesh, steps_per_epoch)
    epoch_fn = step_lib.compile_epoch_step(
        shardings, learning_rate=config.learning_rate, momentum=config.momentum,
        nesterov=config.nesterov, weight_decay=config.weight_decay,
    ) if config.get("official_epoch_step", False) else None
    train_iter = pipeline.create_iterator(
        config.data, split=config.train_split, mode="train",
        global_batch_size=config.global_batch_size, process_index=jax.process_index(),
        process_count=jax.process_count(), seed=config.seed)
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), keep=config.keep_checkpoints)
    start, state, train_iter = _restore_or_init(config, workdir, ckpt, state, shardings,
                                                train_iter)
    writer = create_writer(workdir)
    _log_start(config, writer, state, start)
    logging.info("%d train videos, %d steps/epoch, %d steps of %d clips", n_train,
                 steps_per_epoch, num_steps, config.global_batch_size)
    meter = mfu_lib.meter_for_run(config)
    capacity.check_run(config, meter, jax.process_index(), jax.process_count())
    # Start-up work (MFU meter compile, input check, compiling the train step) takes
    # each host a different time; line the hosts up before the first collective, as
    # gloo gives up after 30 s. The step is compiled ahead on the first batch (jit
    # reuses that executable), so its compile time is not part of the skew.
    first_batch = None
    if start < num_steps:
        first_batch = parallel.shard_batch(next(train_iter), mesh)
        compiled.compile_or_explain(train_fn, state, first_batch, config, mesh)
    parallel.barrier("training starts")

    acc, last, eval_metrics, best = None, None, {}, {}
    first_interval = True
    timer = progress.StepTimer()
    with preemption.PreemptionGuard() as guard:
        for step in range(start + 1, num_steps + 1):
            if epoch_fn is not None and step > 1 and (step - 1) % steps_per_epoch == 0:
                state = epoch_fn(state)
            profiler.before_step(step)
            with timer.data():
                batch = first_batch or parallel.shard_batch(next(train_iter), mesh)
                first_batch = None
            state, last = train_fn(state, batch)
            timer.dispatched(last)
            profiler.after_step(step, last)
            acc = last if acc is None else acc.merge(last)
            is_last = step == num_steps
            if step % config.log_every_steps == 0 or is_last:
                _log_train(config, writer, ckpt, clock, timer, acc, step, num_steps,
                           first_interval, meter)
                acc, first_interval = None, False
            is_eval = is_eval_step(step, num_steps, steps_per_epoch, config)
            if is_eval:
                timer.drain()
                eval_metrics = _run_eval(config, eval_fn, state, mesh, writer, step, best,
                                         workdir, write_scores=is_last)
            if is_eval or step % ckpt_every == 0:
                timer.drain()
                _check_finite(float(last.compute()["loss"]), step, ckpt)
                ckpt.save(step, state, train_iter, metrics=eval_metrics if is_eval else None)
            if not is_last and guard.should_stop(step):
                profiler.close()
                clock.save(step)
                writer.flush()
                _stop_for_preemption(guard, ckpt, step, state, train_iter)
    profiler.close()
    clock.save(num_steps)
    ckpt.close()
    writer.flush()
    writer.close()
    return eval_metrics


def _check_finite(loss: float, step: int, ckpt: Checkpointer) -> None:
    if not np.isfinite(loss):
        ckpt.wait()
        raise FloatingPointError(
            f"non-finite training loss {loss} at step {step}; stopped without saving. The "
            f"last good checkpoint is step {ckpt.latest_step()} in {ckpt.directory} (a rerun "
            "resumes from it). Try a lower --config.learning_rate or --config.model.dtype=float32.")


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str, mode: str = "eval"
                        ) -> dict[str, float]:
    """Evaluates the best top-1 (else latest) checkpoint in ``workdir``, or
    ``config.init_from`` if the workdir has none, on ``config.eval_split``; says
    which one (and that ``init_from`` is ignored when both exist).

    ``mode='eval'``: 1 centre clip × 1 centre crop; ``'test'``: multi-view.
    Writes ``<workdir>/eval/<split>_scores.npz`` (test: ``<split>_test_scores.npz``).
    """
    mesh = parallel.create_mesh(config.get("mesh_shape"))
    config = tuning.resolve_config(   # reuses <workdir>/autotune.json
        config, workdir, platform=parallel.mesh_platform(mesh))
    _prepare_data(config)
    state, shardings, _, eval_fn = setup(config, mesh, steps_per_epoch=1)
    ckpt_dir = os.path.join(workdir, "checkpoints")
    ckpt = Checkpointer(ckpt_dir, read_only=True) if os.path.isdir(ckpt_dir) else None
    step = ckpt.best_or_latest_step() if ckpt else None
    if step:
        state, _ = ckpt.restore(step, abstract_like(state, shardings))
        best = step == ckpt.best_step()
        source = f"{ckpt.directory}/{step} ({'best top1' if best else 'latest'})"
        if config.get("init_from") and parallel.is_main_process():
            print(f"evaluating {source}; --config.init_from={config.init_from} is ignored "
                  "(it is used only when the workdir has no checkpoint)", flush=True)
    elif config.get("init_from"):
        state = load_pretrained(config, state, shardings)
        source = resolve_init_from(config.init_from)
    else:
        raise FileNotFoundError(f"no checkpoint in {ckpt_dir} and no --config.init_from "
                                "given: nothing to evaluate")
    logging.info("Evaluating %s", source)
    batch = config.eval_batch_size if mode == "eval" else config.test_batch_size
    metrics, scores = eval_lib.evaluate(eval_fn, state, config.data, mesh,
                                        split=config.eval_split, mode=mode,
                                        global_batch_size=batch,
                                        label_smoothing=config.label_smoothing)
    split_name = config.eval_split + ("_test" if mode == "test" else "")
    path = eval_lib.scores_path(workdir, split_name)
    views = 1 if mode == "eval" else config.data.test_num_clips * config.data.test_num_crops
    eval_lib.write_scores(path, scores, num_frames=config.data.num_frames, views=views)
    if parallel.is_main_process():
        print(json.dumps({"split": config.eval_split, "mode": mode, "views": views,
                          **metrics, "checkpoint": source, "scores": path}), flush=True)
    return metrics
