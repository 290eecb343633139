"""Entry point: ``python -m rsa_jax.main --config CONFIG --workdir DIR [--mode train|eval|test]``.

Flags only; the work is in ``rsa_jax.train.train``. Config values are
overridden with ``--config.x=y`` (e.g. ``--config.model.dtype=bfloat16``);
a config argument follows a colon (``--config configs/ssv2.py:8`` for 8 frames).
Config and data mistakes stop the run with one ``FATAL:`` line before any data
build or compile (docs/reliability.md).
"""

import logging as std_logging
import os
import sys

# Before TensorFlow is imported (by TFDS): TF_CPP_MIN_LOG_LEVEL hides its C++ INFO
# notices, but not the oneDNN one (4 lines on CPUs where oneDNN is on by default),
# which TF logs before that filter applies. TF only reads data and writes summaries
# here, so its oneDNN kernels are off unless asked for (docs/reliability.md).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Training configuration file.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Checkpoints, metrics.jsonl, TensorBoard and eval/ go here.")
flags.DEFINE_enum("mode", "train", ["train", "eval", "test"],
                  "train: train (resuming from workdir) then evaluate; eval: 1-clip centre-crop "
                  "evaluation of the workdir's best checkpoint (or --config.init_from); "
                  "test: multi-clip × multi-crop evaluation.")
flags.DEFINE_string("coordinator_address", None, "Multi-process: host:port of process 0.")
flags.DEFINE_integer("num_processes", None, "Multi-process: number of processes.")
flags.DEFINE_integer("process_id", None, "Multi-process: index of this process.")
flags.DEFINE_bool("library_logs", False,
                  "Also show the INFO logs of orbax, TFDS, grain, clu and etils (very chatty).")
flags.mark_flags_as_required(["config", "workdir"])

_CHATTY = ("/orbax/", "/tensorflow_datasets/", "/grain/", "/clu/", "/etils/")


class _QuietLibraries(std_logging.Filter):
    """Keeps the console to our progress lines: library INFO records are dropped."""

    def filter(self, record: std_logging.LogRecord) -> bool:
        return record.levelno >= std_logging.WARNING or not any(
            part in record.pathname for part in _CHATTY)


def _fatal(error: Exception) -> None:
    """One line on stderr and exit status 1: the message already says what to fix."""
    sys.exit(f"FATAL: {error}")


def main(argv):
    del argv
    if not FLAGS.library_logs:
        logging.get_absl_handler().addFilter(_QuietLibraries())
        from rsa_jax.train import writers
        writers.quiet_console()
    from rsa_jax import parallel  # imports jax; distributed start-up must come first
    parallel.initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes,
                                    FLAGS.process_id)
    import jax
    import tensorflow as tf
    # Before validation, which reads TFDS: TF (tfds, summaries) must not take GPU memory.
    tf.config.set_visible_devices([], "GPU")

    from rsa_jax import validate
    from rsa_jax.cli import ConfigError
    from rsa_jax.data.builders import BadInputError, EmptySplitError
    config, workdir = FLAGS.config, FLAGS.workdir
    try:
        validate.validate(config, workdir, mode=FLAGS.mode, num_devices=jax.device_count(),
                          num_processes=jax.process_count())
    except ConfigError as e:
        _fatal(e)
    done = validate.finished_run(config, workdir) if FLAGS.mode == "train" else None
    if done:
        print(done, flush=True)
        return
    from rsa_jax.train import train
    from rsa_jax.train.checkpoint import CheckpointError
    from rsa_jax.train.compiled import DoesNotFit
    from rsa_jax.train.preemption import Preempted
    if not parallel.is_main_process():
        logging.set_verbosity(logging.WARNING)
    try:
        if FLAGS.mode == "train":
            metrics = train.train_and_evaluate(config, workdir)
            if parallel.is_main_process():
                validate.write_done(workdir, config, metrics)
        else:
            train.evaluate_checkpoint(config, workdir, mode=FLAGS.mode)
    except (ConfigError, BadInputError, EmptySplitError, CheckpointError,
            DoesNotFit) as e:  # one line, no traceback
        _fatal(e)
    except Preempted as e:  # checkpoint written; the scheduler may restart the same command
        print(e, flush=True)   # every host: each host's log says why it stopped
        sys.exit(e.exit_code)


if __name__ == "__main__":
    from rsa_jax import cli
    app.run(main, flags_parser=cli.parse_flags)
