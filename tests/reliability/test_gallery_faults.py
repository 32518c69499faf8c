"""Gallery builds killed at random moments lose nothing; broken gallery files are refused clearly.
The clients run from the thin client venv (.venv-client), as users run them."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from clients.gallery import Gallery
from tests.clients.test_end_to_end import CLIENT_PY, build, client, query
from tests.conftest import ROOT
from train.synthetic import generate

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CLIENT_PY.exists(), reason="the thin client venv is missing: make client-install"),
]


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("faults") / "images", colours=3, shapes=2, per_class=6, size=48)


@pytest.fixture(scope="module")
def clean(server, images, tmp_path_factory) -> Gallery:
    """The same images built in one uninterrupted run: what every resumed build must equal."""
    store = tmp_path_factory.mktemp("clean") / "g.npz"
    build(server, images, str(store))
    return Gallery.load(store)


def start_build(server, images: Path, store: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [str(CLIENT_PY), "clients/build_gallery.py", str(images), "--store", str(store), "--url", server["url"],
         "--concurrency", "2", "--checkpoint-every", "3", "--json"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def test_builds_killed_at_random_moments_keep_a_whole_gallery_and_a_rerun_completes(server, images, clean, tmp_path):
    store = tmp_path / "g.npz"
    rows = [i for i, label in enumerate(clean.labels) if label == "synthetic_red_circle"]
    previous = Gallery(clean.model_version, clean.dim)  # a previous, complete gallery of 6 images
    previous.add(clean.embeddings[rows], [clean.paths[i] for i in rows], [clean.labels[i] for i in rows])
    previous.save(store)
    seen = previous.paths
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    for round_ in range(4):
        process = start_build(server, images, store)
        delay = rng.uniform(0.0, 4.0)
        time.sleep(delay)  # anywhere: start-up, probing, embedding, saving
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        gallery = Gallery.load(store)  # never torn: the old file or a complete checkpoint
        assert set(seen) <= set(gallery.paths), f"seed {seed}, round {round_}: rows were lost"
        assert len(set(gallery.paths)) == len(gallery.paths), f"seed {seed}: duplicated rows"
        seen = gallery.paths
        print(f"seed {seed}, round {round_}: killed after {delay:.2f} s, gallery has {len(seen)} images")
    summary = build(server, images, str(store))
    assert summary["total"] == len(clean) == 36 and summary["already_present"] == len(seen)
    done = Gallery.load(store)
    order = np.argsort(done.paths)
    expected = np.argsort(clean.paths)
    assert [done.paths[i] for i in order] == [clean.paths[i] for i in expected]
    assert [done.labels[i] for i in order] == [clean.labels[i] for i in expected]
    assert np.allclose(done.embeddings[order], clean.embeddings[expected], atol=1e-5)


def broken_galleries(good: Path, tmp_path: Path) -> dict[str, tuple[Path, str]]:
    data = good.read_bytes()
    (tmp_path / "truncated.npz").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.npz").write_bytes(b"")
    np.savez(tmp_path / "foreign.npz", weights=np.zeros(3))
    gallery = Gallery.load(good)
    np.savez(
        tmp_path / "other-format.npz", embeddings=gallery.embeddings, paths=np.array(gallery.paths),
        labels=np.array(gallery.labels),
        metadata=np.array(json.dumps({"format": "someone-else/7", "model_version": "x", "dim": 1, "created": ""})),
    )  # fmt: skip
    (tmp_path / "pickle.npz").write_bytes(b"\x80\x04\x95" + b"\0" * 64)  # a pickle, never unpickled
    return {
        "truncated": (tmp_path / "truncated.npz", "is not a readable gallery"),
        "empty": (tmp_path / "empty.npz", "is not a readable gallery"),
        "foreign npz": (tmp_path / "foreign.npz", "is not a readable gallery"),
        "other format": (tmp_path / "other-format.npz", "is not a gallery of this project"),
        "pickle": (tmp_path / "pickle.npz", "is not a readable gallery"),
    }


def test_truncated_or_foreign_gallery_files_are_refused_and_left_alone(server, images, clean, tmp_path):
    good = tmp_path / "good.npz"
    clean.save(good)
    image = sorted((images / "synthetic_red_circle").iterdir())[0]
    for name, (path, message) in broken_galleries(good, tmp_path).items():
        before = path.read_bytes()
        for result in (
            query(server, image, str(path)),
            client("build_gallery", str(images), "--store", str(path), "--url", server["url"]),
        ):
            assert result.returncode == 2, (name, result.stderr)
            assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, (name, result.stderr)
            assert message in result.stderr, (name, result.stderr)
        assert path.read_bytes() == before, f"{name}: a refused gallery must not be overwritten"


def edge_paths(store: str) -> list[str]:
    """The paths a Qdrant Edge gallery holds, read by the client venv (the engine lives there)."""
    code = (
        "import json, sys; from clients.store import open_store; g = open_store(sys.argv[1]); "
        "print(json.dumps(sorted(g.known_paths()) if len(g) else []))"
    )
    result = subprocess.run([str(CLIENT_PY), "-c", code, store], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout)


def test_killed_builds_into_the_qdrant_edge_store_lose_nothing_and_a_rerun_completes(server, images, clean, tmp_path):
    store = f"qdrant://{tmp_path / 'edge'}?collection=cars"
    seen: list[str] = []
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    for round_ in range(3):
        process = subprocess.Popen(
            [str(CLIENT_PY), "clients/build_gallery.py", str(images), "--gallery", store, "--url", server["url"],
             "--concurrency", "2", "--checkpoint-every", "3", "--json"],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        delay = rng.uniform(0.5, 4.0)
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        if not (tmp_path / "edge" / "cars").exists():
            continue  # killed before the first image was embedded: nothing created yet
        paths = edge_paths(store)  # reopens after a kill: no stale lock, no torn shard
        assert set(seen) <= set(paths), f"seed {seed}, round {round_}: rows were lost"
        seen = paths
        print(f"seed {seed}, round {round_}: killed after {delay:.2f} s, gallery has {len(seen)} images")
    summary = build(server, images, store)
    assert summary["total"] == len(clean) == 36 and summary["already_present"] == len(seen)
    assert edge_paths(store) == sorted(clean.paths)
