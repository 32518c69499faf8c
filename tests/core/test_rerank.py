"""Shortlist re-ranking (core/rerank.py): DBA + alpha-QE on hand-made vectors, checked against a
loop-by-loop reading of the method, plus the invariants every store and evaluation rely on."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

from core.errors import UsageError
from core.rerank import DEFAULT, RerankSettings, rerank, rerank_many

QUERY = np.array([1, 0, 0, 0], np.float32)


def unit(*values: float) -> np.ndarray:
    vector = np.array(values, np.float32)
    return vector / np.linalg.norm(vector)


def decoy_and_cluster() -> np.ndarray:
    """Row 0 is the query's nearest (cos 0.90) but looks more like rows 4-5 (cos 0.98) than like
    the query, and they are further from it (0.80); rows 1-3, a tight cluster at cos 0.85 to the
    query, look like one another (0.99)."""
    return np.stack([
        unit(0.9, 0.436, 0, 0),
        unit(0.85, 0, 0.52, 0.05), unit(0.85, 0, 0.52, -0.05), unit(0.84, 0, 0.54, 0),
        unit(0.8, 0.6, 0, 0.05), unit(0.8, 0.6, 0, -0.05),
    ])  # fmt: skip


def nearest_others(gallery: np.ndarray, rows: list[int], k: int) -> np.ndarray:
    """[len(rows), k, dim]: each row's k most similar other gallery rows, one loop at a time."""
    found = []
    for i in rows:
        others = sorted((j for j in range(len(gallery)) if j != i), key=lambda j: -float(gallery[i] @ gallery[j]))
        found.append(gallery[others[:k]])
    return np.stack(found)


def by_the_book(query: np.ndarray, gallery: np.ndarray, rows: list[int], k: int, alpha: float) -> np.ndarray:
    """The re-rank score of each shortlisted gallery row, one loop at a time (no shared code with
    core/rerank.py): DBA over the whole gallery with the query photo in it, then alpha-QE over
    the shortlist."""
    query = query / np.linalg.norm(query)
    augmented = []
    for i in rows:
        pool = [gallery[j] for j in range(len(gallery)) if j != i and float(gallery[j] @ query) < 1 - 1e-6] + [query]
        pool.sort(key=lambda vector: -float(gallery[i] @ vector))
        total = gallery[i].astype(np.float64).copy()
        for vector in pool[:k]:
            total += max(float(gallery[i] @ vector), 0.0) ** alpha * vector
        augmented.append(total / np.linalg.norm(total))
    nearest = sorted(range(len(rows)), key=lambda i: -float(augmented[i] @ query))[:k]
    expanded = query.astype(np.float64) + sum(max(float(augmented[i] @ query), 0.0) ** alpha * augmented[i]
                                              for i in nearest)  # fmt: skip
    expanded /= np.linalg.norm(expanded)
    return np.array([float(a @ expanded) for a in augmented])


def test_a_decoy_nearest_to_the_query_falls_behind_the_cluster_it_is_not_part_of():
    candidates = decoy_and_cluster()
    assert int(np.argmax(candidates @ QUERY)) == 0  # raw cosine: the decoy first
    for k, alpha in ((2, 3.0), (2, 1.0), (2, 0.0)):
        rows = list(range(6))
        order, scores = rerank(QUERY, candidates, nearest_others(candidates, rows, k), RerankSettings(k, alpha, 10))
        assert set(order[:3].tolist()) == {1, 2, 3}, (k, alpha, order)
        expected = by_the_book(QUERY, candidates, rows, k, alpha)
        np.testing.assert_allclose(scores, expected[order], atol=1e-5)
        assert np.all(np.diff(scores) <= 1e-7)  # best first


def test_neighbours_from_outside_the_shortlist_move_a_candidate():
    """Gallery-wide DBA: the decoy's look-alikes (rows 4-5) are too far from the query to be
    shortlisted, yet they pull the decoy behind the cluster; without them it stays first."""
    gallery = decoy_and_cluster()
    rows, settings = [0, 1, 2, 3], RerankSettings(2, 1.0, 4)
    alone = np.zeros((4, 2, 4), np.float32)  # no neighbours at all: QE alone keeps the decoy first
    assert rerank(QUERY, gallery[rows], alone, settings)[0][0] == 0
    order, scores = rerank(QUERY, gallery[rows], nearest_others(gallery, rows, 2), settings)
    assert order[-1] == 0
    np.testing.assert_allclose(scores, by_the_book(QUERY, gallery, rows, 2, 1.0)[order], atol=1e-5)


