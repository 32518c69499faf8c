"""Gallery search: brute force and the projected index return the exact top-k (no timing here:
speed is bench/gallery_search.py's job)."""

import numpy as np
import pytest

import clients.search as search
from clients.gallery import Gallery
from clients.search import ProjectedIndex, exact_top_k


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def low_rank(n: int, dim: int = 256, rank: int = 12, seed: int = 0) -> np.ndarray:
    """Rows with most energy in a few directions, like real embeddings."""
    rng = np.random.default_rng(seed)
    basis = rng.standard_normal((rank, dim))
    return unit(rng.standard_normal((n, rank)) @ basis + 0.05 * rng.standard_normal((n, dim)))


def brute_force(matrix: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-(queries @ matrix.astype(np.float32).T), axis=1, kind="stable")[:, :k]


@pytest.mark.parametrize("block_rows", [65_536, 333])
def test_exact_top_k_equals_a_full_sort(monkeypatch, block_rows):
    monkeypatch.setattr(search, "BLOCK_ROWS", block_rows)
    rng = np.random.default_rng(1)
    matrix, queries = unit(rng.standard_normal((2000, 32))), unit(rng.standard_normal((5, 32)))
    indices, scores = exact_top_k(matrix, queries, 10)
    assert np.array_equal(indices, brute_force(matrix, queries, 10))
    assert np.allclose(scores, np.take_along_axis(queries @ matrix.T, indices, axis=1), atol=1e-6)
    assert exact_top_k(matrix, queries[0], 3000)[0].shape == (1, 2000)  # k > N: every row, sorted


def test_projected_index_finds_the_exact_top_k_of_structured_rows():
    matrix = low_rank(30_000)
    queries = unit(matrix[:20] + 0.02)
    index = ProjectedIndex(matrix)
    assert index.usable and index.head_dim <= 64 and index.shortlist < len(matrix)
    indices, scores = index.search(queries, 10)
    assert np.array_equal(indices, brute_force(matrix, queries, 10))
    assert np.allclose(scores, np.take_along_axis(queries @ matrix.T, indices, axis=1), atol=1e-5)


def test_projected_index_falls_back_to_brute_force_on_isotropic_rows():
    rng = np.random.default_rng(2)
    matrix, queries = unit(rng.standard_normal((5000, 128))), unit(rng.standard_normal((3, 128)))
    index = ProjectedIndex(matrix)
    assert not index.usable
    assert np.array_equal(index.search(queries, 10)[0], brute_force(matrix, queries, 10))


def test_float16_rows_are_reranked_in_float32():
    matrix = low_rank(20_000).astype(np.float16)
    queries = unit(matrix[:4].astype(np.float32) + 0.02)
    indices, scores = ProjectedIndex(matrix).search(queries, 10)
    assert np.array_equal(indices, brute_force(matrix, queries, 10))
    assert np.allclose(scores, np.take_along_axis(queries @ matrix.astype(np.float32).T, indices, 1), atol=1e-5)


def test_gallery_search_many_and_approximate_agree_with_exact_search():
    matrix = low_rank(25_000, dim=128)
    gallery = Gallery("v1", 128)
    gallery.add(matrix, [f"{i}.jpg" for i in range(len(matrix))], [str(i % 7) for i in range(len(matrix))])
    queries = unit(matrix[:6] + 0.03)
    exact = [gallery.search(q, top_k=10) for q in queries]
    for hits in (gallery.search_many(queries, top_k=10), gallery.search_many(queries, top_k=10, approximate=True)):
        assert [[h.path for h in row] for row in hits] == [[h.path for h in row] for row in exact]
        assert np.allclose([[h.score for h in row] for row in hits], [[h.score for h in row] for row in exact])
    gallery.add(queries[:1], ["new.jpg"], ["x"])  # the index is rebuilt after a change
    assert gallery.search(queries[0], top_k=1, approximate=True)[0].path == "new.jpg"
