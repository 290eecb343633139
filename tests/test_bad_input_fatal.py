"""Bad inputs that `main` and the data command report as one `FATAL:` line (no traceback),
checked before anything is written to the workdir (docs/reliability.md)."""

import os
import subprocess
import sys

import data_helpers as dh
import pytest

from rsa_jax import validate
from rsa_jax.data import pipeline
from tests.doc_commands import parse_main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """synthetic_motion/tiny (8 classes) built once; its TFDS folder."""
    d = str(tmp_path_factory.mktemp("tfds"))
    pipeline.prepare(dh.synthetic_cfg(d))
    return d


def _tiny_args(data_dir: str) -> list[str]:
    return ["--config=configs/synthetic.py", "--config.data.builder_config=tiny",
            "--config.data.image_size=28", f"--config.data.data_dir={data_dir}"]


def _one_fatal_line(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 1, (r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    fatal = [ln for ln in r.stderr.splitlines() if ln.startswith("FATAL:")]
    assert len(fatal) == 1, r.stderr[-3000:]
    return fatal[0]


def _main(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rsa_jax.main", *args], cwd=ROOT, check=False,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": ROOT})


# (override, what the FATAL line must say): each names the flag and the fix.
MAIN_CASES = [
    ("--config.model.depth=51", r"--config.model.depth=51 is not one of 18, 34, 50, 101"),
    ("--config.model.width=0", r"--config.model.width=0 must be an integer >= 1"),
    ("--config.model.num_classes=5",
     r"--config.model.num_classes=5 but dataset synthetic_motion has 8 classes"),
    ("--config.num_epochs=-1", r"--config.num_epochs=-1 must be > 0"),
    ("--config.data.flip_exempt_classes=(86,87)",
     r"--config.data.flip_exempt_classes: ids \[86, 87\] are not classes of synthetic_motion"),
]


@pytest.mark.slow
@pytest.mark.parametrize("override,message", MAIN_CASES, ids=[c[0] for c in MAIN_CASES])
def test_main_one_fatal_line_and_nothing_written(built, tmp_path, override, message):
    import re
    workdir = tmp_path / "w"
    r = _main([*_tiny_args(built), f"--workdir={workdir}", override])
    assert re.search(message, _one_fatal_line(r)), r.stderr[-2000:]
    assert not workdir.exists()


@pytest.mark.slow
def test_flip_ids_checked_after_building_before_the_workdir(tmp_path):
    """Dataset not built yet: validation cannot know its classes, so training checks
    them right after building it, still before config.json is written."""
    workdir = tmp_path / "w"
    r = _main([*_tiny_args(str(tmp_path / "tfds")), f"--workdir={workdir}",
               "--config.data.flip_exempt_classes=(86,87,93)"])
    assert "ids [86, 87, 93] are not classes of synthetic_motion (0..7)" in _one_fatal_line(r)
    assert (tmp_path / "tfds" / "synthetic_motion").is_dir()    # it was built
    assert not workdir.exists()


@pytest.mark.slow
def test_data_inspect_absent_split_is_one_line(built, tmp_path):
    r = subprocess.run([sys.executable, "-m", "rsa_jax.data", "inspect", *_tiny_args(built),
                        "--split", "test", "--out", str(tmp_path / "grid.png")], cwd=ROOT,
                       check=False, capture_output=True, text=True, timeout=300)
    line = _one_fatal_line(r)
    assert line.startswith("FATAL: --split 'test': synthetic_motion has the splits "), line
    names = sorted(pipeline.prepared_builder(dh.synthetic_cfg(built)).info.splits)
    assert line.split("has the splits ")[1].startswith(", ".join(names)), line
    assert not (tmp_path / "grid.png").exists()


def test_flip_exempt_none_on_the_command_line_derives_from_names(built, monkeypatch, tmp_path):
    """`--config.data.flip_exempt_classes=None` (documented: find left/right classes by
    name) reaches the config as (None,); it must mean None, not crash int(None)."""
    monkeypatch.chdir(ROOT)
    cfg = parse_main([*_tiny_args(built), "--workdir=/w",
                      "--config.data.flip_exempt_classes=None"]).config
    names = pipeline.class_names(cfg.data)
    derived = pipeline.flip_exempt_ids(dh.synthetic_cfg(built, flip_exempt_classes=None), names)
    assert pipeline.flip_exempt_ids(cfg.data, names) == derived
    validate.validate(cfg, str(tmp_path / "w"), num_devices=1)
    assert cfg.data.flip_exempt_classes is None


def test_model_checks_name_the_rsa_block(tmp_path, monkeypatch):
    """Head sizes are resolved per RSA block before any compile: 2 heads on a stage of
    width 1 leave 0 value channels per head."""
    monkeypatch.chdir(ROOT)
    cfg = parse_main(["--config=configs/synthetic.py", "--workdir=/w",
                      "--config.data.builder_config=tiny", "--config.data.image_size=28",
                      f"--config.data.data_dir={tmp_path}", "--config.model.width=1"]).config
    with pytest.raises(validate.ConfigError, match=r"--config.model.rsa: RSA block layer1_1 "
                       r"\(1 channels\): features=1 // num_heads=2 gives value_dim 0"):
        validate.validate(cfg, str(tmp_path / "w"))
