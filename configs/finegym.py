"""RSANet-R50 on FineGym element clips (Gym99 by default, Gym288 by argument).

No official recipe is released for this dataset (docs/training.md#per-dataset, official issue #3):
everything not set here is the Something-Something V2 recipe (`configs/ssv2.py`) [unverified].

    python -m rsa_jax.main --config configs/finegym.py --workdir DIR            # 16 frames, Gym99
    python -m rsa_jax.main --config configs/finegym.py:8,gym288 --workdir DIR   # 8 frames, Gym288

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
    c.data.flip_exempt_classes = None      # the SS ids do not apply; None: from class names
    c.train_split = "train"
    c.eval_split = "validation"            # the element-level val lists
    c.model.num_classes = {"gym99": 99, "gym288": 288}[subset]
    c.checkpoint_every_steps = 0           # 0: with every evaluation
    return c
