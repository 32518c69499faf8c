"""The embedded gallery store: Qdrant Edge, the Qdrant engine inside this process (no server).

    qdrant://DIR?collection=NAME[&quantization=int8]   DIR relative or absolute; NAME default "cars"

The `clients.store.GalleryStore` interface over `qdrant-edge-py`. A gallery is the folder
DIR/NAME holding `gallery.json` (format, model version, dimension, quantization; replaced
atomically) and `shard/`, one Edge shard: cosine distance, an HNSW index, payload indexes on
make, model and label (keyword) and year (float: a number index, so that a year written as
2010.5 is still found by `year>=2010`, as `clients.metadata.matches` finds it), and, with
`quantization=int8` when the gallery is created, int8 scalar quantization of the vectors
(searches rescore with the float32 vectors, so scores stay exact). Every point carries its row
metadata (clients/metadata.py) and the model version; its id is the row id, derived from the
path, so re-adding an image replaces it. `add` returns once the points are in the shard's
write-ahead log, indexed where Edge's optimizer says a segment is large enough (Edge has no
background optimizer: `add` runs it) and flushed.

Edge opens a shard in one process at a time: a second process (a query while a build runs)
gets a one-line error naming the lock. Needs `pip install -r requirements/client-qdrant.txt`.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np

from clients.api import ClientError
from clients.metadata import (
    KEYWORD_FIELDS, NUMBER_FIELDS, Condition, payload_clauses, payload_row, row_metadata, stored_payload,
    updated_row,
)  # fmt: skip
from clients.grouping import check_group_field, grouped_search, groups_of_search
from clients.store import (
    Hit, UnknownRow, as_row_ids, check_examples, location_options, others_nearest, recommend_query, reranked,
    version_mismatch,
)  # fmt: skip
from core.files import write_json_atomic
from core.rerank import RerankSettings

try:
    import qdrant_edge as edge
except ImportError:  # pragma: no cover - depends on the environment
    edge = None

FORMAT = "cars-gallery-edge/1"
MANIFEST, SHARD = "gallery.json", "shard"
QUANTIZATIONS = ("none", "int8")
OPTIONS = ("collection", "quantization")
COLLECTION = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*$")
# Graph and search breadth: recall@10 0.977 at 2.9 ms per query on 100k x 1,280 synthetic rows, the
# graph built in 144 s on 2 cores (docs/benchmarks.md, "Gallery stores"; m 32 / ef_construct 256: 0.994, 283 s).
HNSW_M, HNSW_EF_CONSTRUCT, HNSW_EF = 16, 128, 256
OVERSAMPLING = 4.0  # int8: the best top_k x this by int8 score are rescored with the float32 vectors
FULL_SCAN_KB = 10_000  # a filter leaving fewer rows than this (in KB of vectors) is searched exactly
INDEXING_THRESHOLD_KB: int | None = None  # None: Edge's default (10 MB of vectors, ~2,000 rows of 1,280 floats)


def parse_location(store: str) -> tuple[Path, str, dict[str, str]]:
    """qdrant://DIR?collection=NAME&quantization=int8 -> (DIR, NAME, options); checks them all."""
    url = urlparse(store)
    if url.scheme != "qdrant":
        raise ClientError(f"{store} is not an embedded Qdrant location: use qdrant://DIR?collection=NAME")
    path = url.netloc + url.path
    if not path:
        raise ClientError(f"{store} names no directory: use qdrant://DIR (e.g. qdrant://galleries/cars)")
    query = location_options(store, url.query, OPTIONS, "collection=NAME")
    options = {key: values[-1] for key, values in query.items()}
    collection = options.pop("collection", "cars")
    if not COLLECTION.match(collection):
        raise ClientError(f"{store}: collection {collection!r} must be a plain name (letters, digits, _ . -)")
    if options.get("quantization", "none") not in QUANTIZATIONS:
        raise ClientError(f"{store}: quantization must be one of {', '.join(QUANTIZATIONS)}")
    return Path(path), collection, options


