"""Checks of the Qdrant Edge store (clients/edge_store.py) against the .npz store and the reference
filter semantics (`clients.metadata.matches`). Plain functions `check_*(tmp: Path)`, no pytest:
tests/clients/test_edge_store.py runs them in process where qdrant-edge-py is installed, and this
file as a script under the thin client venv (which has qdrant-edge-py but no pytest):

    .venv-client/bin/python tests/clients/edge_checks.py [NAME ...]
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from clients.api import ClientError
from clients.gallery import Gallery
from clients.metadata import matches, parse_where, row_id
from clients.store import open_store
from core.rerank import RerankSettings

MAKES = ("Audi", "BMW", "Volvo", "Land Rover")
CONDITIONS = [
    ["make=Audi"], ["year>=2010"], ["make!=BMW"], ["price<20000"], ["price>=20000"], ["price!=15000"],
    ["price=15000"], ["year=2010"], ["year!=2010"], ["year>2010", "make!=Volvo"], ["make=Land Rover"],
    ["model=A4 Sedan"], ["label=Volvo XC90 SUV 2007"], ["make=Audi", "price<20000", "year<=2011"],
    ["flag=True"], ["flag!=True"], ["colour=red"], ["colour!=red"], ["tags=['a', 'b']"], ["year<2009.5"],
    ["year<=2009.5"], ["make=Tesla"], ["price>1e9"],
]  # fmt: skip


def unit_rows(n: int, dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rows = rng.normal(size=(n, dim)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def rows_metadata(n: int) -> tuple[list[str], list[str], list[dict]]:
    """Paths, Stanford Cars style labels and sidecar attributes, some missing or of odd types."""
    paths = [f"/cars/{i:04d}.jpg" for i in range(n)]
    labels, extra = [], []
    for i in range(n):
        make = MAKES[i % len(MAKES)]
        model = {"Audi": "A4 Sedan", "BMW": "X5 SUV", "Volvo": "XC90 SUV", "Land Rover": "Defender SUV"}[make]
        labels.append(f"{i % 196:03d}_{make} {model} {2005 + i % 9}")
        attributes: dict = {}
        if i % 3:
            attributes["price"] = 5000 * (i % 7) + (0.5 if i % 11 == 0 else 0)  # ints and floats
        if i % 5 == 0:
            attributes["colour"] = "red" if i % 10 == 0 else "blue"
        if i % 13 == 0:
            attributes["flag"] = True  # a JSON sidecar can hold bools and lists
        if i % 17 == 0:
            attributes["tags"] = ["a", "b"]
        if i % 19 == 0:
            attributes["year"] = 2009.5  # a sidecar overriding the label's year with a float
        if i % 23 == 0:
            attributes["price"] = "unknown"  # text where other rows have numbers
        extra.append(attributes)
    return paths, labels, extra


@contextmanager
def indexing_threshold(kb: int | None):
    """Makes Edge build its HNSW graph for every segment past `kb` (1: even tiny ones)."""
    from clients import edge_store

    before = edge_store.INDEXING_THRESHOLD_KB
    edge_store.INDEXING_THRESHOLD_KB = kb
    try:
        yield
    finally:
        edge_store.INDEXING_THRESHOLD_KB = before


def build(tmp: Path, n: int = 300, dim: int = 32, hnsw: bool = False, options: str = "", name: str = "g"):
    """The same rows in an Edge gallery and an .npz gallery."""
    vectors = unit_rows(n, dim)
    paths, labels, extra = rows_metadata(n)
    reference = Gallery("v1", dim)
    reference.add(vectors, paths, labels, extra)
    location = f"qdrant://{tmp / name}{options}"
    with indexing_threshold(1 if hnsw else None):
        store = open_store(location, create=("v1", dim))
        for start in range(0, n, 128):  # as a build adds: in checkpoints
            stop = start + 128
            store.add(vectors[start:stop], paths[start:stop], labels[start:stop], extra[start:stop])
    return store, reference, vectors, location


def one_line_error(work, *fragments: str) -> str:
    try:
        work()
    except ClientError as error:
        message = str(error)
        assert "\n" not in message, message
        for fragment in fragments:
            assert fragment in message, message
        return message
    raise AssertionError(f"no ClientError (expected {fragments})")


def assert_same_top_k(store, reference: Gallery, queries: np.ndarray, k: int = 10, recall: float = 1.0) -> None:
    found = total = 0
    for query in queries:
        got, want = store.search(query, k), reference.search(query, k)
        assert len(got) == len(want) == k
        wanted = {h.path: h.score for h in want}
        found += len(set(h.path for h in got) & set(wanted))
        total += k
        if recall == 1.0:
            assert [h.path for h in got] == [h.path for h in want], ([h.path for h in got], [h.path for h in want])
        exact = {h.path: float(reference.embeddings[reference.paths.index(h.path)] @ query) for h in got}
        for hit in got:  # returned scores are exact cosine, whatever the index
            assert abs(hit.score - exact[hit.path]) < 1e-3, (hit.score, exact[hit.path])
            if hit.path in wanted:
                assert abs(hit.score - wanted[hit.path]) < 1e-3
    assert found / total >= recall, f"recall@{k} {found / total:.3f} < {recall}"


def check_plain_segment_top_k_equals_exact(tmp: Path) -> None:
    store, reference, vectors, _ = build(tmp)
    assert len(store) == 300 and store.dim == 32 and store.model_version == "v1"
    assert store.shard.info().indexed_vectors_count == 0  # small: Edge scans it (exact)
    queries = unit_rows(20, 32, seed=1)
    assert_same_top_k(store, reference, queries)
    assert store.search(vectors[7], 1)[0].path == "/cars/0007.jpg"
    assert len(store.search(queries[0], 1000)) == 300 and store.search(queries[0], 0) == []


def check_hnsw_top_k_equals_exact(tmp: Path) -> None:
    store, reference, _, _ = build(tmp, hnsw=True)
    assert store.shard.info().indexed_vectors_count == 300  # the HNSW graph was built
    assert_same_top_k(store, reference, unit_rows(20, 32, seed=1))


def check_int8_quantization_keeps_exact_scores(tmp: Path) -> None:
    store, reference, _, location = build(tmp, hnsw=True, options="?quantization=int8")
    assert store.quantization == "int8"
    # int8 codes pick the candidates, float32 rescoring orders them: near-ties may swap in or out.
    assert_same_top_k(store, reference, unit_rows(20, 32, seed=1), recall=0.95)
    store.close()
    one_line_error(lambda: open_store(location.replace("int8", "none")), "built with quantization=int8")
    assert open_store(location.split("?")[0]).quantization == "int8"


def check_filters_match_the_reference(tmp: Path) -> None:
    for hnsw in (False, True):
        store, reference, vectors, _ = build(tmp, hnsw=hnsw, name=f"g{hnsw}")
        query = unit_rows(1, 32, seed=2)[0]
        for texts in CONDITIONS:
            where = tuple(parse_where(t) for t in texts)
            expected = {reference.paths[i] for i in np.flatnonzero(reference.mask(where))}
            assert expected == {row["path"] for row in reference.rows if matches(row, where)}, texts
            got = store.search(query, 1000, where)
            assert {h.path for h in got} == expected, (hnsw, texts, sorted({h.path for h in got} ^ expected))
            assert all(matches(h.metadata, where) for h in got)
            top = [h.path for h in store.search(query, 10, where)]
            assert top == [h.path for h in reference.search(query, 10, where)], (hnsw, texts)
        store.close()


def check_reopened_gallery_answers_the_same(tmp: Path) -> None:
    store, _, _, location = build(tmp, hnsw=True)
    queries = unit_rows(5, 32, seed=3)
    where = (parse_where("make!=BMW"), parse_where("year>=2008"))
    before = [store.search(q, 10, where) for q in queries]
    paths = store.known_paths()
    store.close()
    again = open_store(location)
    assert (len(again), again.model_version, again.dim) == (300, "v1", 32)
    assert again.known_paths() == paths and len(paths) == 300
    assert [again.search(q, 10, where) for q in queries] == before
    assert again.search_many(queries, 10, where) == before


def check_another_model_version_is_refused(tmp: Path) -> None:
    store, _, _, location = build(tmp)
    store.check_version("v1", "server")
    one_line_error(lambda: store.check_version("v2", "server"), "serves model v2", "built with v1")
    store.close()
    one_line_error(lambda: open_store(location, create=("v2", 32)).check_version("v2", "server"), "built with v1")
    empty = open_store(f"qdrant://{tmp / 'empty'}", create=("v1", 32))
    empty.check_version("v2", "server")  # nothing added yet: a killed first build may change model
    empty.close()
    assert open_store(f"qdrant://{tmp / 'empty'}").model_version == "v2"


def check_re_added_path_replaces_its_row(tmp: Path) -> None:
    store, _, vectors, _ = build(tmp)
    replaced = store.search(vectors[5], 1)[0].id
    store.add(vectors[[6, 7]], ["/cars/0005.jpg", "/cars/0123.jpg"], ["BMW X5 SUV 2012", "Volvo XC90 SUV 2007"])
    assert len(store) == 300
    assert store.get(replaced)["label"] == "BMW X5 SUV 2012" and store.get(replaced)["make"] == "BMW"
    assert "price" not in store.get(replaced)  # replaced, not merged
    assert [h.path for h in store.search(vectors[6], 2)] in (
        ["/cars/0005.jpg", "/cars/0006.jpg"], ["/cars/0006.jpg", "/cars/0005.jpg"]
    )  # fmt: skip


def check_get_by_id(tmp: Path) -> None:
    store, reference, vectors, _ = build(tmp)
    for i in (0, 13, 17, 19, 23, 299):  # plain rows and rows with bools, lists, floats, text prices
        hit = store.search(vectors[i], 1)[0]
        assert hit.metadata == reference.rows[i] and store.get(hit.id) == reference.rows[i]
        assert store.get(hit.id) == reference.get(hit.id)
    assert store.get("not-a-uuid") is None and store.get(str(uuid.uuid4())) is None


def apply_the_same_writes(store, reference: Gallery, vectors: np.ndarray) -> None:
    """Metadata updates and deletes on `store` and on the file store `reference`: the same rows after."""
    ids = [reference.rows[i]["id"] for i in range(len(reference))]
    for target in (store, reference):
        changed = target.update(ids[13], {"price": 12345, "colour": "green", "flag": None})
        assert changed["price"] == 12345 and "flag" not in changed and changed["path"] == "/cars/0013.jpg"
        assert target.update(ids[10], {"colour": None, "listing": "L-10"})["listing"] == "L-10"
        assert target.update(str(uuid.uuid4()), {"price": 1}) is None
        one_line_error(lambda t=target: t.update(ids[1], {"label": "x"}), "'label' is reserved")
        one_line_error(lambda t=target: t.update(ids[1], {"bad name": 1}), "not a plain name")
        assert target.delete([ids[5], ids[6], ids[5], str(uuid.uuid4())]) == 2
        assert target.delete([ids[5]]) == 0 and len(target) == len(ids) - 2
    for i in (5, 6):
        assert store.get(ids[i]) is None and store.search(vectors[i], 1)[0].id != ids[i]
    for i in (10, 13, 14):
        assert store.get(ids[i]) == reference.get(ids[i]), (store.get(ids[i]), reference.get(ids[i]))


def check_updates_and_deletes_match_the_file_store_and_last(tmp: Path) -> None:
    store, reference, vectors, location = build(tmp)
    apply_the_same_writes(store, reference, vectors)
    for where in ((parse_where("colour=green"),), (parse_where("listing=L-10"),), (parse_where("price>=12000"),)):
        got, want = store.search(vectors[13], 5, where), reference.search(vectors[13], 5, where)
        assert [h.id for h in got] == [h.id for h in want], where
    store.close()
    reopened = open_store(location)
    assert len(reopened) == 298 and reopened.get(row_id("/cars/0013.jpg"))["colour"] == "green"
    assert_same_top_k(reopened, reference, vectors[:20])
    reopened.close()


def listing_rows(n: int = 300, dim: int = 32):
    """Rows of which most belong to one of 41 listings (several photos each) and some to none."""
    vectors = unit_rows(n, dim, seed=5)
    paths, labels, extra = rows_metadata(n)
    for i, attributes in enumerate(extra):
        if i % 10:
            attributes["listing"] = f"L{i % 41}"
    reference = Gallery("v1", dim)
    reference.add(vectors, paths, labels, extra)
    return vectors, paths, labels, extra, reference


def brute_force_groups(reference: Gallery, query: np.ndarray, k: int, field: str, where=()) -> list[str]:
    """The ids of the best row of each of the k best groups, from every row's score (no store code)."""
    scores = reference.embeddings @ query
    best: dict = {}
    for i in np.argsort(-scores):
        row = reference.rows[i]
        if row.get(field) is not None and matches(row, where) and row[field] not in best:
            best[row[field]] = row["id"]
    return list(best.values())[:k]


