"""Layers: the RSA module (`rsa.py`) and how its convolutions run (`conv_forms.py`)."""
from rsa_jax.layers.rsa import RSA, l2_normalize, resolve_dims

__all__ = ["RSA", "resolve_dims", "l2_normalize"]
