"""Where Quaterion's encoder cache lives, keyed by everything that changes the cached embeddings.

Quaterion reuses a cache `save_dir` whenever the directory exists, so a changed dataset, split,
preprocessing, backbone or weights would silently train on stale embeddings. Each cache directory
is therefore named by a fingerprint of all of these, and is published atomically (filled under a
temporary name, renamed once Quaterion has written it) so a killed run leaves no half cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from train.data import ImageList


def images_signature(images: ImageList) -> list[list[Any]]:
    """Path, size and mtime of every image with its class: cheap, and any edit changes it."""
    rows = []
    for path, name in zip(images.paths, images.classes, strict=False):
        stat = os.stat(path)
        rows.append([os.path.realpath(path), stat.st_size, stat.st_mtime_ns, name])
    return rows


def cache_fingerprint(
    *,
    encoder: dict[str, Any],
    preprocessing: dict[str, Any],
    train: ImageList,
    val: ImageList,
    augmentation: dict[str, Any] | None = None,
) -> str:
    """sha256 of the encoder identity, preprocessing, the exact train/val images (in order) and,
    when the training set holds augmented copies, how they were drawn."""
    payload = {
        "encoder": encoder,
        "preprocessing": preprocessing,
        "train": images_signature(train),
        "val": images_signature(val),
    }
    if augmentation:  # absent otherwise, so caches filled before this option keep their names
        payload["augmentation"] = augmentation
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


class CacheDirectory:
    """A fingerprinted cache directory: `ready` if a finished cache exists, else a fill target."""

    def __init__(self, root: str | Path, fingerprint: str):
        self.fingerprint = fingerprint
        self.final = Path(root) / fingerprint[:20]
        self.ready = self.final.is_dir()
        self.save_dir = self.final if self.ready else self.final.with_name(f"{self.final.name}.partial-{os.getpid()}")

    def publish(self) -> None:
        """Renames a freshly filled cache to its final name (a no-op if it was reused)."""
        if self.ready or not self.save_dir.is_dir():
            return
        try:
            os.rename(self.save_dir, self.final)
        except OSError:  # another run published the same cache first: keep theirs
            shutil.rmtree(self.save_dir, ignore_errors=True)
        self.ready = True


class PublishCache(pl.Callback):
    """Publishes the cache when training starts, i.e. right after Quaterion has filled and saved it;
    notes when that was, so run.json can say how the time divides between the cache and the epochs."""

    def __init__(self, cache: CacheDirectory):
        self.cache = cache
        self.filled_at: float | None = None  # time.perf_counter() when the first epoch could start

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.filled_at = time.perf_counter()
        self.cache.publish()
