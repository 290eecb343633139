"""export: StableHLO (both input variants) and the TF SavedModel reproduce the model's
logits in a fresh process that never imports the model code."""

import json
import os
import subprocess
import sys

import numpy as np
import predict_helpers as ph
import pytest

from rsa_jax import export, inference, serving
from rsa_jax.data import transforms

pytestmark = pytest.mark.slow
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    converted, _ = ph.make_converted_dir(str(root))
    out = str(root / "out")
    assert export.main(["--checkpoint", converted, "--out", out, "--image_size", "28"]) == 0
    loaded = inference.load(converted, image_size=28)
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (3, 4, 28, 28, 3), dtype=np.uint8)  # batch 3: dynamic
    frames = transforms.normalize(pixels)
    ref = np.asarray(loaded.model.apply(loaded.variables, frames, train=False))
    np.save(root / "frames.npy", frames)
    np.save(root / "pixels.npy", pixels)
    return root, out, ref


def _fresh(code: str, cwd) -> None:
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("XLA_FLAGS", None)
    res = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env,
                         capture_output=True, text=True, timeout=600, check=False)
    assert res.returncode == 0, res.stderr[-3000:]


def test_stablehlo_in_a_fresh_process_without_model_code(exported):
    root, out, ref = exported
    _fresh(f"""
import sys, numpy as np
from rsa_jax import serving
f = serving.load({out!r})
u = serving.load({out!r}, variant="uint8")
np.save("hlo_float.npy", f(np.load("frames.npy")))
np.save("hlo_uint8.npy", u(np.load("pixels.npy")))
leaked = [m for m in ("rsa_jax.models", "rsa_jax.layers", "flax") if m in sys.modules]
assert not leaked, leaked
assert f.input_shape[0] is None and len(f.class_names) == 5
""", root)
    tol = 1e-5 * np.abs(ref).max()
    np.testing.assert_allclose(np.load(root / "hlo_float.npy"), ref, rtol=1e-5, atol=tol)
    np.testing.assert_allclose(np.load(root / "hlo_uint8.npy"), ref, rtol=1e-5, atol=tol)


def test_saved_model_in_a_fresh_process(exported):
    root, out, ref = exported
    _fresh(f"""
import numpy as np, tensorflow as tf
m = tf.saved_model.load({out!r} + "/saved_model")
x = tf.constant(np.load("frames.npy"))
np.save("tf_float.npy", m.signatures["serving_default"](video=x)["logits"].numpy())
p = tf.constant(np.load("pixels.npy"))
np.save("tf_uint8.npy", m.signatures["uint8"](video=p)["logits"].numpy())
""", root)
    tol = 1e-5 * np.abs(ref).max()
    np.testing.assert_allclose(np.load(root / "tf_float.npy"), ref, rtol=1e-5, atol=tol)
    np.testing.assert_allclose(np.load(root / "tf_uint8.npy"), ref, rtol=1e-5, atol=tol)


def test_loader_rejects_a_wrong_shape_and_names_missing_files(exported, tmp_path):
    _, out, _ = exported
    with open(os.path.join(out, serving.META_FILE)) as f:
        meta = json.load(f)
    assert meta["input_shape"] == [None, 4, 28, 28, 3]
    model = serving.load(out)
    with pytest.raises(ValueError, match="does not fit the exported"):
        model(np.zeros((1, 8, 28, 28, 3), np.float32))
    with pytest.raises(FileNotFoundError, match="serving.json: missing"):
        serving.load(str(tmp_path))


def test_cpu_per_position_matmul_exports_with_a_symbolic_batch():
    """The CPU matmul form that depends on the batch size (n, j, d <= 4, n·j·d >= 32:
    the demo's stage 1, 2 heads of 4 channels) must trace with a symbolic batch, the
    default `--batch dynamic`; it used to raise InconclusiveDimensionOperation."""
    import jax
    from jax import export as jax_export

    from rsa_jax.layers import conv_forms
    rng = np.random.default_rng(0)
    a = rng.normal(size=(3, 5, 2, 4)).astype(np.float32)
    w = rng.normal(size=(3, 5, 4, 4)).astype(np.float32)
    b = jax_export.symbolic_shape("b")[0]
    exp = jax_export.export(jax.jit(conv_forms.cpu_matmul), platforms=["cpu"])(
        jax.ShapeDtypeStruct((b,) + a.shape[1:], a.dtype),
        jax.ShapeDtypeStruct((b,) + w.shape[1:], w.dtype))
    np.testing.assert_allclose(np.asarray(exp.call(a, w)), a @ w, rtol=1e-5, atol=1e-6)


def test_default_dynamic_batch_exports_a_stage_one_rsa_model(tmp_path):
    """The README command `export --checkpoint W --out X` with its defaults (`--batch
    dynamic`) on a model with RSA in stage 1 at width 8 / 2 heads (the CPU demo's
    per-head sizes, which pick the batch-dependent matmul form): it used to fail at
    trace time; the export now runs batches of any size like the model."""
    converted, _ = ph.make_converted_dir(
        str(tmp_path), model_overrides={"rsa_positions": ((1,), (), (), ())})
    out = str(tmp_path / "out")
    assert export.main(["--checkpoint", converted, "--out", out, "--image_size", "28",
                        "--no_saved_model"]) == 0
    loaded = inference.load(converted, image_size=28)
    model = serving.load(out)
    assert model.input_shape[0] is None
    rng = np.random.default_rng(1)
    for batch in (1, 3):
        frames = transforms.normalize(rng.integers(0, 256, (batch, 4, 28, 28, 3), np.uint8))
        ref = np.asarray(loaded.model.apply(loaded.variables, frames, train=False))
        np.testing.assert_allclose(model(frames), ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


def test_failed_export_leaves_nothing_and_keeps_an_earlier_export(exported, tmp_path,
                                                                  monkeypatch):
    """A failure after the StableHLO files were written (here: in the SavedModel step)
    leaves no half-written --out, and an earlier export in --out stays intact."""
    root, good, _ = exported
    converted = str(root / "converted")

    def broken(*args, **kwargs):
        raise RuntimeError("jax2tf failed")

    monkeypatch.setattr(export, "export_saved_model", broken)
    fresh = tmp_path / "fresh"
    with pytest.raises(RuntimeError, match="jax2tf failed"):
        export.main(["--checkpoint", converted, "--out", str(fresh), "--image_size", "28"])
    assert not fresh.exists()
    assert os.listdir(tmp_path) == []          # no partial sibling left either
    before = {n: os.path.getmtime(os.path.join(good, n)) for n in os.listdir(good)}
    with pytest.raises(RuntimeError, match="jax2tf failed"):
        export.main(["--checkpoint", converted, "--out", good, "--image_size", "28"])
    assert {n: os.path.getmtime(os.path.join(good, n)) for n in os.listdir(good)} == before
    assert not [n for n in os.listdir(root) if n.startswith(".")]   # no partial or old copy
