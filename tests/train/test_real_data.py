"""ImageNet MobileNetV2 on real Stanford Cars photos (../shared; skipped without it).

The first test trains on half of 40 car classes and checks that the tuned model clearly beats the
frozen encoder on the other 20, which it never saw (a subset at 160 px: ~2 minutes on 2 CPU cores).
The second checks, at full scale (fold 1 of all 98 classes, 224 px), that docs/quality.md's
recommended recipe beats the seed recipe on the 49 unseen classes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

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
        "--epochs", "40", "--patience", "10",
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


# docs/quality.md's recommended recipe and the seed recipe it is measured against, as there.
FINE_TUNED = (
    "--trainable-blocks", "6", "--sampler", "balanced", "--augment-copies", "8",
    "--select-by", "r_precision", "--epochs", "12", "--patience", "4",
)  # fmt: skip
SEED = ("--epochs", "50")


def train_and_evaluate_fold_one(tmp_path: Path, name: str, recipe: tuple[str, ...]) -> dict:
    """Trains on the 49 classes of fold 1 of all 98 and evaluates on the other 49 (224 px)."""
    run_dir = tmp_path / name
    trained = run_module(
        "train.train", "--data", str(CARS_DEV), "--out", str(run_dir), "--cache-dir", str(tmp_path / "cache"),
        "--backbone", "mobilenet_v2", "--weights", str(MOBILENET_WEIGHTS), "--input-size", "224", "--fold", "1",
        *recipe, timeout=3600,
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr[-3000:]
    result = run_module(
        "train.evaluate", "--run", str(run_dir), "--data", str(CARS_DEV), "--cache-dir", str(tmp_path / "eval"),
        "--json", timeout=1200,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert report["classes"] == 49 and report["classes_seen_in_training"] == 0
    return report["tuned"]


def test_fine_tuning_on_augmented_views_beats_the_seed_recipe_on_unseen_car_models(tmp_path):
    """The recommended recipe against the seed recipe on the same held-out fold (~30 min on 2 cores)."""
    seed = train_and_evaluate_fold_one(tmp_path, "seed", SEED)
    fine_tuned = train_and_evaluate_fold_one(tmp_path, "fine-tuned", FINE_TUNED)
    assert fine_tuned["r_precision"] > seed["r_precision"] + 0.04, (seed, fine_tuned)
    assert fine_tuned["map_at_r"] > seed["map_at_r"] + 0.03, (seed, fine_tuned)
