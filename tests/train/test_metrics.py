import random

import pytest
import torch

from quaterion.eval.group import RetrievalRPrecision
from quaterion.eval.samplers.group_sampler import GroupSampler

from train.metrics import MapAtR, PrecisionAt1, SelfMaskedGroupSampler, retrieval_metrics


def ranked_case():
    """One query; gallery distances rank items [rel, irrel, rel, irrel, rel]; R = 3."""
    distances = torch.tensor([[0.1, 0.2, 0.3, 0.4, 0.5]])
    labels = torch.tensor([[1.0, 0.0, 1.0, 0.0, 1.0]])
    return distances, labels


def test_precision_at_1_and_map_at_r_by_hand():
    distances, labels = ranked_case()
    assert PrecisionAt1().raw_compute(distances, labels) == pytest.approx(1.0)
    # MAP@R: hits within the first R=3 are at ranks 1 and 3 -> (1/1 + 2/3) / 3
    assert MapAtR().raw_compute(distances, labels) == pytest.approx((1 + 2 / 3) / 3)
    # R-precision: 2 relevant among the first 3
    assert RetrievalRPrecision().raw_compute(distances, labels) == pytest.approx(2 / 3)


def test_queries_without_relevant_items_are_skipped():
    distances = torch.tensor([[0.1, 0.2], [0.1, 0.2]])
    labels = torch.tensor([[0.0, 1.0], [0.0, 0.0]])
    assert PrecisionAt1().raw_compute(distances, labels) == pytest.approx(0.0)
    assert MapAtR().raw_compute(distances, labels) == pytest.approx(0.0)


class LookupModel:
    """Stands in for a SimilarityModel whose embeddings are given: encode(ids) -> rows."""

    def __init__(self, table: torch.Tensor):
        self.table = table

    def encode(self, ids, batch_size=32, to_numpy=False):
        return self.table[torch.tensor(ids)]


def clustered():
    """4 groups x 5 items, each group a tight cluster around its own axis."""
    torch.manual_seed(0)
    groups = torch.arange(4).repeat_interleave(5)
    embeddings = torch.eye(4)[groups] + 0.01 * torch.randn(20, 4)
    from quaterion.dataset import SimilarityGroupSample

    dataset = [SimilarityGroupSample(obj=i, group=int(g)) for i, g in enumerate(groups)]
    return dataset, LookupModel(embeddings)


@pytest.mark.parametrize("sample_size", [-1, 8])
def test_self_masked_sampler_scores_perfect_clusters_as_perfect(sample_size):
    dataset, model = clustered()
    sampler = SelfMaskedGroupSampler(sample_size=sample_size, encode_batch_size=7, log_progress=False)
    for name, metric in retrieval_metrics().items():
        labels, distances = sampler.sample(dataset, metric, model)
        assert metric.raw_compute(distances, labels) == pytest.approx(1.0), name


def test_quaterions_own_sampler_misses_self_matches():
    """Why SelfMaskedGroupSampler exists: the stock sampler shuffles queries but masks [i, i]."""
    dataset, model = clustered()
    random.seed(0)
    labels, distances = GroupSampler(sample_size=-1, log_progress=False).sample(dataset, PrecisionAt1(), model)
    assert PrecisionAt1().raw_compute(distances, labels) < 0.9


def test_reranked_sampler_puts_each_shortlist_first_in_the_order_core_rerank_gives():
    """train.evaluate --rerank: each query's top-S (itself left out) comes first, ordered by
    core/rerank.py exactly as a store serves it (each row's nearest others as its neighbours, the
    query not among them); the rest keep their raw order, the query last."""
    import numpy as np

    from core.rerank import RerankSettings, rerank
    from train.metrics import RerankedGroupSampler

    torch.manual_seed(1)
    groups = torch.arange(4).repeat_interleave(6)
    embeddings = torch.eye(8)[groups] + 0.6 * torch.randn(24, 8)
    settings = RerankSettings(k=2, alpha=3.0, shortlist=6)
    sampler = RerankedGroupSampler(settings, sample_size=-1, encode_batch_size=8, log_progress=False)
    sampler.accumulator.update(embeddings, groups)
    sampler.accumulator.set_filled()
    labels, distances = sampler.sample(None, PrecisionAt1(), None)
    unit = torch.nn.functional.normalize(embeddings, dim=1).numpy()
    changed = 0
    for query in range(24):
        similarity = unit @ unit[query]
        similarity[query] = -np.inf
        raw = np.argsort(-similarity, kind="stable")
        around = []
        for row in raw[:6]:  # its 2 nearest other rows, the query left out (a photo from outside)
            others = unit @ unit[row]
            others[[row, query]] = -np.inf
            around.append(unit[np.argsort(-others, kind="stable")[:2]])
        order, _ = rerank(unit[query], unit[raw[:6]], np.stack(around), settings)
        ranked = torch.argsort(distances[query], stable=True).numpy()
        assert ranked[:6].tolist() == raw[:6][order].tolist()
        assert set(ranked[6:-1].tolist()) == set(raw[6:-1].tolist()) and ranked[-1] == query
        changed += ranked[:6].tolist() != raw[:6].tolist()
    assert changed > 0
    assert 0 <= PrecisionAt1().raw_compute(distances, labels) <= 1
