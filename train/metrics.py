"""Retrieval metrics on Quaterion's evaluation API, plus a sampler that masks self-matches right.

`RetrievalRPrecision` is Quaterion's own. `PrecisionAt1` and `MapAtR` (Musgrave et al., "A Metric
Learning Reality Check", 2020) are `GroupMetric`s too, so Quaterion's `Evaluator` runs all three.
Every metric sees a distance matrix [queries, gallery] whose self-match is pushed to the end and
labels marking same-group items (self excluded); queries whose group has no other member are
skipped, since nothing relevant exists to retrieve.

`RerankedGroupSampler` measures re-ranked search (`train.evaluate --rerank`): each query's
shortlist is re-ordered by core/rerank.py, the function every gallery store serves with.
"""

from __future__ import annotations

import random

import numpy as np
import torch
from quaterion.eval.group import GroupMetric, RetrievalRPrecision
from quaterion.eval.samplers.group_sampler import GroupSampler

from core.rerank import RerankSettings, augment, expand_and_score


def _sorted_relevance(distance_matrix: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Relevance of each query's results from nearest to farthest, and R (relevant count)."""
    relevant = labels.sum(dim=-1)
    keep = relevant > 0
    order = torch.argsort(distance_matrix[keep], dim=-1)
    return torch.gather(labels[keep].float(), -1, order), relevant[keep].float()


class PrecisionAt1(GroupMetric):
    """Share of queries whose nearest neighbour is in the same group."""

    def raw_compute(self, distance_matrix: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        ranked, _ = _sorted_relevance(distance_matrix, labels)
        return ranked[:, 0].mean()


class MapAtR(GroupMetric):
    """Mean average precision over each query's first R results (R = its group size - 1)."""

    def raw_compute(self, distance_matrix: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        ranked, relevant = _sorted_relevance(distance_matrix, labels)
        ranks = torch.arange(1, ranked.shape[1] + 1, device=ranked.device, dtype=ranked.dtype)
        hits = ranked * (ranks <= relevant.unsqueeze(1))
        precision_at_i = torch.cumsum(hits, dim=-1) / ranks
        return ((precision_at_i * hits).sum(dim=-1) / relevant).mean()


def retrieval_metrics() -> dict[str, GroupMetric]:
    """The metrics `train.evaluate` reports, by the names written to eval.json."""
    return {"r_precision": RetrievalRPrecision(), "precision_at_1": PrecisionAt1(), "map_at_r": MapAtR()}


class SelfMaskedGroupSampler(GroupSampler):
    """`GroupSampler` whose sampled queries are masked against *themselves*.

    Quaterion 0.1.35's sampler shuffles the queries but masks the diagonal [i, i] of the
    [queries, gallery] matrix, i.e. some other image: each query then finds itself at distance 0
    and scores a miss. Here query i is masked at its own gallery column, and every metric of an
    `Evaluator` run sees the same seeded sample of queries.
    """

    def __init__(self, sample_size: int = -1, encode_batch_size: int = 64, seed: int = 42, **kwargs):
        super().__init__(sample_size=sample_size, encode_batch_size=encode_batch_size, **kwargs)
        self._seed = seed
        self._indices: torch.Tensor | None = None

    def sample(self, dataset, metric: GroupMetric, model) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.accumulator.filled:
            self.accumulate(model, dataset)
        embeddings, groups = self.accumulator.embeddings, self.accumulator.groups
        total = embeddings.shape[0]
        if self._indices is None:
            size = total if self.sample_size <= 0 else min(self.sample_size, total)
            self._indices = torch.tensor(sorted(random.Random(self._seed).sample(range(total), size)))
        queries = self._indices.to(embeddings.device)
        labels = metric.prepare_labels(groups)[queries]
        distance_matrix = metric.distance.distance_matrix(embeddings[queries], embeddings)
        distance_matrix[torch.arange(len(queries), device=queries.device), queries] = distance_matrix.max() + 1
        return labels.float(), distance_matrix

    def reset(self) -> None:
        super().reset()
        self._indices = None


def nearest_rows(unit: np.ndarray, count: int, chunk: int = 1024) -> np.ndarray:
    """Each row's `count` most similar other rows [N, count] (ties: lower index first), padded
    with -1 where the set has fewer: the neighbours a store looks up for DBA."""
    count = max(count, 0)
    result = np.full((len(unit), count), -1, dtype=np.int64)
    width = min(count, len(unit) - 1)
    for start in range(0, len(unit), chunk):
        similarity = unit[start : start + chunk] @ unit.T
        rows = np.arange(len(similarity))
        similarity[rows, rows + start] = -np.inf  # not its own neighbour
        result[start : start + len(similarity), :width] = np.argsort(-similarity, axis=1, kind="stable")[:, :width]
    return result


def reranked_shortlists(
    embeddings: np.ndarray, queries: np.ndarray, settings: RerankSettings, chunk: int = 256
) -> np.ndarray:
    """Gallery indices [Q, S] of each query's shortlist in re-ranked order, as a store serves it:
    the S = min(shortlist, N - 1) rows most similar by cosine, the query's own row left out (ties:
    lower index first, as clients/search.py's exact_top_k), re-ordered by core/rerank.py. A store
    pools each shortlisted row's k nearest other rows with the query photo; here the query is one
    of the rows, so that pool's k nearest are the row's k nearest others: each row is augmented
    once (DBA over the whole set, every photo a query among the others), then each query expands
    and scores its shortlist."""
    embeddings = np.asarray(embeddings, dtype=np.float32)
    unit = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), np.float32(1e-12))
    length = min(settings.shortlist, len(unit) - 1)
    result = np.zeros((len(queries), max(length, 0)), dtype=np.int64)
    nearest = nearest_rows(unit, settings.k)
    padded = np.concatenate([unit, np.zeros((1, unit.shape[1]), np.float32)])  # index -1: a zero row, no one
    augmented = np.concatenate(
        [augment(unit[start : start + chunk], padded[nearest[start : start + chunk]], settings)
         for start in range(0, len(unit), chunk)]
    )  # fmt: skip
    for start in range(0, len(queries), chunk):
        rows = np.asarray(queries[start : start + chunk])
        similarity = unit[rows] @ unit.T
        similarity[np.arange(len(rows)), rows] = -np.inf  # never its own result
        shortlist = np.argsort(-similarity, axis=1, kind="stable")[:, :length]
        order, _ = expand_and_score(unit[rows], augmented[shortlist], settings)
        result[start : start + len(rows)] = np.take_along_axis(shortlist, order, axis=1)
    return result


def put_first(distance_matrix: torch.Tensor, shortlists: np.ndarray) -> torch.Tensor:
    """The distances with each row's shortlist moved, in its order, before every other item (-S
    ... -1, below any cosine distance); the others keep their distances, hence their order."""
    moved = distance_matrix.clone()
    if shortlists.shape[1]:
        index = torch.as_tensor(shortlists, device=moved.device)
        rows = torch.arange(len(index), device=moved.device).unsqueeze(1)
        ranks = torch.arange(-index.shape[1], 0, device=moved.device, dtype=moved.dtype)
        moved[rows, index] = ranks.expand(len(index), -1)
    return moved


class RerankedGroupSampler(SelfMaskedGroupSampler):
    """`SelfMaskedGroupSampler` whose queries' shortlists are re-ranked (core/rerank.py) before
    any metric sees them: the metrics then score the order a re-ranking store serves. Items past
    the shortlist keep their raw order, as a store serves results past its shortlist."""

    def __init__(self, settings: RerankSettings, sample_size: int = -1, encode_batch_size: int = 64, seed: int = 42,
                 **kwargs):  # fmt: skip
        super().__init__(sample_size=sample_size, encode_batch_size=encode_batch_size, seed=seed, **kwargs)
        self.settings = settings
        self._shortlists: np.ndarray | None = None  # computed once for every metric of a run

    def sample(self, dataset, metric: GroupMetric, model) -> tuple[torch.Tensor, torch.Tensor]:
        labels, distance_matrix = super().sample(dataset, metric, model)
        if self._shortlists is None:
            embeddings = self.accumulator.embeddings.detach().float().cpu().numpy()
            self._shortlists = reranked_shortlists(embeddings, self._indices.cpu().numpy(), self.settings)
        return labels, put_first(distance_matrix, self._shortlists)

    def reset(self) -> None:
        super().reset()
        self._shortlists = None