@contextmanager
def _engine(what: str) -> Iterator[None]:
    """Errors of the engine (plain Exceptions with Rust messages) as one-line ClientErrors."""
    try:
        yield
    except ClientError:
        raise
    except Exception as error:
        message = " ".join(str(error).split()) or type(error).__name__
        if "WouldBlock" in message:
            message += " (the gallery is open elsewhere: a gallery build, a query, a web page?)"
        raise ClientError(f"{what}: {message}") from None


class EdgeGallery:
    def __init__(self, shard, store: str, root: Path, manifest: dict[str, Any]):
        self.shard, self.store, self.root = shard, store, root
        self.model_version, self.dim = manifest["model_version"], int(manifest["dim"])
        self.quantization = manifest.get("quantization", "none")
        self.manifest = manifest

    @classmethod
    def open(cls, store: str, create: tuple[str, int] | None = None, fresh: bool = False) -> EdgeGallery:
        """The gallery at `store`; `create=(model_version, dim)` makes an empty one when there is
        none (with `fresh`, replaces the one there)."""
        if edge is None:
            raise ClientError(
                "the embedded Qdrant store needs qdrant-edge-py: pip install -r requirements/client-qdrant.txt"
            )
        directory, collection, options = parse_location(store)
        if directory.exists() and not directory.is_dir():
            raise ClientError(f"{store}: {directory} is a file, not a directory")
        with _engine(f"cannot open the Qdrant Edge gallery {store}"):  # OSError too: permissions, disk full
            return cls._open(store, directory, directory / collection, options, create, fresh)

    @classmethod
    def _open(cls, store: str, directory: Path, root: Path, options: dict, create, fresh: bool) -> EdgeGallery:
        manifest_path, shard_path = root / MANIFEST, root / SHARD
        if fresh and create is not None:
            if (shard_path / "edge_config.json").is_file():
                edge.EdgeShard.load(str(shard_path)).close()  # fails (locked) if another process has it open
            _remove(root)
        manifest = _read_manifest(manifest_path, store)
        if manifest is None:
            if create is None:
                hint = ""
                if (directory / "meta.json").is_file():  # qdrant-client's local mode kept its files there
                    hint = " (the files there are qdrant-client's local mode, which Qdrant Edge does not read)"
                raise ClientError(
                    f"no gallery at {store}{hint}: build one first (make gallery IMAGES=DIR GALLERY={store})"
                )
            if shard_path.exists():  # a shard without its manifest is no gallery of ours: start over
                shutil.rmtree(shard_path)
            version, dim = create
            manifest = {
                "format": FORMAT, "model_version": version, "dim": int(dim),
                "quantization": options.get("quantization", "none"),
                "created": datetime.now(UTC).isoformat(timespec="seconds"),
            }  # fmt: skip
            root.mkdir(parents=True, exist_ok=True)
            write_json_atomic(manifest_path, manifest)  # first: it says how to make the shard
        elif "quantization" in options and options["quantization"] != manifest.get("quantization", "none"):
            raise ClientError(
                f"{store}: this gallery was built with quantization={manifest.get('quantization', 'none')}; "
                "rebuild it (--rebuild) to change that"
            )
        if (shard_path / "edge_config.json").is_file():
            shard = edge.EdgeShard.load(str(shard_path))
        else:  # new, or killed between writing the manifest and creating the shard
            if shard_path.exists():
                shutil.rmtree(shard_path)
            shard = _create_shard(shard_path, int(manifest["dim"]), manifest.get("quantization", "none"))
        return cls(shard, store, root, manifest)

    @property
    def calibration(self) -> dict[str, Any] | None:
        return self.manifest.get("calibration")

    def set_calibration(self, calibration: dict[str, Any]) -> None:
        self.manifest = {**self.manifest, "calibration": calibration}
        write_json_atomic(self.root / MANIFEST, self.manifest)

    def close(self) -> None:
        """Releases the shard (its lock) now rather than when the process ends."""
        if self.shard is not None:
            with _engine(f"cannot close {self.store}"):
                self.shard.close()
            self.shard = None

    def __len__(self) -> int:
        with _engine(f"cannot count {self.store}"):
            return int(self.shard.count(edge.CountRequest(exact=True)))

    def check_version(self, model_version: str, where: str) -> None:
        if model_version == self.model_version:
            return
        if len(self) > 0:
            raise version_mismatch(where, model_version, self.model_version)
        # Nothing added yet (a build killed before its first checkpoint): the gallery takes this model.
        self.model_version = model_version
        self.manifest = {**self.manifest, "model_version": model_version}
        write_json_atomic(self.root / MANIFEST, self.manifest)

    def known_paths(self) -> set[str]:
        paths, offset = set(), None
        with _engine(f"cannot read {self.store}"):
            while True:
                request = edge.ScrollRequest(offset=offset, limit=1024, with_payload=["path"], with_vector=False)
                records, offset = self.shard.scroll(request)
                paths.update(record.payload["path"] for record in records)
                if offset is None:
                    return paths

    def export(self, batch_size: int = 1024) -> Iterator[tuple[np.ndarray, list[dict[str, Any]]]]:
        """Every row, as (vectors [n, dim] float32, row metadata) batches in id order: what
        clients/copy_store.py reads to move a gallery to another store."""
        offset = None
        while True:
            request = edge.ScrollRequest(offset=offset, limit=batch_size, with_payload=True, with_vector=True)
            with _engine(f"cannot read {self.store}"):
                records, offset = self.shard.scroll(request)
            if records:
                vectors = np.asarray([record.vector for record in records], dtype=np.float32).reshape(-1, self.dim)
                yield vectors, [payload_row(record.payload) for record in records]
            if offset is None:
                return

    def add(
        self, vectors: np.ndarray, paths: list[str], labels: list[str], extra: list[dict[str, Any]] | None = None
    ) -> None:
        """Upserts (ids from paths: a re-added image is replaced), indexes what Edge's optimizer
        plans, and flushes: durable when it returns. Nothing to add: nothing done."""
        if len(paths) == 0:
            return
        vectors = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ClientError(f"{self.store}: vectors of dimension {vectors.shape[-1]}, the gallery holds {self.dim}")
        extra = extra or [{} for _ in paths]
        points = []
        for vector, path, label, attributes in zip(vectors, paths, labels, extra, strict=True):
            payload = {**row_metadata(path, label, attributes), "model_version": self.model_version}
            points.append(edge.Point(payload["id"], vector.tolist(), stored_payload(payload)))
        with _engine(f"cannot add to {self.store}"):
            if points:
                self.shard.update(edge.UpdateOperation.upsert_points(points))
            self.shard.optimize()  # Edge indexes only when asked: segments past the indexing threshold
            self.shard.flush()

    def search(
        self, query: np.ndarray, top_k: int = 5, where: tuple[Condition, ...] = (), *,
        rerank: RerankSettings | None = None,
    ) -> list[Hit]:  # fmt: skip
        """Edge's nearest rows passing `where`; `rerank` re-ranks its top shortlist (clients.store.reranked)."""
        query = np.asarray(query, np.float32).reshape(-1)
        nearest, condition = edge.Query.Nearest(query.tolist()), to_filter(where)
        if rerank is not None:
            shortlist = partial(self._query, nearest, condition=condition, vectors=True)
            return reranked(shortlist, self.neighbours, query, top_k, rerank)
        return self._query(nearest, top_k, condition)[0]

    def _query(self, query, limit: int, condition, vectors: bool = False) -> tuple[list[Hit], np.ndarray | None]:
        """The best `limit` points of one Edge query, as hits, and their stored vectors when asked."""
        if limit <= 0:
            return [], np.zeros((0, self.dim), np.float32) if vectors else None
        request = edge.QueryRequest(limit=int(limit), query=query, filter=condition, with_payload=True,
                                    with_vector=vectors, params=self._params())  # fmt: skip
        with _engine(f"cannot search {self.store}"):
            found = self.shard.query(request)
        hits = [_hit(point.payload, float(point.score)) for point in found]
        if not vectors:
            return hits, None
        return hits, np.asarray([point.vector for point in found], dtype=np.float32).reshape(-1, self.dim)

    def search_many(self, queries: np.ndarray, top_k: int = 5, where: tuple[Condition, ...] = ()) -> list[list[Hit]]:
        """`search` for a batch of queries [B, dim], planned by Edge as one batch."""
        queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        if top_k <= 0 or len(queries) == 0:
            return [[] for _ in queries]
        condition, params = to_filter(where), self._params()
        requests = [
            edge.QueryRequest(limit=int(top_k), query=edge.Query.Nearest(q.tolist()), filter=condition,
                              with_payload=True, with_vector=False, params=params)
            for q in queries
        ]  # fmt: skip
        with _engine(f"cannot search {self.store}"):
            found = self.shard.query_batch(edge.QueryBatchRequest(requests))
        return [[_hit(point.payload, float(point.score)) for point in points] for points in found]

    def neighbours(self, hits: list[Hit], vectors: np.ndarray, k: int) -> np.ndarray:
        """Each hit's k nearest other rows, planned by Edge as one batch of unfiltered queries."""
        if len(hits) == 0:
            return np.zeros((0, k, self.dim), np.float32)
        params = self._params()
        requests = [
            edge.QueryRequest(limit=k + 1, query=edge.Query.Nearest(v.tolist()), filter=None, with_payload=False,
                              with_vector=True, params=params)
            for v in np.asarray(vectors, np.float32)
        ]  # fmt: skip
        with _engine(f"cannot search {self.store}"):
            found = self.shard.query_batch(edge.QueryBatchRequest(requests))
        nearest = [[(str(point.id), point.vector) for point in points] for points in found]
        return others_nearest([hit.id for hit in hits], nearest, k, self.dim)

    def get(self, row_id: str) -> dict[str, Any] | None:
        with _engine(f"cannot read {self.store}"):
            try:
                records = self.shard.retrieve([row_id], True, False)
            except ValueError:  # not a UUID: no such row
                return None
        return payload_row(records[0].payload) if records else None

    def search_groups(
        self, query: np.ndarray, top_k: int, where: tuple[Condition, ...], group_by: str, *,
        rerank: RerankSettings | None = None,
    ) -> list[Hit]:  # fmt: skip
        """The best row of each of the top_k groups, from this store's exact (or re-ranked) ranking."""
        return groups_of_search(self, query, top_k, where, group_by, rerank)

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
        """Qdrant's recommendation (sum_scores) on the examples' stored vectors, the examples left
        out; `rerank` re-ranks the shortlist around that rule's query vector (`recommend_query`)."""
        check_examples(positive, list(negative), vectors)
        stored = self._vectors([*positive, *negative])
        extra = np.zeros((0, self.dim), np.float32) if vectors is None else np.asarray(vectors, np.float32)
        positives = [stored[i] for i in positive] + [v.tolist() for v in extra.reshape(-1, self.dim)]
        negatives = [stored[i] for i in negative]
        query = edge.Query.RecommendSumScores(edge.RecommendQuery(positives=positives, negatives=negatives))
        condition = to_filter(where, exclude=set(stored))
        around = recommend_query(np.asarray(positives, np.float32), np.asarray(negatives, np.float32))

        def ranked(_query, limit: int, _where) -> list[Hit]:
            if rerank is not None:
                shortlist = partial(self._query, query, condition=condition, vectors=True)
                return reranked(shortlist, self.neighbours, around, limit, rerank)
            return self._query(query, limit, condition)[0]

        if group_by:
            return grouped_search(ranked, None, top_k, where, check_group_field(group_by), len(self))
        return ranked(None, top_k, where) if top_k > 0 else []

    def _vectors(self, row_ids: list[str]) -> dict[str, list[float]]:
        """The stored vectors of these rows; UnknownRow names the first that is not there."""
        found = {str(record.id): list(record.vector) for record in self._retrieve(row_ids, vectors=True)}
        missing = [row_id for row_id in row_ids if row_id not in found]
        if missing:
            raise UnknownRow(f"no gallery row with id {missing[0]!r}")
        return found

    def update(self, row_id: str, fields: dict[str, Any]) -> dict[str, Any] | None:
        """Overwrites one row's payload with `fields` applied, and flushes."""
        row = self.get(row_id)
        if row is None:
            return None
        row = updated_row(row, fields)
        payload = stored_payload({**row, "model_version": self.model_version})
        with _engine(f"cannot update {self.store}"):
            self.shard.update(edge.UpdateOperation.overwrite_payload([row_id], payload))
            self.shard.flush()
        return row

    def _retrieve(self, row_ids: list[str], vectors: bool = False) -> list:
        """The records of the rows among `row_ids` that exist, in one lookup (no payload)."""
        valid = as_row_ids(row_ids)
        if not valid:
            return []
        with _engine(f"cannot read {self.store}"):
            return self.shard.retrieve(valid, False, vectors)

    def delete(self, row_ids: list[str]) -> int:
        """Deletes the rows that exist among `row_ids`, and flushes."""
        existing = [str(record.id) for record in self._retrieve(row_ids)]
        if existing:
            with _engine(f"cannot delete from {self.store}"):
                self.shard.update(edge.UpdateOperation.delete_points(existing))
                self.shard.flush()
        return len(existing)

    def _params(self):
        rescore = None
        if self.quantization != "none":
            rescore = edge.QuantizationSearchParams(rescore=True, oversampling=OVERSAMPLING)
        return edge.SearchParams(hnsw_ef=HNSW_EF, quantization=rescore)


