"""bench/rerank_cost.py: it times plain, cold and warm re-ranked searches of the file store, and
the neighbours a cold search looks up are kept for the warm one."""

from __future__ import annotations

import json

from bench.rerank_cost import main, random_gallery
from core.rerank import DEFAULT


def test_cold_and_warm_searches_are_timed_and_the_neighbours_are_kept(tmp_path, capsys):
    rows = main(["--sizes", "60,120", "--dim", "16", "--queries", "2", "--json", str(tmp_path / "cost.json")])
    assert [row["rows"] for row in rows] == [60, 120]
    assert all(row["plain_ms"] > 0 and row["reranked_cold_ms"] > 0 and row["reranked_warm_ms"] > 0 for row in rows)
    assert "reranked_cold_ms" in capsys.readouterr().out
    assert json.loads((tmp_path / "cost.json").read_text())["settings"] == DEFAULT.as_dict()
    gallery = random_gallery(50, 8)
    hits = gallery.search(gallery.embeddings[0], 5, rerank=DEFAULT)
    assert len(hits) == 5 and len(gallery._nearest) == 50  # every shortlisted row (all 50) looked up once
    gallery.add(gallery.embeddings[:1] * -1, ["new.jpg"], ["car"])
    assert gallery._nearest == {}  # a write forgets them: the gallery's neighbourhoods changed
