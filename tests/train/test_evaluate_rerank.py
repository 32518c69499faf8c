"""train.evaluate --rerank on the session's tiny trained run: the metrics are those of the file
store's re-ranked searches (clients/gallery.py through core/rerank.py), query by query."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import run_module

pytestmark = pytest.mark.slow


def served_metrics(run_dir: Path, data: Path, cache: Path, settings) -> dict[str, float]:
    """P@1 and R-precision of each held-out image searching a file store of all the others."""
    from clients.gallery import Gallery
    from train.data import CarsDataset, load_image_list
    from train.evaluate import apply_head, encoder_outputs, load_run, select_images

    run, tuned = load_run(run_dir)
    images = select_images(load_image_list(data), run, "heldout")
    dataset = CarsDataset(images, {name: i for i, name in enumerate(images.class_names)})
    (key, encoder), *_ = tuned.encoders.items()
    features, _ = encoder_outputs(encoder, run.servable_dir / "encoders" / key, dataset, 64, cache)  # cached
    vectors = apply_head(tuned.head, features, 64).float().numpy()
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)  # as served: unit length
    classes = list(images.classes)
    first, precision = [], []
    for i, label in enumerate(classes):
        others = [j for j in range(len(classes)) if j != i]
        gallery = Gallery("v", vectors.shape[1])
        gallery.add(vectors[others], [str(j) for j in others], [classes[j] for j in others])
        relevant = classes.count(label) - 1
        hits = gallery.search(vectors[i], relevant, rerank=settings)
        first.append(hits[0].label == label)
        precision.append(sum(hit.label == label for hit in hits) / relevant)
    return {"precision_at_1": float(np.mean(first)), "r_precision": float(np.mean(precision))}


def test_evaluate_rerank_measures_what_the_file_store_serves(tiny_run, tmp_path):
    from core.rerank import DEFAULT, RerankSettings

    data, cache = tiny_run.parent / "data", tmp_path / "cache"
    result = run_module(
        "train.evaluate", "--run", str(tiny_run), "--data", str(data), "--json", "--cache-dir", str(cache),
        "--rerank-k", "2", "--rerank-alpha", "1", "--rerank-shortlist", "6",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert report == json.loads((tiny_run / "eval.json").read_text())
    assert report["rerank"] == {"k": 2, "alpha": 1.0, "shortlist": 6, "largest_class": 8}  # overrides imply --rerank
    assert set(report["tuned_rerank"]) == set(report["tuned"]) == {"r_precision", "precision_at_1", "map_at_r"}
    assert "the largest class has 7 other images, more than the re-rank shortlist (6)" in result.stderr
    served = served_metrics(tiny_run, data, cache, RerankSettings(2, 1.0, 6))
    for metric, value in served.items():
        assert report["tuned_rerank"][metric] == pytest.approx(value, abs=1e-4), metric
    table = run_module("train.evaluate", "--run", str(tiny_run), "--data", str(data), "--cache-dir", str(cache),
                       "--rerank")  # fmt: skip
    used = f"reranked: k={DEFAULT.k}, alpha={DEFAULT.alpha:g}, shortlist={DEFAULT.shortlist}"  # core/rerank.py's
    assert table.returncode == 0 and "+rerank" in table.stdout and used in table.stdout, table.stdout
    refused = run_module("train.evaluate", "--run", str(tiny_run), "--data", str(data), "--rerank-k", "0")
    assert refused.returncode == 2 and "re-rank k must be a whole number >= 1" in refused.stderr
