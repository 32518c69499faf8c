"""Search results grouped by a metadata field: the best photo of each listing (or car model).

A listing has several photos; a plain search can return five photos of one car. Grouped, a search
returns k *groups*, each as its best-scoring photo, in the order of those scores. Rows without the
field belong to no group and are left out, as Qdrant's own grouping does, so that every store
answers the same: the Qdrant server groups on its side (`query_points_groups`); the file store and
Qdrant Edge (which has no grouping) use `grouped_search` over their exact ranking.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from clients.api import ClientError
from clients.metadata import Condition
from clients.store import GalleryStore, Hit
from core.rerank import RerankSettings

GROUP_FIELDS = ("listing", "model", "make", "label", "app_id")  # what a search may group by


def check_group_field(field: str) -> str:
    if field not in GROUP_FIELDS:
        raise ClientError(f"group_by must be one of {', '.join(GROUP_FIELDS)}, got {field!r}")
    return field


def group_key(value: Any) -> Any:
    """The group a value names: text and finite numbers as they are, anything else as its text
    (how the Qdrant stores keep it); None (no value) is no group."""
    if value is None:
        return None
    if isinstance(value, str) or (isinstance(value, (int, float)) and not isinstance(value, bool)):
        return value if not isinstance(value, float) or math.isfinite(value) else str(value)
    return str(value)


def best_of_each_group(hits: Iterable[Hit], field: str, k: int) -> list[Hit]:
    """The first (best) hit of each group among `hits` (best first), until k groups."""
    seen, best = set(), []
    for hit in hits:
        key = group_key(hit.metadata.get(field))
        if key is None or key in seen:
            continue
        seen.add(key)
        best.append(hit)
        if len(best) == k:
            break
    return best


def grouped_search(
    search: Callable[[np.ndarray, int, tuple[Condition, ...]], list[Hit]],
    query: np.ndarray,
    k: int,
    where: tuple[Condition, ...],
    field: str,
    rows: int,
) -> list[Hit]:
    """k groups from a store's plain `search`: asks for 4k hits, then 4x more until k groups are
    found or the whole gallery (`rows`) was ranked."""
    limit = max(4 * k, 16)
    while True:
        hits = search(query, min(limit, max(rows, 1)), where)
        best = best_of_each_group(hits, field, k)
        if len(best) == k or len(hits) < min(limit, rows) or limit >= rows:
            return best
        limit *= 4


def groups_of_search(
    store: GalleryStore, query: np.ndarray, k: int, where: tuple[Condition, ...], group_by: str,
    rerank: RerankSettings | None = None,
) -> list[Hit]:  # fmt: skip
    """k groups of `group_by` taken from `store`'s own `search` (exact, or re-ranked with `rerank`):
    how a store without native grouping, or a re-ranked one, answers `search_groups`."""

    def ranked(q: np.ndarray, limit: int, conditions: tuple[Condition, ...]) -> list[Hit]:
        return store.search(q, limit, conditions, rerank=rerank)

    return grouped_search(ranked, query, k, where, check_group_field(group_by), len(store))
