"""Fine-tune a converted official RSA checkpoint on your own videos (``video_folder``).

    python -m rsa_jax.convert official rsa_r50_ssv2_16f.pth.tar /ckpt/rsa_ssv2
    python -m rsa_jax.main --config configs/finetune.py:4 --workdir /tmp/ft \\
        --config.init_from=/ckpt/rsa_ssv2 --config.data.manual_dir=/videos

The argument is ``NUM_CLASSES[,FRAMES]`` (4 classes above); ``/videos`` holds
``train/<class name>/*.mp4`` and ``validation/...`` (rsa_jax/data/builders/video_folder.py). The model config must be the
converted checkpoint's (its ``model_config.json``; the paper's RSA-R50 is the
default here) except ``num_classes``: the checkpoint's classifier is then
replaced by a fresh one (logged), everything else loads strictly. The
optimiser is the paper's (docs/training.md#optimiser) with fine-tuning
settings of ours, not from the paper: 10 epochs, lr 0.001 per 8 clips with a
cosine decay, dropout 0.5 against over-fitting a small dataset. Training
stops at once unless ``--config.init_from`` (or ``--config.torchvision_init``)
is given.
"""

import ml_collections

from configs import ssv2


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    """``arg`` = the class count of the folder dataset (required), optionally
    ``,FRAMES`` (default 8, as the official SSv2 checkpoints)."""
    parts = [p for p in arg.split(",") if p]
    if not parts or not parts[0].isdigit():
        raise ValueError("configs/finetune.py needs the class count: "
                         "--config configs/finetune.py:NUM_CLASSES[,FRAMES]")
    # Everything not set here is the SSv2 recipe (configs/ssv2.py): the paper's
    # RSA-R50, its optimiser and schedule shape, uint8 frames, typed path fields.
    c = ssv2.get_config(parts[1] if len(parts) > 1 else "8")
    c.data.name = "video_folder"
    c.data.builder_config = "default"      # 240×320 JPEG frames; 'video' keeps the files
    c.data.flip_exempt_classes = None      # None: classes named left/right are never flipped
    c.data.crop_scales = (1.0, 0.875, 0.75, 0.66)
    c.data.test_num_crops = 3
    c.data.num_workers = 0

    c.model.num_classes = int(parts[0])
    c.model.dropout = 0.5                  # small datasets over-fit
    c.model.bn_group_clips = 0             # statistics over the whole batch (ssv2.py: 8)

    c.global_batch_size = 8
    c.learning_rate = 0.001
    c.num_epochs = 10
    c.warmup_epochs = 1
    c.schedule = "step"
    c.grad_clip_norm = 20.0

    c.log_every_steps = 20
    c.eval_every_epochs = 1
    c.eval_last_epochs = 0
    c.official_epoch_step = False          # a quirk of the official loop, not of this recipe
    c.checkpoint_every_steps = 0           # 0: with every evaluation
    c.keep_checkpoints = 2
    c.eval_batch_size = 8
    c.test_batch_size = 4
    return c
