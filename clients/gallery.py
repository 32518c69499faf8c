"""The file store: embeddings of known cars in one local .npz file, searched by exact cosine top-k.

One file holds a float32 matrix [N, dim] with, per row, the image path, label and metadata
(clients/metadata.py: id, make, model, year, sidecar attributes), plus the model version,
dimension and creation time. Filters are evaluated as a numpy mask before the top-k. It loads
without pickle in milliseconds, is replaced atomically (temp file + rename) on every `add` when
the gallery has a `path`, and refuses to mix embeddings of different model versions.
`search` is exact brute force by default; `approximate=True` uses a `ProjectedIndex` (built once
per gallery in memory, exact scores, recall measured by bench/gallery_search.py) for long-lived
callers with large galleries.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from clients.api import ClientError
from clients.search import ProjectedIndex, exact_top_k
from clients.metadata import Condition, row_metadata, updated_row
from clients.grouping import check_group_field, grouped_search, groups_of_search
from clients.store import Hit, UnknownRow, check_examples, recommend_query, reranked, version_mismatch
from core.files import write_file_atomic
from core.rerank import RerankSettings

FORMAT = "cars-gallery/2"
OLDER_FORMATS = ("cars-gallery/1",)  # no per-row metadata: derived from path and label on load


@dataclass
class Gallery:
    model_version: str
    dim: int
    embeddings: np.ndarray = field(default=None)  # float32 [N, dim]
    paths: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    created: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    path: Path | None = None  # where `add` writes through; None: in memory until `save`
    rows: list[dict[str, Any]] = field(default_factory=list)  # per-row metadata (row_metadata)
    calibration: dict[str, Any] | None = None  # clients/calibration.py
    _index: ProjectedIndex | None = field(default=None, init=False, repr=False, compare=False)
    _columns: dict[str, np.ndarray] = field(default_factory=dict, init=False, repr=False, compare=False)
    _by_id: dict[str, dict[str, Any]] | None = field(default=None, init=False, repr=False, compare=False)
    _positions: dict[str, int] | None = field(default=None, init=False, repr=False, compare=False)
    _nearest: dict[tuple[int, int], np.ndarray] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.embeddings is None:
            self.embeddings = np.zeros((0, self.dim), dtype=np.float32)
        if len(self.rows) != len(self.paths):
            self.rows = [row_metadata(p, label) for p, label in zip(self.paths, self.labels, strict=True)]

    def __len__(self) -> int:
        return len(self.paths)

    def add(
        self, vectors: np.ndarray, paths: list[str], labels: list[str], extra: list[dict[str, Any]] | None = None
    ) -> None:
        """Adds rows (`extra`: sidecar attributes per row); an image already present is replaced.
        With a `path`, the file is rewritten atomically before this returns."""
        vectors = np.asarray(vectors, dtype=np.float32).reshape(-1, self.dim)
        extra = extra or [{} for _ in paths]
        known = {path: row for row, path in enumerate(self.paths)}
        for i, p in enumerate(paths):
            if p in known:
                row = known[p]
                self.embeddings[row], self.labels[row] = vectors[i], labels[i]
                self.rows[row] = row_metadata(p, labels[i], extra[i])
        new = [i for i, p in enumerate(paths) if p not in known]
        self.embeddings = np.concatenate([self.embeddings, vectors[new]])
        self.paths += [paths[i] for i in new]
        self.labels += [labels[i] for i in new]
        self.rows += [row_metadata(paths[i], labels[i], extra[i]) for i in new]
        self._changed()

    def export(self, batch_size: int = 1024) -> Iterator[tuple[np.ndarray, list[dict[str, Any]]]]:
        """Every row, as (vectors [n, dim] float32, row metadata) batches in row order (what
        clients/copy_store.py reads)."""
        for start in range(0, len(self), batch_size):
            yield self.embeddings[start : start + batch_size], self.rows[start : start + batch_size]

    def close(self) -> None:
        """Nothing to release: the file is read whole and replaced atomically."""

    def check_version(self, model_version: str, where: str) -> None:
        if model_version != self.model_version:
            raise version_mismatch(where, model_version, self.model_version)

    def known_paths(self) -> set[str]:
        return set(self.paths)

    def get(self, row_id: str) -> dict[str, Any] | None:
        """The metadata of the row with this id (what the web page's thumbnails are served from)."""
        if self._by_id is None:  # built once per gallery version: thumbnails ask for rows one by one
            self._by_id = {row["id"]: row for row in self.rows}
        return self._by_id.get(row_id)

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
        """Qdrant's sum_scores rule in numpy (`recommend_query`), the examples left out; `rerank`
        re-ranks the shortlist around that rule's query vector."""
        check_examples(positive, list(negative), vectors)
        rows = [self._row_index(row_id) for row_id in [*positive, *negative]]
        pos, neg = self.embeddings[rows[: len(positive)]], self.embeddings[rows[len(positive) :]]
        if vectors is not None and len(vectors):
            pos = np.concatenate([pos, np.asarray(vectors, dtype=np.float32).reshape(-1, self.dim)])
        query = recommend_query(pos, neg)
        keep = self.mask(where)
        keep[rows] = False

        def shortlist(limit: int) -> tuple[list[Hit], np.ndarray]:
            candidates = np.flatnonzero(keep)
            if len(candidates) == 0:
                return [], np.zeros((0, self.dim), np.float32)
            indices, scores = exact_top_k(self.embeddings[candidates], query[None, :], limit)
            rows = candidates[indices[0]]
            hits = [self._hit(int(row), float(score)) for row, score in zip(rows, scores[0], strict=True)]
            return hits, self.embeddings[rows]

        def ranked(_query: np.ndarray, limit: int, _where: tuple[Condition, ...]) -> list[Hit]:
            if rerank is not None:
                return reranked(shortlist, self.neighbours, query, limit, rerank)
            return shortlist(limit)[0]

        if group_by:
            return grouped_search(ranked, query, top_k, where, check_group_field(group_by), len(self))
        return ranked(query, top_k, where)

    def neighbours(self, hits: list[Hit], vectors: np.ndarray, k: int) -> np.ndarray:
        """Each hit's k nearest other rows (exact; clients.store.GalleryStore.neighbours). The
        rows' neighbour indices are kept until the gallery changes: a row shortlisted again costs
        nothing, a new one a [1, N] product."""
        rows = np.array([self._row_index(hit.id) for hit in hits], dtype=np.int64)
        missing = [i for i, row in enumerate(rows) if (int(row), k) not in self._nearest]
        if missing:
            indices, _ = exact_top_k(self.embeddings, np.asarray(vectors, np.float32)[missing], k + 1)
            for i, found in zip(missing, indices, strict=True):
                self._nearest[int(rows[i]), k] = found
        result = np.zeros((len(rows), k, self.dim), dtype=np.float32)
        if len(rows) == 0:
            return result
        found = np.stack([self._nearest[int(row), k] for row in rows])  # [n, min(k + 1, N)], itself among them
        others = found != rows[:, None]
        first = np.argsort(~others, axis=1, kind="stable")[:, :k]  # the others first, in their order
        picked, real = np.take_along_axis(found, first, 1), np.take_along_axis(others, first, 1)
        result[:, : picked.shape[1]] = self.embeddings[picked]
        result[:, : picked.shape[1]][~real] = 0.0  # a gallery of k rows or fewer: itself was picked
        return result

    def _row_index(self, row_id: str) -> int:
        if self._positions is None:  # built once per gallery version
            self._positions = {row["id"]: i for i, row in enumerate(self.rows)}
        if row_id not in self._positions:
            raise UnknownRow(f"no gallery row with id {row_id!r}")
        return self._positions[row_id]

    def update(self, row_id: str, fields: dict[str, Any]) -> dict[str, Any] | None:
        """Sets or removes (None) metadata fields of one row; the file is rewritten atomically."""
        try:
            index = self._row_index(row_id)
        except UnknownRow:
            return None
        self.rows[index] = updated_row(self.rows[index], fields)
        self._changed()
        return self.rows[index]

    def delete(self, row_ids: list[str]) -> int:
        """Removes rows by id; the file is rewritten atomically (once, whatever the count)."""
        doomed = set(row_ids)
        keep = [i for i, row in enumerate(self.rows) if row["id"] not in doomed]
        removed = len(self.rows) - len(keep)
        if removed:
            self.embeddings = self.embeddings[keep]
            self.paths = [self.paths[i] for i in keep]
            self.labels = [self.labels[i] for i in keep]
            self.rows = [self.rows[i] for i in keep]
            self._changed()
        return removed

    def set_calibration(self, calibration: dict[str, Any]) -> None:
        self.calibration = calibration
        if self.path is not None:
            self.save(self.path)

    def _changed(self) -> None:
        self._index, self._columns, self._by_id, self._positions, self._nearest = None, {}, None, None, {}
        if self.path is not None:
            self.save(self.path)

    def search(
        self, query: np.ndarray, top_k: int = 5, where: tuple[Condition, ...] = (), approximate: bool = False, *,
        rerank: RerankSettings | None = None,
    ) -> list[Hit]:  # fmt: skip
        """Cosine top-k of the rows passing `where`, best first (rows and queries are unit length);
        exact unless `approximate` (then filters are not supported); `rerank` re-ranks the top
        shortlist (clients.store.reranked)."""
        query = np.asarray(query, dtype=np.float32)
        if rerank is not None:

            def shortlist(limit: int) -> tuple[list[Hit], np.ndarray]:
                indices, scores = self._top(query[None, :], limit, where, approximate)
                hits = [self._hit(int(i), float(s)) for i, s in zip(indices[0], scores[0], strict=True)]
                return hits, self.embeddings[indices[0]]

            return reranked(shortlist, self.neighbours, query, top_k, rerank)
        return self.search_many(query[None, :], top_k, where, approximate)[0]

    def search_many(
        self, queries: np.ndarray, top_k: int = 5, where: tuple[Condition, ...] = (), approximate: bool = False
    ) -> list[list[Hit]]:
        """`search` for a batch of queries [B, dim] at once (one matrix product instead of B)."""
        queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        indices, scores = self._top(queries, top_k, where, approximate)
        return [
            [self._hit(int(i), float(score)) for i, score in zip(row, row_scores, strict=True)]
            for row, row_scores in zip(indices, scores, strict=True)
        ]

    def _top(
        self, queries: np.ndarray, top_k: int, where: tuple[Condition, ...], approximate: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        """Row indices and scores [B, <= top_k] of the best rows passing `where`, best first."""
        rows = np.flatnonzero(self.mask(where)) if where else None
        if len(self) == 0 or (rows is not None and len(rows) == 0) or top_k <= 0:
            return np.zeros((len(queries), 0), np.int64), np.zeros((len(queries), 0), np.float32)
        if approximate and rows is None:
            if self._index is None:
                self._index = ProjectedIndex(self.embeddings)
            indices, scores = self._index.search(queries, top_k)
        elif rows is not None:
            indices, scores = exact_top_k(self.embeddings[rows], queries, top_k)
            indices = rows[indices]
        else:
            indices, scores = exact_top_k(self.embeddings, queries, top_k)
        return indices, scores

    def _hit(self, index: int, score: float) -> Hit:
        row = self.rows[index]
        return Hit(self.paths[index], self.labels[index], score, row["id"], row)

    def mask(self, where: tuple[Condition, ...]) -> np.ndarray:
        """Rows passing every condition, as numpy comparisons over per-field columns (the same
        semantics as `clients.metadata.matches`: a missing value only passes `!=`)."""
        keep = np.ones(len(self), dtype=bool)
        for condition in where:
            if condition.numeric:
                values = self._column(condition.field, numeric=True)
                with np.errstate(invalid="ignore"):
                    passed = {
                        "=": values == condition.value, "!=": ~(values == condition.value),
                        "<": values < condition.value, "<=": values <= condition.value,
                        ">": values > condition.value, ">=": values >= condition.value,
                    }[condition.op]  # fmt: skip
            else:
                values = self._column(condition.field, numeric=False)
                passed = values == condition.value if condition.op == "=" else values != condition.value
            keep &= passed
        return keep

    def _column(self, name: str, numeric: bool) -> np.ndarray:
        key = f"{name}:{'n' if numeric else 's'}"
        if key not in self._columns:
            raw = [row.get(name) for row in self.rows]
            if numeric:
                column = np.array(
                    [float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else np.nan for v in raw]
                )
            else:
                column = np.array([None if v is None else str(v) for v in raw], dtype=object)
            self._columns[key] = column
        return self._columns[key]

    def save(self, path: str | Path) -> None:
        """Replaces the file at `path` atomically: readers see the old or the new gallery."""
        metadata = {"format": FORMAT, "model_version": self.model_version, "dim": self.dim, "created": self.created}
        if self.calibration is not None:
            metadata["calibration"] = self.calibration
        arrays = {
            "embeddings": self.embeddings,
            "paths": np.array(self.paths, dtype=str),
            "labels": np.array(self.labels, dtype=str),
            "rows": np.array([json.dumps(row) for row in self.rows], dtype=str),
            "metadata": np.array(json.dumps(metadata)),
        }
        write_file_atomic(path, lambda f: np.savez(f, **arrays))

    @classmethod
    def load(cls, path: str | Path) -> Gallery:
        path = Path(path)
        if not path.is_file():
            raise ClientError(f"no gallery at {path}: build one first (make gallery IMAGES=DIR)")
        try:
            with np.load(path, allow_pickle=False) as data:
                metadata = json.loads(str(data["metadata"]))
                embeddings = data["embeddings"]
                paths, labels = data["paths"].tolist(), data["labels"].tolist()
                rows = [json.loads(row) for row in data["rows"].tolist()] if "rows" in data.files else []
            version, dim, created = metadata["model_version"], int(metadata["dim"]), metadata["created"]
        except (OSError, EOFError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as error:
            raise ClientError(f"{path} is not a readable gallery ({type(error).__name__}); rebuild it") from None
        if metadata.get("format") not in (FORMAT, *OLDER_FORMATS):
            raise ClientError(f"{path} is not a gallery of this project (format {metadata.get('format')!r})")
        if embeddings.dtype != np.float32 or embeddings.shape != (len(paths), dim) or len(labels) != len(paths):
            raise ClientError(f"{path} is inconsistent (shape {embeddings.shape}, {len(paths)} paths); rebuild it")
        if rows and (len(rows) != len(paths) or not all(isinstance(r, dict) for r in rows)):
            raise ClientError(f"{path} is inconsistent ({len(rows)} metadata rows, {len(paths)} paths); rebuild it")
        calibration = metadata.get("calibration") if isinstance(metadata.get("calibration"), dict) else None
        return cls(version, dim, embeddings, paths, labels, created, path=path, rows=rows, calibration=calibration)
