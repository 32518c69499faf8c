"""Optional Qdrant server gallery store, for galleries beyond one machine's memory.

    qdrant+http://HOST:6333/NAME[?OPTION=VALUE&...]   or   qdrant+https://HOST/NAME[?...]

The `clients.store.GalleryStore` interface over qdrant-client (REST), for one Qdrant server or a
cluster. Options, all optional (docs/deploy.md, "The gallery on a Qdrant cluster"):

    shards=N              shard_number (default: the server's, one shard per node at creation)
    replicas=N            replication_factor (default 1; 2 keeps each shard on two nodes)
    write_consistency=N   replicas that acknowledge a write before it returns (default 1, <= replicas)
    on_disk=true          vectors memory-mapped from disk rather than held in RAM (default false)
    quantization=int8     int8 scalar codes in RAM, float32 rescoring of the candidates (as Edge's)
    m=N, ef_construct=N   the HNSW graph (default 16 and 128, Edge's)
    batch_size=N          points per upsert request (default 256)
    retries=N             tries per request on transient errors (default 5)

The first seven shape the collection when it is created; naming one that an existing collection
has another value of is refused (rebuild to change it), as Edge refuses another quantization.
The port is 6333 unless the location names one, https included (write :443 for a server behind a
proxy on the standard port). QDRANT_API_KEY, when set, is sent as the server's API key.

The collection is made with cosine distance, payload on disk and payload indexes on make, model,
label (keyword) and year (float, as Edge: `year>=2010` finds 2010.5); on a collection that already
existed, missing indexes are made by the first `add`, so that a write refused before it changes
nothing. Its metadata holds this format, the model version and the dimension, so even an empty
collection knows its model; every point carries its row metadata (clients/metadata.py, stored as
Edge stores it) and the model version; ids derive from paths, so re-adding an image replaces it. A
collection without this format in its metadata is taken as a gallery only when its points carry
`path` and `model_version` (one made before the metadata held them); any other, empty or not, is
refused, and never deleted by `--rebuild`. `add` upserts in batches of batch_size, each with
wait=True (durable on the server when it returns): a killed build keeps the batches already sent,
and `known_paths` lets the next one skip them. Every request is retried with exponential backoff on
connection errors, timeouts and answers 429, 500, 502, 503 and 504 (after a 429's Retry-After, up to
RETRY_AFTER_MAX_S), as an upsert is idempotent, then fails with one line. Needs
`pip install -r requirements/client-qdrant.txt`.
"""

from __future__ import annotations

import ipaddress
import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any
from urllib.parse import urlparse

import numpy as np

from clients.api import ClientError
from clients.edge_store import COLLECTION, FULL_SCAN_KB, HNSW_EF, HNSW_EF_CONSTRUCT, HNSW_M, OVERSAMPLING, QUANTIZATIONS
from clients.metadata import (
    KEYWORD_FIELDS, NUMBER_FIELDS, Condition, payload_clauses, payload_row, row_metadata, stored_payload,
    updated_row,
)  # fmt: skip
from clients.grouping import check_group_field, grouped_search, groups_of_search
from clients.store import (
    Hit, UnknownRow, as_row_ids, check_examples, location_options, others_nearest, recommend_query, reranked,
    version_mismatch,
)  # fmt: skip
from core.rerank import RerankSettings

try:
    from pydantic import ValidationError
    from qdrant_client import QdrantClient, models
    from qdrant_client.common.client_exceptions import QdrantException, ResourceExhaustedResponse
    from qdrant_client.http.exceptions import ApiException, ResponseHandlingException, UnexpectedResponse
except ImportError:  # pragma: no cover - depends on the environment
    QdrantClient = None

FORMAT = "cars-gallery-qdrant/1"
PORT = 6333  # qdrant-client's, for https too, when the location names none
API_KEY_ENV = "QDRANT_API_KEY"
DEFAULTS: dict[str, Any] = {
    "shards": None, "replicas": 1, "write_consistency": 1, "on_disk": False, "quantization": "none",
    "m": HNSW_M, "ef_construct": HNSW_EF_CONSTRUCT, "batch_size": 256, "retries": 5,
}  # fmt: skip
CREATION = ("shards", "replicas", "write_consistency", "on_disk", "quantization", "m", "ef_construct")
INTEGERS = {"shards": (1, 1024), "replicas": (1, 16), "write_consistency": (1, 16), "m": (4, 128),
            "ef_construct": (4, 4096), "batch_size": (1, 10_000), "retries": (1, 20)}  # fmt: skip
