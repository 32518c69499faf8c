"""The gallery file and its search, without a server."""

import numpy as np
import pytest

from clients.api import ClientError
from clients.gallery import Gallery
from clients.store import open_store


def random_gallery(n=50, dim=8, seed=0, version="v1"):
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    gallery = Gallery(version, dim)
    gallery.add(vectors, [f"/img/{i}.jpg" for i in range(n)], [f"class{i % 5}" for i in range(n)])
    return gallery, vectors


def test_save_load_round_trip(tmp_path):
    gallery, vectors = random_gallery()
    gallery.save(tmp_path / "g.npz")
    loaded = Gallery.load(tmp_path / "g.npz")
    assert (loaded.model_version, loaded.dim, loaded.created) == ("v1", 8, gallery.created)
    assert np.array_equal(loaded.embeddings, vectors) and loaded.embeddings.dtype == np.float32
    assert loaded.paths == gallery.paths and loaded.labels == gallery.labels


def test_search_is_exact_cosine_top_k():
    gallery, vectors = random_gallery(n=200)
    query = vectors[7] + 0.1 * vectors[3]
    query /= np.linalg.norm(query)
    hits = gallery.search(query, top_k=10)
    expected = np.argsort(-(vectors @ query))[:10]
    assert [h.path for h in hits] == [f"/img/{i}.jpg" for i in expected]
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert len(gallery.search(query, top_k=1000)) == 200
    assert Gallery("v1", 8).search(query) == []


def test_a_failed_save_keeps_the_previous_gallery(tmp_path, monkeypatch):
    path = tmp_path / "g.npz"
    random_gallery(n=10)[0].save(path)
    bigger = random_gallery(n=20)[0]

    def crash(*args, **kwargs):
        raise KeyboardInterrupt  # killed mid-write

    monkeypatch.setattr(np, "savez", crash)
    with pytest.raises(KeyboardInterrupt):
        bigger.save(path)
    assert len(Gallery.load(path)) == 10
    assert [p.name for p in tmp_path.iterdir()] == ["g.npz"]  # no temp file left behind


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "no gallery at"),
        (b"", "is not a readable gallery"),
        (b"plain text, not a gallery", "is not a readable gallery"),
    ],
)
def test_missing_or_foreign_files_are_refused(tmp_path, content, message):
    path = tmp_path / "g.npz"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ClientError, match=message):
        Gallery.load(path)


def test_truncated_and_foreign_npz_are_refused(tmp_path):
    path = tmp_path / "g.npz"
    random_gallery()[0].save(path)
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(ClientError, match="is not a readable gallery"):
        Gallery.load(path)
    np.savez(tmp_path / "other.npz", weights=np.zeros(3))
    with pytest.raises(ClientError, match="is not a readable gallery"):
        Gallery.load(tmp_path / "other.npz")


def test_versions_do_not_mix(tmp_path):
    gallery = random_gallery()[0]
    gallery.check_version("v1", "server")
    with pytest.raises(ClientError, match="serves model v2.*built with v1"):
        gallery.check_version("v2", "server")


def test_open_store_creates_only_when_asked(tmp_path):
    with pytest.raises(ClientError, match="no gallery at"):
        open_store(str(tmp_path / "new.npz"))
    created = open_store(str(tmp_path / "new.npz"), create=("v9", 4))
    assert (created.model_version, created.dim, len(created)) == ("v9", 4, 0)


def test_updates_and_deletes_are_written_through_and_reload(tmp_path):
    path = tmp_path / "g.npz"
    gallery, _ = random_gallery()
    gallery.save(path)
    stored = Gallery.load(path)
    first, second = stored.rows[0]["id"], stored.rows[1]["id"]
    assert stored.update(first, {"price": 9000, "listing": "L1"})["price"] == 9000
    assert stored.delete([second, "no-such-id"]) == 1
    reloaded = Gallery.load(path)  # nothing left in memory only
    assert len(reloaded) == 49 and reloaded.get(second) is None
    assert reloaded.get(first)["listing"] == "L1" and reloaded.get(first)["price"] == 9000
    query = stored.embeddings[0]
    assert [h.id for h in reloaded.search(query, 3)] == [h.id for h in stored.search(query, 3)]
    assert reloaded.update(first, {"listing": None}) is not None and "listing" not in Gallery.load(path).get(first)


def test_rerank_reorders_the_raw_shortlist_and_keeps_raw_scores():
    """The file store's re-rank is core/rerank.py on its own top `shortlist` (filters applied),
    each shortlisted row augmented with its nearest other rows of the whole gallery (filters not
    applied): scores stay raw cosines, rerank_score orders; past the shortlist the raw order follows."""
    from clients.metadata import parse_where
    from core.rerank import RerankSettings, rerank

    gallery, vectors = random_gallery(n=200, dim=8)
    settings = RerankSettings(k=3, alpha=3.0, shortlist=20)
    changed = False
    for q in range(10):
        query = vectors[q]
        for where in ((), (parse_where("label!=class1"),)):
            raw = gallery.search(query, 20, where)
            rows = [int(h.path[5:-4]) for h in raw]
            around = []
            for row in rows:  # each row's 3 most similar others in the gallery, filter or not
                similarity = vectors @ vectors[row]
                similarity[row] = -np.inf
                around.append(vectors[np.argsort(-similarity, kind="stable")[:3]])
            order, scores = rerank(query, vectors[rows], np.stack(around), settings)
            hits = gallery.search(query, 12, where, rerank=settings)
            assert [h.id for h in hits] == [raw[i].id for i in order[:12]]
            assert [h.rerank_score for h in hits] == pytest.approx(scores[:12].tolist())
            assert [h.score for h in hits] == [raw[i].score for i in order[:12]]  # raw cosine kept
            assert all(h.label != "class1" for h in hits) or not where
            changed |= [h.id for h in hits] != [h.id for h in raw[:12]]
            longer = gallery.search(query, 30, where, rerank=settings)  # top_k past the shortlist
            assert {h.id for h in longer[:20]} == {h.id for h in raw}
            assert [h.id for h in longer[20:]] == [h.id for h in gallery.search(query, 30, where)[20:]]
            assert all(h.rerank_score is None for h in longer[20:])
    assert changed
    assert all(h.rerank_score is None for h in gallery.search(vectors[0], 5))  # not asked: not re-ranked
