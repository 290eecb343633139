"""RSANet-R50 on Diving-48 (V2 annotations).

No official recipe is released for this dataset (docs/training.md#per-dataset, official issue #3):
everything not set here is the Something-Something V2 recipe (`configs/ssv2.py`), so
epochs and lr are the SS values [unverified].

    python -m rsa_jax.main --config configs/diving48.py --workdir DIR        # 16 frames
    python -m rsa_jax.main --config configs/diving48.py:8 --workdir DIR      # 8 frames

Paper: 84.2 top-1, 16 frames, 1 clip, ImageNet init (docs/method.md#paper-results).
"""

import ml_collections

from configs import ssv2


def get_config(arg: str = "16") -> ml_collections.ConfigDict:
    c = ssv2.get_config(arg)
    c.data.name = "diving48"
    c.data.builder_config = "default"      # JPEG frames 240×320 ("video": keep the mp4)
    c.data.flip = True                     # no direction words in Diving-48 labels
    c.data.flip_exempt_classes = None      # the SS ids do not apply; None: from class names
    c.train_split = "train"
    c.eval_split = "test"                  # Diving-48 V2 reports on its test list
    c.model.num_classes = 48
    c.checkpoint_every_steps = 0           # 0: with every evaluation
    return c
