"""The data command (docs/reliability.md).

    python -m rsa_jax.data prepare --config configs/ssv2.py [--config.data.x=y ...]
    python -m rsa_jax.data prepare --name NAME [--builder_config C] --manual_dir DIR \\
        --data_dir DIR [--on_error skip|raise]
    python -m rsa_jax.data inspect --config CONFIG --split S [--out grid.png]

`prepare` builds the TFDS dataset ahead of training, with a progress bar per
split, and closes with `built N of M videos per split; K skipped (reasons),
see .../problems.json`. `inspect` writes a PNG grid of decoded, augmented
training clips and eval clips and prints class balance and frame counts.
Errors (bad flags, bad raw data with `--on_error=raise`, an empty split) are
one `FATAL:` line naming the file or flag, never a traceback.
"""

from __future__ import annotations

import os
import sys

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

# Before TensorFlow is imported: no C++ INFO notices, no oneDNN notice (rsa_jax/main.py).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Training config whose `data` block is used.")
flags.DEFINE_string("name", None, "Dataset name (without --config), e.g. video_list.")
flags.DEFINE_string("builder_config", None, "Builder config, e.g. 'video' or 'gym288'.")
flags.DEFINE_string("manual_dir", None, "Raw data folder (overrides config.data.manual_dir).")
flags.DEFINE_string("data_dir", None, "TFDS folder (overrides config.data.data_dir).")
flags.DEFINE_enum("on_error", None, ["skip", "raise"],
                  "Bad raw input: skip and count it (default) or stop at the first.")
flags.DEFINE_integer("build_workers", None, "Processes decoding raw files.")
flags.DEFINE_string("split", "train", "inspect: split to show.")
flags.DEFINE_string("out", "grid.png", "inspect: PNG to write.")
flags.DEFINE_integer("num_clips", 4, "inspect: clips per mode in the grid.")
flags.DEFINE_integer("stats_limit", 1000, "inspect: records read for the statistics.")

COMMANDS = ("prepare", "inspect")


def _fatal(error: Exception | str) -> None:
    sys.exit(f"FATAL: {error}")


def _data_config() -> ml_collections.ConfigDict:
    """config.data (or one made from --name), with the command-line folders applied."""
    if FLAGS.config is not None and FLAGS.name:
        raise app.UsageError("give --config or --name, not both")
    if FLAGS.config is not None:
        data = ml_collections.ConfigDict(FLAGS.config.data.to_dict())
    elif FLAGS.name:
        data = ml_collections.ConfigDict({"name": FLAGS.name, "builder_config": None,
                                          "manual_dir": None, "data_dir": None})
    else:
        raise app.UsageError("give --config CONFIG or --name NAME")
    for key in ("builder_config", "manual_dir", "data_dir", "on_error", "build_workers"):
        value = getattr(FLAGS, key)
        if value is not None:
            data[key] = value
    return data


def _manual_dir_flag() -> str | None:
    """The flag that set the raw folder, when it is this command's own --manual_dir."""
    return "--manual_dir" if FLAGS.manual_dir is not None else None


def prepare(data: ml_collections.ConfigDict) -> str:
    """Builds (or finds built) the dataset; returns the closing summary line."""
    from rsa_jax.data import checks, pipeline, problems
    prefix = "--config.data." if FLAGS.config is not None else "--"
    checks.check_dataset(data, prefix, manual_dir_flag=_manual_dir_flag())
    builder = pipeline.prepare(data)
    data_dir = str(builder.data_dir)
    content = problems.read(data_dir)
    if content is None:  # built before problems.json existed
        sizes = ", ".join(f"{s} {info.num_examples}" for s, info in builder.info.splits.items())
        return f"{builder.name}: already built in {data_dir} ({sizes} videos)"
    return problems.summary(data_dir, content)


def inspect(data: ml_collections.ConfigDict) -> str:
    """Prints split statistics; writes the clip grid; returns the grid's line."""
    from rsa_jax.data import checks, inspection
    if FLAGS.config is None:
        raise app.UsageError("inspect needs --config (frames, crop size and augmentation)")
    checks.check_data(data, manual_dir_flag=_manual_dir_flag())
    checks.check_split(data, FLAGS.split)
    print(inspection.format_stats(inspection.split_stats(data, FLAGS.split, FLAGS.stats_limit)))
    return inspection.write_grid(data, FLAGS.split, FLAGS.out, FLAGS.num_clips,
                                 seed=FLAGS.config.get("seed", 0))


def main(argv: list[str]) -> None:
    if len(argv) != 2 or argv[1] not in COMMANDS:
        raise app.UsageError(f"usage: python -m rsa_jax.data {{{','.join(COMMANDS)}}} "
                             "--config CONFIG | --name NAME ...")
    # Library INFO lines would bury the progress bars and the summary; the
    # per-video skip warnings stay.
    logging.set_verbosity(logging.WARNING)
    from rsa_jax.cli import ConfigError
    from rsa_jax.data.builders import BadInputError, EmptySplitError
    data = _data_config()
    try:
        line = prepare(data) if argv[1] == "prepare" else inspect(data)
    except (ConfigError, BadInputError, EmptySplitError, FileNotFoundError) as e:
        _fatal(e)
    print(line, flush=True)


if __name__ == "__main__":
    from rsa_jax import cli
    app.run(main, flags_parser=cli.parse_flags)