def check_grouped_search_gives_the_best_photo_of_each_group(tmp: Path) -> None:
    vectors, paths, labels, extra, reference = listing_rows()
    store = open_store(f"qdrant://{tmp / 'groups'}", create=("v1", 32))
    store.add(vectors, paths, labels, extra)
    queries = unit_rows(8, 32, seed=9)
    for field, k, where in (("listing", 5, ()), ("listing", 12, (parse_where("make=Audi"),)), ("model", 3, ()),
                            ("listing", 60, ())):  # fmt: skip
        for query in queries:
            want = brute_force_groups(reference, query, k, field, where)
            assert [h.id for h in reference.search_groups(query, k, where, field)] == want
            got = store.search_groups(query, k, where, field)
            assert [h.id for h in got] == want, (field, k)
            assert len({h.metadata[field] for h in got}) == len(got) == min(k, 41 if field == "listing" else 4)
    one_line_error(lambda: store.search_groups(queries[0], 3, (), "price"), "group_by must be one of")
    store.close()


RECOMMENDATIONS = [  # (positive rows, negative rows, photo rows used as uploaded vectors)
    ([3], [], []),
    ([3, 7], [11], []),
    ([], [11], [20]),
    ([3], [], [5]),
    ([0, 1, 2], [4, 5], []),
]


