"""TFDS builders; importing this package registers all of them with TFDS.

| TFDS name | raw data (manual_dir) | configs |
| --- | --- | --- |
| `synthetic_motion` | none (generated from a seed) | default, tiny |
| `something_something_v2` | webm + labels/*.json | default (JPEG), video |
| `something_something_v1` | JPEG folders + CSV | default |
| `diving48` | mp4 + V2 JSON | default (JPEG), video |
| `fine_gym` | element clips (mp4) + txt lists | gym99, gym288 |
| `video_list` | official `<dir> <n> <label>` list files | default |
| `video_folder` | `<split>/<class name>/<video file>` | default (JPEG), video |
"""

from rsa_jax.data.builders.base import BadInputError, EmptySplitError, VideoBuilder, VideoConfig
from rsa_jax.data.builders.fine_grained import Diving48, FineGym
from rsa_jax.data.builders.something_something import SomethingSomethingV1, SomethingSomethingV2
from rsa_jax.data.builders.synthetic_motion import SyntheticMotion
from rsa_jax.data.builders.video_folder import VideoFolder
from rsa_jax.data.builders.video_list import VideoList

__all__ = ["BadInputError", "Diving48", "EmptySplitError", "FineGym", "SomethingSomethingV1",
           "SomethingSomethingV2", "SyntheticMotion", "VideoBuilder", "VideoConfig",
           "VideoFolder", "VideoList"]
