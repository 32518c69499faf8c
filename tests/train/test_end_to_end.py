"""train.train + train.evaluate as a user runs them, on generated data (CPU, about a minute)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import run_module
from quaterion_models import SimilarityModel

from core.files import directory_sha256

pytestmark = pytest.mark.slow

RECIPE = ["--recipe", "seed", "--backbone", "resnet18", "--weights", "none", "--input-size", "64", "--epochs", "100"]
RECIPE += ["--lr", "0.03", "--patience", "20", "--batch-size", "128"]


def train(data: Path, out: Path, cache: Path, *extra: str) -> dict:
    result = run_module(
        "train.train", "--data", str(data), "--out", str(out), "--cache-dir", str(cache), *RECIPE, *extra
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((out / "run.json").read_text())


@pytest.fixture(scope="module")
def trained(synthetic_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    root = tmp_path_factory.mktemp("e2e")
    run = train(synthetic_data, root / "run", root / "cache")
    return root, root / "run", run


def test_run_json_describes_the_servable(trained, synthetic_data):
    _, run_dir, run = trained
    assert run["model_version"] == directory_sha256(run_dir / "servable")
    train_classes, holdout = set(run["classes"]["train"]), set(run["classes"]["holdout"])
    assert len(holdout) == 12 and len(train_classes) == 12 and not train_classes & holdout
    assert run["args"]["holdout_fraction"] == 0.5 and run["args"]["seed"] == 42
    assert run["versions"]["quaterion"] == "0.1.35" and run["versions"]["torch"]
    assert run["cache"]["fingerprint"] and Path(run["cache"]["dir"]).is_dir()
    assert run["metrics"]["best_epoch"] is not None and run["metrics"]["best_validation_loss"] > 0
    assert "validation_loss" in run["metrics"]["last"]
    model = SimilarityModel.load(str(run_dir / "servable"))
    assert model.encoders["default"].preprocessing.to_dict() == run["preprocessing"]
    assert model.head.output_size == run["embedding_size"] == 512


def test_tuned_beats_base_on_held_out_classes(trained, synthetic_data):
    _, run_dir, run = trained
    result = run_module("train.evaluate", "--run", str(run_dir), "--data", str(synthetic_data), "--plot", "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert report == json.loads((run_dir / "eval.json").read_text())
    assert "%|" not in result.stderr and "Encoding" in result.stderr  # no progress bar off a terminal
    assert set(report) >= {"base", "tuned", "classes", "images", "data"}
    assert report["classes"] == 12 and report["images"] == 360 and report["classes_seen_in_training"] == 0
    for model in ("base", "tuned"):
        assert set(report[model]) == {"r_precision", "precision_at_1", "map_at_r"}
    assert report["tuned"]["r_precision"] > report["base"]["r_precision"] * 1.15
    assert report["tuned"]["map_at_r"] > report["base"]["map_at_r"]
    assert (run_dir / "metrics.png").stat().st_size > 10_000


def test_same_inputs_reuse_the_cache_and_a_change_makes_a_new_one(trained, synthetic_data):
    root, _, first = trained
    cache_file = Path(first["cache"]["dir"]) / "encoders" / "default"
    filled_at = cache_file.stat().st_mtime_ns
    again = train(synthetic_data, root / "again", root / "cache")
    assert {**again["cache"], "reused": False} == first["cache"] and again["cache"]["reused"]
    assert first["metrics"]["cache_seconds"] > again["metrics"]["cache_seconds"] >= 0
    assert cache_file.stat().st_mtime_ns == filled_at  # loaded, not refilled
    assert again["model_version"] == first["model_version"]  # seeded training is reproducible
    changed = train(synthetic_data, root / "changed", root / "cache", "--input-size", "48", "--epochs", "2")
    assert changed["cache"]["dir"] != first["cache"]["dir"]
    assert sorted(p.name for p in (root / "cache").iterdir()) == sorted(
        Path(r["cache"]["dir"]).name for r in (first, changed)
    )


def test_evaluate_refuses_data_without_the_held_out_classes(trained, tmp_path):
    _, run_dir, _ = trained
    from train.synthetic import generate

    other = generate(tmp_path / "other", colours=1, shapes=2, per_class=3, size=32)
    result = run_module("train.evaluate", "--run", str(run_dir), "--data", str(other))
    assert result.returncode == 2
    assert "held-out classes of the run are not in this data" in result.stderr
    assert run_module("train.evaluate", "--run", str(run_dir), "--data", str(other), "--classes", "all").returncode == 0


def test_saved_head_is_the_one_with_the_best_validation_loss(trained, synthetic_data):
    """Recomputes the validation loss of the saved servable: it must be the best epoch's."""
    import torch
    from train.model import make_loss

    from train.data import load_image_list, split_classes, split_validation
    from core.preprocessing import load_image

    _, run_dir, run = trained
    args = run["args"]
    images = load_image_list(synthetic_data)
    split = split_classes(images.class_names, args["holdout_fraction"], args["seed"])
    _, val = split_validation(images.only(set(split.train)), args["val_fraction"], args["seed"])
    assert len(val) <= args["batch_size"]  # one validation batch: its loss is the epoch's loss
    class_ids = {name: i for i, name in enumerate(split.train)}
    model = SimilarityModel.load(str(run_dir / "servable"))
    embeddings = model.encode([load_image(p) for p in val.paths], batch_size=64, to_numpy=False)
    groups = torch.tensor([class_ids[c] for c in val.classes])
    loss = make_loss(args["loss"], args["margin"], args["mining"], embeddings.shape[1], len(class_ids))(
        embeddings, groups
    )
    assert float(loss) == pytest.approx(run["metrics"]["best_validation_loss"], abs=1e-4)
