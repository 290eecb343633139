"""The data command (docs/reliability.md): prepare's summary and problems.json,
inspect's statistics and PNG grid, one-line errors."""

import json
import os
import subprocess
import sys

import data_helpers as dh
import ml_collections
import numpy as np
import pytest

from rsa_jax import cli, data
from rsa_jax.data import checks, inspection

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    """synthetic_motion/tiny built once: 32 train / 16 validation clips, label = index % 8."""
    cfg = dh.synthetic_cfg(str(tmp_path_factory.mktemp('tfds')))
    data.prepare(cfg)
    return cfg


def test_split_stats_count_every_class(tiny):
    stats = inspection.split_stats(tiny, 'validation')
    assert stats['videos'] == stats['read'] == 16
    assert stats['class_counts'].tolist() == [2] * 8
    assert set(stats['num_frames'].tolist()) == {8}
    text = inspection.format_stats(stats)
    assert text.startswith('validation: 16 videos; 8 of 8 classes present, videos per '
                           'class min 2')
    assert text.splitlines()[1] == 'frames per video: min 8 median 8 mean 8.0 max 8'
    few = inspection.split_stats(tiny, 'train', limit=5)
    assert few['read'] == 5 and few['class_counts'].sum() == 5
    assert '32 videos (from 5 evenly spaced)' in inspection.format_stats(few)


def test_grid_has_a_row_per_clip_and_a_column_per_frame(tiny, tmp_path):
    import matplotlib.image
    out = str(tmp_path / 'grid.png')
    line = inspection.write_grid(tiny, 'train', out, num_clips=2)
    assert line == (f"wrote {out}: 2 train clips (augmented) above 2 eval clips (centre), "
                    "4 frames of 28x28 each, from 'train'")
    img = matplotlib.image.imread(out)
    # figsize (1.3 * frames, 1.5 * rows) inches at 80 dpi
    assert img.shape[:2] == (round(1.5 * 4 * 80), round(1.3 * 4 * 80))
    assert np.ptp(img[..., :3]) > 0.5   # clips were drawn, not an empty canvas


def test_unknown_name_lists_ours_with_flag_of_the_command():
    with pytest.raises(cli.ConfigError, match=r"--name='video_lst' is not one of our "
                       r"datasets: .*; did you mean 'video_list'\?"):
        checks.check_dataset(ml_collections.ConfigDict({'name': 'video_lst'}), '--')


@pytest.fixture
def broken_list(tmp_path):
    root = tmp_path / 'raw'
    dh.write_jpegs(str(root / 'f' / 'ok'), 6, 'img_{:05d}.jpg')
    dh.write_jpegs(str(root / 'f' / 'gap'), 6, 'img_{:05d}.jpg', skip=(4,))
    (root / 'train.txt').write_text('f/ok 6 0\nf/gap 6 1\nf/ok2 6 5\n')
    (root / 'val.txt').write_text('f/ok 6 1\n')
    (root / 'classes.txt').write_text('a\nb\n')
    return root


def _data_cli(*args):
    return subprocess.run([sys.executable, '-m', 'rsa_jax.data', *args], cwd=ROOT,
                          check=False, capture_output=True, text=True, timeout=180)


@pytest.mark.slow
def test_prepare_summary_and_raise_is_one_line(broken_list, tmp_path):
    tfds_dir = tmp_path / 'tfds'
    r = _data_cli('prepare', '--name', 'video_list', '--manual_dir', str(broken_list),
                  '--data_dir', str(tfds_dir))
    assert r.returncode == 0, r.stderr
    from rsa_jax.data.builders import VideoList
    version = str(VideoList.VERSION)
    report = tfds_dir / 'video_list' / 'default' / version / 'problems.json'
    assert r.stdout.strip().splitlines()[-1] == (
        f'video_list/default/{version}: built train 1 of 3, validation 1 of 1 videos; 2 skipped '
        f'(1 frame folder gap, 1 unknown label), see {report}')
    assert json.loads(report.read_text())['splits']['train']['problems'] == [
        (f'{broken_list}/f/gap: 1 of 6 frames missing (first: img_00004.jpg); frames must be '
        'numbered 1..6'),
        f'{broken_list}/train.txt: f/ok2: label 5 is not one of the 2 classes']

    r = _data_cli('prepare', '--name', 'video_list', '--manual_dir', str(broken_list),
                  '--data_dir', str(tmp_path / 'tfds2'), '--on_error', 'raise')
    assert r.returncode == 1 and 'Traceback' not in r.stderr
    assert r.stderr.strip().splitlines()[-1] == (
        f'FATAL: {broken_list}/f/gap: 1 of 6 frames missing (first: img_00004.jpg); frames '
        "must be numbered 1..6 (split 'train', on_error='raise')")


@pytest.mark.slow
def test_main_reports_bad_data_in_one_line(broken_list, tmp_path):
    """Training on a broken raw folder with on_error='raise' stops before compiling."""
    config = tmp_path / 'list_config.py'
    config.write_text(
        'import configs.synthetic as synthetic\n\n'
        'def get_config():\n'
        '    c = synthetic.get_config()\n'
        '    c.from_scratch = True\n'
        f'    c.data.update(dict(name="video_list", builder_config=None, image_size=32,\n'
        f'                       manual_dir={str(broken_list)!r},\n'
        f'                       data_dir={str(tmp_path / "tfds")!r}, on_error="raise"))\n'
        '    return c\n')
    r = subprocess.run([sys.executable, '-m', 'rsa_jax.main', f'--config={config}',
                        f'--workdir={tmp_path / "w"}'], cwd=ROOT, check=False,
                       env={**os.environ, 'PYTHONPATH': ROOT}, capture_output=True,
                       text=True, timeout=180)
    assert r.returncode == 1 and 'Traceback' not in r.stderr
    assert r.stderr.strip().splitlines()[-1] == (
        f'FATAL: {broken_list}/f/gap: 1 of 6 frames missing (first: img_00004.jpg); frames '
        "must be numbered 1..6 (split 'train', on_error='raise')")
