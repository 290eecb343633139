"""Training and evaluation: optimiser recipe, steps, loop, checkpoints."""
