"""Compatibility shim for Quaterion 0.1.35 on torch >= 2.x.

Quaterion imports the private type variable ``T_co`` from ``torch.utils.data.dataloader`` and
``torch.utils.data.dataset``; newer torch releases no longer define it there, so ``import
quaterion`` fails with ImportError. Defining the same covariant TypeVar restores the import; it is
only used in type annotations. `train/__init__.py` imports this module first, so the shim is
applied once, before any module of the training package imports quaterion.
(quaterion-models, the serving side, needs no shim.)
"""

import warnings
from typing import TypeVar

import torch.utils.data.dataloader as _dataloader
import torch.utils.data.dataset as _dataset

T_co = TypeVar("T_co", covariant=True)

for _module in (_dataloader, _dataset):
    if not hasattr(_module, "T_co"):
        _module.T_co = T_co

# Lightning 1.9 imports pkg_resources (hence setuptools < 81), which warns on every start.
warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
