"""RSANet-R50 on Something-Something V1: the official recipe (docs/training.md).

    python -m rsa_jax.main --config configs/ssv1.py --workdir DIR \\
        --config.torchvision_init=resnet50-19c8e357.pth --config.data.manual_dir=RAW
    python -m rsa_jax.main --config configs/ssv1.py:8 --workdir DIR \\
        --config.torchvision_init=resnet50-19c8e357.pth --config.data.manual_dir=RAW

16 frames by default, `:8` for 8; RAW as in `configs/ssv2.py`. Logged run (16 frames,
80 epochs, dropout 0.5): 53.99 / 81.14 top-1 / top-5, 1 clip × 1 centre crop
(docs/method.md#paper-results). Everything not set here is the SSv2 recipe
(`configs/ssv2.py`), ImageNet init and the official flip ids included.

Which recipe produced the paper's 8-frame SSv1 figure (51.9 / 79.6) is not known: only
the 16-frame run is logged, and its log disagrees with the released script (80 epochs
and dropout 0.5 against 50 and 0.3). `:8` takes the logged 16-frame run's values.
"""

import ml_collections

from configs import ssv2


def get_config(arg: str = "16") -> ml_collections.ConfigDict:
    c = ssv2.get_config(arg)
    c.data.name = "something_something_v1"
    c.data.builder_config = "default"      # JPEG frame folders + CSV (docs/data.md#datasets)
    c.data.flip_exempt_classes = ssv2.SS_FLIP_EXEMPT   # one list for SSv1 and SSv2 (official)
    c.train_split = "train"                # 86,017 videos (1345 it/epoch at batch 64)
    c.eval_split = "validation"            # 11,522 videos
    c.model.dropout = 0.5                  # logged run behind the released ckpt (script: 0.3)
    c.num_epochs = 80                      # logged run (script: 50)
    c.eval_every_epochs = 1                # SSv1 script: eval_freq 1
    c.checkpoint_every_steps = 1345        # about one epoch
    return c
