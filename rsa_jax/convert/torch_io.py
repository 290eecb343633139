"""Reading PyTorch checkpoint files into numpy state dicts, safely.

``torch.load`` runs with ``weights_only=True`` (no arbitrary pickled code) unless
the caller trusts the file; every failure is one line naming the file and what was
expected.  torch is imported only here, and only when a torch file is read.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not match the model (strict)."""


def _one_line(text: str, limit: int = 300) -> str:
    return " ".join(str(text).split())[:limit]


def _read_npz(path: str) -> tuple[dict, dict]:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}, {}
    except Exception as e:  # zipfile.BadZipFile, ValueError, EOFError ...
        raise CheckpointError(f"{path}: not a readable .npz state dict "
                              f"(truncated or corrupt?): {_one_line(e)}") from e


def read_state_dict(path: str, trust_pickle: bool = False) -> tuple[dict, dict]:
    """Reads a `.pth` / `.pth.tar` (torch.save) or `.npz` file.

    Args:
      path: the file; `.npz` is read with numpy, anything else with torch.
      trust_pickle: allow arbitrary pickled objects (``weights_only=False``); only
        for files from a trusted source.

    Returns:
      (state_dict of numpy arrays, metadata: the checkpoint's other top-level
      entries such as epoch / arch / best_prec1).

    Raises:
      FileNotFoundError; CheckpointError for truncated or non-checkpoint files;
      ImportError when a torch file is given and PyTorch is not installed.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    if path.endswith(".npz"):
        return _read_npz(path)
    try:
        import torch  # optional dependency, only for reading PyTorch files
    except ImportError as e:
        raise ImportError(f"reading {path} needs PyTorch (an optional dependency of the "
                          "converter): pip install torch, or save the state dict as .npz"
                          ) from e
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except Exception as e:
        hint = ("" if trust_pickle or "weights_only" not in str(e) else
                " If the file is from a trusted source and stores non-tensor Python "
                "objects, retry with trust_pickle=True (--trust_pickle).")
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (truncated, "
                              f"corrupt or not written by torch.save): "
                              f"{type(e).__name__}: {_one_line(e)}{hint}") from e
    if isinstance(obj, Mapping) and "state_dict" in obj:
        sd, meta = obj["state_dict"], {k: v for k, v in obj.items() if k != "state_dict"}
    elif isinstance(obj, Mapping):
        sd, meta = obj, {}
    else:
        raise CheckpointError(f"{path}: expected a dict (a state_dict, or a checkpoint "
                              f"with a 'state_dict' entry), got {type(obj).__name__}")
    if not isinstance(sd, Mapping) or not sd:
        raise CheckpointError(f"{path}: 'state_dict' is empty or not a dict")
    bad = sorted(k for k, v in sd.items() if not isinstance(v, torch.Tensor))
    if bad:
        raise CheckpointError(f"{path}: state_dict entries that are not tensors: {bad[:20]}")
    arrays = {str(k): v.detach().cpu().numpy() for k, v in sd.items()}
    meta = {k: (v.item() if isinstance(v, torch.Tensor) and v.numel() == 1 else v)
            for k, v in meta.items()}
    return arrays, meta