TIMEOUT_S = 60  # per request: an upsert of a full batch waits until the replicas have applied it
BACKOFF_S, BACKOFF_MAX_S = 0.5, 8.0  # 0.5, 1, 2, 4 s between the 5 default tries
RETRY_AFTER_MAX_S = 30.0  # a 429's Retry-After is honoured up to this
RETRY_STATUS = frozenset({429, 500, 502, 503, 504})  # answers worth another try; 501, 505... are not
LOOPBACK_NAMES = ("localhost",)
_sleep = time.sleep  # the checks replace it to see the delays


@dataclass(frozen=True)
class Location:
    url: str  # http(s)://HOST:PORT, what qdrant-client connects to
    collection: str
    options: dict[str, Any]  # every option, defaults filled in
    given: frozenset[str]  # the options the location names


def parse_location(store: str) -> Location:
    """qdrant+http(s)://HOST:PORT/NAME?OPTIONS -> a Location; checks every part (no connection)."""
    url = urlparse(store)
    if url.scheme not in ("qdrant+http", "qdrant+https"):
        raise ClientError(f"{store}: a Qdrant server is qdrant+http(s)://HOST:PORT/NAME (qdrant://DIR is Qdrant Edge)")
    if not url.hostname:
        raise ClientError(f"{store} names no server: use qdrant+http://HOST:6333/NAME")
    try:
        _ = url.port  # urlparse checks it only when asked
    except ValueError:
        raise ClientError(f"{store}: the port must be a number from 1 to 65535") from None
    collection = url.path.strip("/") or "cars"
    if not COLLECTION.match(collection):
        raise ClientError(f"{store}: collection {collection!r} must be a plain name (letters, digits, _ . -)")
    query = location_options(store, url.query, DEFAULTS, "shards=N&replicas=N")
    options = dict(DEFAULTS)
    for name, values in query.items():
        options[name] = _option(store, name, values[-1])
    if options["write_consistency"] > options["replicas"]:
        raise ClientError(f"{store}: write_consistency ({options['write_consistency']}) cannot exceed replicas "
                          f"({options['replicas']})")  # fmt: skip
    return Location(f"{url.scheme.removeprefix('qdrant+')}://{url.netloc}", collection, options, frozenset(query))


def collection_key(store: str) -> tuple[str, int, str]:
    """(host, port, collection) that `store` names, however it is spelled: the scheme and the
    options ignored, the host lower-cased with localhost / 127.x / ::1 as one, the default port
    filled in. Two locations with the same key are one collection (host names that resolve to the
    same address are not recognised: no DNS is asked)."""
    location = parse_location(store)
    url = urlparse(store)
    host = url.hostname.rstrip(".")
    try:
        address = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        address = None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address is not None:
        host = "loopback" if address.is_loopback else address.compressed
    elif host in LOOPBACK_NAMES or host.endswith(".localhost"):
        host = "loopback"
    return host, url.port or PORT, location.collection


def _option(store: str, name: str, text: str) -> Any:
    if name == "quantization":
        if text not in QUANTIZATIONS:
            raise ClientError(f"{store}: quantization must be one of {', '.join(QUANTIZATIONS)}")
        return text
    if name == "on_disk":
        if text.lower() not in ("true", "false", "1", "0"):
            raise ClientError(f"{store}: on_disk must be true or false, not {text!r}")
        return text.lower() in ("true", "1")
    low, high = INTEGERS[name]
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or not low <= value <= high:
        raise ClientError(f"{store}: {name} must be a whole number from {low} to {high}, not {text!r}")
    return value


def _describe(error: Exception) -> str:
    """One line for any error qdrant-client raises (its own messages span several lines)."""
    if QdrantClient is not None and isinstance(error, UnexpectedResponse):
        try:
            detail = error.structured()["status"]["error"]
        except Exception:
            detail = error.content[:200].decode(errors="replace")
        text = f"HTTP {error.status_code} {error.reason_phrase}: {detail}"
    elif QdrantClient is not None and isinstance(error, ResponseHandlingException):
        text = f"{type(error.source).__name__}: {error.source}"
    else:
        text = f"{type(error).__name__}: {error}"
    return " ".join(text.split())


