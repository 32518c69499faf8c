"""ImageNet MobileNetV2 on real Stanford Cars photos (../shared; skipped without it).

Trains the seed recipe on half of 40 car classes and checks that it clearly beats the frozen
encoder on the other 20, which it never saw (a subset at 160 px: ~2 minutes on 2 CPU cores). Then
issue 19's check on a whole make-disjoint fold of the 98 classes at 224 px: the CPU default recipe
beats the seed recipe on all three metrics (~6 minutes). The two-fold comparison of every recipe is
docs/quality.md's, made with bench/recipe_folds.sh.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from train import recipes
from tests.conftest import CARS_DEV, MOBILENET_WEIGHTS, needs_shared, run_module

pytestmark = [pytest.mark.slow, pytest.mark.shared, needs_shared]

CLASSES = 40


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
    result = run_module("train.evaluate", "--run", str(run_dir), "--data", str(cars_subset), "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert report["classes"] == CLASSES // 2 and report["classes_seen_in_training"] == 0
    base, tuned = report["base"], report["tuned"]
    assert base["r_precision"] > 0.05  # real ImageNet features, not noise
    assert tuned["r_precision"] > 1.15 * base["r_precision"], report
    assert tuned["map_at_r"] > 1.15 * base["map_at_r"], report


def train_and_evaluate_fold(run_dir: Path, cache: Path, recipe: str) -> dict:
    trained = run_module(
        "train.train", "--data", str(CARS_DEV), "--out", str(run_dir), "--cache-dir", str(cache),
        "--backbone", "mobilenet_v2", "--weights", str(MOBILENET_WEIGHTS), "--split-by", "make", "--fold", "1",
        "--recipe", recipe,
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr[-3000:]
    result = run_module("train.evaluate", "--run", str(run_dir), "--data", str(CARS_DEV), "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


def test_the_cpu_default_beats_the_seed_recipe_on_unseen_makes(tmp_path):
    assert recipes.CPU_DEFAULT != "seed"
    seed = train_and_evaluate_fold(tmp_path / "seed", tmp_path / "cache", "seed")
    default = train_and_evaluate_fold(tmp_path / "default", tmp_path / "cache", recipes.CPU_DEFAULT)
    assert default["classes_seen_in_training"] == 0 and default["images"] == seed["images"]
    for metric in ("r_precision", "precision_at_1", "map_at_r"):
        assert default["tuned"][metric] > seed["tuned"][metric], (metric, default["tuned"], seed["tuned"])
        assert default["tuned"][metric] > default["base"][metric], (metric, default)
