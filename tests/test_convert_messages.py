"""Converter errors reach the user as one line naming the cause (docs/converting.md#errors).

A corpus of damaged files, each made with torch from a tiny real state dict
(width-16 RSA-R50 in the official layout, a width-8 torchvision ResNet-18), goes
through the command line in-process (one subprocess run checks the real
``python -m``): exit code 2, one ``error:`` line on stderr, the damaged key and
its expected shape, and nothing about unrelated layers.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from rsa_jax.convert import (  # noqa: E402
    CheckpointError,
    load_official_checkpoint,
    main,
    variables_to_state_dict,
)
from rsa_jax.convert.__main__ import read_model_config  # noqa: E402
from tests.convert_helpers import TINY, official_dict, random_variables, save  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
M = "module.base_model."
FIRST_RSA = M + "layer1.1.conv2."  # the layer config inference used to trust alone


@pytest.fixture(scope="module")
def sd():
    model, variables = random_variables(TINY)
    return official_dict(model, variables)


def cli_error(capsys, argv) -> str:
    """Runs the CLI in-process; asserts exit 2 and one `error:` line; returns it."""
    assert main([str(a) for a in argv]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def convert_error(capsys, tmp_path, state_dict) -> str:
    path = save(tmp_path / "bad.pth.tar", state_dict)
    line = cli_error(capsys, ["official", path, tmp_path / "out"])
    assert not (tmp_path / "out").exists()  # nothing partially written
    return line


def edited(sd, drop=(), **replace) -> OrderedDict:
    out = OrderedDict((k, v) for k, v in sd.items() if k not in drop)
    out.update(replace)
    return out


@pytest.mark.parametrize("key", [FIRST_RSA + "H1.weight", FIRST_RSA + "P1",
                                 FIRST_RSA + "projection.weight", M + "layer2.3.conv2.G.weight"])
def test_missing_rsa_tensor_is_named_with_its_block(sd, tmp_path, capsys, key):
    line = convert_error(capsys, tmp_path, edited(sd, drop={key}))
    block = key[len("module."):].rsplit(".conv2.", 1)[0]
    # Exactly this one problem: no guessed layer type, no unrelated mis-shaped keys.
    assert f"1 missing: {key} (expected {tuple(sd[key].shape)}" in line
    assert f"RSA layer {block}.conv2 lacks it, 4 of the other 4 RSA layers have it" in line
    assert "unexpected" not in line and "mis-shaped" not in line


def test_extra_rsa_tensor_of_a_kernel_type_r_model(sd, tmp_path, capsys):
    # Without P1 the same tensors are a valid kernel_type R model; one stray P1 stays.
    stray = M + "layer3.2.conv2.P1"
    bad = edited(sd, drop={k for k in sd if k.endswith(".P1") and k != stray})
    line = convert_error(capsys, tmp_path, bad)
    assert f"1 unexpected: {stray} (shape {tuple(sd[stray].shape)}" in line
    assert "4 of the other 4 RSA layers lack it" in line and "kernel_type R," in line
    assert "missing" not in line and "mis-shaped" not in line


def test_extra_key(sd, tmp_path, capsys):
    line = convert_error(capsys, tmp_path,
                         edited(sd, **{M + "layer1.0.extra.weight": torch.zeros(3)}))
    assert line.endswith(f"1 unexpected: {M}layer1.0.extra.weight (shape (3,))")


@pytest.mark.parametrize("key", [M + "layer3.0.bn2.running_var", FIRST_RSA + "H2.weight"])
def test_wrong_shape(sd, tmp_path, capsys, key):
    shape = tuple(sd[key].shape)
    wrong = torch.zeros(shape[:-1] + (shape[-1] + 2,))
    line = convert_error(capsys, tmp_path, edited(sd, **{key: wrong}))
    assert line.endswith(f"1 mis-shaped: {key}: {tuple(wrong.shape)} (expected {shape})")


def test_wrong_class_count(sd, tmp_path, capsys):
    bias, weight = "module.new_fc.bias", tuple(sd["module.new_fc.weight"].shape)
    line = convert_error(capsys, tmp_path, edited(sd, **{bias: torch.zeros(5)}))
    assert line.endswith(f"1 mis-shaped: {bias}: (5,) (expected ({weight[0]},); "
                         f"the file has 5 classes, the model {weight[0]})")
    with pytest.raises(CheckpointError) as err:
        load_official_checkpoint(save(tmp_path / "ok.pth.tar", sd), num_classes=10)
    assert (f"module.new_fc.weight: {weight} (expected {(10,) + weight[1:]}; the file has "
            f"{weight[0]} classes, the model 10)") in str(err.value)


def test_legacy_names_in_errors(sd, tmp_path, capsys):
    legacy = OrderedDict()
    for k, v in sd.items():
        for new, old in ((".conv2.H1.", ".conv2.E_conv."), (".conv2.H2.", ".conv2.E_feat."),
                         (".conv2.G.", ".conv2.E_feat_2.")):
            k = k.replace(new, old)
        legacy[k] = v
    key = M + "layer2.1.conv2.E_conv.weight"
    line = convert_error(capsys, tmp_path, edited(legacy, drop={key}))
    assert (f"1 missing: {M}layer2.1.conv2.H1.weight (expected "
            f"{tuple(sd[M + 'layer2.1.conv2.H1.weight'].shape)} (named E_conv.weight in "
            "this file's older naming)") in line
    assert "unexpected" not in line and "mis-shaped" not in line


@pytest.mark.parametrize("content", ["truncated", "empty", "text", "list"])
def test_unreadable_files(sd, tmp_path, capsys, content):
    path = tmp_path / "x.pth.tar"
    if content == "truncated":
        data = save(tmp_path / "full.pth.tar", sd).read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif content == "empty":
        path.write_bytes(b"")
    elif content == "text":
        path.write_text("epoch,loss\n1,2.3\n")
    else:
        torch.save([torch.zeros(2)], path)
    line = cli_error(capsys, ["official", path, tmp_path / "out"])
    assert line.startswith(f"error: {path}: ")
    want = "expected a dict" if content == "list" else "not a readable PyTorch checkpoint"
    assert want in line


def test_not_an_official_checkpoint(tmp_path, capsys):
    path = tmp_path / "x.pth.tar"
    torch.save({"state_dict": {"encoder.weight": torch.zeros(2)}}, path)
    line = cli_error(capsys, ["official", path, tmp_path / "out"])
    assert "not an official RSA/TSN state dict" in line and "'encoder.weight'" in line


@pytest.fixture(scope="module")
def r18_file(tmp_path_factory):
    """A width-8 ResNet-18 in torchvision's layout (2-D kernels, `fc.*`)."""
    model, variables = random_variables(dict(depth=18, width=8, num_classes=10,
                                             backbone="tsn2d"))
    sd = OrderedDict()
    for k, v in variables_to_state_dict(variables, model).items():
        k = k.removeprefix("base_model.").replace("new_fc.", "fc.")
        sd[k] = torch.from_numpy(v[:, :, 0] if v.ndim in (3, 5) else v)
    return save(tmp_path_factory.mktemp("tv") / "resnet18.pth", sd, wrap=False)


