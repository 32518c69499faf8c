"""Optional Qdrant server gallery store, for galleries beyond one machine's memory.

    qdrant+http://host:6333/cars  or  qdrant+https://host/cars   a Qdrant server

The `clients.store.GalleryStore` interface over qdrant-client. Every point carries path, label and model version;
ids are derived from the path, so re-adding an image overwrites it instead of duplicating it.
Embedded galleries (qdrant://DIR) are Qdrant Edge: `clients.edge_store.EdgeGallery`, which
`clients.store.open_store` picks for them. Needs `pip install -r requirements/client-qdrant.txt`.
"""

from __future__ import annotations

from urllib.parse import urlparse

import numpy as np

from clients.api import ClientError
from clients.metadata import Condition, payload_clauses, row_metadata
from clients.store import Hit, version_mismatch

try:
    from qdrant_client import QdrantClient, models
except ImportError:  # pragma: no cover - depends on the environment
    QdrantClient = None


def _parse(store: str) -> tuple[dict, str]:
    url = urlparse(store)
    if url.scheme not in ("qdrant+http", "qdrant+https"):
        raise ClientError(f"{store}: a Qdrant server is qdrant+http(s)://HOST:PORT/NAME (qdrant://DIR is Qdrant Edge)")
    collection = url.path.strip("/") or "cars"
    return {"url": f"{url.scheme.removeprefix('qdrant+')}://{url.netloc}"}, collection


class QdrantGallery:
    def __init__(self, client, collection: str, model_version: str, dim: int):
        self.client, self.collection = client, collection
        self.model_version, self.dim = model_version, dim

    @classmethod
    def open(cls, store: str, create: tuple[str, int] | None = None, fresh: bool = False) -> QdrantGallery:
        if QdrantClient is None:
            raise ClientError("the Qdrant store needs qdrant-client: pip install -r requirements/client-qdrant.txt")
        location, collection = _parse(store)
        try:
            return cls._open(QdrantClient(**location), store, collection, create, fresh)
        except ClientError:
            raise
        except Exception as error:  # server down, collection of another shape...
            raise ClientError(f"cannot open Qdrant gallery {store}: {type(error).__name__}: {error}") from None

    @classmethod
    def _open(cls, client, store: str, collection: str, create, fresh: bool) -> QdrantGallery:
        if fresh and create is not None and client.collection_exists(collection):
            client.delete_collection(collection)
        if not client.collection_exists(collection):
            if create is None:
                raise ClientError(f"no gallery at {store}: build one first (make gallery IMAGES=DIR GALLERY={store})")
            version, dim = create
            client.create_collection(
                collection, vectors_config=models.VectorParams(size=dim, distance=models.Distance.COSINE)
            )
            return cls(client, collection, version, dim)
        points, _ = client.scroll(collection, limit=1, with_payload=True)
        dim = client.get_collection(collection).config.params.vectors.size
        if points:
            return cls(client, collection, points[0].payload["model_version"], dim)
        return cls(client, collection, create[0] if create else "", dim)

    def __len__(self) -> int:
        return self.client.count(self.collection, exact=True).count

    def check_version(self, model_version: str, where: str) -> None:
        if self.model_version and model_version != self.model_version:
            raise version_mismatch(where, model_version, self.model_version)
        self.model_version = model_version

    def known_paths(self) -> set[str]:
        paths, offset = set(), None
        while True:
            points, offset = self.client.scroll(self.collection, limit=1024, offset=offset, with_payload=["path"])
            paths.update(p.payload["path"] for p in points)
            if offset is None:
                return paths

    def add(
        self, vectors: np.ndarray, paths: list[str], labels: list[str], extra: list[dict] | None = None
    ) -> None:
        """Upserts (wait=True: durable when it returns); ids from paths, so a re-added image is replaced."""
        vectors = np.asarray(vectors, dtype=np.float32).reshape(-1, self.dim)
        extra = extra or [{} for _ in paths]
        points = []
        for vector, path, label, attributes in zip(vectors, paths, labels, extra, strict=True):
            payload = {**row_metadata(path, label, attributes), "model_version": self.model_version}
            points.append(models.PointStruct(id=payload["id"], vector=vector.tolist(), payload=payload))
        self.client.upsert(self.collection, points=points, wait=True)

    def search(self, query: np.ndarray, top_k: int = 5, where: tuple[Condition, ...] = ()) -> list[Hit]:
        found = self.client.query_points(
            self.collection, query=np.asarray(query, np.float32).tolist(), limit=top_k, query_filter=to_filter(where)
        )
        return [_hit(point.payload, float(point.score)) for point in found.points]

    def get(self, row_id: str) -> dict | None:
        try:
            points = self.client.retrieve(self.collection, ids=[row_id], with_payload=True)
        except ValueError:  # not a UUID: no such row
            return None
        return _row(points[0].payload) if points else None


def _row(payload: dict) -> dict:
    return {key: value for key, value in payload.items() if key != "model_version"}


def _hit(payload: dict, score: float) -> Hit:
    return Hit(payload["path"], payload["label"], score, payload.get("id", ""), _row(payload))


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
