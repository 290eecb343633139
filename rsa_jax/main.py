"""Entry point: ``python -m rsa_jax.main --config configs/ssv2.py --workdir DIR [--mode train|eval|test]``.

Flags only; the work is in ``rsa_jax.train.train``. Config values are
overridden with ``--config.x=y`` (e.g. ``--config.model.dtype=bfloat16``);
a config argument follows a colon (``--config configs/ssv2.py:8`` for 8 frames).
"""

import logging as std_logging

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


def main(argv):
    del argv
    if not FLAGS.library_logs:
        logging.get_absl_handler().addFilter(_QuietLibraries())
    from rsa_jax import parallel  # imports jax; distributed start-up must come first
    parallel.initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes,
                                    FLAGS.process_id)
    import tensorflow as tf
    tf.config.set_visible_devices([], "GPU")  # TF (tfds, summaries) must not take GPU memory
    from rsa_jax.train import train
    if not parallel.is_main_process():
        logging.set_verbosity(logging.WARNING)
    if FLAGS.mode == "train":
        train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    else:
        train.evaluate_checkpoint(FLAGS.config, FLAGS.workdir, mode=FLAGS.mode)


if __name__ == "__main__":
    app.run(main)