def test_torchvision_wrong_depth_and_width(r18_file, tmp_path, capsys):
    line = cli_error(capsys, ["torchvision", r18_file, tmp_path / "out"])
    assert line.startswith("error: torchvision state dict: ResNet-18 file, depth-50 model")
    assert "pass --depth 18" in line and "weight" not in line  # one cause, no key list
    line = cli_error(capsys, ["torchvision", r18_file, tmp_path / "out", "--depth", "18"])
    assert line.startswith("error: torchvision state dict: width-8 file (conv1.weight "
                           "(8, 3, 7, 7)), width-64 model")


def test_model_config_as_path_and_inline(r18_file, tmp_path, capsys):
    cfg = {"depth": 18, "width": 8, "backbone": "tsn2d", "num_classes": 3}
    path = tmp_path / "model.json"
    path.write_text(json.dumps(cfg))
    assert read_model_config(json.dumps(cfg)) == cfg == read_model_config(str(path))
    assert main(["torchvision", str(r18_file), str(tmp_path / "out"),
                 "--model_config", str(path)]) == 0
    written = json.loads((tmp_path / "out" / "model_config.json").read_text())
    assert {k: written[k] for k in cfg} == cfg
    line = cli_error(capsys, ["torchvision", r18_file, tmp_path / "o2",
                              "--model_config", '{"width": 8,}'])
    assert line.startswith("error: inline --model_config: not valid JSON")
    line = cli_error(capsys, ["torchvision", r18_file, tmp_path / "o2",
                              "--model_config", tmp_path / "nope.json"])
    assert "nope.json" in line and "no such file, and not inline JSON" in line


def test_cli_subprocess_one_line_no_traceback(sd, tmp_path):
    key = M + "layer4.1.conv2.I"
    bad = save(tmp_path / "bad.pth.tar", edited(sd, drop={key}))
    proc = subprocess.run([sys.executable, "-m", "rsa_jax.convert", "official", str(bad),
                           str(tmp_path / "out")], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and f"1 missing: {key} (expected {tuple(sd[key].shape)}" in errors[0]
    assert not (tmp_path / "out").exists()
