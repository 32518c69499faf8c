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
    """Row 0 is the query's nearest (cos 0.90) but looks like rows 4-5 (cos 0.83), which are far
    from the query (0.50); rows 1-3, a tight cluster at cos 0.85, look like one another."""
    return np.stack([
        unit(0.9, 0.436, 0, 0),
        unit(0.85, 0, 0.52, 0.05), unit(0.85, 0, 0.52, -0.05), unit(0.84, 0, 0.54, 0),
        unit(0.5, 0.866, 0, 0.05), unit(0.5, 0.866, 0, -0.05),
    ])  # fmt: skip


def by_the_book(query: np.ndarray, candidates: np.ndarray, k: int, alpha: float) -> np.ndarray:
    """The re-rank score of each candidate, one loop at a time (no shared code with core/rerank.py)."""
    n = len(candidates)
    augmented = []
    for i in range(n):
        others = sorted((j for j in range(n) if j != i), key=lambda j: -float(candidates[i] @ candidates[j]))[:k]
        total = candidates[i].astype(np.float64).copy()
        for j in others:
            total += max(float(candidates[i] @ candidates[j]), 0.0) ** alpha * candidates[j]
        augmented.append(total / np.linalg.norm(total))
    nearest = sorted(range(n), key=lambda i: -float(augmented[i] @ query))[:k]
    expanded = query.astype(np.float64) + sum(max(float(augmented[i] @ query), 0.0) ** alpha * augmented[i]
                                              for i in nearest)  # fmt: skip
    expanded /= np.linalg.norm(expanded)
    return np.array([float(a @ expanded) for a in augmented])


def test_a_decoy_nearest_to_the_query_falls_behind_the_cluster_it_is_not_part_of():
    candidates = decoy_and_cluster()
    assert int(np.argmax(candidates @ QUERY)) == 0  # raw cosine: the decoy first
    for k, alpha in ((2, 3.0), (2, 1.0), (2, 0.0), (1, 3.0)):
        order, scores = rerank(QUERY, candidates, RerankSettings(k, alpha, 10))
        assert set(order[:3].tolist()) == {1, 2, 3} and order[3] == 0, (k, alpha, order)
        expected = by_the_book(QUERY, candidates, k, alpha)
        np.testing.assert_allclose(scores, expected[order], atol=1e-5)
        assert np.all(np.diff(scores) <= 1e-7)  # best first


def test_the_order_is_a_permutation_of_the_shortlist_in_float32_and_deterministic():
    rng = np.random.default_rng(0)
    candidates, query = rng.normal(size=(100, 64)).astype(np.float32), rng.normal(size=64).astype(np.float32)
    order, scores = rerank(query, candidates, DEFAULT)
    assert sorted(order.tolist()) == list(range(100)) and scores.dtype == np.float32 and len(scores) == 100
    again = rerank(query * 3, candidates * 0.5, DEFAULT)  # lengths do not matter: everything is made unit
    assert (again[0] == order).all() and np.allclose(again[1], scores, atol=1e-6)
    assert np.all(scores <= 1 + 1e-6) and np.all(scores >= -1 - 1e-6)


def test_a_batch_answers_exactly_as_single_queries():
    rng = np.random.default_rng(1)
    queries, candidates = rng.normal(size=(8, 16)), rng.normal(size=(8, 30, 16))
    orders, scores = rerank_many(queries, candidates, RerankSettings(3, 3.0, 30))
    for i in range(8):
        order, score = rerank(queries[i], candidates[i], RerankSettings(3, 3.0, 30))
        assert (order == orders[i]).all() and (score == scores[i]).all()


def test_alpha_zero_averages_and_a_whole_shortlist_average_keeps_the_stores_order():
    """alpha = 0 weighs every neighbour 1: with k >= N - 1 each candidate becomes the mean of the
    whole shortlist, so all tie and the stable sort keeps the store's order."""
    rng = np.random.default_rng(2)
    candidates = rng.normal(size=(6, 8)).astype(np.float32)
    order, scores = rerank(rng.normal(size=8), candidates, RerankSettings(5, 0.0, 10))
    assert order.tolist() == list(range(6)) and np.ptp(scores) < 1e-6


def test_short_shortlists_are_handled():
    assert [len(part) for part in rerank(QUERY, np.zeros((0, 4), np.float32), DEFAULT)] == [0, 0]
    one = decoy_and_cluster()[:1]
    order, scores = rerank(QUERY, one, DEFAULT)  # one candidate: no neighbours; the query moves towards it
    expected = by_the_book(QUERY, one, DEFAULT.k, DEFAULT.alpha)[0]
    assert order.tolist() == [0] and scores[0] == pytest.approx(expected, abs=1e-5)
    order, _ = rerank(QUERY, decoy_and_cluster()[:2], RerankSettings(8, 3.0, 100))  # k larger than N
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