def check_recommendations_are_qdrants_sum_scores_and_match_the_file_store(tmp: Path) -> None:
    vectors, paths, labels, extra, reference = listing_rows()
    store = open_store(f"qdrant://{tmp / 'recommend'}", create=("v1", 32))
    store.add(vectors, paths, labels, extra)
    ids = [row["id"] for row in reference.rows]
    for positive, negative, photos in RECOMMENDATIONS:
        pos, neg = [ids[i] for i in positive], [ids[i] for i in negative]
        photo = vectors[photos] if photos else None
        for where, group_by, k in (((), None, 10), ((parse_where("make=Audi"),), None, 5), ((), "listing", 6)):
            got = store.recommend(pos, neg, photo, k, where, group_by)
            want = reference.recommend(pos, neg, photo, k, where, group_by)
            assert [(h.id, round(h.score, 4)) for h in got] == [(h.id, round(h.score, 4)) for h in want]
            assert not {h.id for h in got} & set(pos + neg) and len(got) == k  # examples are never results
        # the rule: a row's score is its summed similarity to the positives minus that to the negatives
        best = want[0] if not group_by else reference.recommend(pos, neg, photo, 1)[0]
        row = vectors[ids.index(best.id)]
        expected = sum(row @ vectors[i] for i in positive + photos) - sum(row @ vectors[i] for i in negative)
        assert abs(best.score - expected) < 1e-4
    for target in (store, reference):
        one_line_error(lambda t=target: t.recommend([str(uuid.uuid4())]), "no gallery row with id")
        one_line_error(lambda t=target: t.recommend([], [ids[1]]), "at least one positive example")
        one_line_error(lambda t=target: t.recommend([ids[1]], [ids[1]]), "both a positive and a negative")
    store.close()


