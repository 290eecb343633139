"""Dataset checks that run before any data build or compile (docs/reliability.md).

The data block of a config (``config.data``) against our TFDS builders: dataset and
builder-config names, raw data present when the dataset is not built yet, crop size
and frame count against the stored frames, flip-exempt class ids.  Used by
``python -m rsa_jax.data`` and by `rsa_jax.validate`; imports no model code.
Builders and pipelines are imported on call, so that importing this is cheap.
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Sequence
from typing import Any

from rsa_jax.cli import ConfigError, suggest


def check_dataset(data: Any, flag: str = "--config.data.",
                  manual_dir_flag: str | None = None) -> Any:
    """Dataset name, builder config and raw data of ``data`` (a config's data block).

    Args:
      data: needs ``name``; ``builder_config``, ``manual_dir``, ``data_dir`` optional.
      flag: prefix of the flags named in messages (the data command uses '--').
      manual_dir_flag: the flag that set ``manual_dir`` when it is not ``flag`` +
        'manual_dir' (the data command's ``--manual_dir`` beside ``--config``).
    Returns:
      the TFDS builder config (its ``height``/``width`` are the stored frames).
    Raises:
      ConfigError: unknown dataset or builder config, or raw data needed and absent
        (the message carries the builder's download instructions).
    """
    classes = builder_classes()
    if data.name not in classes:
        raise ConfigError(f"{flag}name={data.name!r} is not one of our datasets: "
                          f"{', '.join(sorted(classes))}{suggest(data.name, list(classes))}")
    cls = classes[data.name]
    cfg = builder_config(cls, data.get("builder_config"), flag)
    instructions = getattr(cls, "MANUAL_DOWNLOAD_INSTRUCTIONS", None)
    manual_dir = data.get("manual_dir")
    if instructions and not (manual_dir and os.path.isdir(manual_dir)) \
            and not is_prepared(data):
        problem = ("is not set" if not manual_dir else f"{manual_dir!r} is not a directory")
        raise ConfigError(
            f"{data.name} is not built yet and {manual_dir_flag or flag + 'manual_dir'} "
            f"{problem}; put the raw "
            "data there as follows:\n" + textwrap.indent(textwrap.dedent(instructions), "  "))
    return cfg


def check_data(data: Any, manual_dir_flag: str | None = None) -> None:
    """check_dataset, then crop size, frame count and test views against the stored frames."""
    cfg = check_dataset(data, manual_dir_flag=manual_dir_flag)
    height, width = getattr(cfg, "height", 240), getattr(cfg, "width", 320)  # as pipeline.py
    side = min(height, width)
    if not 1 <= data.image_size <= side:
        raise ConfigError(
            f"--config.data.image_size={data.image_size} must be in [1, {side}]: "
            f"{data.name}/{cfg.name} stores {height}x{width} frames and crops are taken "
            "from them (a larger crop would be upscaled)")
    if data.num_frames < 1:
        raise ConfigError(f"--config.data.num_frames={data.num_frames} must be >= 1")
    clips, crops = data.get("test_num_clips", 1), data.get("test_num_crops", 1)
    if clips < 1:
        raise ConfigError(f"--config.data.test_num_clips={clips} must be >= 1")
    if crops not in (1, 3):
        raise ConfigError(f"--config.data.test_num_crops={crops} must be 1 or 3")


def check_flip_ids(data: Any, names: Sequence[str]) -> None:
    """``data.flip_exempt_classes`` must be ids of the dataset's classes."""
    from rsa_jax.data import pipeline
    try:
        pipeline.flip_exempt_ids(data, list(names))
    except ValueError as e:
        raise ConfigError(f"--config.{e}; these ids are a config's (configs/ssv2.py: "
                          "Something-Something's order): set --config.data.flip_exempt_classes"
                          "=None to find left/right classes by name, or list this dataset's "
                          "ids") from None


def builder_classes() -> dict[str, type]:
    """Our TFDS builders by dataset name (importing them registers them): every
    `VideoBuilder` the builders package exports, so a new one cannot be left out."""
    from rsa_jax.data import builders
    classes = [getattr(builders, n) for n in builders.__all__]
    return {cls.name: cls for cls in classes if isinstance(cls, type)
            and issubclass(cls, builders.VideoBuilder) and cls is not builders.VideoBuilder}


def builder_config(cls: type, name: str | None, flag: str) -> Any:
    """The builder config ``name`` of builder ``cls`` (None: its default)."""
    configs = {c.name: c for c in cls.BUILDER_CONFIGS}
    name = name or cls.DEFAULT_CONFIG_NAME
    if name not in configs:
        raise ConfigError(f"{flag}builder_config={name!r} is not a config of "
                          f"{cls.name}: {', '.join(configs)}{suggest(name, list(configs))}")
    return configs[name]


def is_prepared(data: Any) -> bool:
    """Whether the dataset of ``data`` is built in its ``data_dir``."""
    from rsa_jax.data import pipeline
    return pipeline.tfds_builder(data).is_prepared()


def check_split(data: Any, split: str) -> None:
    """The split exists in the built dataset (TFDS slicing such as 'train[:10%]' allowed),
    and the config's flip ids are classes of it (the grid's train clips flip)."""
    from rsa_jax.data import pipeline
    builder = pipeline.prepared_builder(data)
    splits = sorted(builder.info.splits)
    if split.split("[")[0] not in splits:
        raise ConfigError(f"--split {split!r}: {data.name} has the splits "
                          f"{', '.join(splits)}{suggest(split, splits)}")
    check_flip_ids(data, builder.info.features["label"].names)
