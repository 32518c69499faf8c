"""Similarity training for car images: Quaterion + a pretrained torchvision backbone + a trainable head.

Importing this package applies Quaterion's compatibility shim (`train/compat.py`) before any of
its modules runs, so every module here may import quaterion directly. What a servable needs at
load time lives in `core/`, which serving ships without this package.
"""


from train import compat  # noqa: F401  (first: makes `import quaterion` work on torch >= 2.x)
