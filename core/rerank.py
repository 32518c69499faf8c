"""Re-ranking of a search's shortlist: database-side augmentation (DBA) + alpha query expansion (alpha-QE).

Numpy only (the thin clients have no torch) and written once: every gallery store re-ranks
through `clients.store.reranked`, and `train.evaluate --rerank` measures the very same function,
so what is measured is what is served.

Given a query q, the vectors of its N best candidates (the store's own top N, its filters
applied) and, for each candidate, its `k` nearest other rows of the whole gallery (no filters: a
row's neighbourhood is the gallery's, as if DBA had been applied to every stored vector), all
made unit length:

1. DBA: each candidate becomes the normalised sum of itself (weight 1) and its `k` nearest among
   its gallery neighbours and the query photo, each weighted max(cos, 0) ** alpha. A photo then
   looks like its neighbourhood: one odd photo of a model moves towards the other photos of that
   model. The query counts as a photo of the gallery, so a search answers as DBA over the gallery
   with the query in it would (what `train.evaluate` measures, every photo a query among the
   others); a query that is a gallery row (more like this) is not counted twice.
2. alpha-QE: q' = normalised sum of q (weight 1) and the `k` augmented candidates nearest to q,
   each weighted max(cos, 0) ** alpha. The query moves towards what it most likely is.
3. Each candidate's re-rank score is cos(q', its augmented vector); the shortlist is ordered by it.

Why the gallery's neighbours and not the shortlist's alone: a candidate's look-alikes may be too
far from the query to be shortlisted, and they are what shows a near-looking photo to be another
model (docs/quality.md: shortlist-only DBA gained about half as much). alpha = 0 weighs every
neighbour 1 (plain average DBA / average QE); a large alpha all but ignores neighbours that are
not very close. A gallery with fewer than k other rows pads the
neighbours with zero vectors, which add nothing. Ties keep the store's order (stable sorts), so
the result is deterministic. Scores a store returns stay the raw cosines: calibrated match levels
and `min_score` keep their meaning; the re-rank score only orders.
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
# --rerank --rerank-k ... --rerank-alpha ... --rerank-shortlist ...` on the CPU default): the highest
# R-precision whose P@1 is not below the plain search's; 300 is the longest shortlist tried (each
# shortlisted row costs a neighbour lookup: bench/rerank_cost.py). One place: the stores, the search
# page and evaluation.
DEFAULT = RerankSettings(k=8, alpha=0.5, shortlist=300)


def _unit(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (a zero row stays zero rather than becoming NaN)."""
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.maximum(norms, np.float32(1e-12))


def _weights(similarities: np.ndarray, alpha: float) -> np.ndarray:
    """max(cos, 0) ** alpha; alpha = 0 gives every neighbour weight 1 (0 ** 0 = 1)."""
    return np.maximum(similarities, np.float32(0)) ** np.float32(alpha)


def augment(
    candidates: np.ndarray, pools: np.ndarray, settings: RerankSettings, excluded: np.ndarray | None = None
) -> np.ndarray:
    """DBA: candidates [..., N, dim] and each one's pool of possible neighbours [..., N, m, dim]
    (zero rows: no one; `excluded` [..., N, m]: left out) -> the candidates [..., N, dim], each
    the unit sum of itself and its k nearest in its pool weighted max(cos, 0) ** alpha. No query
    is involved, so evaluation augments a whole gallery once (train/metrics.py)."""
    candidates, pools = _unit(candidates), _unit(pools)
    similarity = np.einsum("...nd,...nmd->...nm", candidates, pools)
    weights = _weights(similarity, settings.alpha)
    if excluded is not None:
        similarity[excluded], weights[excluded] = -np.inf, 0.0
    if pools.shape[-2] > settings.k:  # all but the k nearest weigh nothing (no copy of the vectors)
        beyond = np.argsort(-similarity, axis=-1, kind="stable")[..., settings.k :]
        np.put_along_axis(weights, beyond, np.float32(0), axis=-1)
    return _unit(candidates + np.einsum("...nm,...nmd->...nd", weights, pools))


def expand_and_score(
    queries: np.ndarray, augmented: np.ndarray, settings: RerankSettings
) -> tuple[np.ndarray, np.ndarray]:
    """alpha-QE: unit queries [B, dim] and their augmented shortlists [B, N, dim] -> (order [B, N],
    scores [B, N]) by cosine to the expanded query, best first (ties: the store's order)."""
    n = augmented.shape[1]
    similarity = (augmented @ queries[:, :, None])[:, :, 0]  # [B, N]
    top = np.argsort(-similarity, axis=1, kind="stable")[:, : min(settings.k, n)]
    weights = _weights(np.take_along_axis(similarity, top, axis=1), settings.alpha)  # [B, k]
    chosen = np.take_along_axis(augmented, top[:, :, None], axis=1)  # [B, k, dim]
    expanded = _unit(queries + (weights[:, None, :] @ chosen)[:, 0, :])
    scores = (augmented @ expanded[:, :, None])[:, :, 0]
    order = np.argsort(-scores, axis=1, kind="stable")
    return order, np.take_along_axis(scores, order, axis=1)


def rerank_many(
    queries: np.ndarray, candidates: np.ndarray, neighbours: np.ndarray, settings: RerankSettings
) -> tuple[np.ndarray, np.ndarray]:
    """Queries [B, dim], each one's shortlist [B, N, dim] and the shortlisted rows' gallery
    neighbours [B, N, k', dim] (the query not among them; zero rows where the gallery has fewer)
    -> (order [B, N], scores [B, N]): order[b] lists positions in candidates[b] best first,
    scores[b] their re-rank scores in that order. Each candidate's DBA pool is its neighbours
    and the query; a neighbour identical to the query (a query that is a gallery row) leaves
    it. Float32 throughout; `rerank` is this with B = 1."""
    candidates = np.asarray(candidates, dtype=np.float32)
    queries = _unit(np.asarray(queries, dtype=np.float32).reshape(len(candidates), -1))
    batch, n = candidates.shape[:2]
    if n == 0:
        return np.zeros((batch, 0), dtype=np.int64), np.zeros((batch, 0), dtype=np.float32)
    dim = candidates.shape[-1]
    neighbours = np.asarray(neighbours, dtype=np.float32)
    neighbours = neighbours.reshape(batch, n, neighbours.size // (batch * n * dim), dim)[:, :, : settings.k]
    pools = np.concatenate([neighbours, np.broadcast_to(queries[:, None, None, :], (batch, n, 1, dim))], axis=2)
    twins = np.zeros(pools.shape[:3], dtype=bool)  # a neighbour that is the query itself: counted once, as the query
    lengths = np.linalg.norm(neighbours, axis=-1)
    twins[:, :, :-1] = np.einsum("bnkd,bd->bnk", neighbours, queries) > np.float32(1 - 1e-6) * lengths
    return expand_and_score(queries, augment(candidates, pools, settings, twins), settings)


def rerank(
    query: np.ndarray, candidates: np.ndarray, neighbours: np.ndarray, settings: RerankSettings
) -> tuple[np.ndarray, np.ndarray]:
    """One query [dim], its shortlist [N, dim], best first by the store, and each shortlisted
    row's gallery neighbours [N, k', dim] -> (order [N], scores [N]): the shortlist's positions
    in re-ranked order, and their re-rank scores."""
    dim = np.asarray(query).shape[-1]
    candidates = np.asarray(candidates, dtype=np.float32).reshape(1, -1, dim)
    order, scores = rerank_many(np.asarray(query)[None, :], candidates, neighbours, settings)
    return order[0], scores[0]