def _create_shard(path: Path, dim: int, quantization: str):
    quantized = edge.ScalarQuantizationConfig(type=edge.ScalarType.Int8, quantile=0.99, always_ram=True)
    config = edge.EdgeConfig(
        vectors=edge.EdgeVectorParams(
            size=dim, distance=edge.Distance.Cosine, quantization_config=quantized if quantization == "int8" else None
        ),
        hnsw_config=edge.HnswIndexConfig(m=HNSW_M, ef_construct=HNSW_EF_CONSTRUCT, full_scan_threshold=FULL_SCAN_KB),
        optimizers=edge.EdgeOptimizersConfig(indexing_threshold=INDEXING_THRESHOLD_KB),
    )
    shard = edge.EdgeShard.create(str(path), config)
    for field in KEYWORD_FIELDS:
        shard.update(edge.UpdateOperation.create_field_index(field, edge.PayloadSchemaType.Keyword))
    for field in NUMBER_FIELDS:
        shard.update(edge.UpdateOperation.create_field_index(field, edge.PayloadSchemaType.Float))
    shard.flush()
    return shard


def _read_manifest(path: Path, store: str) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
        if manifest.get("format") != FORMAT:
            raise ClientError(f"{store}: {path} is not a gallery of this project (format {manifest.get('format')!r})")
        int(manifest["dim"]), str(manifest["model_version"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise ClientError(f"{store}: {path} is not readable ({type(error).__name__}); rebuild it") from None
    return manifest


def _remove(root: Path) -> None:
    """Removes the gallery in `root` (its manifest and shard), nothing else that may lie there."""
    if (root / SHARD).exists():
        shutil.rmtree(root / SHARD)
    (root / MANIFEST).unlink(missing_ok=True)


def _hit(payload: dict[str, Any], score: float) -> Hit:
    row = payload_row(payload)
    return Hit(row["path"], row["label"], score, row.get("id", ""), row)


def to_filter(where: tuple[Condition, ...], exclude: set[str] | None = None):
    """Conditions -> an Edge payload filter with `clients.metadata.matches`' semantics: a number
    condition is a range (`=` the range [v, v]; only int/float values fall in one), a text
    condition an exact keyword match, `!=` a must_not (so a row without the field passes it).
    `exclude`: row ids that must not be results (the examples of a recommendation)."""
    if not where and not exclude:
        return None

    def condition(clause):
        if clause.range is not None:
            return edge.FieldCondition(key=clause.field, range=edge.RangeFloat(**clause.range))
        return edge.FieldCondition(key=clause.field, match=edge.MatchValue(clause.match))

    must, must_not = payload_clauses(where)
    excluded = [edge.HasIdCondition(set(exclude))] if exclude else []
    return edge.Filter(
        must=[condition(c) for c in must] or None, must_not=[condition(c) for c in must_not] + excluded or None
    )
