"""RSANet-R50 on Something-Something V2: the official recipe (docs/training.md).

    python -m rsa_jax.main --config configs/ssv2.py --workdir DIR \\
        --config.torchvision_init=resnet50-19c8e357.pth --config.data.manual_dir=RAW
    python -m rsa_jax.main --config configs/ssv2.py:8 --workdir DIR \\
        --config.torchvision_init=resnet50-19c8e357.pth --config.data.manual_dir=RAW

16 frames by default, `:8` for 8. RAW holds the raw videos and label files
(docs/data.md#datasets); the first run builds the dataset from them (or
`python -m rsa_jax.data prepare` does, ahead), later runs no longer need it. Logged
run (16 frames): 65.98 / 89.88 top-1 / top-5, 1 clip × 1 centre crop
(docs/method.md#paper-results). Like the official code, training starts from
torchvision's ImageNet ResNet-50 (`resnet50-19c8e357.pth`): pass
`--config.torchvision_init=PATH` (or `--config.init_from=DIR`), or opt out with
`--config.from_scratch=True` (docs/method.md#imagenet-init).

Path fields are typed placeholders (`None` by default) so that
`--config.data.data_dir=DIR` etc. parse on the command line.
"""

import ml_collections
from ml_collections import config_dict

# The official no-flip list (ops/transforms.py, GroupRandomHorizontalFlip2) under the
# alphabetical 174-class order: pulling/pushing left<->right, turning the camera left/right.
SS_FLIP_EXEMPT = (86, 87, 93, 94, 166, 167)


def get_config(arg: str = "16") -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0

    c.data = ml_collections.ConfigDict()
    c.data.name = "something_something_v2"
    c.data.builder_config = "default"   # JPEG frames 240×320 ("video": keep webm)
    c.data.data_dir = config_dict.placeholder(str)     # TFDS dir (None: ~/tensorflow_datasets)
    c.data.manual_dir = config_dict.placeholder(str)   # raw files, see docs/data.md#datasets
    c.data.num_frames = int(arg)           # 8 or 16 (TSN segments)
    c.data.image_size = 224                # multi-scale crop of 240×320 frames (docs/data.md#pipeline)
    c.data.flip = True                     # except the 6 left/right classes (docs/data.md#pipeline)
    # Explicit ids, as the official code has them; None derives them from class names.
    c.data.flip_exempt_classes = config_dict.placeholder(tuple)
    c.data.flip_exempt_classes = SS_FLIP_EXEMPT
    # --mode test: the paper's "2 clips", placed at 1/4 and 3/4 of each segment, one
    # centre crop each: our reading, the official code tests 1 view (docs/training.md#evaluation).
    c.data.test_num_clips = 2
    c.data.test_num_crops = 1              # 3: left/centre/right full-height crops
    c.data.num_workers = 16                # official: 16 workers
    c.data.num_threads = 4
    c.data.prefetch = 2
    c.data.uint8_output = True             # raw pixels to the device (4x fewer bytes); normalised in the step
    c.train_split = "train"                # 168,913 videos (2640 it/epoch at batch 64)
    c.eval_split = "validation"            # 24,777 videos

    c.model = ml_collections.ConfigDict()
    c.model.backbone = "rsa"
    c.model.depth = 50
    c.model.width = 64
    c.model.num_classes = 174
    c.model.rsa_positions = ((2,), (1, 3), (1, 3, 5), (1,))   # 7 RSA blocks (docs/method.md#network)
    c.model.rsa = dict(num_heads=8, kernel_size=[5, 7, 7], kernel_type="VplusR",
                       context_type="VplusR", implementation="conv",   # docs/method.md#network
                       conv_strategy="auto")   # "autotune": time the forms on this device
    c.model.dropout = 0.3                  # scripts and SSv2 log
    c.model.stochastic_depth = 0.2         # survival 1.0 -> 0.8 over 16 blocks (docs/method.md#stochastic-depth)
    c.model.dtype = "float32"              # 'bfloat16' on GPU/TPU (params stay float32)
    # Convolution/matmul precision; None: the backend's default (TF32 on Ampere/Hopper GPUs,
    # bf16 passes on TPU). 'highest': true float32, as the official V100 run
    # (docs/training.md#recipe-audit).
    c.model.precision = config_dict.placeholder(str)
    c.model.bn_momentum = 0.9              # torch momentum 0.1
    c.model.bn_eps = 1e-5
    c.model.bn_group_clips = 8             # BN statistics per 8 clips, as each official GPU (docs/training.md#recipe-audit)
    c.model.remat = "none"                 # 'rsa' | 'block': recompute in the backward pass (docs/benchmarks.md)

    # docs/training.md#optimiser: SGD Nesterov 0.9, wd 5e-4 (not on BN/bias), batch 64, lr 0.02.
    c.global_batch_size = 64
    c.learning_rate = 0.02
    c.num_epochs = 80
    c.num_train_steps = -1                 # -1: num_epochs × steps per epoch
    c.warmup_epochs = 5                    # from 1e-3·lr, stepped per epoch (docs/training.md#schedule)
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
    c.init_from = config_dict.placeholder(str)         # orbax dir from rsa_jax.convert (fine-tune / eval)
    c.torchvision_init = config_dict.placeholder(str)  # resnet50-19c8e357.pth (docs/method.md#imagenet-init)
    # Training needs torchvision_init or init_from unless this is set True explicitly.
    c.from_scratch = False

    c.log_every_steps = 100
    c.profile_steps = ""                   # "a,b": jax.profiler trace of steps a..b in <workdir>/profile
    c.log_mfu = True                       # model TFLOP/s + MFU in the progress line (docs/benchmarks.md#mfu)
    c.input_check_seconds = 1.5            # host decode-rate check at start; 0 turns it off
    c.input_check_mfu = 0.3                # MFU assumed for the expected step time of that check
    c.eval_every_epochs = 5                # official eval_freq 5 (+ last 10 epochs)
    c.eval_last_epochs = 10                # official: also every epoch of the last 10; best top-1 kept
    # The released loop steps SGD on zero gradients at every epoch start (main.py:270-274):
    # weight decay + momentum at the base lr (docs/training.md#schedule).
    c.official_epoch_step = True
    c.checkpoint_every_steps = 2640        # about one epoch
    c.keep_checkpoints = 3
    c.eval_batch_size = 64
    c.test_batch_size = 16
    return c
