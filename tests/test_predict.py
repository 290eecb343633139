"""predict / explain: same logits as --mode eval, bad inputs, windows, kernel values."""

import io
import json
import os
import sys

import av
import data_helpers as dh
import jax
import jax.numpy as jnp
import numpy as np
import predict_helpers as ph
import pytest

from rsa_jax import explain, inference, predict
from rsa_jax.layers.kernels import window_kernels
from rsa_jax.layers.rsa import RSA, extract_windows, l2_normalize

# --- RSA kernels (fast, layer level) --------------------------------------------

@pytest.mark.parametrize("implementation", ["patches", "conv"])
@pytest.mark.parametrize("zero", [None, "H1", "P1"])
def test_sown_kernels_reproduce_the_layer_output(implementation, zero):
    """With a basic context (X_n = V̂ windows) the layer output must be κ·X_n for the
    sown κ = basic + relational; zeroing H1 (resp. P1) must zero exactly the
    relational (resp. basic) part, so the split is the layer's, not a relabelling."""
    layer = RSA(features=8, num_heads=2, kernel_size=(3, 3, 3), kernel_type="VplusR",
                context_type="V", implementation=implementation, conv_strategy="native")
    x = jax.random.normal(jax.random.PRNGKey(1), (1, 3, 5, 4, 6))
    variables = layer.init(jax.random.PRNGKey(0), x)
    if zero:
        p = dict(variables["params"])
        p[zero] = jnp.zeros_like(p[zero])
        variables = {"params": p}
    y, state = layer.apply(variables, x, mutable=["rsa_kernels"])
    sown = state["rsa_kernels"]
    basic, rel = sown["kernel_basic"][0], sown["kernel_relational"][0]
    h2 = variables["params"]["H2"]
    kappa = window_kernels(basic + rel, h2)                 # (B,T,H,W,nh,kT,kH,kW)
    kappa = kappa.reshape(kappa.shape[:5] + (-1,))
    dv = layer.dims.dv
    v = l2_normalize(x @ variables["params"]["projection"][:, -dv:])
    win = extract_windows(v, (3, 3, 3))                         # (B,T,H,W,M,dv)
    expect = jnp.einsum("bthwnm,bthwme->bthwen", kappa, win).reshape(y.shape)
    np.testing.assert_allclose(y, expect, rtol=1e-4, atol=1e-5)
    if zero == "H1":
        assert float(jnp.abs(rel).max()) == 0.0 and float(jnp.abs(basic).max()) > 0
    if zero == "P1":
        assert float(jnp.abs(basic).max()) == 0.0 and float(jnp.abs(rel).max()) > 0


def test_no_kernels_sown_unless_asked():
    """Neither init nor an 'intermediates' capture (used by other tests) gets kernels."""
    layer = RSA(features=8, num_heads=2, kernel_size=(3, 3, 3))
    x = jnp.ones((1, 3, 4, 4, 6))
    variables = layer.init(jax.random.PRNGKey(0), x)
    assert set(variables) == {"params"}
    _, state = layer.apply(variables, x, mutable=["intermediates"])
    assert not jax.tree_util.tree_leaves(state)


# --- CLI on a tiny workdir (slow: builds a dataset and compiles a model) ---------

@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return ph.make_workdir(str(tmp_path_factory.mktemp("predict")))


def _zero_frame_video(path):
    with av.open(path, "w") as c:
        s = c.add_stream("libx264", rate=12)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
    return path


def _run(argv, capsys, stdin=None, monkeypatch=None):
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    rc = predict.main(argv)
    out = capsys.readouterr()
    return rc, out.out.splitlines(), [ln for ln in out.err.splitlines() if ln.startswith("error")]


