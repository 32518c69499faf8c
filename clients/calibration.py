"""Scores people can read: a match level calibrated on the gallery itself.

A raw cosine score means little to a person (the whitened model scores correct and wrong cars
alike between 0.18 and 0.30). So each labelled gallery row is used once as a query against the
others (leave one out), and its k best results are marked same model (same label) or not. From
those results, the chance that a result scoring s is the same car model, P(same | s), is fitted
as a non-decreasing function of s (isotonic regression, pool-adjacent-violators), and two
thresholds follow, stored with the gallery (`GalleryStore.calibration`):

    likely the same model   P(same | score) >= 0.8
    similar                 P(same | score) >= 0.3
    different               below: fewer than 3 results in 10 scoring that low were the same model

It describes the gallery and model it was computed on: recompute it when either changes (a
reindex calibrates its new gallery anew). How well it holds on car models it never saw:
`bench/calibration.py`, docs/results.md.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from clients.api import ClientError
from clients.search import exact_top_k

LEVELS = ("likely the same model", "similar", "different")  # best first
CHANCE = {"likely the same model": 0.8, "similar": 0.3}  # of being the same model, at a level's lowest score
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


def increasing_fit(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The non-decreasing sequence closest to `values` in weighted least squares (pool adjacent violators)."""
    means, totals, sizes = [], [], []
    for value, weight in zip(values.tolist(), weights.tolist(), strict=True):
        means.append(value)
        totals.append(weight)
        sizes.append(1)
        while len(means) > 1 and means[-2] > means[-1]:
            total = totals[-2] + totals[-1]
            means[-2:] = [(means[-2] * totals[-2] + means[-1] * totals[-1]) / total]
            totals[-2:] = [total]
            sizes[-2:] = [sizes[-2] + sizes[-1]]
    return np.repeat(means, sizes)


def chance_of_same_model(scores: np.ndarray, same: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each distinct score, ascending, and the fitted chance that a result scoring it is the same model."""
    distinct, groups = np.unique(scores, return_inverse=True)
    counts = np.bincount(groups)
    return distinct, increasing_fit(np.bincount(groups, weights=same) / counts, counts)


def threshold(distinct: np.ndarray, chance: np.ndarray, wanted: float) -> float | None:
    """The lowest score whose fitted chance of being the same model reaches `wanted` (None: none does)."""
    reached = np.flatnonzero(chance >= wanted)
    return float(distinct[reached[0]]) if len(reached) else None


def calibrate(vectors: np.ndarray, labels: list[str], model_version: str, k: int = NEIGHBOURS) -> dict[str, Any]:
    """The calibration of a labelled gallery: thresholds per level and what they were measured on."""
    if len(vectors) < MIN_ROWS or len(set(labels)) < 2:
        raise ClientError(f"calibration needs at least {MIN_ROWS} labelled rows of 2 or more car models")
    scores, same = leave_one_out_results(vectors, labels, k)
    if not same.any():
        raise ClientError("no row's neighbours include a row of the same label: nothing to calibrate on")
    distinct, chance = chance_of_same_model(scores, same)
    thresholds = {level: threshold(distinct, chance, p) for level, p in CHANCE.items()}
    return {
        "model_version": model_version,
        "method": f"leave-one-out top-{k} results of {min(len(vectors), MAX_QUERIES)} of {len(vectors)} labelled rows",
        "chance": CHANCE, "thresholds": thresholds, "rows": len(vectors), "labels": len(set(labels)),
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
