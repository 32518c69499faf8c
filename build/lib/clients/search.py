"""Top-k cosine search over a gallery matrix, numpy only (clients stay torch-free).

Scoring one query against 100k x 1280 float32 rows reads 512 MB: ~26 ms on the project's 2-core
machine, bound by memory bandwidth, not arithmetic. `ProjectedIndex` reads ~10x less: a first
pass scores every row in a low-dimensional PCA projection of the gallery (car embeddings keep
most of their energy in a few hundred directions), then the best `shortlist` rows are re-ranked
exactly with the full vectors. Returned scores are exact; whether the true top-k is in the
shortlist depends on the data, so bench/gallery_search.py measures recall@10 against `exact_top_k`.
Rows may be stored as float16 (half the memory); they are scored in float32.
"""

from __future__ import annotations

import numpy as np

BLOCK_ROWS = 65_536  # rows scored at a time: bounds temporary memory for batched queries
MIN_ENERGY = 0.75  # the projection must keep this share of the rows' squared norm on average


def _as_queries(queries: np.ndarray) -> np.ndarray:
    return np.atleast_2d(np.asarray(queries, dtype=np.float32))


def _best(scores: np.ndarray, k: int) -> np.ndarray:
    """Columns of the k highest scores of each row, best first (ties: lower column first)."""
    k = min(k, scores.shape[1])
    if k < scores.shape[1]:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    else:
        part = np.broadcast_to(np.arange(scores.shape[1]), scores.shape).copy()
    part.sort(axis=1)  # ties keep the lower index first through the stable sort below
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def exact_top_k(matrix: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Brute force: indices and scores [B, k] of the k rows with the highest dot product, best first."""
    queries = _as_queries(queries)
    k = min(k, len(matrix))
    if k == 0:
        return np.zeros((len(queries), 0), dtype=np.int64), np.zeros((len(queries), 0), dtype=np.float32)
    best_idx, best_scores = None, None
    # float16 rows are converted a cache-sized block at a time into one reused float32 buffer.
    step = BLOCK_ROWS if matrix.dtype == np.float32 else max(1, min(BLOCK_ROWS, (4 << 20) // (4 * matrix.shape[1])))
    buffer = None if matrix.dtype == np.float32 else np.empty((step, matrix.shape[1]), dtype=np.float32)
    for start in range(0, len(matrix), step):
        block = matrix[start : start + step]
        if buffer is not None:
            block = buffer[: len(block)]
            np.copyto(block, matrix[start : start + step], casting="same_kind")
        scores = queries @ block.T
        idx = _best(scores, k)
        scores = np.take_along_axis(scores, idx, axis=1)
        idx = idx + start
        if best_idx is not None:
            scores, idx = np.concatenate([best_scores, scores], 1), np.concatenate([best_idx, idx], 1)
            keep = _best(scores, k)
            scores, idx = np.take_along_axis(scores, keep, 1), np.take_along_axis(idx, keep, 1)
        best_idx, best_scores = idx, scores
    return best_idx, best_scores


class ProjectedIndex:
    """A PCA projection of the rows for a first pass, then an exact re-rank of a shortlist.

    `head_dim` None picks the smallest multiple of 32 that keeps MIN_ENERGY of the rows' energy,
    at most dim/4; when no such projection exists (e.g. isotropic random rows) `usable` is False
    and `search` falls back to `exact_top_k`. The basis is fitted on `sample` rows.
    """

    def __init__(
        self, matrix: np.ndarray, head_dim: int | None = None, shortlist: int | None = None, sample: int = 8192,
        seed: int = 0,
    ):  # fmt: skip
        self.matrix = matrix
        n, dim = matrix.shape
        rng = np.random.default_rng(seed)
        rows = np.asarray(matrix[np.sort(rng.choice(n, size=min(sample, n), replace=False))], dtype=np.float32)
        # Uncentred second moment: dot products, not variances, are what the projection must keep.
        eigenvalues, eigenvectors = np.linalg.eigh(rows.T @ rows / max(len(rows), 1))
        eigenvalues, eigenvectors = eigenvalues[::-1], eigenvectors[:, ::-1]
        energy = np.cumsum(np.clip(eigenvalues, 0, None)) / max(float(np.clip(eigenvalues, 0, None).sum()), 1e-12)
        if head_dim is None:
            enough = np.flatnonzero(energy >= MIN_ENERGY)
            head_dim = int(-(-(enough[0] + 1) // 32) * 32) if len(enough) else dim
            self.usable = head_dim <= dim // 4
        else:
            self.usable = head_dim < dim
        self.head_dim = min(head_dim, dim)
        self.energy = float(energy[self.head_dim - 1])
        # Gathering the shortlist's full rows costs ~8 us each (random reads across the matrix):
        # 256 rows at 100k, 1/400 of the gallery above that (recall: bench/gallery_search.py).
        self.shortlist = shortlist or int(np.clip(n // 400, 256, 10_000))
        self.projection = np.ascontiguousarray(eigenvectors[:, : self.head_dim].T, dtype=np.float32)  # [h, dim]
        self.head = np.empty((n, self.head_dim), dtype=np.float32)
        if self.usable:
            for start in range(0, n, BLOCK_ROWS):
                block = np.asarray(matrix[start : start + BLOCK_ROWS], dtype=np.float32)
                self.head[start : start + len(block)] = block @ self.projection.T

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Indices and exact scores [B, k], best first."""
        queries = _as_queries(queries)
        if not self.usable or self.shortlist >= len(self.matrix) or k >= self.shortlist:
            return exact_top_k(self.matrix, queries, k)
        approx = (queries @ self.projection.T) @ self.head.T  # [B, N]
        candidates = np.argpartition(-approx, self.shortlist - 1, axis=1)[:, : self.shortlist]
        candidates.sort(axis=1)
        indices, scores = [], []
        for query, rows in zip(queries, candidates, strict=True):
            exact = np.asarray(self.matrix[rows], dtype=np.float32) @ query
            best = _best(exact[None, :], k)[0]
            indices.append(rows[best])
            scores.append(exact[best])
        return np.stack(indices), np.stack(scores)
