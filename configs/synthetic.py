"""Small RSA net on the synthetic motion dataset: trains and evaluates on 2 CPU cores.

    python -m rsa_jax.main --config configs/synthetic.py --workdir /tmp/rsa_synth
    python -m rsa_jax.main --config configs/synthetic.py:tsn2d --workdir /tmp/tsn2d_synth
    python -m rsa_jax.main --config configs/synthetic.py:tiny --workdir /tmp/tiny

The argument picks the backbone: 'rsa' (default) or the baselines 'tsn2d' /
'tsn3d'. Same recipe as the paper (SGD Nesterov, warm-up + cosine, label
smoothing, stochastic depth) scaled down: a ResNet-18-layout TSN of width 8
with one RSA block (3×7×7 kernels, 2 heads: 4 value channels per head in stage 1)
per stage, 8 frames at 48², batch 16. Training crops use the two largest of the
official multi-scale crop scales only. Measured (docs/training.md#cpu-demo-synthetic-motion):
the net sits near chance until it learns motion, then reaches > 90 % val top-1 within a
few epochs; with width 16 and 16 heads (one channel per head in stage 1) that wait was
longer and seed-dependent (seed 1: 50.5 % after 30 epochs).

',tiny' (``tsn2d,tiny``; 'tiny' alone is rsa) shrinks the run to seconds per compile,
as big_vision's `runlocal`: the tiny split (32 train / 16 validation clips), 4 frames
at 32², one RSA layer (3×3×3 kernels, in stage 4), batch 8, two epochs, no start-up
measurements. The tests, benchmarks/chaos_resume.py and the smoke run of
benchmarks/device_suite.py start from it.
"""

import ml_collections
from ml_collections import config_dict

BACKBONES = ("rsa", "tsn2d", "tsn3d")


def get_config(arg: str = "rsa") -> ml_collections.ConfigDict:
    """``arg``: a backbone of BACKBONES, ``tiny``, or both (``tsn2d,tiny``)."""
    parts = [p for p in arg.split(",") if p]
    tiny = "tiny" in parts
    backbone = [p for p in parts if p != "tiny"] or ["rsa"]
    if len(backbone) != 1 or backbone[0] not in BACKBONES:
        raise ValueError(f"configs/synthetic.py:{arg}: expected one of {', '.join(BACKBONES)}, "
                         "optionally with ',tiny' (or 'tiny' alone)")
    c = ml_collections.ConfigDict()
    c.seed = 0

    c.data = ml_collections.ConfigDict()
    c.data.name = "synthetic_motion"
    c.data.builder_config = "default"      # 1536 train / 384 val clips, 16 frames of 64×80
    c.data.data_dir = config_dict.placeholder(str)     # None: ~/tensorflow_datasets
    c.data.manual_dir = config_dict.placeholder(str)   # unused: generated from its seed
    c.data.num_frames = 8
    c.data.image_size = 48                 # at 32² the motion is 1-2 px/frame: 47-49 % top-1
    c.data.flip = True                     # left/right classes are exempt (by name)
    c.data.flip_exempt_classes = config_dict.placeholder(tuple)   # None: from class names
    # Official scales are (1, .875, .75, .66); the 2 smallest crop moving objects out
    # of view often enough to stall learning (8 clips at 30 epochs: 64 % val top-1).
    c.data.crop_scales = (1.0, 0.875)
    c.data.test_num_clips = 2              # --mode test (docs/training.md#evaluation)
    c.data.test_num_crops = 3              # the 3-crop option exercised on CPU
    c.data.num_workers = 0                 # 2 shared cores: decode in threads
    c.data.num_threads = 2
    c.data.prefetch = 2
    c.data.uint8_output = True
    c.train_split = "train"
    c.eval_split = "validation"

    c.model = ml_collections.ConfigDict()
    c.model.backbone = backbone[0]         # 'rsa' | 'tsn2d' | 'tsn3d'
    c.model.depth = 18
    c.model.width = 8
    c.model.num_classes = 8
    c.model.rsa_positions = ((1,), (1,), (1,), (1,))   # one RSA block per stage (block 0 never is)
    c.model.rsa = dict(num_heads=2, kernel_size=[3, 7, 7], kernel_type="VplusR",
                       context_type="VplusR", implementation="conv",
                       conv_strategy="auto")   # "autotune": time the forms on this device
    c.model.dropout = 0.1
    c.model.stochastic_depth = 0.0
    c.model.dtype = "float32"
    c.model.precision = config_dict.placeholder(str)   # 'highest': see configs/ssv2.py
    c.model.bn_momentum = 0.9
    c.model.bn_eps = 1e-5
    c.model.bn_group_clips = 0             # 0: statistics over the whole batch
    c.model.remat = "none"

    # The paper recipe (docs/training.md) at a CPU scale; lr raised for a 30-epoch run.
    c.global_batch_size = 16
    c.learning_rate = 0.1
    c.num_epochs = 30
    c.num_train_steps = -1                 # -1: num_epochs × steps per epoch
    c.warmup_epochs = 2                     # epoch 0 ramps from 0.5·lr (official s = e + 1)
    c.warmup_factor = 1e-3
    c.min_lr_ratio = 1e-3
    c.schedule = "step"                    # smooth per-step cosine (few epochs)
    c.momentum = 0.9
    c.nesterov = True
    c.weight_decay = 5e-4
    c.label_smoothing = 0.1
    c.grad_clip_norm = 100.0
    c.grad_accum_steps = 1

    c.mesh_shape = {"data": -1}
    c.partition_rules = []
    c.fsdp_min_size = 0
    c.init_from = config_dict.placeholder(str)
    c.torchvision_init = config_dict.placeholder(str)
    c.from_scratch = True                  # the demo net has no ImageNet counterpart

    c.log_every_steps = 96
    c.profile_steps = ""                   # "a,b": jax.profiler trace of steps a..b in <workdir>/profile
    c.log_mfu = True                       # model TFLOP/s + MFU in the progress line (docs/benchmarks.md#mfu)
    c.input_check_seconds = 1.5            # host decode-rate check at start; 0 turns it off
    c.input_check_mfu = 0.3                # MFU assumed for the expected step time of that check
    c.eval_every_epochs = 10
    c.eval_last_epochs = 0
    c.official_epoch_step = False
    c.checkpoint_every_steps = 0           # 0: with every evaluation
    c.keep_checkpoints = 2
    c.eval_batch_size = 32
    c.test_batch_size = 8
    if tiny:
        _tiny(c)
    return c


def _tiny(c: ml_collections.ConfigDict) -> None:
    """The run of the tests and smoke runs: seconds per compile on one CPU core."""
    c.data.builder_config = "tiny"         # 32 train / 16 validation clips, 32×40
    c.data.num_frames = 4
    c.data.image_size = 32
    c.data.num_threads = 1
    c.model.rsa_positions = ((), (), (), (1,))   # one RSA layer, in stage 4
    c.model.rsa.num_heads = 2
    c.model.rsa.kernel_size = [3, 3, 3]
    c.global_batch_size = 8                # 4 steps per epoch, one clip per simulated device
    c.eval_batch_size = 8
    c.test_batch_size = 8
    c.num_epochs = 2
    c.eval_every_epochs = 1
    c.log_every_steps = 2
    c.checkpoint_every_steps = 2
    # No start-up measurements (a forward compile and 1.5 s of decoding per run);
    # tests/test_preemption.py turns them on and checks their lines.
    c.log_mfu = False
    c.input_check_seconds = 0.0