RERANK = RerankSettings(k=3, alpha=3.0, shortlist=40)


def same_reranked(got: list, want: list) -> None:
    """The same rows in the same order, with the same raw and re-rank scores."""
    assert [h.id for h in got] == [h.id for h in want], ([h.id for h in got], [h.id for h in want])
    for a, b in zip(got, want, strict=True):
        assert abs(a.score - b.score) < 1e-4, (a, b)
        assert (a.rerank_score is None) == (b.rerank_score is None), (a, b)  # None: past the shortlist
        assert a.rerank_score is None or abs(a.rerank_score - b.rerank_score) < 1e-4, (a, b)


def check_reranked_results_match_the_file_store(tmp: Path) -> None:
    """Re-ranking (core/rerank.py through clients.store.reranked) gives the file store's answer,
    with filters, grouping and recommendations, and it does change the order."""
    vectors, paths, labels, extra, reference = listing_rows()
    store = open_store(f"qdrant://{tmp / 'rerank'}", create=("v1", 32))
    store.add(vectors, paths, labels, extra)
    ids = [row["id"] for row in reference.rows]
    changed = 0
    for query in unit_rows(6, 32, seed=11):
        for where in ((), (parse_where("make=Audi"),), (parse_where("year>=2008"), parse_where("make!=BMW"))):
            want = reference.search(query, 10, where, rerank=RERANK)
            same_reranked(store.search(query, 10, where, rerank=RERANK), want)
            assert all(matches(h.metadata, where) for h in want)
            changed += [h.id for h in want] != [h.id for h in reference.search(query, 10, where)]
        for field, k in (("listing", 5), ("model", 3)):
            want = reference.search_groups(query, k, (), field, rerank=RERANK)
            same_reranked(store.search_groups(query, k, (), field, rerank=RERANK), want)
            assert len({h.metadata[field] for h in want}) == len(want) == k
    assert changed >= 3, changed
    for positive, negative, photos in RECOMMENDATIONS:
        pos, neg = [ids[i] for i in positive], [ids[i] for i in negative]
        photo = vectors[photos] if photos else None
        for where, group_by in (((), None), ((parse_where("make=Audi"),), None), ((), "listing")):
            want = reference.recommend(pos, neg, photo, 6, where, group_by, rerank=RERANK)
            same_reranked(store.recommend(pos, neg, photo, 6, where, group_by, rerank=RERANK), want)
            assert not {h.id for h in want} & set(pos + neg) and len(want) == 6
    store.close()


