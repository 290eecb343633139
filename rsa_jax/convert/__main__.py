"""``python -m rsa_jax.convert official|torchvision INPUT OUT_DIR``: PyTorch -> orbax.

Prints one JSON line (output directory and model config) on success; a one-line
``error: ...`` on stderr and exit code 2 for a bad or mismatched input
(docs/converting.md).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from rsa_jax.convert.official import official_to_orbax, save_orbax
from rsa_jax.convert.torch_io import CheckpointError
from rsa_jax.convert.torchvision import torchvision_to_backbone
from rsa_jax.labels import read_labels, write_class_names
from rsa_jax.models import default_model_config


def read_model_config(value: str) -> dict:
    """``--model_config``: a JSON file's path, or inline JSON; a JSON object either way.

    Raises:
      CheckpointError: naming the file (or the inline text) and the JSON problem.
    """
    if os.path.isfile(value):
        where = value
        with open(value) as f:
            text = f.read()
    elif value.lstrip().startswith("{"):
        where, text = "inline --model_config", value
    else:
        raise CheckpointError(f"--model_config {value!r}: no such file, and not inline "
                              "JSON (which starts with '{')")
    try:
        cfg = json.loads(text)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{where}: not valid JSON: {e}") from e
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{where}: expected a JSON object of model config fields, "
                              f"got {type(cfg).__name__}")
    return cfg


def _known_fields(fields: dict, defaults: dict) -> dict:
    """``fields`` if each names a model config field (as ``main``'s ``--config.model.x``
    must); a typo would otherwise be saved in model_config.json and silently ignored.

    Raises:
      CheckpointError: naming the unknown field, the closest known one and the list.
    """
    import difflib
    known = set(defaults) | {"precision", "platform"}   # build_model's optional fields
    for key in fields:
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise CheckpointError(f"--model_config: unknown model config field {key!r}{hint} "
                                  f"(fields: {', '.join(sorted(known))})")
    return fields


def main(argv: list[str] | None = None) -> int:
    """Runs the converter CLI; returns the process exit code (2 on a bad input)."""
    parser = argparse.ArgumentParser(
        prog="python -m rsa_jax.convert",
        description="Convert PyTorch checkpoints to orbax checkpoints for rsa_jax.")
    sub = parser.add_subparsers(dest="kind", required=True)
    p = sub.add_parser("official", help="official RSA .pth.tar -> orbax (params, batch_stats)")
    p.add_argument("input")
    p.add_argument("out_dir")
    p.add_argument("--num_segments", type=int, default=None)
    p.add_argument("--labels", default=None, metavar="FILE",
                   help="class names (one per line, or a JSON list), stored with the "
                        "checkpoint as class_names.json for predict/analyze")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--trust_pickle", action="store_true",
                   help="allow arbitrary pickled objects (torch.load weights_only=False)")
    p = sub.add_parser("torchvision",
                       help="torchvision ImageNet ResNet .pth -> inflated backbone (orbax)")
    p.add_argument("input")
    p.add_argument("out_dir")
    p.add_argument("--model_config", default=None,
                   help="model config fields: a JSON file path, or inline JSON "
                        "(default: the paper's RSA-R50)")
    p.add_argument("--depth", type=int, default=None)
    p.add_argument("--backbone", default=None, choices=("rsa", "tsn2d", "tsn3d"))
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--trust_pickle", action="store_true")
    args = parser.parse_args(argv)
    try:
        if args.kind == "official":
            names = read_labels(args.labels) if args.labels else None
            cfg = official_to_orbax(args.input, args.out_dir, num_segments=args.num_segments,
                                    overwrite=args.overwrite, trust_pickle=args.trust_pickle)
            if names is not None:
                if len(names) != cfg["num_classes"]:
                    raise ValueError(f"{args.labels}: {len(names)} class names, but the "
                                     f"checkpoint has {cfg['num_classes']} classes (converted "
                                     f"to {args.out_dir} without class names)")
                write_class_names(args.out_dir, names)
        else:
            cfg = default_model_config()
            if args.model_config:
                cfg.update(_known_fields(read_model_config(args.model_config), cfg))
            for k in ("depth", "backbone"):
                if getattr(args, k) is not None:
                    cfg[k] = getattr(args, k)
            variables = torchvision_to_backbone(args.input, cfg,
                                                trust_pickle=args.trust_pickle)
            save_orbax(args.out_dir, variables, cfg,
                        dict(source=os.path.abspath(args.input), kind="torchvision"),
                        args.overwrite)
    except (ValueError, OSError, ImportError) as e:
        # CheckpointError is a ValueError; so are bad model config values (build_model).
        print("error: " + " ".join(str(e).split()), file=sys.stderr)
        return 2
    print(json.dumps({"out_dir": os.path.abspath(args.out_dir), "model_config": cfg}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
