"""Class-name files: one name per output logit, next to a checkpoint.

Training writes ``<workdir>/class_names.json``; ``python -m rsa_jax.convert official
--labels FILE`` writes it next to a converted checkpoint; predict, explain and analyze
read it (``--labels FILE`` overrides it). Imports nothing of ours, so that training,
conversion and inference can all use it (docs/architecture.md).
"""

from __future__ import annotations

import json
import os

CLASS_NAMES_FILE = "class_names.json"


def read_labels(path: str) -> list[str]:
    """Class names from a JSON list or a text file with one name per line."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise FileNotFoundError(f"{path}: cannot read labels file ({e.strerror})") from e
    if text.lstrip().startswith("["):
        names = json.loads(text)
    else:
        names = [line.strip() for line in text.splitlines() if line.strip()]
    return [str(n) for n in names]


def write_class_names(directory: str, names: list[str]) -> str:
    """Writes ``<directory>/class_names.json`` (a JSON list); returns its path."""
    path = os.path.join(directory, CLASS_NAMES_FILE)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(list(names), f, indent=1)
    return path
