"""Similarity training for car images: Quaterion + a pretrained torchvision backbone + a trainable head.

Importing this package applies Quaterion's compatibility shim (`train/compat.py`) before any of
its modules runs, so every module here may import quaterion directly. What a servable needs at
load time lives in `core/`, which serving ships without this package.
"""


from core.huge_pages import use_huge_pages

use_huge_pages()  # before any tensor exists: PyTorch reads the setting once (core/huge_pages.py)

from train import compat  # noqa: E402, F401  (before any quaterion import: makes `import quaterion` work on torch >= 2.x)
