"""Video data: TFDS builders, TSN sampling, augmentation and grain pipelines.

Public API (no JAX imported here):
  create_iterator, num_examples, class_names, prepare  — rsa_jax.data.pipeline
Importing `rsa_jax.data.builders` registers every dataset with TFDS.
"""

from rsa_jax.data.pipeline import class_names, create_iterator, num_examples, prepare

__all__ = ['class_names', 'create_iterator', 'num_examples', 'prepare']
