"""Shared fixtures: generated datasets, ../shared detection, CLI runners."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from core.dev_data import CARS_DEV, MOBILENET_WEIGHTS, ROOT, SHARED, have_shared
from train.synthetic import generate

__all__ = ["CARS_DEV", "MOBILENET_WEIGHTS", "ROOT", "needs_shared", "run_module", "train_tiny_run"]

needs_shared = pytest.mark.skipif(
    not have_shared(),
    reason=f"real photos and weights not found under {SHARED} (only CI and developers have ../shared)",
)


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 learnable synthetic classes x 30 images (6 colours x 4 shapes), 96 px."""
    return generate(tmp_path_factory.mktemp("data") / "synthetic", colours=6, shapes=4, per_class=30, size=96)


@pytest.fixture()
def small_data(tmp_path: Path) -> Path:
    """4 classes x 6 images: enough to build loaders and splits quickly."""
    return generate(tmp_path / "small", colours=2, shapes=2, per_class=6, size=32)


def run_module(module: str, *args: str, timeout: float = 1800) -> subprocess.CompletedProcess:
    """Runs `python -m module args` from the repository root, as a user would. The timeout catches
    a hang, not slowness: the slowest call here takes about 3 minutes on a quiet 2-core machine."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def train_tiny_run(root: Path, epochs: int = 3) -> Path:
    """A quickly trained run (random ResNet18, 32 px) in root/run; another `epochs`, another model."""
    data = generate(root / "data", colours=3, shapes=2, per_class=8, size=48)
    result = run_module(
        "train.train", "--data", str(data), "--out", str(root / "run"), "--cache-dir", str(root / "cache"),
        "--backbone", "resnet18", "--weights", "none", "--input-size", "32", "--epochs", str(epochs),
        "--recipe", "seed",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return root / "run"


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real servable for serving tests (`train_tiny_run`, 3 epochs)."""
    return train_tiny_run(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def server(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory):
    """One real TorchServe for the whole session, serving `tiny_run` (see serve/torchserve.py)."""
    from serve.torchserve import running_torchserve

    with running_torchserve(tiny_run, tmp_path_factory.mktemp("torchserve")) as handle:
        yield handle
