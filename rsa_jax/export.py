"""Export a trained or converted model for serving.

    python -m rsa_jax.export --checkpoint PATH --out DIR [--batch N|dynamic] [--frames T]
        [--image_size S] [--platforms cpu,cuda] [--no_saved_model]

Writes to DIR:

- ``model_float32.jax_exported`` / ``model_uint8.jax_exported``: ``jax.export``
  serialized StableHLO of ``(weights, video) -> logits`` for normalised
  float32 frames and for raw uint8 RGB frames (normalised inside, the
  pipeline's ImageNet constants); ``weights.npz`` holds the weights as a flat
  list and ``serving.json`` the input shape, class names and preprocessing.
  ``rsa_jax.serving.load`` runs them without the model code.
- ``saved_model/``: a TensorFlow SavedModel (``jax2tf``) for TF Serving, with
  signatures ``serving_default`` (float32) and ``uint8``.

``--batch dynamic`` exports a symbolic batch dimension. The input is one
centre clip: T frames sampled and centre-cropped to S×S as ``--mode eval``
does (``rsa_jax.inference.views_of``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

import numpy as np

from rsa_jax import inference, serving


def _flat_forward(loaded: inference.LoadedModel):
    """(weights list, video) -> float32 logits, with the variables' tree fixed; uint8
    video is normalised inside (the dtype picks the variant)."""
    import jax
    import jax.numpy as jnp

    from rsa_jax.train import (
        step as step_lib,  # uint8 frames: the train/eval steps' own normalisation
    )
    treedef = jax.tree_util.tree_structure(loaded.variables)

    def forward(weights, video):
        variables = jax.tree_util.tree_unflatten(treedef, weights)
        x = step_lib.normalize_video(video)
        return loaded.model.apply(variables, x, train=False).astype(jnp.float32)

    return forward


def export_stablehlo(loaded: inference.LoadedModel, out: str, batch: int | None,
                     platforms: Sequence[str] | None = None) -> list[str]:
    """Writes both StableHLO variants, the weights and serving.json; returns paths."""
    import jax
    from jax import export
    os.makedirs(out, exist_ok=True)
    leaves = [np.asarray(x) for x in jax.tree_util.tree_leaves(loaded.variables)]
    t, s = loaded.data["num_frames"], loaded.data["image_size"]
    b = export.symbolic_shape("b")[0] if batch is None else batch
    w_spec = [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in leaves]
    paths = []
    for variant in serving.VARIANTS:
        x_spec = jax.ShapeDtypeStruct((b, t, s, s, 3), np.dtype(variant))
        exp = export.export(jax.jit(_flat_forward(loaded)),
                            platforms=platforms)(w_spec, x_spec)
        path = os.path.join(out, serving.artefact_name(variant))
        with open(path, "wb") as f:
            f.write(exp.serialize())
        paths.append(path)
    np.savez(os.path.join(out, serving.WEIGHTS_FILE), **{f"w{i}": x for i, x in enumerate(leaves)})
    meta = {"input_shape": [batch, t, s, s, 3], "num_frames": t, "image_size": s,
            "stored_height": loaded.data["height"], "stored_width": loaded.data["width"],
            "class_names": loaded.class_names, "source": loaded.source,
            "model_config": loaded.model_cfg,
            "preprocessing": "evaluation pipeline: TSN centre frames of T segments, frames "
                             "resized to stored_height x stored_width, centre S x S crop; "
                             "float32 variant: ImageNet-normalised"}
    with open(os.path.join(out, serving.META_FILE), "w") as f:
        json.dump(meta, f, indent=2, default=str)
    return paths + [os.path.join(out, serving.WEIGHTS_FILE), os.path.join(out, serving.META_FILE)]


def _serve_fn(tf_fn, module):
    def serve(video):
        return {"logits": tf_fn(module.weights, video)}
    return serve


def export_saved_model(loaded: inference.LoadedModel, out: str, batch: int | None) -> str:
    """Writes ``<out>/saved_model`` via jax2tf (weights as tf.Variables); returns it."""
    import jax
    import tensorflow as tf
    from jax.experimental import jax2tf
    tf.config.set_visible_devices([], "GPU")
    leaves = [np.asarray(x) for x in jax.tree_util.tree_leaves(loaded.variables)]
    t, s = loaded.data["num_frames"], loaded.data["image_size"]
    module = tf.Module()
    module.weights = [tf.Variable(x, trainable=False) for x in leaves]
    poly = None if batch is not None else [None, "(b, ...)"]
    fns = {}
    for variant in serving.VARIANTS:
        tf_fn = jax2tf.convert(_flat_forward(loaded), polymorphic_shapes=poly,
                               with_gradient=False)
        spec = tf.TensorSpec((batch, t, s, s, 3), getattr(tf, variant), name="video")
        fns[variant] = tf.function(_serve_fn(tf_fn, module), input_signature=[spec],
                                   autograph=False)
    module.serve_float32, module.serve_uint8 = fns["float32"], fns["uint8"]
    path = os.path.join(out, "saved_model")
    tf.saved_model.save(module, path, signatures={
        "serving_default": module.serve_float32.get_concrete_function(),
        "uint8": module.serve_uint8.get_concrete_function()})
    return path


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m rsa_jax.export",
                                description="StableHLO (jax.export) and TF SavedModel export.")
    p.add_argument("--checkpoint", required=True, help="training workdir or converted dir")
    p.add_argument("--out", required=True)
    p.add_argument("--batch", default="dynamic", help="a batch size, or 'dynamic'")
    p.add_argument("--frames", type=int, default=None, help="T (default: the checkpoint's)")
    p.add_argument("--image_size", type=int, default=None, help="S (default: the checkpoint's)")
    p.add_argument("--labels", default=None, help="class names file")
    p.add_argument("--platforms", default=None,
                   help="comma-separated jax.export platforms, e.g. cpu,cuda (default: this one)")
    p.add_argument("--no_saved_model", action="store_true", help="skip the TF SavedModel")
    args = p.parse_args(argv)
    if args.batch != "dynamic" and not args.batch.isdigit():
        print(f"error: --batch must be a positive integer or 'dynamic', got {args.batch!r}",
              file=sys.stderr)
        return 2
    batch = None if args.batch == "dynamic" else int(args.batch)
    loaded = inference.load_for_cli(args)
    if loaded is None:
        return 2
    platforms = args.platforms.split(",") if args.platforms else None
    out = os.path.abspath(args.out)
    if os.path.exists(out) and not os.path.isdir(out):
        print(f"error: --out {args.out}: is a file, not a directory", file=sys.stderr)
        return 2

    def write(directory: str) -> list[str]:
        written = export_stablehlo(loaded, directory, batch, platforms)
        if not args.no_saved_model:
            written.append(export_saved_model(loaded, directory, batch))
        return written

    written = _write_whole(out, write)
    print(json.dumps({"out": out, "files": written}))
    return 0


def _write_whole(out: str, write) -> list[str]:
    """Runs ``write(directory)`` in a fresh sibling of ``out`` and renames it to ``out``
    at the end (replacing an earlier export there), so a failed export leaves nothing
    behind and never half of one; returns the written paths, under ``out``."""
    import shutil
    import tempfile
    parent, name = os.path.split(out)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{name}.partial-", dir=parent)
    old = None
    try:
        written = write(tmp)
        if os.path.isdir(out):
            old = tempfile.mkdtemp(prefix=f".{name}.old-", dir=parent)
            os.rename(out, os.path.join(old, name))
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not os.path.exists(out):   # put the earlier export back
            os.rename(os.path.join(old, name), out)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    return [out + p[len(tmp):] if p.startswith(tmp) else p for p in written]


if __name__ == "__main__":
    sys.exit(main())
