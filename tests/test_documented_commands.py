"""Every documented command line parses against the real configs.

Scans README.md, docs/*.md, the config docstrings and the commands the
`launch/` scripts print with `--dry-run`; extracts each `python -m rsa_jax.<module> ...`
and each `--config.<field>=<value>` written in prose. A `rsa_jax.main` command is
parsed exactly as `python -m rsa_jax.main` parses it (its own flag objects, a
fresh `config_flags.DEFINE_config_file('config', lock_config=True)`), without running
anything; other modules must at least exist. A documented command that a user
cannot run (e.g. `--config.torchvision_init=PATH` on a field whose default is a
bare `None`) fails here, naming the file and line.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import re
import shlex
import subprocess

import pytest
from absl import flags

from tests.doc_commands import Command, commands_in_text, parse_main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_OVERRIDE_RE = re.compile(
    r'--config\.([A-Za-z_][\w.]*)=("[^"]*"|\'[^\']*\'|[^\s`|\'"\\]+)')
# Configs a prose override must parse against (at least one of them).
_PROSE_CONFIGS = ('configs/ssv2.py', 'configs/synthetic.py')
# Each launch script run as its --help example, with a path and an override passed on.
_LAUNCH_RUNS = (
    ('tpu_pod.sh', ['--name', 'rsa-v4-32', '--zone', 'us-central2-b', '--accelerator',
                    'v4-32', '--create', '--config', 'configs/ssv2.py', '--workdir',
                    'gs://BUCKET/runs/ssv2_16f', '--data_dir', 'gs://BUCKET/tfds', '--detach',
                    '--', '--config.model.dtype=bfloat16',
                    '--config.torchvision_init=gs://BUCKET/resnet50-19c8e357.pth'], {}),
    ('gpu_host.sh', ['--config', 'configs/ssv1.py:8', '--workdir', '/data/runs/ssv1_8f',
                     '--data_dir', '/data/tfds', '--gpus', '0,1', '--',
                     '--config.init_from=/data/ckpt', '--mode=test'], {}),
    ('slurm_gpu.sbatch', ['--nodes', '2', '--gpus-per-node', '8', '--config',
                          'configs/finegym.py:8,gym288', '--workdir', '/shared/runs/gym',
                          '--data_dir', '/shared/tfds', '--',
                          '--config.data.manual_dir=/shared/raw'], {}),
    ('slurm_gpu.sbatch', ['--per-gpu', '--config', 'configs/diving48.py', '--workdir',
                          '/shared/runs/d48', '--data_dir', '/shared/tfds'],
     {'SLURM_JOB_ID': '1', 'SLURM_JOB_NUM_NODES': '2', 'SLURM_GPUS_ON_NODE': '4'}),
)


def _doc_files() -> list[str]:
    files = [os.path.join(ROOT, 'README.md')]
    files += sorted(glob.glob(os.path.join(ROOT, 'docs', '*.md')))
    files += sorted(glob.glob(os.path.join(ROOT, 'configs', '*.py')))
    return files


def _launch_commands() -> list[Command]:
    found = []
    env = {k: v for k, v in os.environ.items() if not k.startswith('SLURM_')}
    for script, args, extra_env in _LAUNCH_RUNS:
        r = subprocess.run(['bash', os.path.join(ROOT, 'launch', script), '--dry-run', *args],
                           cwd=ROOT, env={**env, 'SLURM_SUBMIT_DIR': ROOT, **extra_env},
                           capture_output=True, text=True, timeout=60, check=False)
        assert r.returncode == 0, f'launch/{script} --dry-run {args}: {r.stderr}'
        where = f'launch/{script} --dry-run {shlex.join(args)}'
        for line in r.stdout.splitlines():
            if not line.startswith('+ '):
                continue
            for word in shlex.split(line[2:]):  # e.g. gcloud's '--command=... python3 -m ...'
                found += commands_in_text(word, where)
            found += commands_in_text(line[2:], where)
    return found


def _all_commands() -> list[Command]:
    cmds = []
    for path in _doc_files():
        with open(path, encoding='utf-8') as f:
            cmds += commands_in_text(f.read(), os.path.relpath(path, ROOT))
    return cmds + _launch_commands()


def _is_elided(cmd: Command) -> bool:
    """`--config ... --workdir ...` or a bare module name in prose: not a command."""
    return not cmd.args or '...' in cmd.args


def _check(cmd: Command) -> str | None:
    """None if the command is runnable as written, else why not."""
    if importlib.util.find_spec(cmd.module) is None:
        return f'no module {cmd.module}'
    if cmd.module != 'rsa_jax.main' or _is_elided(cmd):
        return None
    try:
        parse_main(cmd.args)
    except (flags.Error, ValueError, KeyError, AttributeError, TypeError) as e:
        return f'{type(e).__name__}: {e}'
    return None


def _prose_overrides() -> list[tuple[str, str]]:
    found = []
    for path in _doc_files():
        with open(path, encoding='utf-8') as f:
            for i, line in enumerate(f, 1):
                for m in _OVERRIDE_RE.finditer(line):
                    value = m.group(2).strip('\'"')  # the shell removes the quotes
                    found.append((f'{os.path.relpath(path, ROOT)}:{i}',
                                  f'--config.{m.group(1)}={value}'))
    return found


@pytest.fixture(scope='module')
def commands():
    return _all_commands()


def test_every_documented_command_parses(commands, monkeypatch):
    monkeypatch.chdir(ROOT)  # config paths are relative to the repository root
    parsed = [c for c in commands if c.module == 'rsa_jax.main' and not _is_elided(c)]
    # The README alone documents more than ten main commands and each launch run
    # prints one: an extractor that finds nothing must fail, not pass.
    assert len(parsed) >= 10 + len(_LAUNCH_RUNS), [c.where for c in parsed]
    assert sum(c.where.startswith('launch/') for c in parsed) >= len(_LAUNCH_RUNS)
    bad = [f'{c.where}: python -m {c.module} {shlex.join(c.args)}\n    -> {why}'
           for c in commands if (why := _check(c))]
    assert not bad, 'documented commands that do not parse:\n' + '\n'.join(bad)


def test_every_documented_override_parses(monkeypatch):
    monkeypatch.chdir(ROOT)
    overrides = _prose_overrides()
    assert len(overrides) >= 10, overrides
    bad = []
    for where, override in overrides:
        errors = []
        for config in _PROSE_CONFIGS:
            try:
                parse_main([f'--config={config}', '--workdir=/tmp/w', override])
                break
            except flags.Error as e:
                errors.append(f'{config}: {e}')
        else:
            bad.append(f'{where}: {override} -> {errors[0]}')
    assert not bad, 'documented overrides that do not parse:\n' + '\n'.join(bad)


def test_paths_override_and_defaults_stay_none(monkeypatch):
    """The path fields parse as strings from the command line and default to None."""
    monkeypatch.chdir(ROOT)
    paths = ('torchvision_init', 'init_from', 'data.data_dir', 'data.manual_dir')
    for config in ('configs/ssv2.py', 'configs/ssv1.py:8', 'configs/diving48.py',
                   'configs/finegym.py:16,gym288', 'configs/finetune.py:4,8',
                   'configs/synthetic.py:tsn2d'):
        cfg = parse_main([f'--config={config}', '--workdir=/w']).config
        assert all(cfg[p.split('.')[0]][p.split('.')[1]] is None if '.' in p
                   else cfg[p] is None for p in paths), config
        # Paper configs need ImageNet weights unless told otherwise; the demo does not.
        assert cfg.from_scratch is config.startswith('configs/synthetic.py'), config
        cfg = parse_main([f'--config={config}', '--workdir=/w', '--config.from_scratch=True',
                          '--config.data.flip_exempt_classes=(3, 4)',
                          *[f'--config.{p}=/x/{p}' for p in paths]]).config
        assert (cfg.torchvision_init, cfg.init_from, cfg.data.data_dir,
                cfg.data.manual_dir) == tuple(f'/x/{p}' for p in paths)
        assert cfg.from_scratch is True and tuple(cfg.data.flip_exempt_classes) == (3, 4)


def test_unparseable_command_is_reported():
    """The checker itself fails on what a user cannot run (negative controls)."""
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        bad = [Command('x', 'rsa_jax.main', ['--config', 'configs/ssv2.py', '--workdir', 'w',
                                             '--config.no_such_field=1']),
               Command('x', 'rsa_jax.main', ['--config', 'configs/ssv2.py']),
               Command('x', 'rsa_jax.main', ['--config', 'configs/ssv2.py', '--workdir', 'w',
                                             '--config.num_epochs=many']),
               Command('x', 'rsa_jax.nonexistent', [])]
        assert all(_check(c) for c in bad)
        good = commands_in_text(
            'run `python3 -m rsa_jax.main --config configs/ssv2.py:8 --workdir /w \\\n'
            '   --config.torchvision_init="/a b/r50.pth" > log 2>&1` then', 'x')
        assert [c.args for c in good] == [['--config', 'configs/ssv2.py:8', '--workdir', '/w',
                                           '--config.torchvision_init=/a b/r50.pth']]
        assert _check(good[0]) is None
    finally:
        os.chdir(cwd)
