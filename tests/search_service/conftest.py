"""Fixtures of the search-service tests: six car "models" and a gallery of them, built through a
real TorchServe (the session's `server`)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.clients.test_end_to_end import build
from tests.search_service.helpers import LABELS
from train.synthetic import generate


@pytest.fixture(scope="module")
def cars(tmp_path_factory) -> Path:
    """Six "models" (synthetic colour x shape classes renamed as car labels), 6 images each; the
    last image of each is held out of the gallery, for queries."""
    source = generate(tmp_path_factory.mktemp("web-src") / "images", colours=3, shapes=2, per_class=6, size=48)
    root = tmp_path_factory.mktemp("web-cars")
    classes = sorted(p for p in source.iterdir() if p.is_dir())
    for label, folder in zip(LABELS, classes, strict=True):
        images = sorted(folder.iterdir())
        shutil.copytree(folder, root / "gallery" / label, ignore=shutil.ignore_patterns(images[-1].name))
        (root / "held-out" / label).mkdir(parents=True)
        shutil.copy2(images[-1], root / "held-out" / label / images[-1].name)
    return root


@pytest.fixture(scope="module")
def gallery(server, cars, tmp_path_factory) -> Path:
    store = tmp_path_factory.mktemp("web-gallery") / "gallery.npz"
    summary = build(server, cars / "gallery", str(store))
    assert summary["total"] == 30
    return store
