"""Scores people can read: a match level calibrated on the gallery itself.

A raw cosine score means little to a person (the whitened model scores correct and wrong cars
alike between 0.18 and 0.30). So each labelled gallery row is used once as a query against the
others (leave one out), and its k best results are marked same model (same label) or not. Over
all those results, `precision(s)` is the share of same-model results among those scoring at
least s. Two thresholds follow, stored with the gallery (`GalleryStore.calibration`):

    likely the same model   score >= the lowest s with precision(s) >= 0.8
    similar                 score >= the lowest s with precision(s) >= 0.3
    different               below

so "likely the same model" means: in this gallery, 8 of 10 results scoring that high were the same
car model. It describes the gallery it was computed on; recompute it when the gallery or the
model changes (a reindex keeps none: the scores of another model are other scores).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from clients.api import ClientError
from clients.search import exact_top_k

LEVELS = ("likely the same model", "similar", "different")  # best first
PRECISION = {"likely the same model": 0.8, "similar": 0.3}
NEIGHBOURS = 20
MIN_ROWS = 20
MAX_QUERIES = 5000  # rows used as queries at most: a sample of a large gallery


def leave_one_out_results(
    vectors: np.ndarray, labels: list[str], k: int = NEIGHBOURS, queries: int = MAX_QUERIES, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Scores and same-label flags of the k best other rows of every row (of a seeded sample of
    `queries` rows in a large gallery), searched among all rows."""
    vectors = np.asarray(vectors, dtype=np.float32)
    k = min(k, len(vectors) - 1)
    rows = np.arange(len(vectors))
    if len(rows) > queries:
        rows = np.sort(np.random.default_rng(seed).choice(rows, queries, replace=False))
    indices, scores = exact_top_k(vectors, vectors[rows], k + 1)
    names = np.asarray(labels, dtype=object)
    others = indices != rows[:, None]
    keep = others & (np.cumsum(others, axis=1) <= k)  # drop the row itself, keep k others
    scores, neighbours = scores[keep].reshape(len(rows), k), indices[keep].reshape(len(rows), k)
    return scores.ravel(), (names[neighbours] == names[rows][:, None]).ravel()


def threshold(scores: np.ndarray, same: np.ndarray, precision: float) -> float | None:
    """The lowest score at which the results scoring at least that much are `precision` same-model."""
    order = np.argsort(-scores, kind="stable")
    ranked = scores[order]
    running = np.cumsum(same[order]) / np.arange(1, len(order) + 1)
    last_of_ties = np.append(ranked[:-1] > ranked[1:], True)  # ">= s" takes every result tied at s
    good = np.flatnonzero((running >= precision) & last_of_ties)
    return float(ranked[good[-1]]) if len(good) else None


def calibrate(vectors: np.ndarray, labels: list[str], model_version: str, k: int = NEIGHBOURS) -> dict[str, Any]:
    """The calibration of a labelled gallery: thresholds per level and what they were measured on."""
    if len(vectors) < MIN_ROWS or len(set(labels)) < 2:
        raise ClientError(f"calibration needs at least {MIN_ROWS} labelled rows of 2 or more car models")
    scores, same = leave_one_out_results(vectors, labels, k)
    if not same.any():
        raise ClientError("no row's neighbours include a row of the same label: nothing to calibrate on")
    thresholds = {level: threshold(scores, same, p) for level, p in PRECISION.items()}
    if thresholds["similar"] is not None and thresholds["likely the same model"] is not None:
        thresholds["similar"] = min(thresholds["similar"], thresholds["likely the same model"])
    return {
        "model_version": model_version,
        "method": f"leave-one-out top-{k} results of {min(len(vectors), MAX_QUERIES)} of {len(vectors)} labelled rows",
        "precision": PRECISION, "thresholds": thresholds, "rows": len(vectors), "labels": len(set(labels)),
        "same_model_share": round(float(same.mean()), 4),
    }  # fmt: skip


def level(score: float, calibration: dict[str, Any]) -> str:
    """The match level of a score under a gallery's calibration."""
    for name in LEVELS[:-1]:
        bound = calibration["thresholds"].get(name)
        if bound is not None and score >= bound:
            return name
    return LEVELS[-1]


def level_rank(name: str) -> int:
    """0 for the best level; a ClientError names the levels for anything else."""
    aliases = {"likely": LEVELS[0], "same": LEVELS[0]}
    name = aliases.get(name, name)
    if name not in LEVELS:
        raise ClientError(f"min_level must be one of: likely, similar, different (got {name!r})")
    return LEVELS.index(name)


def of_store(store) -> dict[str, Any] | None:
    """The store's calibration if it was made for the model its rows come from, else None."""
    calibration = store.calibration
    if calibration and calibration.get("model_version") == store.model_version:
        return calibration
    return None


def calibrate_store(store) -> dict[str, Any]:
    """Calibrates a gallery on its labelled rows (those whose label names a car model) and keeps
    the result in it."""
    vectors, labels = [], []
    for batch, rows in store.export():
        for vector, row in zip(batch, rows, strict=True):
            if row.get("label"):
                vectors.append(vector)
                labels.append(row["label"])
    calibration = calibrate(np.asarray(vectors, dtype=np.float32).reshape(-1, store.dim), labels, store.model_version)
    store.set_calibration(calibration)
    return calibration
