"""Retrieval metrics on Quaterion's evaluation API, plus a sampler that masks self-matches right.

`RetrievalRPrecision` is Quaterion's own. `PrecisionAt1` and `MapAtR` (Musgrave et al., "A Metric
Learning Reality Check", 2020) are `GroupMetric`s too, so Quaterion's `Evaluator` runs all three.
Every metric sees a distance matrix [queries, gallery] whose self-match is pushed to the end and
labels marking same-group items (self excluded); queries whose group has no other member are
skipped, since nothing relevant exists to retrieve.
"""

from __future__ import annotations

import random

import torch
from quaterion.eval.group import GroupMetric, RetrievalRPrecision
from quaterion.eval.samplers.group_sampler import GroupSampler


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