def _retry_delay(error: Exception, attempt: int) -> float | None:
    """Seconds to wait before trying again after `error` (one qdrant-client raises for an answer
    or its absence), or None when a retry cannot help."""
    backoff = min(BACKOFF_MAX_S, BACKOFF_S * 2 ** (attempt - 1))
    if isinstance(error, ResourceExhaustedResponse):  # 429 with a Retry-After of whole seconds
        return min(RETRY_AFTER_MAX_S, max(0.0, float(error.retry_after_s)))
    if isinstance(error, UnexpectedResponse):
        return backoff if error.status_code in RETRY_STATUS else None
    if isinstance(error, ResponseHandlingException):  # no answer (refused, reset, timeout) or an unreadable one
        return None if isinstance(error.source, ValidationError) else backoff
    return backoff  # QdrantException: a 429 whose Retry-After is not a number of seconds


def _transport_errors() -> tuple[type[Exception], ...]:
    """What qdrant-client raises for an HTTP answer or its absence; anything else is a bug to see."""
    return (ApiException, QdrantException)


def _requested_version(create: tuple[str, int] | None) -> str:
    """The model version a builder asks for, or "" for a reader."""
    return create[0] if create is not None else ""


class QdrantGallery:
    def __init__(self, client, location: Location, store: str):
        self.client, self.location, self.store = client, location, store
        self.collection = location.collection
        self.batch_size, self.retries = location.options["batch_size"], location.options["retries"]
        self.model_version, self.dim, self.quantization = "", 0, location.options["quantization"]
        self.calibration: dict[str, Any] | None = None  # kept in the collection's metadata
        self.unindexed: list[str] = []  # payload fields without their index: made before the next upsert

    @classmethod
    def open(cls, store: str, create: tuple[str, int] | None = None, fresh: bool = False) -> QdrantGallery:
        """The gallery at `store`; `create=(model_version, dim)` makes an empty collection when
        there is none (with `fresh`, replaces the one there)."""
        if QdrantClient is None:
            raise ClientError("the Qdrant store needs qdrant-client: pip install -r requirements/client-qdrant.txt")
        location = parse_location(store)
        try:
            client = QdrantClient(
                url=location.url, api_key=os.environ.get(API_KEY_ENV) or None, timeout=TIMEOUT_S,
                check_compatibility=False,  # it warns from a thread; a failing request says more, in one line
            )  # fmt: skip
        except Exception as error:
            raise ClientError(f"cannot open Qdrant gallery {store}: {_describe(error)}") from None
        gallery = cls(client, location, store)
        try:
            gallery._open(create, fresh)
        except BaseException:
            client.close()
            raise
        return gallery

    def _call(self, what: str, function: Callable, *args, **kwargs) -> Any:
        """`function(*args, **kwargs)`, retried with backoff on transient errors; one-line ClientError."""
        for attempt in range(1, self.retries + 1):
            try:
                return function(*args, **kwargs)
            except _transport_errors() as error:
                delay = _retry_delay(error, attempt)
                if delay is None:
                    raise ClientError(f"{what}: {_describe(error)}") from None
                if attempt == self.retries:
                    raise ClientError(f"{what}: gave up after {attempt} tries: {_describe(error)}") from None
                _sleep(delay)

    def _open(self, create: tuple[str, int] | None, fresh: bool) -> None:
        opening = f"cannot open Qdrant gallery {self.store}"
        info, created = None, False
        if self._call(opening, self.client.collection_exists, self.collection):
            info = self._call(opening, self.client.get_collection, self.collection)
            version = self._recognise(info)  # refuses another's collection: never read, adopted or deleted
            if fresh and create is not None:
                self._call(f"cannot replace {self.store}", self.client.delete_collection, self.collection)
                info = None
        if info is None:
            if create is None:
                raise ClientError(
                    f"no gallery at {self.store}: build one first (make gallery IMAGES=DIR GALLERY={self.store})"
                )
            created = self._create(*create)
            info = self._call(opening, self.client.get_collection, self.collection)
            # Made now: ours, whether or not the server kept its metadata; made meanwhile by another: look.
            version = create[0] if created else self._recognise(info)
        self.dim = int(info.config.params.vectors.size)
        calibration = (info.config.metadata or {}).get("calibration")
        self.calibration = calibration if isinstance(calibration, dict) else None
        self._check_settings(info)
        self.model_version = version or _requested_version(create)
        wanted = [*KEYWORD_FIELDS, *NUMBER_FIELDS]
        self.unindexed = [field for field in wanted if field not in (info.payload_schema or {})]
        if created:  # before any point; an existing collection's missing ones wait for the first `add`
            self._index_payload()

    def _recognise(self, info) -> str:
        """The model version of an existing collection of this project; ClientError for another's."""
        metadata = info.config.metadata or {}
        foreign = f"{self.store}: collection {self.collection!r} is not a gallery of this project"
        if not isinstance(info.config.params.vectors, models.VectorParams):
            raise ClientError(f"{foreign} (it has named vectors); use another collection name")
        if "format" in metadata:
            if metadata["format"] != FORMAT:
                raise ClientError(f"{foreign} (format {metadata['format']!r}); use another collection name")
            return str(metadata.get("model_version") or (self._first_payload() or {}).get("model_version") or "")
        # No metadata of ours: a gallery made before the metadata held the version, or someone else's.
        first = self._first_payload()
        if first is None:
            raise ClientError(f"{foreign} (no gallery metadata and no points); use another collection name")
        if "path" not in first or "model_version" not in first:
            raise ClientError(f"{foreign} (its points carry no path and model_version); use another collection name")
        return str(first["model_version"])

    def _create(self, model_version: str, dim: int) -> bool:
        """Creates the collection: True, or False when it was there by then (made by another
        process, or by the lost first try of this one)."""
        options = self.location.options
        int8 = models.ScalarQuantization(
            scalar=models.ScalarQuantizationConfig(type=models.ScalarType.INT8, quantile=0.99, always_ram=True)
        )
        metadata = {"format": FORMAT, "model_version": model_version, "dim": int(dim),
                    "created": datetime.now(UTC).isoformat(timespec="seconds")}  # fmt: skip
        try:
            self._call(
                f"cannot create {self.store}", self.client.create_collection, self.collection,
                vectors_config=models.VectorParams(size=int(dim), distance=models.Distance.COSINE,
                                                   on_disk=options["on_disk"]),
                shard_number=options["shards"], replication_factor=options["replicas"],
                write_consistency_factor=options["write_consistency"], on_disk_payload=True,
                hnsw_config=models.HnswConfigDiff(m=options["m"], ef_construct=options["ef_construct"],
                                                  full_scan_threshold=FULL_SCAN_KB),
                quantization_config=int8 if options["quantization"] == "int8" else None, metadata=metadata,
            )  # fmt: skip
        except ClientError:  # a retry after a lost answer finds it made: fine
            if not self._call(f"cannot create {self.store}", self.client.collection_exists, self.collection):
                raise
            return False
        return True

    def _index_payload(self) -> None:
        """Makes the payload indexes the collection lacks (all of them when new, those a killed
        creation left undone otherwise)."""
        while self.unindexed:
            field = self.unindexed[0]
            kind = models.PayloadSchemaType.FLOAT if field in NUMBER_FIELDS else models.PayloadSchemaType.KEYWORD
            self._call(f"cannot index {field} in {self.store}", self.client.create_payload_index,
                       self.collection, field_name=field, field_schema=kind, wait=True)  # fmt: skip
            self.unindexed.pop(0)

    def _check_settings(self, info) -> None:
        """Refuses options that the existing collection has other values of; learns its quantization."""
        params, vectors = info.config.params, info.config.params.vectors
        quantized = vectors.quantization_config or info.config.quantization_config
        scalar = isinstance(quantized, models.ScalarQuantization) and quantized.scalar.type == models.ScalarType.INT8
        actual = {
            "shards": params.shard_number, "replicas": params.replication_factor,
            "write_consistency": params.write_consistency_factor, "on_disk": bool(vectors.on_disk),
            "quantization": "int8" if scalar else "none" if quantized is None else type(quantized).__name__,
            "m": info.config.hnsw_config.m, "ef_construct": info.config.hnsw_config.ef_construct,
        }  # fmt: skip
        for name in CREATION:
            wanted = self.location.options[name]
            if name in self.location.given and actual[name] is not None and actual[name] != wanted:
                raise ClientError(
                    f"{self.store}: the collection was created with {name}={actual[name]}, not {wanted}; "
                    "rebuild it (--rebuild) to change that, or leave the option out"
                )
        self.quantization = actual["quantization"]

    def _first_payload(self) -> dict[str, Any] | None:
        """The path and model version of one point (None when there is none), which tell a gallery
        made before the collection metadata held its model."""
        points, _ = self._call(f"cannot read {self.store}", self.client.scroll, self.collection, limit=1,
                               with_payload=["path", "model_version"], with_vectors=False)  # fmt: skip
        return (points[0].payload or {}) if points else None

    def close(self) -> None:
        self.client.close()

    def __len__(self) -> int:
        return self._call(f"cannot count {self.store}", self.client.count, self.collection, exact=True).count

    def check_version(self, model_version: str, where: str) -> None:
        if model_version == self.model_version:
            return
        if len(self) > 0:
            raise version_mismatch(where, model_version, self.model_version)
        # Nothing added yet (a build killed before its first batch): the collection takes this model.
        self._call(f"cannot update {self.store}", self.client.update_collection, self.collection,
                   metadata={"model_version": model_version})  # fmt: skip
        self.model_version = model_version

    def set_calibration(self, calibration: dict[str, Any]) -> None:
        self._call(f"cannot update {self.store}", self.client.update_collection, self.collection,
                   metadata={"calibration": calibration})  # fmt: skip
        self.calibration = calibration

    def _pages(self, what: str, limit: int, **request) -> Iterator[list]:
        offset = None
        while True:
            points, offset = self._call(what, self.client.scroll, self.collection, limit=limit, offset=offset,
                                        **request)  # fmt: skip
            yield points
            if offset is None:
                return

    def known_paths(self) -> set[str]:
        paths = set()
        for points in self._pages(f"cannot read {self.store}", 1024, with_payload=["path"], with_vectors=False):
            paths.update(point.payload["path"] for point in points)
        return paths

    def export(self, batch_size: int = 1024) -> Iterator[tuple[np.ndarray, list[dict[str, Any]]]]:
        """Every row, as (vectors [n, dim] float32, row metadata) batches (clients/copy_store.py)."""
        for points in self._pages(f"cannot read {self.store}", batch_size, with_payload=True, with_vectors=True):
            if points:
                vectors = np.asarray([point.vector for point in points], dtype=np.float32).reshape(-1, self.dim)
                yield vectors, [payload_row(point.payload) for point in points]

    def add(
        self, vectors: np.ndarray, paths: list[str], labels: list[str], extra: list[dict[str, Any]] | None = None
    ) -> None:
        """Upserts in batches of batch_size, each durable (wait=True) before the next is sent; ids
        from paths, so a re-added image is replaced and a retried batch changes nothing. Nothing to
        add: nothing sent."""
        if len(paths) == 0:
            return
        vectors = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ClientError(f"{self.store}: vectors of dimension {vectors.shape[-1]}, the gallery holds {self.dim}")
        self._index_payload()  # an existing collection's missing indexes: only once a write is certain
        extra = extra or [{} for _ in paths]
        points = []
        for vector, path, label, attributes in zip(vectors, paths, labels, extra, strict=True):
            payload = {**row_metadata(path, label, attributes), "model_version": self.model_version}
            points.append(models.PointStruct(id=payload["id"], vector=vector.tolist(), payload=stored_payload(payload)))
        for start in range(0, len(points), self.batch_size):
            self._call(f"cannot add to {self.store}", self.client.upsert, self.collection,
                       points=points[start : start + self.batch_size], wait=True)  # fmt: skip

    def search(
        self, query: np.ndarray, top_k: int = 5, where: tuple[Condition, ...] = (), *,
        rerank: RerankSettings | None = None,
    ) -> list[Hit]:  # fmt: skip
        """The server's nearest rows passing `where`; `rerank` re-ranks its top shortlist, fetched
        with their vectors (clients.store.reranked)."""
        query = np.asarray(query, np.float32).reshape(-1)
        common = {"query": query.tolist(), "query_filter": to_filter(where), "search_params": self._search_params()}
        if rerank is not None:
            return reranked(partial(self._query, vectors=True, **common), self.neighbours, query, top_k, rerank)
        return self._query(top_k, **common)[0]

    def _search_params(self) -> models.SearchParams:
        """HNSW breadth, and with int8 vectors a rescoring of the oversampled candidates in float32."""
        rescore = None
        if self.quantization == "int8":
            rescore = models.QuantizationSearchParams(rescore=True, oversampling=OVERSAMPLING)
        return models.SearchParams(hnsw_ef=HNSW_EF, quantization=rescore)

    def _query(self, limit: int, vectors: bool = False, **query) -> tuple[list[Hit], np.ndarray | None]:
        """The best `limit` points of one query, as hits, and their stored vectors when asked."""
        if limit <= 0:
            return [], np.zeros((0, self.dim), np.float32) if vectors else None
        found = self._call(f"cannot search {self.store}", self.client.query_points, self.collection, limit=int(limit),
                           with_payload=True, with_vectors=vectors, **query)  # fmt: skip
        hits = [_hit(point.payload, float(point.score)) for point in found.points]
        if not vectors:
            return hits, None
        return hits, np.asarray([point.vector for point in found.points], dtype=np.float32).reshape(-1, self.dim)

    def neighbours(self, hits: list[Hit], vectors: np.ndarray, k: int) -> np.ndarray:
        """Each hit's k nearest other rows: one batch request of unfiltered queries for their ids,
        then one request for the vectors of those not in the shortlist already (most are: a row
        near the query has its neighbours near it too), so that few vectors cross the network."""
        if len(hits) == 0:
            return np.zeros((0, k, self.dim), np.float32)
        params = self._search_params()
        vectors = np.asarray(vectors, np.float32)
        requests = [models.QueryRequest(query=v.tolist(), limit=k + 1, with_vector=False, with_payload=False,
                                        params=params) for v in vectors]  # fmt: skip
        found = self._call(f"cannot search {self.store}", self.client.query_batch_points, self.collection,
                           requests=requests)  # fmt: skip
        known = {hit.id: vector for hit, vector in zip(hits, vectors, strict=True)}
        missing = {str(point.id) for response in found for point in response.points} - set(known)
        known.update(self._existing(sorted(missing), vectors=True) if missing else {})
        nearest = [[(str(p.id), known[str(p.id)]) for p in response.points if str(p.id) in known] for response in found]
        return others_nearest([hit.id for hit in hits], nearest, k, self.dim)

    def get(self, row_id: str) -> dict[str, Any] | None:
        try:
            uuid.UUID(row_id)
        except ValueError:  # not a UUID: no such row
            return None
        points = self._call(f"cannot read {self.store}", self.client.retrieve, self.collection, ids=[row_id],
                            with_payload=True)  # fmt: skip
        return payload_row(points[0].payload) if points else None

    def search_groups(
        self, query: np.ndarray, top_k: int, where: tuple[Condition, ...], group_by: str, *,
        rerank: RerankSettings | None = None,
    ) -> list[Hit]:  # fmt: skip
        """Qdrant's own grouping: one hit (the best) per group, top_k groups. Re-ranked, groups
        are taken from the re-ranked plain search (`grouped_search`), as the other stores do."""
        if rerank is not None:
            return groups_of_search(self, query, top_k, where, group_by, rerank)
        if top_k <= 0:
            return []
        return self._groups(
            group_by, query=np.asarray(query, np.float32).reshape(-1).tolist(), limit=int(top_k),
            query_filter=to_filter(where), with_payload=True, search_params=models.SearchParams(hnsw_ef=HNSW_EF),
        )  # fmt: skip

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
        """Qdrant's own recommendation (sum_scores): the server looks the example ids up and leaves
        them out of the results. With `rerank`, the examples' vectors are fetched too, to re-rank
        the shortlist around the rule's query vector (`recommend_query`), and groups are taken
        from the re-ranked list."""
        check_examples(positive, list(negative), vectors)
        examples = self._existing([*positive, *negative], vectors=rerank is not None)
        missing = [row_id for row_id in [*positive, *negative] if row_id not in examples]
        if missing:
            raise UnknownRow(f"no gallery row with id {missing[0]!r}")
        extra = [] if vectors is None else np.asarray(vectors, np.float32).reshape(-1, self.dim).tolist()
        query = models.RecommendQuery(
            recommend=models.RecommendInput(
                positive=[*positive, *extra],
                negative=list(negative) or None,
                strategy=models.RecommendStrategy.SUM_SCORES,
            )
        )
        search = {"query": query, "query_filter": to_filter(where),
                  "search_params": models.SearchParams(hnsw_ef=HNSW_EF)}  # fmt: skip
        if rerank is not None:
            positives = np.asarray([examples[i] for i in positive] + extra, np.float32).reshape(-1, self.dim)
            around = recommend_query(positives, np.asarray([examples[i] for i in negative], np.float32))

            def ranked(_query, limit: int, _where) -> list[Hit]:
                return reranked(partial(self._query, vectors=True, **search), self.neighbours, around, limit, rerank)

            if group_by:
                return grouped_search(ranked, None, top_k, where, check_group_field(group_by), len(self))
            return ranked(None, top_k, where)
        if top_k <= 0:
            return []
        common = {**search, "limit": int(top_k), "with_payload": True}
        if group_by:
            return self._groups(group_by, **common)
        found = self._call(f"cannot search {self.store}", self.client.query_points, self.collection, **common)
        return [_hit(point.payload, float(point.score)) for point in found.points]

    def _groups(self, group_by: str, **query) -> list[Hit]:
        """Qdrant's grouping of `query`: the best hit of each group."""
        found = self._call(f"cannot search {self.store}", self.client.query_points_groups, self.collection,
                           group_by=check_group_field(group_by), group_size=1, **query)  # fmt: skip
        return [_hit(group.hits[0].payload, float(group.hits[0].score)) for group in found.groups if group.hits]

    def _existing(self, row_ids: list[str], vectors: bool = False) -> dict[str, list[float] | None]:
        """The ids among `row_ids` that name rows, with their vectors when asked, in one request."""
        valid = as_row_ids(row_ids)
        if not valid:
            return {}
        points = self._call(f"cannot read {self.store}", self.client.retrieve, self.collection, ids=valid,
                            with_payload=False, with_vectors=vectors)  # fmt: skip
        return {str(point.id): point.vector if vectors else None for point in points}

    def update(self, row_id: str, fields: dict[str, Any]) -> dict[str, Any] | None:
        """Overwrites one row's payload with `fields` applied (wait=True: durable on return)."""
        row = self.get(row_id)
        if row is None:
            return None
        row = updated_row(row, fields)
        payload = stored_payload({**row, "model_version": self.model_version})
        self._call(f"cannot update {self.store}", self.client.overwrite_payload, self.collection,
                   payload=payload, points=[row_id], wait=True)  # fmt: skip
        return row

    def delete(self, row_ids: list[str]) -> int:
        """Deletes the rows that exist among `row_ids` (wait=True: durable on return)."""
        existing = list(self._existing(row_ids))
        if existing:
            self._call(f"cannot delete from {self.store}", self.client.delete, self.collection,
                       points_selector=models.PointIdsList(points=existing), wait=True)  # fmt: skip
        return len(existing)


def _hit(payload: dict[str, Any], score: float) -> Hit:
    row = payload_row(payload)
    return Hit(row["path"], row["label"], score, row.get("id", ""), row)


def to_filter(where: tuple[Condition, ...]):
    """Conditions -> a Qdrant payload filter with `clients.metadata.matches`' semantics: `!=` is a
    must_not (a row without the field passes), ranges need the field."""
    if not where:
        return None

    def condition(clause):
        if clause.range is not None:
            return models.FieldCondition(key=clause.field, range=models.Range(**clause.range))
        return models.FieldCondition(key=clause.field, match=models.MatchValue(value=clause.match))

    must, must_not = payload_clauses(where)
    return models.Filter(must=[condition(c) for c in must] or None, must_not=[condition(c) for c in must_not] or None)
