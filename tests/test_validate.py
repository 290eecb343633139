"""Config validation (docs/reliability.md): each rule stops with one message naming the flag."""

import importlib.util
import os
import subprocess
import sys

import pytest

from rsa_jax import cli, validate
from rsa_jax.cli import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUR_DATASETS = ("diving48", "fine_gym", "something_something_v1", "something_something_v2",
                "synthetic_motion", "video_folder", "video_list")


def _config(name, tmp_path, arg=None):
    """configs/<name>.py with its data in tmp_path (nothing built there)."""
    spec = importlib.util.spec_from_file_location(f"cfg_{name}",
                                                  os.path.join(ROOT, "configs", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config(arg) if arg else module.get_config()
    c.data.data_dir = str(tmp_path / "tfds")
    return c


@pytest.fixture
def synth(tmp_path):
    c = _config("synthetic", tmp_path)
    c.data.builder_config = "tiny"   # 32x40 stored frames
    c.data.image_size = 28
    return c


@pytest.fixture
def ssv2(tmp_path):
    """The paper config with raw data present and explicit from_scratch=False."""
    c = _config("ssv2", tmp_path)
    c.from_scratch = False
    (tmp_path / "raw").mkdir()
    c.data.manual_dir = str(tmp_path / "raw")
    return c


def _fails(config, workdir, match, **kw):
    with pytest.raises(ConfigError, match=match) as e:
        validate.validate(config, str(workdir), **kw)
    assert "\n" not in str(e.value).split(";")[0]  # the headline is one line
    return str(e.value)


def test_valid_configs_pass(synth, ssv2, tmp_path):
    validate.validate(synth, str(tmp_path / "w"), num_devices=8)
    ssv2.from_scratch = True
    validate.validate(ssv2, str(tmp_path / "w"), num_devices=8)


def test_paper_config_requires_imagenet_init(ssv2, tmp_path):
    msg = _fails(ssv2, tmp_path / "w", "torchvision_init")
    assert "resnet50-19c8e357.pth" in msg and validate.TORCHVISION_URL in msg
    assert "--config.init_from=DIR" in msg and "--config.from_scratch=True" in msg
    weights = tmp_path / "resnet50-19c8e357.pth"
    ssv2.torchvision_init = str(weights)
    _fails(ssv2, tmp_path / "w", r"torchvision_init: file .* not found")
    weights.write_bytes(b"x")
    validate.validate(ssv2, str(tmp_path / "w"))
    ssv2.torchvision_init = None
    (tmp_path / "w" / "checkpoints" / "120").mkdir(parents=True)
    validate.validate(ssv2, str(tmp_path / "w"))  # resuming needs no init


def test_missing_from_scratch_field_defaults_by_dataset(synth, tmp_path):
    del synth["from_scratch"]                       # a config written before the field
    validate.validate(synth, str(tmp_path / "w"))    # synthetic: from scratch
    synth.from_scratch = False
    _fails(synth, tmp_path / "w", "torchvision_init")


def test_eval_mode_needs_a_checkpoint(synth, tmp_path):
    _fails(synth, tmp_path / "w", r"--mode=test: no checkpoint", mode="test")


@pytest.mark.parametrize("devices,mesh,accum,batch,match", [
    (8, {"data": -1}, 3, 64, (r"global_batch_size=64 must be a positive multiple of 24 "
                             r"\(8 data-parallel devices x grad_accum_steps 3\)")),
    (8, {"data": -1}, 1, 20, r"global_batch_size=20 must be a positive multiple of 8"),
    (8, {"data": 4, "model": 2}, 1, 4, None),
    (8, {"data": 3}, 1, 48, r"mesh_shape \(\{'data': 3\}\) needs 3 devices but this run has 8"),
    (8, {"data": -1, "model": 3}, 1, 48, r"needs a multiple of 3 devices"),
    (8, {"model": 8}, 1, 48, r"needs a 'data' axis"),
], ids=["accum", "devices", "2d_ok", "mesh_size", "mesh_multiple", "no_data_axis"])
def test_mesh_and_batch(synth, tmp_path, devices, mesh, accum, batch, match):
    synth.mesh_shape, synth.grad_accum_steps, synth.global_batch_size = mesh, accum, batch
    synth.eval_batch_size = synth.test_batch_size = 8
    if match is None:
        validate.validate(synth, str(tmp_path / "w"), num_devices=devices)
    else:
        _fails(synth, tmp_path / "w", match, num_devices=devices)


def test_eval_batch_and_processes(synth, tmp_path):
    synth.eval_batch_size = 12
    _fails(synth, tmp_path / "w", r"eval_batch_size=12 .* multiple of 8", num_devices=8)
    synth.eval_batch_size, synth.global_batch_size = 16, 12
    _fails(synth, tmp_path / "w", r"global_batch_size=12 .* multiple of 8 \(8 processes\)",
           num_devices=4, num_processes=8)


def test_unknown_dataset_lists_ours(synth, tmp_path):
    synth.from_scratch = True
    synth.data.name = "something_something_v3"
    msg = _fails(synth, tmp_path / "w", r"data\.name='something_something_v3' is not one "
                 r"of our datasets.*did you mean 'something_something_v")
    listed = msg.split("datasets: ")[1].split(";")[0].split(", ")
    assert tuple(listed) == OUR_DATASETS   # ours only, not the ~1000 of TFDS


def test_unknown_builder_config_backbone_dtype(synth, tmp_path):
    synth.data.builder_config = "tinny"
    _fails(synth, tmp_path / "w", r"builder_config='tinny' is not a config of "
           r"synthetic_motion: default, tiny; did you mean 'tiny'")
    synth.data.builder_config = "tiny"
    synth.model.backbone = "tsn2"
    _fails(synth, tmp_path / "w", r"backbone='tsn2' is not one of rsa, tsn2d, tsn3d")
    synth.model.backbone = "rsa"
    synth.model.dtype = "bf16"
    _fails(synth, tmp_path / "w", r"dtype='bf16' is not one of float32, bfloat16, float16")


def test_dtypes_match_the_model():
    from rsa_jax import models
    assert set(validate.DTYPES) == set(models._DTYPES)


def test_manual_dir_missing_prints_instructions(ssv2, tmp_path):
    ssv2.from_scratch = True
    ssv2.data.manual_dir = None
    msg = _fails(ssv2, tmp_path / "w", r"something_something_v2 is not built yet and "
                 r"--config.data.manual_dir is not set")
    assert "labels/labels.json" in msg and "20bn-something-something-v2/<id>.webm" in msg
    ssv2.data.manual_dir = str(tmp_path / "nope")
    _fails(ssv2, tmp_path / "w", r"manual_dir '.*nope' is not a directory")


def test_crop_larger_than_stored_frames(synth, ssv2, tmp_path):
    synth.data.image_size = 33
    _fails(synth, tmp_path / "w", r"image_size=33 must be in \[1, 32\]: "
           r"synthetic_motion/tiny stores 32x40 frames")
    ssv2.from_scratch = True
    ssv2.data.image_size = 256
    _fails(ssv2, tmp_path / "w", r"image_size=256 must be in \[1, 240\]")


def test_test_views(synth, tmp_path):
    synth.data.test_num_clips = 0
    _fails(synth, tmp_path / "w", r"test_num_clips=0 must be >= 1")
    synth.data.test_num_clips, synth.data.test_num_crops = 1, 2
    _fails(synth, tmp_path / "w", r"test_num_crops=2 must be 1 or 3")


def test_workdir_is_a_file(synth, tmp_path):
    (tmp_path / "w").write_text("not a dir")
    _fails(synth, tmp_path / "w", r"--workdir '.*w' is a file")


def test_typo_in_override_suggests(tmp_path):
    argv = ["main", "--config", "configs/synthetic.py", "--config.model.dtpe=x"]
    with pytest.raises(ConfigError, match=r"--config\.model\.dtpe: model has no field "
                       r"'dtpe'; did you mean 'dtype'\?"):
        cli.check_overrides([a.replace("configs/", ROOT + "/configs/") for a in argv])
    ok = ["main", f"--config={ROOT}/configs/ssv2.py:8", "--config.data.image_size=112",
          "--config.model.rsa.num_heads=4"]
    cli.check_overrides(ok)
    with pytest.raises(ConfigError, match=r"the config has no field 'learning_rte'; "
                       r"did you mean 'learning_rate'"):
        cli.check_overrides(ok + ["--config.learning_rte=1"])


def test_config_file_errors_are_one_line(tmp_path):
    with pytest.raises(ConfigError, match=r"--config: file 'nope\.py' not found"):
        cli.check_overrides(["main", "--config", "nope.py", "--workdir", "w"])
    bad = tmp_path / "bad.py"
    bad.write_text("def get_config(arg='16'):\n    return int(arg) / 0\n")
    with pytest.raises(ConfigError, match=r"--config .*bad\.py:8: get_config failed "
                       r"\(ZeroDivisionError: division by zero\)"):
        cli.check_overrides(["main", f"--config={bad}:8"])


def test_finished_run(synth, tmp_path):
    workdir = tmp_path / "w"
    workdir.mkdir()
    assert validate.finished_run(synth, str(workdir)) is None
    validate.write_done(str(workdir), synth, {"top1": 91.25, "top5": 99.5})
    msg = validate.finished_run(synth, str(workdir))
    assert "finished run (top1 91.25, top5 99.50)" in msg
    assert str(workdir / "checkpoints") in msg and str(workdir / "eval") in msg
    synth.num_epochs += 10  # a longer schedule resumes instead
    assert validate.finished_run(synth, str(workdir)) is None


def _main(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "rsa_jax.main", *args], cwd=cwd, check=False,
                          capture_output=True, text=True, timeout=600)


def test_main_stops_without_init_before_any_work(tmp_path):
    workdir = tmp_path / "w"
    r = _main("--config", "configs/ssv2.py", "--workdir", str(workdir))
    assert r.returncode == 1  # how fast it stops is measured, not asserted (noisy machines)
    assert r.stderr.strip().splitlines()[-1].startswith("FATAL: this config trains from "
                                                        "ImageNet weights")
    assert "Traceback" not in r.stderr and "resnet50-19c8e357.pth" in r.stderr
    assert not workdir.exists()   # no config.json, no data, no compile


def test_main_typo_one_line_and_finished_rerun(tmp_path):
    r = _main("--config", "configs/synthetic.py", "--workdir", str(tmp_path),
              "--config.data.imge_size=32")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    [line] = r.stderr.strip().splitlines()
    assert line.startswith("FATAL: --config.data.imge_size: data has no field 'imge_size'; "
                           "did you mean 'image_size'? (fields: ")
    workdir = tmp_path / "done"
    workdir.mkdir()
    validate.write_done(str(workdir), _config("synthetic", tmp_path), {"top1": 90.0})
    r = _main("--config", "configs/synthetic.py", "--workdir", str(workdir),
              "--config.data.builder_config=tiny", "--config.data.image_size=28")
    assert r.returncode == 0, r.stderr
    assert f"{workdir} holds a finished run (top1 90.00)" in r.stdout
    assert sorted(os.listdir(workdir)) == ["DONE.json"]


def test_bn_groups_must_divide_the_micro_batch(ssv2, tmp_path):
    ssv2.from_scratch = True
    ssv2.grad_accum_steps = 16                       # 64 / 16 = 4 clips < 8 per group
    _fails(ssv2, tmp_path / "w", r"bn_group_clips=8 must divide .* = 4", num_devices=1)
    ssv2.grad_accum_steps = 8                        # exactly one group per micro-batch
    validate.validate(ssv2, str(tmp_path / "w"), num_devices=1)


def test_every_exported_builder_is_a_known_dataset():
    """validate's dataset list is the builders package's: `video_folder` (the fine-tune
    dataset of docs/using.md) was missing, so its documented command stopped at once."""
    from rsa_jax.data import builders, checks
    exported = {getattr(builders, n).name for n in builders.__all__
                if isinstance(getattr(builders, n), type)
                and issubclass(getattr(builders, n), builders.VideoBuilder)
                and getattr(builders, n) is not builders.VideoBuilder}
    assert set(checks.builder_classes()) == exported and "video_folder" in exported
