"""The file store: embeddings of known cars in one local .npz file, searched by exact cosine top-k.

One file holds a float32 matrix [N, dim] with, per row, the image path and label, plus metadata
(model version, dimension, creation time). It loads without pickle in milliseconds, is replaced
atomically (temp file + rename) on every `add` when the gallery has a `path`, and refuses to
mix embeddings of different model versions.
`search` is exact brute force by default; `approximate=True` uses a `ProjectedIndex` (built once
per gallery in memory, exact scores, recall measured by bench/gallery_search.py) for long-lived
callers with large galleries.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from clients.api import ClientError
from clients.search import ProjectedIndex, exact_top_k
from clients.store import Hit, version_mismatch
from core.files import write_file_atomic

FORMAT = "cars-gallery/1"


@dataclass
class Gallery:
    model_version: str
    dim: int
    embeddings: np.ndarray = field(default=None)  # float32 [N, dim]
    paths: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    created: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    path: Path | None = None  # where `add` writes through; None: in memory until `save`
    _index: ProjectedIndex | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.embeddings is None:
            self.embeddings = np.zeros((0, self.dim), dtype=np.float32)

    def __len__(self) -> int:
        return len(self.paths)

    def add(self, vectors: np.ndarray, paths: list[str], labels: list[str]) -> None:
        """Appends rows; with a `path`, the file is rewritten atomically before this returns."""
        vectors = np.asarray(vectors, dtype=np.float32).reshape(-1, self.dim)
        known = {path: row for row, path in enumerate(self.paths)}
        replaced = [(known[p], i) for i, p in enumerate(paths) if p in known]
        for row, i in replaced:  # an image already present is replaced, as in every store
            self.embeddings[row], self.labels[row] = vectors[i], labels[i]
        new = [i for i, p in enumerate(paths) if p not in known]
        self.embeddings = np.concatenate([self.embeddings, vectors[new]])
        self.paths += [paths[i] for i in new]
        self.labels += [labels[i] for i in new]
        self._index = None
        if self.path is not None:
            self.save(self.path)

    def check_version(self, model_version: str, where: str) -> None:
        if model_version != self.model_version:
            raise version_mismatch(where, model_version, self.model_version)

    def known_paths(self) -> set[str]:
        return set(self.paths)

    def search(self, query: np.ndarray, top_k: int = 5, approximate: bool = False) -> list[Hit]:
        """Cosine top-k from best to worst (rows and queries are unit length); exact unless `approximate`."""
        return self.search_many(np.asarray(query, dtype=np.float32)[None, :], top_k, approximate)[0]

    def search_many(self, queries: np.ndarray, top_k: int = 5, approximate: bool = False) -> list[list[Hit]]:
        """`search` for a batch of queries [B, dim] at once (one matrix product instead of B)."""
        queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        if len(self) == 0:
            return [[] for _ in queries]
        if approximate:
            if self._index is None:
                self._index = ProjectedIndex(self.embeddings)
            indices, scores = self._index.search(queries, top_k)
        else:
            indices, scores = exact_top_k(self.embeddings, queries, top_k)
        return [
            [Hit(self.paths[i], self.labels[i], float(score)) for i, score in zip(row, row_scores, strict=True)]
            for row, row_scores in zip(indices, scores, strict=True)
        ]

    def save(self, path: str | Path) -> None:
        """Replaces the file at `path` atomically: readers see the old or the new gallery."""
        metadata = {"format": FORMAT, "model_version": self.model_version, "dim": self.dim, "created": self.created}
        arrays = {
            "embeddings": self.embeddings,
            "paths": np.array(self.paths, dtype=str),
            "labels": np.array(self.labels, dtype=str),
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
            version, dim, created = metadata["model_version"], int(metadata["dim"]), metadata["created"]
        except (OSError, EOFError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as error:
            raise ClientError(f"{path} is not a readable gallery ({type(error).__name__}); rebuild it") from None
        if metadata.get("format") != FORMAT:
            raise ClientError(f"{path} is not a gallery of this project (format {metadata.get('format')!r})")
        if embeddings.dtype != np.float32 or embeddings.shape != (len(paths), dim) or len(labels) != len(paths):
            raise ClientError(f"{path} is inconsistent (shape {embeddings.shape}, {len(paths)} paths); rebuild it")
        return cls(version, dim, embeddings, paths, labels, created, path=path)

