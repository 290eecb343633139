"""What every command line shares: ``ConfigError``, typo'd ``--config.x`` keys, and
absl flag parsing that reports mistakes as one ``FATAL:`` line (docs/reliability.md).

Imports nothing of ours, so that `rsa_jax.validate` (run checks), `rsa_jax.data.checks`
(dataset checks) and every entry point can use it (docs/architecture.md).
"""

from __future__ import annotations

import difflib
import importlib.util
import os
import sys
from collections.abc import Sequence
from typing import Any


class ConfigError(ValueError):
    """A config/flag mistake found before any work starts; the message says how to fix it."""


def suggest(word: str, options: Sequence[str]) -> str:
    """``"; did you mean 'x'?"`` for the option closest to ``word``, or ''."""
    close = difflib.get_close_matches(word, list(options), n=1)
    return f'; did you mean {close[0]!r}?' if close else ''


# ----------------------------------------------------------------- argv overrides

def _load_config_file(spec: str) -> Any:
    """Runs ``get_config`` of a config file given as ``path[:arg]``."""
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise ConfigError(f"--config: file {path!r} not found")
    module_spec = importlib.util.spec_from_file_location("_rsa_config", path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
        return module.get_config(arg) if arg else module.get_config()
    except Exception as e:  # any error in the user's file, named in one line
        raise ConfigError(f"--config {spec}: get_config failed ({type(e).__name__}: {e})") from e


def _config_spec(argv: Sequence[str]) -> str | None:
    for i, a in enumerate(argv):
        if a.startswith("--config="):
            return a.split("=", 1)[1]
        if a == "--config" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def check_overrides(argv: Sequence[str]) -> None:
    """Checks the ``--config`` file loads and every ``--config.a.b[=v]`` names a field.

    absl reports an unknown key as three chained tracebacks, and a missing
    config file only when the config is first used; this names the flag (and
    the closest existing key) at once.

    Raises:
      ConfigError: unknown key (with a suggestion), or a config file that is
        missing or fails to load.
    """
    spec = _config_spec(argv)
    if spec is None:
        return
    overrides = [a[len("--config."):].split("=", 1)[0] for a in argv
                 if a.startswith("--config.")]
    config = _load_config_file(spec)
    for key in overrides:
        node, walked = config, []
        for part in key.split("."):
            fields = list(node.keys()) if hasattr(node, "keys") else []
            if part not in fields:
                where = ".".join(walked) or "the config"
                raise ConfigError(f"--config.{key}: {where} has no field {part!r}"
                                  f"{suggest(part, fields)} (fields: {', '.join(sorted(fields))})")
            node = node[part]
            walked.append(part)


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing for our entry points (`app.run(..., flags_parser=...)`), with
    typo'd --config.x keys and flag errors reported as one FATAL line."""
    from absl import flags
    try:
        check_overrides(argv)
        return flags.FLAGS(argv)
    except ConfigError as e:
        sys.exit(f"FATAL: {e}")
    except flags.Error as e:
        sys.exit(f"FATAL: {e} (see --helpfull)")
