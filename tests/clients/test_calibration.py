"""Match levels calibrated on a labelled gallery (clients/calibration.py), kept with the gallery."""

from __future__ import annotations

import numpy as np
import pytest

from clients.api import ClientError
from clients.calibration import (
    LEVELS, calibrate, calibrate_store, increasing_fit, leave_one_out_results, level, level_rank, of_store,
)  # fmt: skip
from clients.gallery import Gallery


def clustered(classes: int = 12, per_class: int = 10, spread: float = 2.0, seed: int = 0):
    """Unit rows around one centre per class: neighbours are mostly, not only, of the same class."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, 32))
    rows = np.repeat(centres, per_class, axis=0) + spread * rng.normal(size=(classes * per_class, 32))
    rows = (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)
    return rows, [f"{i // per_class:03d}_Audi_A{i // per_class}_Sedan_2012" for i in range(classes * per_class)]


def test_levels_mean_what_they_say_on_the_rows_they_were_measured_on():
    vectors, labels = clustered()
    calibration = calibrate(vectors, labels, "v1")
    likely, similar = calibration["thresholds"]["likely the same model"], calibration["thresholds"]["similar"]
    assert likely is not None and similar is not None and likely >= similar
    scores, same = leave_one_out_results(vectors, labels)
    assert same[scores >= likely].mean() >= 0.8 and same[scores >= similar].mean() >= 0.3
    assert same[scores < similar].mean() < 0.3  # below "similar" most results are other models
    assert level(likely, calibration) == LEVELS[0] and level(similar, calibration) == "similar"
    assert level(similar - 1e-3, calibration) == "different"
    assert calibration["model_version"] == "v1" and calibration["rows"] == 120 and calibration["labels"] == 12


def test_a_large_gallery_is_calibrated_on_a_sample_of_queries():
    vectors, labels = clustered(classes=30, per_class=10)
    scores, same = leave_one_out_results(vectors, labels, k=5, queries=50)
    assert scores.shape == same.shape == (250,)


@pytest.mark.parametrize("rows, labels, message", [
    (5, lambda n: ["a"] * n, "at least 20"),
    (40, lambda n: ["a"] * n, "2 or more car models"),
    (40, lambda n: [str(i) for i in range(n)], "nothing to calibrate on"),
])  # fmt: skip
def test_what_cannot_be_calibrated_is_refused(rows, labels, message):
    vectors, _ = clustered(classes=4, per_class=10)
    with pytest.raises(ClientError, match=message):
        calibrate(vectors[:rows], labels(rows), "v1")


def test_min_level_names_and_aliases():
    assert [level_rank(n) for n in ("likely", "same", "similar", "different", LEVELS[0])] == [0, 0, 1, 2, 0]
    with pytest.raises(ClientError, match="min_level must be one of"):
        level_rank("great")


def test_the_calibration_is_kept_in_the_file_and_dropped_for_another_model(tmp_path):
    vectors, labels = clustered()
    gallery = Gallery("v1", 32, path=tmp_path / "g.npz")
    gallery.add(vectors, [f"/p/{i}.jpg" for i in range(len(labels))], labels)
    made = calibrate_store(gallery)
    reloaded = Gallery.load(tmp_path / "g.npz")
    assert of_store(reloaded) == made
    reloaded.model_version = "v2"  # rows of another model: its scores are other scores
    assert of_store(reloaded) is None


def test_the_chance_of_the_same_model_never_falls_as_the_score_rises():
    fitted = increasing_fit(np.array([0.1, 0.5, 0.3, 0.9, 0.2]), np.array([1, 1, 1, 1, 3]))
    assert np.allclose(fitted, [0.1] + [(0.5 + 0.3 + 0.9 + 3 * 0.2) / 6] * 4)  # pooled until non-decreasing
    assert np.allclose(increasing_fit(np.array([1.0, 3.0, 2.0, 4.0]), np.ones(4)), [1, 2.5, 2.5, 4])
