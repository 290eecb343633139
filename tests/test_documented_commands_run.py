"""The documented commands run as written, end to end, on tiny real inputs.

tests/test_documented_commands.py checks that every command in README.md, docs/
and the config docstrings *parses*; this runs the cheap ones: the fine-tune of
docs/using.md through `python -m rsa_jax.main` (2 steps), and every documented
`predict`, `analyze`, `export`, `convert` and `data inspect` line. Each command is
taken from the docs themselves; only its placeholders (WORKDIR, clip.mp4, OUT, ...)
are replaced by tiny files made here, and size overrides are appended where the
documented model or dataset would not fit a test (the fine-tune's RSA-R50 and
data inspect's full synthetic set). A documented command with a placeholder this
file does not know fails the test, so a new one cannot be skipped silently.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys

import data_helpers as dh
import jax
import numpy as np
import pytest

from tests.doc_commands import Command, commands_in_text, parse_main

pytestmark = pytest.mark.slow
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Commands run here, by module (data: its `inspect` sub-command only).
RUN = ("rsa_jax.predict", "rsa_jax.analyze", "rsa_jax.export", "rsa_jax.convert",
       "rsa_jax.data")
# The fine-tune at test size: a ResNet-18 layout of width 8 with one RSA block (layer1_1,
# as the CPU demo: the layer docs/using.md's --explain_layer names), the
# folder dataset's 64×80 builder config, 4 frames of 28², 2 steps.
FINETUNE_SIZE = ["--config.model.depth=18", "--config.model.width=8",
                 "--config.model.rsa_positions=((1,),(),(),())",
                 "--config.model.rsa.num_heads=2", "--config.data.builder_config=small",
                 "--config.data.num_frames=4", "--config.data.image_size=28",
                 "--config.data.num_threads=1", "--config.num_train_steps=2",
                 "--config.log_every_steps=1", "--config.input_check_seconds=0",
                 "--config.log_mfu=False"]


def _documented() -> list[Command]:
    files = [os.path.join(ROOT, "README.md")] + sorted(glob.glob(os.path.join(ROOT, "docs",
                                                                              "*.md")))
    files += sorted(glob.glob(os.path.join(ROOT, "configs", "*.py")))
    out = []
    for path in files:
        with open(path, encoding="utf-8") as f:
            out += commands_in_text(f.read(), os.path.relpath(path, ROOT))
    return out


def _is_elided(cmd: Command) -> bool:
    """Prose mentions (`python -m rsa_jax.convert official ...`), not commands."""
    return len(cmd.args) < 2 or "..." in cmd.args or "/" in cmd.args


def _env() -> dict:
    env = dict(os.environ, PYTHONPATH=ROOT)
    env.pop("XLA_FLAGS", None)   # one CPU device, as a user's machine
    return env


def _fill(cmd: Command, subs: dict[str, str]) -> list[str]:
    """The command's words with placeholders replaced (also as a path prefix:
    WORKDIR/eval/...); raises KeyError naming a placeholder nobody replaced."""
    def one(word: str) -> str:
        flag, eq, value = word.partition("=")
        if word.startswith("--") and eq:   # --config.init_from=/ckpt/rsa_ssv2
            return flag + "=" + one(value)
        head, sep, rest = word.partition("/")
        if word in subs:
            return subs[word]
        if sep and head in subs:
            return subs[head] + "/" + rest
        if word.isupper() or word.rstrip(".").isupper():
            raise KeyError(f"{cmd.where}: placeholder {word!r} has no test input")
        return word

    return [one(w) for w in cmd.args]


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
    """docs/using.md's fine-tune, run through `python -m rsa_jax.main` for 2 steps on a
    4-class video_folder dataset, from a converted checkpoint with 5 classes."""
    from rsa_jax.convert import official
    from rsa_jax.models import build_model
    from tests.data_helpers import make_folder_dataset
    root = tmp_path_factory.mktemp("documented")
    [cmd] = [c for c in _documented() if c.module == "rsa_jax.main"
             and "configs/finetune.py:4" in c.args and c.where.startswith("docs/using.md")]
    videos = make_folder_dataset(str(root / "videos"), {"train": 2, "validation": 1})
    workdir, ckpt = str(root / "ft"), str(root / "ckpt")
    args = _fill(cmd, {"/tmp/ft": workdir, "/ckpt/rsa_ssv2": ckpt, "/videos": videos})
    args += FINETUNE_SIZE + [f"--config.data.data_dir={root / 'tfds'}"]
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        config = parse_main(args).config
    finally:
        os.chdir(cwd)
    # The converted checkpoint the command names: this model, another class count.
    model_cfg = dict(config.model.to_dict(), num_classes=5)
    model = build_model(model_cfg)
    variables = jax.jit(lambda k: model.init(
        k, np.zeros((1, 4, 28, 28, 3), np.float32), train=False))(jax.random.PRNGKey(0))
    official.save_orbax(ckpt, dict(variables), model_cfg, {"kind": "test", "num_segments": 4},
                        overwrite=False)
    r = subprocess.run([sys.executable, "-m", "rsa_jax.main", *args], cwd=ROOT, env=_env(),
                       capture_output=True, text=True, timeout=900, check=False)
    assert r.returncode == 0, f"{cmd.where}: {r.stderr[-4000:]}"
    return root, workdir, videos, r


def test_finetune_command_runs_through_main(finetuned):
    _, workdir, videos, r = finetuned
    assert "keeping the freshly initialised classifier" in r.stderr   # 5 -> 4 classes
    with open(os.path.join(workdir, "class_names.json")) as f:
        assert json.load(f) == sorted(os.listdir(os.path.join(videos, "train")))
    with open(os.path.join(workdir, "DONE.json")) as f:
        done = json.load(f)
    assert done["num_train_steps"] == 2 and done["metrics"]["num_videos"] == 4
    assert [ln for ln in r.stdout.splitlines() if ln.startswith("step 2/2")]
    assert os.path.isfile(os.path.join(workdir, "eval", "validation_scores.npz"))


@pytest.fixture(scope="module")
def inputs(finetuned, tmp_path_factory):
    """What the placeholders of the documented commands stand for."""
    torch = pytest.importorskip("torch")
    from tests.convert_helpers import official_state_dict, save_official, torchvision_state_dict
    root, workdir, videos, _ = finetuned
    tmp = tmp_path_factory.mktemp("inputs")
    clip = sorted(glob.glob(os.path.join(videos, "validation", "*", "*.mp4")))[0]
    frames = dh.write_jpegs(str(tmp / "frames"), 10, "{:05d}.jpg")
    official = save_official(tmp / "official.pth.tar", official_state_dict())
    keys = json.loads(open(os.path.join(ROOT, "tests", "fixtures",
                                        "official_checkpoint_keys.json")).read())
    num_classes = next(shape[0] for k, shape, _ in keys if k.endswith("new_fc.bias"))
    labels = tmp / "official_labels.txt"
    labels.write_text("".join(f"action {i}\n" for i in range(num_classes)))
    tv = tmp / "resnet50.pth"
    torch.save(torchvision_state_dict(), tv)
    # data inspect reads a built dataset: the tiny one.
    from rsa_jax.data import pipeline
    pipeline.prepare(dh.synthetic_cfg(str(root / "tfds_synthetic")))
    return {"workdir": workdir, "clip": clip, "frames": frames, "official": str(official),
            "official_labels": str(labels), "torchvision": str(tv),
            "tfds": str(root / "tfds_synthetic"), "tmp": tmp}


def _substitutions(cmd: Command, inp: dict, out: str) -> dict[str, str]:
    workdir = inp["workdir"]
    labels = (inp["official_labels"] if cmd.module == "rsa_jax.convert"
              else os.path.join(workdir, "class_names.json"))
    return {"WORKDIR": workdir, "PATH": workdir, "/tmp/rsa_synth": workdir,
            "OUT": out, "OUT_DIR": out, "DIR": out, "grid.png": out + ".png",
            "clip.mp4": inp["clip"], "INPUT": inp["clip"], "INPUT...": inp["clip"],
            "frames_dir/": inp["frames"], "frames/": inp["frames"], "FILE": labels,
            "CLIPSxCROPS": "2x3", "t,y,x": "0,1,1", "N": "2",
            "resnet_rgb_model_best.pth.tar": inp["official"],
            "rsa_r50_ssv2_8f.pth.tar": inp["official"],
            "rsa_r50_ssv2_16f.pth.tar": inp["official"],
            "/ckpt/rsa_ssv2": out, "resnet50-19c8e357.pth": inp["torchvision"]}


def _run_in_process(module: str, args: list[str], stdin: str, monkeypatch) -> int:
    import io

    from rsa_jax import analyze, export, predict
    from rsa_jax.convert.__main__ import main as convert_main
    mains = {"rsa_jax.predict": predict.main, "rsa_jax.analyze": analyze.main,
             "rsa_jax.export": export.main, "rsa_jax.convert": convert_main}
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    return mains[module](args)


def _check_outputs(cmd: Command, args: list[str], out: str, stdout: str) -> None:
    """What each command must have produced, beyond exit status 0."""
    if cmd.module == "rsa_jax.predict":
        if "--explain" in args:
            assert any(n.endswith(".png") and "_kernels_" in n for n in os.listdir(out))
        assert stdout.strip(), cmd.where
    elif cmd.module == "rsa_jax.analyze":
        with open(os.path.join(out, "summary.json")) as f:
            assert json.load(f)["num_videos"] == 4
    elif cmd.module == "rsa_jax.export":
        with open(os.path.join(out, "serving.json")) as f:
            meta = json.load(f)
        batch = args[args.index("--batch") + 1] if "--batch" in args else "dynamic"
        assert meta["input_shape"][0] == (None if batch == "dynamic" else int(batch))
    elif cmd.module == "rsa_jax.convert":
        assert os.path.isfile(os.path.join(out, "model_config.json")), cmd.where
    elif cmd.module == "rsa_jax.data":
        assert os.path.getsize(out + ".png") > 1000, cmd.where


def test_documented_tool_commands_run(inputs, capsys, monkeypatch):
    cmds = [c for c in _documented() if c.module in RUN and not _is_elided(c)
            and (c.module != "rsa_jax.data" or c.args[0] == "inspect")]
    ran = []
    for i, cmd in enumerate(cmds):
        out = str(inputs["tmp"] / f"out{i}")
        args = _fill(cmd, _substitutions(cmd, inputs, out))
        if cmd.module == "rsa_jax.data":   # absl flags: its own process; the tiny set
            args += ["--config.data.builder_config=tiny", "--config.data.image_size=28",
                     f"--config.data.data_dir={inputs['tfds']}"]
            r = subprocess.run([sys.executable, "-m", cmd.module, *args], cwd=ROOT,
                               env=_env(), capture_output=True, text=True, timeout=600,
                               check=False)
            assert r.returncode == 0, f"{cmd.where}: {r.stderr[-3000:]}"
            stdout = r.stdout
        else:
            capsys.readouterr()
            rc = _run_in_process(cmd.module, args, inputs["clip"] + "\n", monkeypatch)
            captured = capsys.readouterr()
            assert rc == 0, f"{cmd.where}: {' '.join(args)}\n{captured.err[-3000:]}"
            stdout = captured.out
        _check_outputs(cmd, args, out, stdout)
        ran.append(cmd.where)
    # The README's four tool lines and both converters are among them.
    assert sum(w.startswith("README.md") for w in ran) >= 4, ran
    assert {"rsa_jax.predict", "rsa_jax.analyze", "rsa_jax.export", "rsa_jax.convert",
            "rsa_jax.data"} <= {c.module for c in cmds}, ran
