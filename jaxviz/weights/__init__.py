"""Torch-free weight readers, the torch -> Flax port, and the store of ported weights."""
