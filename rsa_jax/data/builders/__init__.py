"""TFDS builders; importing this package registers all of them with TFDS."""

from rsa_jax.data.builders.base import BadInputError, EmptySplitError, VideoConfig
from rsa_jax.data.builders.synthetic_motion import SyntheticMotion
