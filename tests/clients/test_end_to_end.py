"""Clients through a real TorchServe, run with the thin client venv (.venv-client) as a user would."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from clients.gallery import Gallery
from tests.conftest import ROOT
from serve.torchserve import free_ports
from train.synthetic import generate

CLIENT_PY = ROOT / ".venv-client" / "bin" / "python"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CLIENT_PY.exists(), reason="the thin client venv is missing: make client-install"),
]


def client(script: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(CLIENT_PY), f"clients/{script}.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


def build(server, images: Path, store: str, *extra: str) -> dict:
    result = client("build_gallery", str(images), "--store", store, "--url", server["url"], "--json", *extra)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout)


def query(server, image: Path, store: str, *extra: str) -> subprocess.CompletedProcess:
    return client("query", str(image), "--gallery", store, "--url", server["url"], *extra)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("gallery") / "images", colours=3, shapes=2, per_class=5, size=48)


@pytest.fixture(scope="module")
def gallery(server, images, tmp_path_factory) -> str:
    store = str(tmp_path_factory.mktemp("store") / "gallery.npz")
    summary = build(server, images, store)
    assert summary["added"] == summary["total"] == 30 and summary["skipped"] == []
    return store


def near_duplicate(source: Path, out: Path) -> Path:
    """The same picture, re-encoded smaller: its original must be the nearest gallery item."""
    with Image.open(source) as image:
        image.resize((44, 44)).save(out, quality=80)
    return out


def test_query_ranks_the_original_of_a_near_duplicate_first(server, images, gallery, tmp_path):
    original = sorted((images / "synthetic_green_square").iterdir())[3]
    result = query(server, near_duplicate(original, tmp_path / "copy.jpg"), gallery, "--json", "--top-k", "3")
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["model_version"] == Gallery.load(gallery).model_version
    assert [r["rank"] for r in answer["results"]] == [1, 2, 3]
    best = answer["results"][0]
    assert best["path"] == str(original.resolve()) and best["label"] == "synthetic_green_square"
    assert best["score"] > 0.95


def test_table_and_picture(server, images, gallery, tmp_path):
    result = query(
        server, sorted((images / "synthetic_red_circle").iterdir())[0], gallery, "--show", str(tmp_path / "q.png")
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("Most similar to") and "rank" in lines[1] and len(lines) == 2 + 5 + 1
    assert Image.open(tmp_path / "q.png").size[0] == 6 * 208  # query + 5 results


def test_build_resumes_and_adds_only_what_is_missing(server, images, tmp_path):
    partial = tmp_path / "images"
    for name in ("synthetic_red_circle", "synthetic_red_square"):
        shutil.copytree(images / name, partial / name)
    store = str(tmp_path / "g.npz")
    assert build(server, partial, store)["added"] == 10
    shutil.copytree(images / "synthetic_blue_circle", partial / "synthetic_blue_circle")
    summary = build(server, partial, store)
    assert (summary["added"], summary["already_present"], summary["total"]) == (5, 10, 15)


def test_killed_build_leaves_a_loadable_gallery_and_a_rerun_completes(server, images, tmp_path):
    store = tmp_path / "g.npz"
    process = subprocess.Popen(
        [str(CLIENT_PY), "clients/build_gallery.py", str(images), "--store", str(store), "--url", server["url"],
         "--concurrency", "1", "--checkpoint-every", "2"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not store.exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    saved = len(Gallery.load(store))  # whatever was checkpointed, the file is whole
    assert 2 <= saved <= 30
    summary = build(server, images, str(store))
    assert summary["total"] == 30 and summary["already_present"] == saved


def test_another_model_version_is_refused(server, images, gallery, tmp_path):
    foreign = Gallery.load(gallery)
    foreign.model_version = "f" * 64
    foreign.save(tmp_path / "foreign.npz")
    image = sorted((images / "synthetic_red_circle").iterdir())[0]
    for result in (
        query(server, image, str(tmp_path / "foreign.npz")),
        client("build_gallery", str(images), "--store", str(tmp_path / "foreign.npz"), "--url", server["url"]),
    ):
        assert result.returncode == 2
        assert result.stderr.count("\n") == 1 and "but the gallery was built with ffffffffffff" in result.stderr


def test_qdrant_embedded_store_returns_the_same_top_k(server, images, gallery, tmp_path):
    store = f"qdrant://{tmp_path / 'qdrant'}?collection=cars"
    assert build(server, images, store)["total"] == 30
    assert (tmp_path / "qdrant" / "cars" / "shard" / "edge_config.json").is_file()  # a Qdrant Edge shard
    assert build(server, images, store)["added"] == 0  # resumable there too
    image = sorted((images / "synthetic_blue_square").iterdir())[2]
    from_file = json.loads(query(server, image, gallery, "--json").stdout)["results"]
    from_qdrant = json.loads(query(server, image, store, "--json").stdout)["results"]
    assert [r["path"] for r in from_qdrant] == [r["path"] for r in from_file]
    assert [r["score"] for r in from_qdrant] == pytest.approx([r["score"] for r in from_file], abs=1e-3)


def test_rerank_orders_as_the_store_re_ranks_and_keeps_raw_scores(server, images, gallery):
    from clients.api import EmbeddingClient
    from core.rerank import DEFAULT

    image = sorted((images / "synthetic_red_circle").iterdir())[1]
    result = query(server, image, gallery, "--json", "--rerank", "--top-k", "8")
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    vector = EmbeddingClient(server["url"]).embed(image.read_bytes()).vector
    itself = str(image.resolve())
    expected = [hit for hit in Gallery.load(Path(gallery)).search(vector, 9, rerank=DEFAULT) if hit.path != itself][:8]
    assert answer["rerank"] is True
    assert [r["path"] for r in answer["results"]] == [hit.path for hit in expected]
    assert [r["score"] for r in answer["results"]] == pytest.approx([hit.score for hit in expected], abs=1e-3)
    assert all(r["rerank_score"] is not None for r in answer["results"])
    assert json.loads(query(server, image, gallery, "--json").stdout)["rerank"] is False


def test_client_errors_are_one_line_and_exit_2(server, images, gallery, tmp_path):
    image = sorted((images / "synthetic_red_circle").iterdir())[0]
    (tmp_path / "notes.jpg").write_text("not an image")
    down = f"http://127.0.0.1:{free_ports(1)[0]}/predictions/cars"
    cases = {
        "cannot reach the server": client("query", str(image), "--gallery", gallery, "--url", down),
        "cannot use": query(server, tmp_path / "notes.jpg", gallery),
        "no gallery at": query(server, image, str(tmp_path / "missing.npz")),
        "image not found": query(server, tmp_path / "missing.jpg", gallery),
        "image directory not found": client("build_gallery", str(tmp_path / "nothing"), "--url", server["url"]),
        "no model at": client(
            "query", str(image), "--gallery", gallery, "--url", server["url"].replace("cars", "bikes")
        ),
        "invalid server URL": client("query", str(image), "--gallery", gallery, "--url", "localhost:8080/x"),
    }
    for message, result in cases.items():
        assert result.returncode == 2, (message, result.stderr)
        assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1 and message in result.stderr


def test_unreadable_files_are_skipped_and_reported(server, images, tmp_path):
    folder = tmp_path / "images" / "mixed"
    shutil.copytree(images / "synthetic_red_circle", folder)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    summary = build(server, tmp_path / "images", str(tmp_path / "g.npz"))
    assert summary["added"] == 5 and [Path(s["path"]).name for s in summary["skipped"]] == ["broken.jpg"]


def test_clients_import_no_torch():
    modules = "clients.api, clients.gallery, clients.build_gallery, clients.query, clients.picture"
    heavy = "{'torch', 'torchvision', 'quaterion', 'quaterion_models'}"
    code = f"import sys, {modules}; print(sorted({{m.split('.')[0] for m in sys.modules}} & {heavy}))"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stderr
