"""video_folder builder and configs/finetune.py: build a class-folder dataset, load a
converted checkpoint with another class count, fine-tune above chance."""


import jax
import numpy as np
import predict_helpers as ph
import pytest
from data_helpers import COLOURS, make_folder_dataset, synthetic_cfg

from rsa_jax.data import pipeline
from rsa_jax.train import train


def _cfg(tmp_path, manual_dir):
    return synthetic_cfg(str(tmp_path / "tfds"), name="video_folder", builder_config="small",
                         manual_dir=manual_dir, num_frames=4, image_size=28,
                         crop_scales=(1.0, 0.875), num_threads=1)


def test_builder_reads_class_folders_and_skips_bad_files(tmp_path):
    root = make_folder_dataset(str(tmp_path / "raw"), {"train": 2, "validation": 1})
    bad = tmp_path / "raw" / "train" / "red square" / "broken.mp4"
    bad.write_bytes(b"not a video")
    (tmp_path / "raw" / "train" / "red square" / ".DS_Store").write_bytes(b"")
    (tmp_path / "raw" / "validation" / "extra class").mkdir()
    cfg = _cfg(tmp_path, root)
    builder = pipeline.prepare(cfg)
    names = pipeline.class_names(cfg)
    assert names == sorted(list(COLOURS) + ["extra class"])
    assert pipeline.num_examples(cfg, "train") == 8
    assert pipeline.num_examples(cfg, "validation") == 4
    assert [p.split(":")[0] for p in builder.problems["train"]] == [str(bad)]
    source = builder.as_data_source("validation")
    rec = source[0]
    assert rec["num_frames"] == 8 and names[rec["label"]] == rec["label_name"].decode()


def test_classifier_dropped_only_when_class_counts_differ(tmp_path):
    fresh = {"params": {"new_fc": {"kernel": np.zeros((8, 4))}, "conv1": {"kernel": 1}}}
    same = {"params": {"new_fc": {"kernel": np.ones((8, 4))}, "conv1": {"kernel": 2}}}
    other = {"params": {"new_fc": {"kernel": np.ones((8, 5))}, "conv1": {"kernel": 2}}}
    assert train._drop_other_classifier(same, fresh, "x") is same
    assert set(train._drop_other_classifier(other, fresh, "x")["params"]) == {"conv1"}


@pytest.mark.slow
def test_finetune_converted_model_on_a_folder_dataset(tmp_path):
    """configs/finetune.py with init_from = a converted 5-class model on 4 classes:
    the classifier is replaced, the backbone loads exactly, training is above chance."""
    from configs import finetune
    converted, model_cfg = ph.make_converted_dir(str(tmp_path), num_classes=5)
    root = make_folder_dataset(str(tmp_path / "raw"), {"train": 8, "validation": 4})
    c = finetune.get_config("4,4")
    c.data = _cfg(tmp_path, root)
    c.model.update({k: v for k, v in model_cfg.items() if k != "num_classes"})
    c.model.dropout = 0.0
    c.init_from = converted
    c.update(global_batch_size=8, eval_batch_size=8, learning_rate=0.05, num_epochs=6,
             warmup_epochs=0, eval_every_epochs=6, log_every_steps=100)

    import orbax.checkpoint as ocp

    from rsa_jax import parallel
    mesh = parallel.create_mesh({"data": -1})
    state, shardings, _, _ = train.setup(c, mesh, steps_per_epoch=4)
    loaded = train.load_pretrained(c, state, shardings)
    src = ocp.StandardCheckpointer().restore(converted)
    np.testing.assert_array_equal(loaded.params["layer4_1"]["conv2"]["H2"],
                                  src["params"]["layer4_1"]["conv2"]["H2"])
    np.testing.assert_array_equal(loaded.params["new_fc"]["kernel"],
                                  jax.device_get(state.params["new_fc"]["kernel"]))

    metrics = train.train_and_evaluate(c, str(tmp_path / "workdir"))
    assert metrics["num_videos"] == 16
    assert metrics["top1"] >= 62.5, metrics  # chance is 25 %
    assert (tmp_path / "workdir" / "class_names.json").exists()