def clustered_rows(classes: int = 10, per_class: int = 12, dim: int = 32):
    """Rows around one centre per car model, so that a row's neighbours are often of its model."""
    rng = np.random.default_rng(3)
    rows = np.repeat(rng.normal(size=(classes, dim)), per_class, axis=0) + 1.5 * rng.normal(
        size=(classes * per_class, dim)
    )
    rows = (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)
    n = classes * per_class
    return (
        rows,
        [f"/cal/{i}.jpg" for i in range(n)],
        [f"{i // per_class:03d}_BMW_M{i // per_class}_Coupe_2012" for i in range(n)],
    )


def check_a_calibration_is_kept_with_the_gallery(tmp: Path) -> None:
    from clients.calibration import calibrate_store, of_store

    vectors, paths, labels = clustered_rows()
    location = f"qdrant://{tmp / 'calibrated'}"
    store = open_store(location, create=("v1", 32))
    store.add(vectors, paths, labels)
    assert store.calibration is None and of_store(store) is None
    made = calibrate_store(store)
    store.close()
    reopened = open_store(location)
    assert of_store(reopened) == made and made["model_version"] == "v1"
    reopened.close()


def check_bad_locations_are_one_line_errors(tmp: Path) -> None:
    os.chdir(tmp)
    one_line_error(lambda: open_store("qdrant://", create=("v1", 4)), "names no directory")
    one_line_error(lambda: open_store("qdrant://?collection=cars", create=("v1", 4)), "names no directory")
    one_line_error(lambda: open_store("qdrant://g?collection=../x", create=("v1", 4)), "must be a plain name")
    one_line_error(lambda: open_store("qdrant://g?colection=x", create=("v1", 4)), "unknown option 'colection'")
    one_line_error(lambda: open_store("qdrant://g?quantization=int4", create=("v1", 4)), "quantization must be")
    assert list(tmp.iterdir()) == []  # nothing was created for a refused location
    one_line_error(lambda: open_store("qdrant://missing"), "no gallery at qdrant://missing")
    (tmp / "file").write_text("x")
    one_line_error(lambda: open_store("qdrant://file", create=("v1", 4)), "is a file")
    store = open_store("qdrant://g", create=("v1", 4))
    assert (tmp / "g" / "cars" / "gallery.json").is_file() and (tmp / "g" / "cars" / "shard").is_dir()
    one_line_error(lambda: open_store("qdrant://g"), "cannot open", "open elsewhere")  # Edge's lock
    one_line_error(lambda: store.add(np.ones((1, 5)), ["/a.jpg"], ["x"]), "vectors of dimension 5", "holds 4")
    one_line_error(lambda: store.search(np.ones(3), 1), "cannot search qdrant://g", "dimension")
    store.close()
    (tmp / "g" / "cars" / "gallery.json").write_text("{not json")
    one_line_error(lambda: open_store("qdrant://g"), "is not readable")


