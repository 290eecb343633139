"""RSANet-R50 on Something-Something V2: the official recipe (rsa-method.md §4).

    python -m rsa_jax.main --config configs/ssv2.py --workdir DIR        # 16 frames
    python -m rsa_jax.main --config configs/ssv2.py:8 --workdir DIR      # 8 frames

Logged run (16 frames): 65.98 / 89.88 top-1 / top-5, 1 clip × 1 centre crop (§6.4).
"""

import ml_collections


def get_config(arg: str = "16") -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0

    c.data = ml_collections.ConfigDict()
    c.data.name = "something_something_v2"
    c.data.builder_config = "default"   # JPEG frames 240×320 ("video": keep webm)
    c.data.data_dir = None
    c.data.manual_dir = None               # raw videos + labels/*.json, see README "Data"
    c.data.num_frames = int(arg)           # 8 or 16 (TSN segments)
    c.data.image_size = 224                # multi-scale crop of 240×320 frames (§4.4)
    c.data.flip = True                     # except the 6 left/right classes (§4.4)
    c.data.test_num_clips = 2              # paper's "2 clips" rows (§5, placement unverified)
    c.data.test_num_crops = 3
    c.data.num_workers = 16                # official: 16 workers
    c.data.num_threads = 4
    c.data.prefetch = 2
    c.train_split = "train"                # 168,913 videos (2640 it/epoch at batch 64)
    c.eval_split = "validation"            # 24,777 videos

    c.model = ml_collections.ConfigDict()
    c.model.backbone = "rsa"
    c.model.depth = 50
    c.model.width = 64
    c.model.num_classes = 174
    c.model.rsa_positions = ((2,), (1, 3), (1, 3, 5), (1,))   # §3.1: 7 RSA blocks
    c.model.rsa = dict(num_heads=8, kernel_size=[5, 7, 7], kernel_type="VplusR",
                       context_type="VplusR", implementation="conv")   # §3.2
    c.model.dropout = 0.3                  # scripts and SSv2 log
    c.model.stochastic_depth = 0.2         # survival 1.0 -> 0.8 over 16 blocks (§3.3)
    c.model.dtype = "float32"              # 'bfloat16' on GPU/TPU (params stay float32)
    c.model.bn_momentum = 0.9              # torch momentum 0.1
    c.model.bn_eps = 1e-5

    # §4.1-4.3: SGD Nesterov 0.9, wd 5e-4 (not on BN/bias), batch 64, lr 0.02.
    c.global_batch_size = 64
    c.learning_rate = 0.02
    c.num_epochs = 80
    c.num_train_steps = -1                 # -1: num_epochs × steps per epoch
    c.warmup_epochs = 5                    # from 1e-3·lr, stepped per epoch (§4.2)
    c.warmup_factor = 1e-3
    c.min_lr_ratio = 1e-3                  # cosine to 2e-5
    c.schedule = "epoch"                   # official stepped schedule; 'step' = smooth
    c.momentum = 0.9
    c.nesterov = True
    c.weight_decay = 5e-4
    c.label_smoothing = 0.1
    c.grad_clip_norm = 100.0               # never triggered in the logs
    c.grad_accum_steps = 1                 # >1 splits each global batch into micro-batches

    c.mesh_shape = {"data": -1}            # data parallel over all devices of all hosts
    c.partition_rules = []                 # [(regex, PartitionSpec tuple)], first match wins
    c.fsdp_min_size = 0                    # e.g. 2**20: shard big tensors over 'data'
    c.init_from = None                     # orbax dir from rsa_jax.convert (fine-tune / eval)
    c.torchvision_init = None              # resnet50-19c8e357.pth: ImageNet init (§3.4)

    c.log_every_steps = 100
    c.eval_every_epochs = 5                # official eval_freq 5 (+ last 10 epochs)
    c.checkpoint_every_steps = 2640        # about one epoch
    c.keep_checkpoints = 3
    c.eval_batch_size = 64
    c.test_batch_size = 16
    return c
