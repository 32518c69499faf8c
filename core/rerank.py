"""Re-ranking of a search's shortlist: database-side augmentation (DBA) + alpha query expansion (alpha-QE).

Numpy only (the thin clients have no torch) and written once: every gallery store re-ranks
through `clients.store.reranked`, and `train.evaluate --rerank` measures the very same function,
so what is measured is what is served.

Given a query q and the vectors of its N best candidates (the store's own top N, its filters
applied), all made unit length:

1. DBA inside the shortlist: each candidate becomes the normalised sum of itself (weight 1) and
   its `k` nearest other candidates, each weighted max(cos, 0) ** alpha. A photo then looks like
   its neighbourhood: one odd photo of a model moves towards the other photos of that model.
2. alpha-QE: q' = normalised sum of q (weight 1) and the `k` augmented candidates nearest to q,
   each weighted max(cos, 0) ** alpha. The query moves towards what it most likely is.
3. Each candidate's re-rank score is cos(q', its augmented vector); the shortlist is ordered by it.

alpha = 0 weighs every neighbour 1 (plain average DBA / average QE); a large alpha all but
ignores neighbours that are not very close. Ties keep the store's order (stable sorts), so the
result is deterministic. The cost is a few N x N and N x dim products per query: N = 100 took
0.7 ms at dim 512 and 2 ms at dim 2,048 on one core of the project's 2-core machine (best of 5).
Scores a store returns stay the raw cosines: calibrated match levels and `min_score` keep their
meaning; the re-rank score only orders.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from core.errors import UsageError


@dataclass(frozen=True)
class RerankSettings:
    """k: neighbours averaged in (DBA and QE); alpha: weight exponent; shortlist: candidates re-ranked."""

    k: int
    alpha: float
    shortlist: int

    def __post_init__(self) -> None:
        if isinstance(self.k, bool) or not isinstance(self.k, (int, np.integer)) or self.k < 1:
            raise UsageError(f"re-rank k must be a whole number >= 1, got {self.k!r}")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not 0 <= self.alpha < np.inf:
            raise UsageError(f"re-rank alpha must be a finite number >= 0, got {self.alpha!r}")
        if isinstance(self.shortlist, bool) or not isinstance(self.shortlist, (int, np.integer)):
            raise UsageError(f"re-rank shortlist must be a whole number, got {self.shortlist!r}")
        if self.shortlist <= self.k:
            raise UsageError(f"re-rank shortlist ({self.shortlist}) must be longer than k ({self.k})")

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


# Chosen on makes held out inside the training side (docs/quality.md, `python -m bench.backbone_folds
# --rerank --rerank-k 1,2,3,5 --rerank-alpha 1,3` on the CPU default): the highest R-precision whose
# P@1 is not below the plain search's. One place: the stores, the search page and evaluation.
DEFAULT = RerankSettings(k=3, alpha=1.0, shortlist=100)


def _unit(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (a zero row stays zero rather than becoming NaN)."""
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.maximum(norms, np.float32(1e-12))


def _weights(similarities: np.ndarray, alpha: float) -> np.ndarray:
    """max(cos, 0) ** alpha; alpha = 0 gives every neighbour weight 1 (0 ** 0 = 1)."""
    return np.maximum(similarities, np.float32(0)) ** np.float32(alpha)


def rerank_many(queries: np.ndarray, candidates: np.ndarray, settings: RerankSettings) -> tuple[np.ndarray, np.ndarray]:
    """Queries [B, dim] and each one's shortlist [B, N, dim] -> (order [B, N], scores [B, N]):
    order[b] lists positions in candidates[b] best first, scores[b] their re-rank scores in that
    order. Float32 throughout; `rerank` is this with B = 1, so batches answer as single queries."""
    queries = _unit(np.asarray(queries, dtype=np.float32).reshape(len(candidates), -1))
    candidates = _unit(np.asarray(candidates, dtype=np.float32))
    batch, n = candidates.shape[:2]
    if n == 0:
        return np.zeros((batch, 0), dtype=np.int64), np.zeros((batch, 0), dtype=np.float32)
    augmented = candidates
    neighbours = min(settings.k, n - 1)
    if neighbours > 0:
        gram = candidates @ candidates.transpose(0, 2, 1)  # [B, N, N]
        diagonal = np.arange(n)
        masked = gram.copy()
        masked[:, diagonal, diagonal] = -np.inf  # a candidate is not its own neighbour
        nearest = np.argsort(-masked, axis=2, kind="stable")[:, :, :neighbours]
        weights = np.zeros_like(gram)
        np.put_along_axis(weights, nearest, _weights(np.take_along_axis(gram, nearest, axis=2), settings.alpha), 2)
        weights[:, diagonal, diagonal] = 1.0
        augmented = _unit(weights @ candidates)
    similarity = (augmented @ queries[:, :, None])[:, :, 0]  # [B, N]
    expand = min(settings.k, n)
    top = np.argsort(-similarity, axis=1, kind="stable")[:, :expand]
    weights = _weights(np.take_along_axis(similarity, top, axis=1), settings.alpha)  # [B, k]
    chosen = np.take_along_axis(augmented, top[:, :, None], axis=1)  # [B, k, dim]
    expanded = _unit(queries + (weights[:, None, :] @ chosen)[:, 0, :])
    scores = (augmented @ expanded[:, :, None])[:, :, 0]
    order = np.argsort(-scores, axis=1, kind="stable")
    return order, np.take_along_axis(scores, order, axis=1)


def rerank(query: np.ndarray, candidates: np.ndarray, settings: RerankSettings) -> tuple[np.ndarray, np.ndarray]:
    """One query [dim] and its shortlist [N, dim], best first by the store -> (order [N], scores
    [N]): the shortlist's positions in re-ranked order, and their re-rank scores."""
    candidates = np.asarray(candidates, dtype=np.float32)
    dim = np.asarray(query).shape[-1]
    order, scores = rerank_many(np.asarray(query)[None, :], candidates.reshape(1, -1, dim), settings)
    return order[0], scores[0]
