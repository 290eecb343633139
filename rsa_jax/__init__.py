"""rsa_jax: Relational Self-Attention (NeurIPS 2021) in JAX/Flax."""

__version__ = "0.1.0"