def check_fresh_replaces_and_other_schemes_route(tmp: Path) -> None:
    store, _, _, location = build(tmp)
    one_line_error(lambda: open_store(location, create=("v3", 8), fresh=True), "open elsewhere")
    assert len(store) == 300  # a gallery open elsewhere is not removed under its user
    store.close()
    fresh = open_store(location, create=("v3", 8), fresh=True)
    assert (len(fresh), fresh.model_version, fresh.dim) == (0, "v3", 8)
    assert type(fresh).__name__ == "EdgeGallery"
    assert json.loads((tmp / "g" / "cars" / "gallery.json").read_text())["model_version"] == "v3"
    fresh.close()
    # qdrant+http(s):// is a server, through qdrant-client: nothing listens on port 9 (one retry, not five).
    one_line_error(lambda: open_store("qdrant+http://127.0.0.1:9/cars?retries=2"), "cannot open Qdrant gallery")


CHECKS = {name: function for name, function in sorted(globals().items()) if name.startswith("check_")}


def main(names: list[str], checks: dict | None = None) -> int:
    """Runs the checks named (all by default) of `checks` (this file's by default), each in a fresh
    temporary directory; qdrant_checks.py runs its own through it."""
    checks = CHECKS if checks is None else checks
    failed = 0
    for name in names or list(checks):
        with tempfile.TemporaryDirectory() as tmp:
            cwd = os.getcwd()
            try:
                checks[name](Path(tmp))
                print(f"ok   {name}", flush=True)
            except Exception as error:  # report every check, then fail
                failed += 1
                print(f"FAIL {name}: {type(error).__name__}: {error}", flush=True)
            finally:
                os.chdir(cwd)
    print(f"{len(names or checks) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
