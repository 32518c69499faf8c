"""Re-ranking through the search API (search_service/web.py, core/rerank.py), on a hand-made
gallery where it must change the order: a decoy row is the example's nearest, but its look-alikes
are far from the example, while a tight cluster of rows a little farther away look like one
another. "More like this" (no photo, so no model server is needed) with rerank=true must put the
cluster first, the same in the file store and in Qdrant Edge, and exactly as the store computes it."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests

from clients.gallery import Gallery
from core.rerank import DEFAULT
from tests.clients.test_end_to_end import CLIENT_PY
from tests.conftest import ROOT
from tests.search_service.helpers import start_page, stop

RERANK = True  # search_service.web.RERANK, the measured default (that module needs the client venv)

DIM = 16
NO_SERVER = "http://127.0.0.1:9/predictions/cars"  # nothing listens: these searches embed no photo


def decoy_gallery(path: Path) -> Gallery:
    """Row 0: the example; 1: the decoy (cos 0.90 to it); 2-13: the cluster (~0.85); 14-25: the
    decoy's look-alikes (0.50); 26-45: random rows. The decoy falls behind the cluster for every
    setting bench/rerank_params.py tries."""
    rng = np.random.default_rng(0)
    axis = np.eye(DIM, dtype=np.float32)
    off_example = 1 - axis[0]

    def noisy(vector: np.ndarray) -> np.ndarray:
        return vector + 0.05 * rng.normal(size=DIM) * off_example

    rows = [axis[0], 0.9 * axis[0] + 0.436 * axis[1]]
    rows += [noisy(0.85 * axis[0] + 0.52 * axis[2]) for _ in range(12)]
    rows += [noisy(0.5 * axis[0] + 0.866 * axis[1]) for _ in range(12)]
    rows += list(rng.normal(size=(20, DIM)))
    vectors = np.asarray(rows, dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    makes = ["Audi", "BMW"] + ["Audi"] * 12 + ["BMW"] * 12 + ["Dodge"] * 20
    labels = [f"{i:03d}_{make}_Model{i % 7}_Coupe_2012" for i, make in enumerate(makes)]
    gallery = Gallery("hand-made", DIM, path=path)
    gallery.add(vectors, [f"/nowhere/{i:02d}.jpg" for i in range(len(rows))], labels)
    return gallery


@pytest.fixture(scope="module")
def gallery(tmp_path_factory) -> Gallery:
    return decoy_gallery(tmp_path_factory.mktemp("rerank") / "gallery.npz")


@pytest.fixture(scope="module")
def pages(gallery) -> Iterator[dict[str, str]]:
    """The gallery in the file store and in Qdrant Edge (copied by clients/copy_store.py), a page on each."""
    edge = f"qdrant://{gallery.path.parent / 'edge'}"
    copied = subprocess.run([str(CLIENT_PY), "clients/copy_store.py", "--from", str(gallery.path), "--to", edge],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert copied.returncode == 0, copied.stderr
    started = {kind: start_page(store, NO_SERVER) for kind, store in (("file", gallery.path), ("edge", edge))}
    try:
        yield {kind: base for kind, (_, base) in started.items()}
    finally:
        for process, _ in started.values():
            stop(process)


def similar(base: str, row: str, **params) -> dict:
    answer = requests.get(f"{base}/similar/{row}", params={"k": 10, **params}, timeout=60)
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_rerank_moves_the_decoy_behind_the_cluster_in_every_store(pages, gallery):
    example, decoy = gallery.rows[0]["id"], gallery.rows[1]["id"]
    expected = gallery.recommend([example], top_k=10, rerank=DEFAULT)  # the store's own re-rank
    raw_cosine = {row["id"]: float(gallery.embeddings[i] @ gallery.embeddings[0]) for i, row in enumerate(gallery.rows)}
    answers = {}
    for kind, base in pages.items():
        plain, reranked = similar(base, example, rerank="false"), similar(base, example, rerank="true")
        assert plain["rerank"] is False and "rerank_score" not in plain["results"][0]
        assert plain["results"][0]["id"] == decoy
        ids = [r["id"] for r in reranked["results"]]
        assert reranked["rerank"] is True and ids == [h.id for h in expected], kind
        assert ids[0] != decoy and set(ids[:3]) <= {row["id"] for row in gallery.rows[2:14]}  # the cluster first
        assert decoy in [r["id"] for r in similar(base, example, k=40, rerank="true")["results"][10:]]  # moved down
        scores = [r["rerank_score"] for r in reranked["results"]]
        assert scores == sorted(scores, reverse=True) and scores == pytest.approx([h.rerank_score for h in expected],
                                                                                  abs=1e-4)  # fmt: skip
        for result in reranked["results"]:  # `score` stays the raw cosine: levels and floors keep their meaning
            assert result["score"] == pytest.approx(raw_cosine[result["id"]], abs=1e-4)
        as_search = requests.post(f"{base}/search", params={"k": 10, "positive": example, "rerank": 1}, timeout=60)
        assert [r["id"] for r in as_search.json()["results"]] == ids
        assert similar(base, example)["rerank"] is RERANK  # the service's default
        answers[kind] = [(r["id"], r["score"], r["rerank_score"]) for r in reranked["results"]]
    assert answers["file"] == answers["edge"]


def test_rerank_composes_with_filters_groups_and_score_floors(pages, gallery):
    example = gallery.rows[0]["id"]
    for base in pages.values():
        everything = similar(base, example, k=40, rerank="true")["results"]
        bmw = similar(base, example, rerank="true", where="make=BMW")["results"]
        assert {r["make"] for r in bmw} == {"BMW"} and bmw[0]["rerank_score"] is not None
        grouped = similar(base, example, k=3, rerank="true", group_by="make")["results"]
        firsts = {}
        for result in everything:  # the best of each make in the re-ranked order
            firsts.setdefault(result["make"], result["id"])
        assert [r["id"] for r in grouped] == list(firsts.values())[:3]
        floor = 0.6
        kept = similar(base, example, k=40, rerank="true", min_score=floor)["results"]
        assert [r["id"] for r in kept] == [r["id"] for r in everything if r["score"] >= floor]  # raw score, new order
        assert [r["rank"] for r in kept] == list(range(1, len(kept) + 1))


@pytest.mark.parametrize("value", ["maybe", "2", ""])
def test_a_bad_rerank_value_is_a_400_json_error(pages, gallery, value):
    example = gallery.rows[0]["id"]
    for base in pages.values():
        for response in (
            requests.get(f"{base}/similar/{example}", params={"rerank": value}, timeout=60),
            requests.post(f"{base}/search", params={"rerank": value, "positive": example}, timeout=60),
        ):
            assert response.status_code == 400, response.text
            assert response.headers["content-type"] == "application/json" and "rerank" in response.json()["error"]


def test_the_default_comes_from_the_command_line_and_api_info_says_it(pages, gallery):
    info = requests.get(f"{pages['file']}/api/info", timeout=60).json()
    assert info["rerank"] == {"default": RERANK, "k": DEFAULT.k, "alpha": DEFAULT.alpha, "shortlist": DEFAULT.shortlist}
    process, base = start_page(gallery.path, NO_SERVER, "--no-rerank")
    try:
        assert requests.get(f"{base}/api/info", timeout=60).json()["rerank"]["default"] is False
        example = gallery.rows[0]["id"]
        assert similar(base, example)["rerank"] is False
        assert similar(base, example) == similar(base, example, rerank="false")
        assert similar(base, example)["results"][0]["id"] == gallery.rows[1]["id"]
        assert similar(base, example, rerank="true")["rerank"] is True
    finally:
        stop(process)
