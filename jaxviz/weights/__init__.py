"""Torch-free weight readers, the torch -> Flax port, and the store of ported weights.

- ``torch_format``: ``torch.save`` files (zip and legacy) read and written without torch; every
  declared shape and size is checked before a byte is read.
- ``sources``: where each model's original weights are and how to read them.
- ``porting``: torch state dict -> Flax params (checked: keys, shapes, finite values).
- ``tensorfile``: the file format of ports (safetensors, deterministic bytes) and atomic writes.
- ``store``: ``load_model(name)``; ports on first use, verifies pins from ``weights/MANIFEST.json``.
- ``fetch``: downloads torchvision's files; used by ``scripts/setup.sh`` only, never at run time.
"""
