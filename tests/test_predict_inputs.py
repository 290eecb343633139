"""predict on the inputs a new user has (issue 23): phone videos (display rotation,
variable frame rate), bad window flags, --explain defaults and cost, and a
torchvision-converted backbone given as --checkpoint."""

import json
import os
from fractions import Fraction

import av
import data_helpers as dh
import jax
import numpy as np
import predict_helpers as ph
import pytest

from rsa_jax import inference, predict
from rsa_jax.data import decode


def _default_data() -> dict:
    """Preprocessing of a converted checkpoint: the official 240×320 JPEG frames."""
    return dict(inference._DEFAULT_DATA, **inference.stored_frame_format(None))


def _half_lit_video(path: str, rotation: int | None, n: int = 4) -> str:
    """48×64 frames whose left half is white and right half black; ``rotation``: the
    display matrix's counter-clockwise angle (PyAV's convention, as a phone writes it)."""
    with av.open(path, "w") as c:
        s = c.add_stream("libx264", rate=8)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        if rotation is not None:
            s.set_display_rotation(rotation)
        frame = np.zeros((48, 64, 3), np.uint8)
        frame[:, :32] = 255
        for _ in range(n):
            for p in s.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def _bright_side(img: np.ndarray) -> str:
    """Which half of the image is lit: 'left', 'right', 'top' or 'bottom'."""
    h, w = img.shape[:2]
    halves = {"left": img[:, :w // 2], "right": img[:, w // 2:],
              "top": img[:h // 2], "bottom": img[h // 2:]}
    return max(halves, key=lambda k: halves[k].mean())


def test_display_rotation_is_applied(tmp_path):
    """Shown upright, a frame turned 90° counter-clockwise has its left half at the
    bottom; an unrotated file keeps it on the left. Both stored paths (JPEG frames
    and kept video bytes) must agree."""
    data = _default_data()
    for rotation, side in ((None, "left"), (90, "bottom"), (-90, "top")):
        path = _half_lit_video(str(tmp_path / f"r{rotation}.mp4"), rotation)
        rec = inference.read_input(path, data).record
        frame = decode.decode_jpeg(rec["frames"][0])
        assert frame.shape[:2] == (data["height"], data["width"])
        assert _bright_side(frame) == side, rotation
        with open(path, "rb") as f:
            [kept] = decode.decode_video_frame_list(f.read(), [0], 60, 80)
        assert kept.shape == (60, 80, 3) and _bright_side(kept) == side, rotation


def _vfr_video(path: str, times: list[float]) -> str:
    """An mp4 whose frame i is shown at times[i] seconds (variable frame rate)."""
    base = Fraction(1, 1000)
    with av.open(path, "w") as c:
        s = c.add_stream("libx264", rate=10)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        s.codec_context.time_base = base
        for t, frame in zip(times, dh.clip_frames(len(times))):
            vf = av.VideoFrame.from_ndarray(frame, format="rgb24")
            vf.pts, vf.time_base = int(round(t / base)), base
            for p in s.encode(vf):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def test_windows_follow_frame_timestamps(tmp_path):
    """8 frames 0.1 s apart, then 8 frames 0.5 s apart: a 1 s window holds the frames
    shown in that second (8 in the first, 2 in each later one), not a fixed count
    from the average rate."""
    times = [0.1 * i for i in range(8)] + [1.0 + 0.5 * i for i in range(8)]
    path = _vfr_video(str(tmp_path / "vfr.mp4"), times)
    video = inference.read_input(path, _default_data(), keep_video=False)
    np.testing.assert_allclose(video.times, times, atol=2e-3)
    window = stride = 1.0
    end = times[-1] + (times[-1] - times[-2])
    got = inference.windows(video, window, stride, default_fps=25)
    starts = np.arange(0.0, end - window + 1e-9, stride)
    assert [round(a, 3) for a, _, _ in got] == [round(a, 3) for a in starts]
    for a, b, rec in got:
        assert b == pytest.approx(min(a + window, end))
        inside = [i for i, t in enumerate(times) if a - 1e-3 <= t < b - 1e-3]
        assert rec["num_frames"] == len(inside), (a, b)
        assert rec["frames"] == video.record["frames"][inside[0]:inside[-1] + 1]


@pytest.mark.parametrize("flags", [["--window_s", "0"], ["--window_s", "-2"],
                                   ["--window_s", "1", "--stride_s", "-1"],
                                   ["--window_s", "1", "--stride_s", "0"]])
def test_window_flags_must_be_positive(flags, tmp_path, capsys):
    """Checked before the model loads: 0 used to be ignored and a negative stride gave
    one window per frame."""
    rc = predict.main(["--checkpoint", str(tmp_path / "nothing"), *flags, "x.mp4"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: --") and "must be > 0" in err, err


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return ph.make_workdir(str(tmp_path_factory.mktemp("predict_inputs")))


def _first_rsa_block(config) -> str:
    stage = next(s for s, p in enumerate(config.model.rsa_positions) if p)
    return f"layer{stage + 1}_{min(config.model.rsa_positions[stage])}"


@pytest.mark.slow
def test_explain_defaults_to_the_first_rsa_layer_and_compiles_once(workdir, tmp_path,
                                                                   capsys, monkeypatch):
    wd, config = workdir
    clips = [dh.write_jpegs(str(tmp_path / f"clip{i}"), 8, "{:05d}.jpg") for i in range(2)]
    jitted = []
    real_jit = jax.jit

    def counting_jit(fun, *args, **kwargs):
        jitted.append(getattr(fun, "__name__", "?"))
        return real_jit(fun, *args, **kwargs)

    monkeypatch.setattr(jax, "jit", counting_jit)
    out = tmp_path / "explain"
    assert predict.main(["--checkpoint", wd, "--explain", str(out), *clips]) == 0
    layer = _first_rsa_block(config)
    assert sorted(os.listdir(out)) == sorted(
        f"clip{i}_{kind}" for i in range(2)
        for kind in (f"kernels_{layer}.png", "evidence.png"))
    assert jitted.count("fwd") <= 1, jitted   # two inputs, one explain forward compiled


@pytest.mark.slow
def test_bad_explain_layer_stops_before_any_prediction(workdir, tmp_path, capsys):
    wd, _ = workdir
    clip = dh.write_jpegs(str(tmp_path / "clip"), 8, "{:05d}.jpg")
    rc = predict.main(["--checkpoint", wd, "--explain", str(tmp_path / "e"),
                       "--explain_layer", "layer9_9", clip])
    out = capsys.readouterr()
    assert rc == 2 and out.out == "", out.out
    assert out.err.startswith("error: --explain: --explain_layer 'layer9_9': RSA blocks are ")
    assert not (tmp_path / "e").exists()


@pytest.mark.slow
def test_torchvision_backbone_as_checkpoint_points_to_init_from(tmp_path, capsys):
    """What `convert torchvision` writes (backbone only, no classifier) is for
    --config.init_from; predict must say so instead of failing inside Flax."""
    from rsa_jax.convert import official
    from rsa_jax.models import build_model
    cfg = ph.tiny_config(str(tmp_path / "unused")).model.to_dict()
    model = build_model(cfg)
    variables = jax.jit(lambda k: model.init(k, np.zeros((1, 4, 28, 28, 3), np.float32),
                                             train=False))(jax.random.PRNGKey(0))
    backbone = {c: {k: v for k, v in variables[c].items() if k != "new_fc"}
                for c in ("params", "batch_stats")}
    out = official.save_orbax(str(tmp_path / "tv"), backbone, cfg,
                              {"kind": "torchvision", "source": "resnet.pth"}, overwrite=False)
    clip = dh.write_jpegs(str(tmp_path / "clip"), 8, "{:05d}.jpg")
    rc = predict.main(["--checkpoint", out, clip])
    err = capsys.readouterr().err
    assert rc == 2 and f"--config.init_from={out}" in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    with open(os.path.join(out, "conversion.json")) as f:   # the same for any partial dir
        info = json.load(f)
    info["kind"] = "other"
    with open(os.path.join(out, "conversion.json"), "w") as f:
        json.dump(info, f)
    assert predict.main(["--checkpoint", out, clip]) == 2
    assert "--config.init_from" in capsys.readouterr().err
