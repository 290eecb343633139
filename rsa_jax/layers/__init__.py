"""Layers: the RSA module."""
from rsa_jax.layers.rsa import RSA, resolve_dims, l2_normalize

__all__ = ["RSA", "resolve_dims", "l2_normalize"]