def test_the_order_is_a_permutation_of_the_shortlist_in_float32_and_deterministic():
    rng = np.random.default_rng(0)
    candidates, query = rng.normal(size=(100, 64)).astype(np.float32), rng.normal(size=64).astype(np.float32)
    neighbours = rng.normal(size=(100, 3, 64)).astype(np.float32)
    order, scores = rerank(query, candidates, neighbours, DEFAULT)
    assert sorted(order.tolist()) == list(range(100)) and scores.dtype == np.float32 and len(scores) == 100
    again = rerank(query * 3, candidates * 0.5, neighbours * 2, DEFAULT)  # lengths do not matter: all made unit
    assert (again[0] == order).all() and np.allclose(again[1], scores, atol=1e-6)
    assert np.all(scores <= 1 + 1e-6) and np.all(scores >= -1 - 1e-6)


def test_a_batch_answers_exactly_as_single_queries():
    rng = np.random.default_rng(1)
    queries, candidates = rng.normal(size=(8, 16)), rng.normal(size=(8, 30, 16))
    neighbours = rng.normal(size=(8, 30, 3, 16))
    orders, scores = rerank_many(queries, candidates, neighbours, RerankSettings(3, 3.0, 30))
    for i in range(8):
        order, score = rerank(queries[i], candidates[i], neighbours[i], RerankSettings(3, 3.0, 30))
        assert (order == orders[i]).all() and (score == scores[i]).all()


@pytest.mark.parametrize("k, alpha", [(1, 1.0), (3, 0.0), (3, 1.0), (5, 0.5)])
def test_random_galleries_score_as_the_loop_by_loop_reading(k, alpha):
    """A photo from outside the gallery, and a gallery row as the query (more like this): the row
    then is in its neighbours' pools once, as the query, not twice."""
    rng = np.random.default_rng(k)
    gallery = rng.normal(size=(40, 8)).astype(np.float32) + 2 * np.eye(8, dtype=np.float32)[np.arange(40) % 4]
    gallery /= np.linalg.norm(gallery, axis=1, keepdims=True)
    for query, rows in ((rng.normal(size=8).astype(np.float32), list(range(10, 30))), (gallery[5], list(range(6, 26)))):
        neighbours = nearest_others(gallery, rows, k)
        order, scores = rerank(query, gallery[rows], neighbours, RerankSettings(k, alpha, 30))
        np.testing.assert_allclose(scores, by_the_book(query, gallery, rows, k, alpha)[order], atol=1e-5)


def test_short_shortlists_and_small_galleries_are_handled():
    empty = rerank(QUERY, np.zeros((0, 4), np.float32), np.zeros((0, 3, 4), np.float32), DEFAULT)
    assert [len(part) for part in empty] == [0, 0]
    one = decoy_and_cluster()[:1]
    order, scores = rerank(QUERY, one, np.zeros((1, 0, 4), np.float32), DEFAULT)  # a gallery of one row
    expected = by_the_book(QUERY, one, [0], DEFAULT.k, DEFAULT.alpha)[0]
    assert order.tolist() == [0] and scores[0] == pytest.approx(expected, abs=1e-5)
    padded = rerank(QUERY, one, np.zeros((1, DEFAULT.k, 4), np.float32), DEFAULT)  # zero vectors add nothing
    assert padded[0].tolist() == [0] and padded[1][0] == pytest.approx(expected, abs=1e-5)
    two = decoy_and_cluster()[:2]
    order, _ = rerank(QUERY, two, nearest_others(two, [0, 1], 1), RerankSettings(8, 3.0, 100))  # k past the gallery
    assert sorted(order.tolist()) == [0, 1]


@pytest.mark.parametrize(
    "k, alpha, shortlist, message",
    [
        (0, 3.0, 100, "k must be a whole number >= 1"),
        (2.5, 3.0, 100, "k must be a whole number >= 1"),
        (True, 3.0, 100, "k must be a whole number >= 1"),
        (3, -1.0, 100, "alpha must be a finite number >= 0"),
        (3, float("nan"), 100, "alpha must be a finite number >= 0"),
        (3, float("inf"), 100, "alpha must be a finite number >= 0"),
        (3, 3.0, 3, "must be longer than k"),
        (3, 3.0, 100.0, "shortlist must be a whole number"),
    ],
)
def test_bad_settings_are_refused_with_one_readable_line(k, alpha, shortlist, message):
    with pytest.raises(UsageError, match=message):
        RerankSettings(k, alpha, shortlist)


def test_the_module_imports_numpy_and_nothing_of_torch():
    """The thin clients (no torch) import it: only numpy and the standard library."""
    import core.rerank

    tree = ast.parse(Path(core.rerank.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module.split(".")[0])
    assert imported <= {"__future__", "dataclasses", "numpy", "core"}, imported
