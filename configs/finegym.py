"""RSANet-R50 on FineGym element clips (Gym99 by default, Gym288 by argument).

**Our recipe, not an official one.** The official code has none for FineGym: its
`main.py` builds data only for Kinetics and Something-Something (`main.py:181-188`; the
class counts at `main.py:74-79` have no data source), and no script or log for it is
released (official issue #3; docs/training.md#per-dataset). Only the Something-Something
numbers are backed by an official recipe. Everything not set here is the
Something-Something V2 recipe (`configs/ssv2.py`) [unverified]. Every class is flipped,
as the official transforms do for any dataset but Something-Something
(`ops/transforms.py:70-73`).

    python -m rsa_jax.main --config configs/finegym.py --workdir DIR \\
        --config.torchvision_init=resnet50-19c8e357.pth --config.data.manual_dir=RAW
    python -m rsa_jax.main --config configs/finegym.py:8,gym288 --workdir DIR \\
        --config.torchvision_init=resnet50-19c8e357.pth --config.data.manual_dir=RAW

The first is 16 frames of Gym99, the second 8 frames of Gym288; RAW holds the raw
videos and annotation files (docs/data.md#datasets).

Paper (mean per-class accuracy, printed as eval/mean_class_acc): Gym99 86.4,
Gym288 50.9 (docs/method.md#paper-results).
"""

import ml_collections

from configs import ssv2


def get_config(arg: str = "16") -> ml_collections.ConfigDict:
    frames, subset = (arg.split(",") + ["gym99"])[:2]
    c = ssv2.get_config(frames)
    c.data.name = "fine_gym"
    c.data.builder_config = subset         # gym99 | gym288
    c.data.flip_exempt_classes = ()        # none: the official flips all but Something-Something
    c.train_split = "train"
    c.eval_split = "validation"            # the element-level val lists
    c.model.num_classes = {"gym99": 99, "gym288": 288}[subset]
    c.checkpoint_every_steps = 0           # 0: with every evaluation
    return c
