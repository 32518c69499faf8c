"""The gallery store interface, and `open_store`, which picks the store a location names.

    galleries/gallery.npz           `clients.gallery.Gallery`: one local file, exact search (the default)
    qdrant://DIR?collection=NAME    `clients.edge_store.EdgeGallery`: Qdrant Edge, the Qdrant engine in
                                    this process (HNSW, payload indexes, files under DIR/NAME; no server)
    qdrant+http(s)://HOST:PORT/NAME `clients.qdrant_store.QdrantGallery`: a Qdrant server or cluster,
                                    through qdrant-client (?shards=N&replicas=N&quantization=int8...)

Every store keeps, per row, an embedding with its image path, label and metadata
(clients/metadata.py), filters by it, refuses embeddings of
another model version, and makes `add` durable before it returns (so a killed gallery build
resumes where it stopped), and `export`s its rows with their vectors, so that
clients/copy_store.py moves a gallery from any store to any other (Edge to a server, say).
Builders and queries use only what `GalleryStore` names.

Every store's `search`, `search_groups` and `recommend` take `rerank` (core/rerank.py settings):
`reranked` below asks the store for its top `shortlist` hits with their vectors, and for each
of them its `k` nearest other rows of the whole gallery (the store's `neighbours`), re-orders them
(DBA + alpha-QE, the same code train.evaluate --rerank measures) and keeps top_k, so all stores
re-rank alike. A hit's `score` stays its raw similarity (calibrated match levels and score floors
keep their meaning); `rerank_score` is what ordered it.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs

import numpy as np

from clients.api import ClientError
from clients.metadata import Condition
from core.rerank import RerankSettings, rerank

DEFAULT_GALLERY = "galleries/gallery.npz"
QDRANT_SCHEMES = ("qdrant://", "qdrant+http://", "qdrant+https://")


@dataclass(frozen=True)
class Hit:
    path: str
    label: str
    score: float
    id: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)  # clients/metadata.py: make, model, year, ...
    rerank_score: float | None = None  # set when a re-rank ordered this hit (`reranked`); None otherwise


class GalleryStore(Protocol):
    model_version: str
    dim: int
    calibration: dict[str, Any] | None  # clients/calibration.py: the match levels of this gallery

    def set_calibration(self, calibration: dict[str, Any]) -> None:
        """Keeps a calibration with the gallery, durably."""

    def __len__(self) -> int: ...

    def check_version(self, model_version: str, where: str) -> None:
        """Raises ClientError when `where` serves another model than the gallery was built with."""

    def known_paths(self) -> set[str]: ...

    def add(
        self, vectors: np.ndarray, paths: list[str], labels: list[str], extra: list[dict[str, Any]] | None = None
    ) -> None:
        """Adds rows, `extra` holding sidecar attributes per row (an image already present is
        replaced); durable when it returns."""

    def search(
        self, query: np.ndarray, top_k: int = 5, where: tuple[Condition, ...] = (), *,
        rerank: RerankSettings | None = None,
    ) -> list[Hit]:  # fmt: skip
        """The top_k rows passing every condition of `where`, best first (with `rerank`: the
        store's top shortlist re-ranked, `reranked`)."""

    def search_groups(
        self, query: np.ndarray, top_k: int, where: tuple[Condition, ...], group_by: str, *,
        rerank: RerankSettings | None = None,
    ) -> list[Hit]:  # fmt: skip
        """The best row of each of the top_k groups of `group_by` (clients/grouping.py), best
        first; with `rerank`, groups are taken from the re-ranked order."""

    def recommend(
        self,
        positive: list[str],
        negative: list[str] = (),
        vectors: np.ndarray | None = None,
        top_k: int = 5,
        where: tuple[Condition, ...] = (),
        group_by: str | None = None,
        *,
        rerank: RerankSettings | None = None,
    ) -> list[Hit]:
        """More like these rows (`positive` ids, plus `vectors`, e.g. an uploaded photo's) and
        unlike those (`negative` ids): Qdrant's sum_scores rule (`recommend_query`); the example
        rows are never results. UnknownRow for an id that is not in the gallery. With `rerank`,
        the shortlist is re-ranked around the recommendation's query vector."""

    def neighbours(self, hits: list[Hit], vectors: np.ndarray, k: int) -> np.ndarray:
        """Each hit's k nearest other rows of the whole gallery, no filters [n, k, dim] (zero
        vectors where there are fewer): what re-ranking augments a shortlisted row with."""

    def get(self, row_id: str) -> dict[str, Any] | None:
        """The metadata of one row by its id (path, label, ...), or None."""

    def update(self, row_id: str, fields: dict[str, Any]) -> dict[str, Any] | None:
        """Sets (a value) or removes (None) metadata fields of one row, never id, path or label;
        durable when it returns. The row as it now is, or None when there is no such row."""

    def delete(self, row_ids: list[str]) -> int:
        """Removes these rows (unknown ids are ignored); durable when it returns. How many went."""

    def export(self, batch_size: int = 1024) -> Iterator[tuple[np.ndarray, list[dict[str, Any]]]]:
        """Every row, as batches of (vectors [n, dim] float32, row metadata): what a copy to
        another store reads (clients/copy_store.py)."""

    def close(self) -> None:
        """Releases what the store holds (an Edge shard's lock, a server connection)."""


class UnknownRow(ClientError):
    """An id that names no row of the gallery (HTTP 404 for an app)."""


def recommend_query(positives: np.ndarray, negatives: np.ndarray) -> np.ndarray:
    """The one vector that ranks rows as Qdrant's `sum_scores` recommendation does: a row's score
    is the sum of its cosine similarities to the positive examples minus the sum of those to the
    negative ones, i.e. its dot product with (sum of positives - sum of negatives), rows and
    examples being unit length."""
    dim = positives.shape[-1] if len(positives) else negatives.shape[-1]
    total = np.zeros(dim, dtype=np.float32)
    if len(positives):
        total += np.asarray(positives, dtype=np.float32).reshape(-1, dim).sum(0)
    if len(negatives):
        total -= np.asarray(negatives, dtype=np.float32).reshape(-1, dim).sum(0)
    return total


Shortlist = Callable[[int], tuple[list[Hit], np.ndarray]]  # limit -> (hits best first, their vectors [n, dim])
# (hits, their vectors [n, dim], k) -> each hit's k nearest other gallery rows' vectors [n, k, dim]
Neighbours = Callable[[list[Hit], np.ndarray, int], np.ndarray]


def reranked(
    shortlist: Shortlist, neighbours: Neighbours, query: np.ndarray, top_k: int, settings: RerankSettings
) -> list[Hit]:
    """The top_k hits after re-ranking (core/rerank.py) the store's best `settings.shortlist`,
    which `shortlist(limit)` returns with their vectors, filters and exclusions applied, each
    augmented with its gallery neighbours (`neighbours`: no filters, a row's neighbourhood is the
    gallery's). Hits past the shortlist (a top_k longer than it) follow in the store's order with
    no rerank_score. `score` stays the raw similarity, so match levels and min_score mean what they did."""
    if top_k <= 0:
        return []
    hits, vectors = shortlist(max(top_k, settings.shortlist))
    head = min(settings.shortlist, len(hits))
    vectors = np.asarray(vectors, dtype=np.float32)[:head]
    around = neighbours(hits[:head], vectors, settings.k) if head else np.zeros((0, 0, vectors.shape[-1]))
    order, scores = rerank(query, vectors, around, settings)
    ordered = [replace(hits[i], rerank_score=float(score)) for i, score in zip(order, scores, strict=True)]
    return (ordered + list(hits[head:]))[:top_k]


def others_nearest(own: list[str], found: list[list[tuple[str, np.ndarray]]], k: int, dim: int) -> np.ndarray:
    """[n, k, dim]: for each row id in `own`, the vectors of the first k of its `found` nearest
    rows (id, vector) that are not itself, zero-padded where the gallery has fewer (a zero vector
    adds nothing to DBA). What every store's `neighbours` returns."""
    result = np.zeros((len(own), k, dim), dtype=np.float32)
    for i, (row_id, nearest) in enumerate(zip(own, found, strict=True)):
        others = [vector for found_id, vector in nearest if found_id != row_id][:k]
        if others:
            result[i, : len(others)] = np.asarray(others, dtype=np.float32).reshape(len(others), dim)
    return result


def as_row_ids(row_ids: Iterable[str]) -> list[str]:
    """The ids among `row_ids` that can name a row (row ids are UUIDs), each once, in order: what a
    Qdrant store may look up in one request (one malformed id would fail the whole request)."""
    valid = []
    for row_id in dict.fromkeys(row_ids):
        try:
            uuid.UUID(row_id)
        except (ValueError, TypeError, AttributeError):
            continue
        valid.append(row_id)
    return valid


def check_examples(positive: list[str], negative: list[str], vectors: np.ndarray | None) -> None:
    if not positive and (vectors is None or len(vectors) == 0):
        raise ClientError("more like this needs at least one positive example: a row id or a photo")
    both = set(positive) & set(negative)
    if both:
        raise ClientError(f"row {sorted(both)[0]!r} is both a positive and a negative example")


class VersionMismatch(ClientError):
    """The server runs another model than the gallery was built with (HTTP 409 for an app)."""


def version_mismatch(where: str, served: str, built_with: str) -> ClientError:
    return VersionMismatch(
        f"{where} serves model {served[:12]}, but the gallery was built with "
        f"{built_with[:12]}: rebuild the gallery (make gallery) or serve that model"
    )


def location_options(store: str, query: str, known: Iterable[str], example: str) -> dict[str, list[str]]:
    """The options after '?' in a Qdrant location, each name checked against `known`; one-line
    errors that show `example` (what both Qdrant stores' locations share)."""
    try:
        options = parse_qs(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise ClientError(f"{store}: cannot read the options after '?' (use ?{example})") from None
    known = list(known)
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ClientError(f"{store}: unknown option {unknown[0]!r} (known: {', '.join(known)})")
    return options


def is_qdrant(store: str) -> bool:
    return store.startswith(QDRANT_SCHEMES)


def gallery_key(store: str) -> tuple:
    """What `store` names, however it is spelled (ClientError for a location that is not valid):
    a file's resolved path; an Edge gallery's resolved directory and collection; a server
    collection's host, port and name (`clients.qdrant_store.collection_key`). Options are ignored:
    they tune a gallery, they do not name another."""
    if store.startswith("qdrant://"):
        from clients.edge_store import parse_location

        directory, collection, _ = parse_location(store)
        try:
            return ("edge", str(directory.resolve()), collection)
        except (OSError, RuntimeError, ValueError) as error:
            raise ClientError(f"{store}: not a usable directory ({error})") from None
    if is_qdrant(store):
        from clients.qdrant_store import collection_key

        return ("server", *collection_key(store))
    try:
        return ("file", str(Path(store).resolve()))
    except (OSError, RuntimeError, ValueError) as error:  # a link loop, a NUL in the name
        raise ClientError(f"{store}: not a usable file name ({error})") from None


def same_gallery(first: str, second: str) -> bool:
    """Whether two locations name one gallery (a file or folder reached through two links too)."""
    a, b = gallery_key(first), gallery_key(second)
    if a == b:
        return True
    if a[0] != b[0] or a[0] == "server" or a[2:] != b[2:]:
        return False
    try:  # hard links, bind mounts, case-insensitive file systems: same only if both exist
        return os.path.samefile(a[1], b[1])
    except OSError:
        return False


def open_store(store: str, create: tuple[str, int] | None = None, fresh: bool = False) -> GalleryStore:
    """The gallery at `store`: a .npz path, qdrant://DIR (embedded Qdrant Edge) or
    qdrant+http(s)://HOST/NAME (a Qdrant server).

    `create=(model_version, dim)` makes an empty gallery when there is none yet (or, with
    `fresh`, replaces it: a file only when first written, so a killed rebuild keeps the old one; a
    Qdrant gallery at once).
    """
    if store.startswith("qdrant://"):
        from clients.edge_store import EdgeGallery  # needs the optional qdrant-edge-py

        return EdgeGallery.open(store, create, fresh)
    if is_qdrant(store):
        from clients.qdrant_store import QdrantGallery  # needs the optional qdrant-client

        return QdrantGallery.open(store, create, fresh)
    from clients.gallery import Gallery

    if create is not None and (fresh or not Path(store).exists()):
        return Gallery(*create, path=Path(store))
    return Gallery.load(store)
