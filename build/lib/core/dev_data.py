"""Where the development data lives: real photos and weights in ../shared (CI and developers only).

Tests skip and benchmarks fall back to generated data when it is absent; `CARS_SHARED` points
elsewhere.
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CARS_SHARED", ROOT.parent / "shared"))
CARS_DEV = SHARED / "data" / "cars196-dev"
MOBILENET_WEIGHTS = SHARED / "weights" / "mobilenet_v2_imagenet.pt"


def have_shared() -> bool:
    """Both the real photos and the MobileNetV2 weights are there."""
    return CARS_DEV.is_dir() and MOBILENET_WEIGHTS.is_file()