@pytest.mark.slow
def test_predict_equals_eval_mode(workdir, tmp_path, capsys):
    """A validation video written as a JPEG folder: predict's logits and
    probabilities equal the row of --mode eval's scores file."""
    from rsa_jax.data import pipeline
    from rsa_jax.train import evaluate as eval_lib
    from rsa_jax.train import train
    wd, config = workdir
    train.evaluate_checkpoint(config, wd, mode="eval")
    scores = np.load(eval_lib.scores_path(wd, config.eval_split))
    source = pipeline.prepared_builder(config.data).as_data_source(config.eval_split)
    i = 5
    folder = tmp_path / "video5"
    folder.mkdir()
    for t, jpeg in enumerate(source[i]["frames"]):
        (folder / f"img_{t + 1:05d}.jpg").write_bytes(jpeg)
    capsys.readouterr()
    rc, out, err = _run(["--checkpoint", wd, "--json", "--top_k", "8", str(folder)], capsys)
    assert rc == 0 and not err
    result = json.loads(out[0])
    row = scores["scores"][list(scores["index"]).index(i)]
    probs = inference.softmax(row.astype(np.float64))
    assert [t["index"] for t in result["top_k"]] == list(np.argsort(-probs, kind="stable"))
    np.testing.assert_allclose([t["prob"] for t in result["top_k"]],
                               np.sort(probs)[::-1], rtol=1e-5)
    with open(os.path.join(wd, "class_names.json")) as f:
        names = json.load(f)
    assert [t["label"] for t in result["top_k"]] == [names[t["index"]] for t in result["top_k"]]
    assert result["num_frames"] == int(source[i]["num_frames"])
    loaded = inference.load(wd)
    views = inference.views_of(inference.read_input(str(folder), loaded.data).record,
                               loaded.data)
    logits = np.asarray(inference.make_forward(loaded)(loaded.variables, views[None]))[0]
    np.testing.assert_allclose(logits, row, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_bad_inputs_windows_and_stdin(workdir, tmp_path, capsys, monkeypatch):
    """Good inputs give windowed predictions; every bad one gives exactly one
    error line naming it; exit code 1."""
    wd, _ = workdir
    good = dh.write_video(str(tmp_path / "good.mp4"), 20, codec="libx264", fps=12)
    frames = dh.write_jpegs(str(tmp_path / "frames"), 10, "{:05d}.jpg")
    notvideo = tmp_path / "notes.mp4"
    notvideo.write_text("not a video")
    empty = _zero_frame_video(str(tmp_path / "empty.mp4"))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "00001.jpg").write_bytes(b"\xff\xd8 truncated")
    nojpeg = tmp_path / "nojpeg"
    nojpeg.mkdir()
    bad = [str(tmp_path / "missing.mp4"), str(notvideo), empty, str(broken), str(nojpeg)]
    stdin = "\n".join([frames] + bad[2:]) + "\n"
    rc, out, err = _run(["--checkpoint", wd, "--json", "--window_s", "1", "--stride_s", "0.5",
                         "--batch_size", "4", good, bad[0], bad[1], "-"],
                        capsys, stdin=stdin, monkeypatch=monkeypatch)
    assert rc == 1
    assert len(err) == len(bad)
    for line, path in zip(err, bad):
        assert line.startswith(f"error: {path}: ") and len(line) > len(path) + 9
    results = [json.loads(ln) for ln in out]
    assert [r.get("input") for r in results[:2]] == [good, frames]
    vid = results[0]
    # 20 frames at 12 fps, 12-frame windows every 6 frames: starts 0, 6 and 8 (to the end).
    assert [(w["start_s"], w["end_s"]) for w in vid["windows"]] == [
        (0.0, 1.0), (0.5, 1.5), (round(8 / 12, 3), round(20 / 12, 3))]
    assert all(len(w["top_k"]) == 5 for w in vid["windows"])
    assert len(results[1]["windows"]) == 1  # 10 frames at 25 fps: shorter than 1 s
    assert results[-1]["benchmark"]["clips"] == 4


@pytest.mark.slow
def test_explain_writes_legible_figures(workdir, tmp_path):
    """Both PNGs are written; the kernels drawn are the layer's at the chosen position."""
    wd, _ = workdir
    loaded = inference.load(wd)
    frames = dh.write_jpegs(str(tmp_path / "clip"), 8, "{:05d}.jpg")
    video = inference.read_input(frames, loaded.data)
    paths = explain.explain(loaded, video, str(tmp_path / "out"), layer="layer2_1", at=(1, 2, 3))
    assert [os.path.basename(p) for p in paths] == ["clip_kernels_layer2_1.png",
                                                     "clip_evidence.png"]
    import matplotlib.image as mpimg
    for p in paths:
        img = mpimg.imread(p)
        assert img.shape[0] > 300 and img.shape[1] > 400
        assert img[..., :3].std() > 0.05  # not blank
    clip = inference.views_of(video.record, loaded.data)[0]
    k = explain.layer_kernels(loaded, clip, "layer2_1", (1, 2, 3))
    np.testing.assert_allclose(k["total"], k["basic"] + k["relational"], rtol=1e-5,
                               atol=1e-6 * np.abs(k["total"]).max())
    assert k["total"].shape == (2, 3, 3, 3)
    np.testing.assert_allclose(k["frame_logits"].mean(0), k["logits"], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="outside the layer grid"):
        explain.layer_kernels(loaded, clip, "layer2_1", (9, 0, 0))
    # --explain_heads: one row per chosen head, so the figure is shorter; unknown heads fail.
    one = explain.plot_kernels(clip, k, str(tmp_path / "head1.png"), heads=[1])
    assert mpimg.imread(one).shape[0] < mpimg.imread(paths[0]).shape[0]
    with pytest.raises(ValueError, match=r"heads must be in 0\.\.1"):
        explain.plot_kernels(clip, k, str(tmp_path / "bad.png"), heads=[2])
