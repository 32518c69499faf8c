"""Checks of the Qdrant server store (clients/qdrant_store.py) and of copies between stores
(clients/copy_store.py). Plain functions `check_*(tmp: Path)`, no pytest, as in edge_checks.py:
tests/clients/test_qdrant_store.py runs them in process where qdrant-client and qdrant-edge-py are
installed, and this file as a script under the thin client venv (which has them but no pytest):

    .venv-client/bin/python tests/clients/qdrant_checks.py [NAME ...]

No Qdrant server can run here, so the server store is checked by contract: qdrant-client talks to
a stand-in (tests/clients/qdrant_standin.py) that records each request; every body must parse
back with qdrant-client's own REST models (the shape the client built) and, by field-by-field
asserts, carry what the store promises. Whether a real server accepts them is not tested here. Copies run
between real stores: Qdrant Edge (the Qdrant engine in process), .npz files, and the stand-in.
"""

from __future__ import annotations

import json
import os
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from clients import qdrant_store
from clients.copy_store import copy
from clients.gallery import Gallery
from clients.metadata import parse_where, row_id
from clients.store import open_store

if not __package__:  # run as a script: the repository's tests/ is not installed, so put it on the path
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.clients import edge_checks  # noqa: E402
from tests.clients.edge_checks import assert_same_top_k, build, one_line_error, rows_metadata, unit_rows  # noqa: E402
from tests.clients.qdrant_standin import StandIn  # noqa: E402

DIM = 32
WHERE = ("make=Audi", "year>=2010", "make!=BMW", "price=15000")
FILTER = {  # WHERE as the Qdrant REST filter: numbers are ranges, `!=` is a must_not
    "must": [
        {"key": "make", "match": {"value": "Audi"}},
        {"key": "year", "range": {"gte": 2010.0}},
        {"key": "price", "range": {"gte": 15000.0, "lte": 15000.0}},
    ],
    "must_not": [{"key": "make", "match": {"value": "BMW"}}],
}


@contextmanager
def recorded_sleeps():
    """The delays the store waits between tries, recorded instead of slept."""
    delays: list[float] = []
    before = qdrant_store._sleep
    qdrant_store._sleep = delays.append
    try:
        yield delays
    finally:
        qdrant_store._sleep = before


@contextmanager
def fast_backoff():
    """Retries after milliseconds rather than seconds, so that the retry checks stay fast."""
    before = qdrant_store.BACKOFF_S
    qdrant_store.BACKOFF_S = 0.001
    try:
        yield
    finally:
        qdrant_store.BACKOFF_S = before


def assert_contract(standin: StandIn) -> None:
    """Every request body validates against qdrant-client's REST model of its route."""
    for request in standin.requests:
        model = request.model()
        if request.body is not None:
            assert model is not None, f"no REST model known for {request.method} {request.path}"
            model.model_validate(request.body)


def reference(n: int = 300) -> tuple[Gallery, np.ndarray]:
    vectors = unit_rows(n, DIM)
    gallery = Gallery("v1", DIM)
    gallery.add(vectors, *rows_metadata(n))
    return gallery, vectors


def fill(store, vectors: np.ndarray, n: int | None = None) -> None:
    paths, labels, extra = rows_metadata(len(vectors))
    store.add(vectors[:n], paths[:n], labels[:n], extra[:n])


def check_collection_is_created_with_the_cluster_settings(tmp: Path) -> None:
    options = "?shards=6&replicas=2&write_consistency=2&on_disk=true&quantization=int8&m=32&ef_construct=256"
    with StandIn() as standin:
        store = open_store(standin.location("cars", options), create=("v1", DIM))
        assert (store.model_version, store.dim, store.quantization, len(store)) == ("v1", DIM, "int8", 0)
        assert_contract(standin)
        [create] = standin.calls("PUT", "/collections/cars")
        body = create.body
        assert (body["shard_number"], body["replication_factor"], body["write_consistency_factor"]) == (6, 2, 2)
        assert body["vectors"] == {"size": DIM, "distance": "Cosine", "on_disk": True}
        assert body["on_disk_payload"] is True
        assert body["quantization_config"] == {"scalar": {"type": "int8", "quantile": 0.99, "always_ram": True}}
        assert body["hnsw_config"] == {"m": 32, "ef_construct": 256, "full_scan_threshold": 10_000}
        assert {k: body["metadata"][k] for k in ("format", "model_version", "dim")} == {
            "format": qdrant_store.FORMAT, "model_version": "v1", "dim": DIM,
        }  # fmt: skip
        index_calls = standin.calls("PUT", "/collections/cars/index")
        indexes = {r.body["field_name"]: r.body["field_schema"] for r in index_calls}
        keywords = {"make": "keyword", "model": "keyword", "label": "keyword", "listing": "keyword"}
        assert indexes == {**keywords, "year": "float"}
        assert all(r.query.get("wait") == "true" for r in index_calls)
        store.close()
        # Reopened: nothing is created again; the settings and the model come from the collection.
        before = len(standin.requests)
        again = open_store(standin.location("cars"))
        assert (again.model_version, again.dim, again.quantization) == ("v1", DIM, "int8")
        assert not [r for r in standin.requests[before:] if r.method in ("PUT", "PATCH", "DELETE")]
        one_line_error(lambda: open_store(standin.location("cars", "?shards=3")), "created with shards=6", "--rebuild")
        one_line_error(lambda: open_store(standin.location("cars", "?quantization=none")), "quantization=int8")
        open_store(standin.location("cars", options)).close()  # the same options: accepted
        # Defaults: one replica, acknowledged by it, no quantization, Edge's graph; the shard count the server's.
        open_store(standin.location("plain"), create=("v1", DIM)).close()
        body = standin.calls("PUT", "/collections/plain")[0].body
        assert "shard_number" not in body and "quantization_config" not in body
        assert (body["replication_factor"], body["write_consistency_factor"]) == (1, 1)
        assert body["hnsw_config"]["m"] == 16 and body["hnsw_config"]["ef_construct"] == 128
        assert_contract(standin)


def check_upserts_are_batched_durable_and_read_back(tmp: Path) -> None:
    gallery, vectors = reference()
    with StandIn() as standin:
        store = open_store(standin.location("cars", "?batch_size=64"), create=("v1", DIM))
        fill(store, vectors)
        upserts = standin.calls("PUT", "/collections/cars/points")
        assert [len(r.body["points"]) for r in upserts] == [64, 64, 64, 64, 44]
        assert all(r.query.get("wait") == "true" for r in upserts)  # durable when `add` returns
        assert_contract(standin)
        point = upserts[0].body["points"][0]
        assert point["id"] == point["payload"]["id"] and point["payload"]["model_version"] == "v1"
        flagged = next(p for r in upserts for p in r.body["points"] if p["payload"]["path"] == "/cars/0013.jpg")
        assert flagged["payload"]["flag"] == "True" and json.loads(flagged["payload"]["@original"]) == {"flag": True}
        assert len(store) == 300 and store.known_paths() == set(gallery.paths)
        exported = {}
        for batch, rows in store.export(100):
            exported.update({row["path"]: (vector, row) for vector, row in zip(batch, rows, strict=True)})
        assert len(exported) == 300
        for i, path in enumerate(gallery.paths):
            vector, row = exported[path]
            assert row == gallery.rows[i], (row, gallery.rows[i])
            assert np.allclose(vector, gallery.embeddings[i], atol=1e-6)
        hit = store.search(vectors[13], 1)[0]
        assert hit.path == "/cars/0013.jpg" and hit.metadata == gallery.rows[13]
        assert store.get(hit.id) == gallery.rows[13]
        assert store.get("not-a-uuid") is None and store.search(vectors[0], 0) == []
        one_line_error(lambda: store.add(np.ones((1, 5)), ["/a.jpg"], ["x"]), "vectors of dimension 5", f"holds {DIM}")
        assert_contract(standin)


def check_updates_and_deletes_are_durable_and_match_the_file_store(tmp: Path) -> None:
    gallery, vectors = reference()
    with StandIn() as standin:
        store = open_store(standin.location("cars"), create=("v1", DIM))
        fill(store, vectors)
        edge_checks.apply_the_same_writes(store, gallery, vectors)
        writes = standin.calls("PUT", "/collections/cars/points/payload") + standin.calls(
            "POST", "/collections/cars/points/delete"
        )
        assert len(writes) == 3 and all(r.query.get("wait") == "true" for r in writes)  # durable on return
        deleted = standin.calls("POST", "/collections/cars/points/delete")[0].body["points"]
        assert deleted == [row_id("/cars/0005.jpg"), row_id("/cars/0006.jpg")]  # only ids that exist, once each
        assert_contract(standin)


def check_grouping_is_qdrants_own_and_matches_the_file_store(tmp: Path) -> None:
    vectors, paths, labels, extra, gallery = edge_checks.listing_rows()
    with StandIn() as standin:
        store = open_store(standin.location("cars"), create=("v1", DIM))
        store.add(vectors, paths, labels, extra)
        for query in unit_rows(5, DIM, seed=9):
            for field, k in (("listing", 7), ("model", 3)):
                got = [h.id for h in store.search_groups(query, k, (), field)]
                assert got == [h.id for h in gallery.search_groups(query, k, (), field)], (field, k)
        grouped = standin.calls("POST", "/collections/cars/points/query/groups")
        assert len(grouped) == 10 and grouped[0].body["group_by"] == "listing" and grouped[0].body["group_size"] == 1
        assert_contract(standin)


def check_recommend_is_qdrants_own_query_and_matches_the_file_store(tmp: Path) -> None:
    vectors, paths, labels, extra, gallery = edge_checks.listing_rows()
    ids = [row["id"] for row in gallery.rows]
    with StandIn() as standin:
        store = open_store(standin.location("cars"), create=("v1", DIM))
        store.add(vectors, paths, labels, extra)
        for positive, negative, photos in edge_checks.RECOMMENDATIONS:
            pos, neg = [ids[i] for i in positive], [ids[i] for i in negative]
            photo = vectors[photos] if photos else None
            for group_by in (None, "listing"):
                got = [h.id for h in store.recommend(pos, neg, photo, 6, (), group_by)]
                assert got == [h.id for h in gallery.recommend(pos, neg, photo, 6, (), group_by)], group_by
        sent = standin.calls("POST", "/collections/cars/points/query")[-1].body["query"]["recommend"]
        assert sent["strategy"] == "sum_scores" and sent["positive"] == [ids[0], ids[1], ids[2]]
        assert sent["negative"] == [ids[4], ids[5]]  # ids: the server looks them up and leaves them out
        one_line_error(lambda: store.recommend([row_id("/nowhere.jpg")]), "no gallery row with id")
        assert_contract(standin)


def check_a_calibration_is_kept_in_the_collection_metadata(tmp: Path) -> None:
    from clients.calibration import calibrate_store, of_store

    vectors, paths, labels = edge_checks.clustered_rows(dim=DIM)
    with StandIn() as standin:
        store = open_store(standin.location("cars"), create=("v1", DIM))
        store.add(vectors, paths, labels)
        made = calibrate_store(store)
        assert standin.calls("PATCH", "/collections/cars")[-1].body["metadata"] == {"calibration": made}
        store.close()
        reopened = open_store(standin.location("cars"))
        assert of_store(reopened) == made and reopened.model_version == "v1"  # the version is kept beside it
        assert_contract(standin)


def check_transient_errors_are_retried_then_one_line(tmp: Path) -> None:
    _, vectors = reference(10)
    with StandIn() as standin, fast_backoff():
        store = open_store(standin.location("cars", "?retries=3"), create=("v1", DIM))
        points = "/collections/cars/points"
        standin.fail("PUT", points, 503, times=2)
        fill(store, vectors)  # two 503s, then accepted: one batch, three tries
        assert len(standin.calls("PUT", points)) == 3 and len(store) == 10
        standin.fail("PUT", points, 429, times=1)  # too many requests: retried as well
        fill(store, vectors)
        assert len(standin.calls("PUT", points)) == 5
        standin.fail("PUT", points, 503, times=3)
        one_line_error(lambda: fill(store, vectors), "cannot add to", "gave up after 3 tries", "503")
        standin.fail("PUT", points, 400, times=1)  # a bad request is not retried
        before = len(standin.calls("PUT", points))
        message = one_line_error(lambda: fill(store, vectors), "HTTP 400", "stand-in: injected 400")
        assert "gave up" not in message and len(standin.calls("PUT", points)) == before + 1
        standin.fail("POST", "/collections/cars/points/query", 500, times=2)
        assert store.search(vectors[0], 1)[0].path == "/cars/0000.jpg"  # reads retry too
        standin.fail("POST", "/collections/cars/points/count", 501, times=1)  # not implemented: no retry
        one_line_error(lambda: len(store), "cannot count", "HTTP 501")
        assert_contract(standin)
    with StandIn() as standin, recorded_sleeps() as delays:
        store = open_store(standin.location("cars", "?retries=3"), create=("v1", DIM))
        points = "/collections/cars/points"
        standin.fail("PUT", points, 429, times=1, headers={"Retry-After": "7"})  # the server's wait, honoured
        standin.fail("PUT", points, 429, times=1, headers={"Retry-After": "3600"})  # capped
        fill(store, vectors)
        assert delays == [7.0, qdrant_store.RETRY_AFTER_MAX_S] and len(store) == 10
        standin.fail("PUT", points, 429, times=1, headers={"Retry-After": "soon"})  # not seconds: the backoff
        fill(store, vectors)
        assert delays[2:] == [qdrant_store.BACKOFF_S] and len(standin.calls("PUT", points)) == 5
    # Nothing listens there any more: connection errors are retried, then one line.
    one_line_error(lambda: open_store(standin.location("cars", "?retries=2")), "cannot open Qdrant gallery",
                   "gave up after 2 tries")  # fmt: skip


def check_a_killed_build_resumes_batch_by_batch(tmp: Path) -> None:
    gallery, vectors = reference()
    paths, labels, extra = rows_metadata(300)
    with StandIn() as standin, fast_backoff():
        location = standin.location("cars", "?batch_size=64&retries=2")
        store = open_store(location, create=("v1", DIM))
        standin.fail("PUT", "/collections/cars/points", 503, times=10**6, after=2)  # gone after two batches
        one_line_error(lambda: store.add(vectors, paths, labels, extra), "gave up after 2 tries")
        standin.failures.clear()  # back
        # As build_gallery resumes: open again, skip what the gallery knows, add the rest.
        again = open_store(location, create=("v1", DIM))
        known = again.known_paths()
        assert known == set(paths[:128]) and len(again) == 128
        pending = [i for i, p in enumerate(paths) if p not in known]
        before = len(standin.calls("PUT", "/collections/cars/points"))
        again.add(vectors[pending], [paths[i] for i in pending], [labels[i] for i in pending],
                  [extra[i] for i in pending])  # fmt: skip
        resumed = standin.calls("PUT", "/collections/cars/points")[before:]
        assert sum(len(r.body["points"]) for r in resumed) == 172 and len(again) == 300
        assert again.known_paths() == set(gallery.paths)


def check_where_is_sent_as_a_qdrant_filter(tmp: Path) -> None:
    _, vectors = reference(20)
    with StandIn() as standin:
        for name, options in (("plain", ""), ("quantized", "?quantization=int8")):
            store = open_store(standin.location(name, options), create=("v1", DIM))
            fill(store, vectors)
            store.search(vectors[0], 7, tuple(parse_where(t) for t in WHERE))
            store.search(vectors[0], 3)
            filtered, unfiltered = standin.calls("POST", f"/collections/{name}/points/query")
            assert filtered.body["filter"] == FILTER and "filter" not in unfiltered.body
            assert filtered.body["limit"] == 7 and filtered.body["with_payload"] is True
            assert filtered.body["query"] == {"nearest": vectors[0].tolist()}
            params = {"hnsw_ef": 256}
            if options:  # int8 codes choose candidates, float32 vectors score them (as Edge)
                params["quantization"] = {"rescore": True, "oversampling": 4.0}
            assert filtered.body["params"] == params, filtered.body["params"]
        assert_contract(standin)


def check_model_version_is_kept_and_checked(tmp: Path) -> None:
    _, vectors = reference(10)
    with StandIn() as standin:
        empty = open_store(standin.location("empty"), create=("v1", DIM))
        empty.check_version("v2", "server")  # nothing added yet: a killed first build may change model
        assert standin.calls("PATCH", "/collections/empty")[0].body == {"metadata": {"model_version": "v2"}}
        assert open_store(standin.location("empty")).model_version == "v2"  # known with no point at all
        full = open_store(standin.location("cars"), create=("v1", DIM))
        fill(full, vectors)
        full.check_version("v1", "server")
        one_line_error(lambda: full.check_version("v2", "server"), "serves model v2", "built with v1")
        one_line_error(lambda: open_store(standin.location("cars")).check_version("v2", "x"), "built with v1")
        # A collection made before the metadata held the version: its points tell.
        standin.collections["old"] = {**standin.collections["cars"], "metadata": None}
        assert open_store(standin.location("old")).model_version == "v1"
        standin.collections["other"] = {**standin.collections["cars"], "metadata": {"format": "someone-else/1"}}
        one_line_error(lambda: open_store(standin.location("other")), "not a gallery of this project", "someone-else")
        one_line_error(lambda: open_store(standin.location("missing")), "no gallery at", "make gallery")
        assert_contract(standin)


def foreign_collection(standin: StandIn, name: str, points: int) -> None:
    """A collection this project did not make: no metadata, points without path or model version."""
    vectors = unit_rows(max(points, 1), DIM)
    standin.collections[name] = {
        "config": {"vectors": {"size": DIM, "distance": "Cosine"}}, "indexes": {}, "metadata": None,
        "points": {f"00000000-0000-0000-0000-{i:012d}": (vectors[i], {"title": f"doc {i}"}) for i in range(points)},
    }  # fmt: skip


def check_a_collection_of_another_project_is_refused_untouched(tmp: Path) -> None:
    with StandIn() as standin:
        foreign_collection(standin, "docs", 5)
        foreign_collection(standin, "empty", 0)
        npz, source = str(tmp / "out.npz"), tmp / "in.npz"
        Gallery("v1", DIM, path=source).add(unit_rows(3, DIM), *[x[:3] for x in rows_metadata(3)])
        for name in ("docs", "empty"):
            before = len(standin.requests)
            location = standin.location(name)
            fragment = "no gallery metadata and no points" if name == "empty" else "carry no path and model_version"
            for work in (
                lambda at=location: open_store(at),  # a query
                lambda at=location: open_store(at, create=("v1", DIM)),  # a build: not adopted
                lambda at=location: open_store(at, create=("v1", DIM), fresh=True),  # a --rebuild: not deleted
                lambda at=location: copy(at, npz),  # the traceback this was: KeyError 'path'
                lambda at=location: copy(str(source), at),  # a copy into it: neither adopted
                lambda at=location: copy(str(source), at, rebuild=True),  # nor deleted
            ):
                one_line_error(work, f"collection {name!r} is not a gallery of this project", fragment)
            writes = [r for r in standin.requests[before:] if r.method in ("PUT", "PATCH", "DELETE")]
            assert writes == [] and name in standin.collections, writes
        assert len(standin.collections["docs"]["points"]) == 5
        # A collection with named vectors is not one either, whatever its metadata.
        standin.collections["named"] = {**standin.collections["empty"], "config": {"vectors": {"image": {
            "size": DIM, "distance": "Cosine"}}}, "metadata": {"format": qdrant_store.FORMAT}}  # fmt: skip
        one_line_error(lambda: open_store(standin.location("named")), "not a gallery", "named vectors")
        assert_contract(standin)


def check_a_refused_destination_is_left_as_it_was(tmp: Path) -> None:
    """No payload index is made on an existing collection before the copy's checks refuse it, and
    an empty `add` sends nothing."""
    edge, _, vectors, location = build(tmp)
    edge.close()
    with StandIn() as standin:
        for name, version, dim in (("v2", "v2", DIM), ("wide", "v1", DIM * 2)):
            other = open_store(standin.location(name), create=(version, dim))
            other.add(unit_rows(3, dim), *[x[:3] for x in rows_metadata(3)])
            other.close()
            standin.collections[name]["indexes"].clear()  # as a creation killed before its indexes
        before = len(standin.requests)
        one_line_error(lambda: copy(location, standin.location("v2")), "holds embeddings of model v2")
        one_line_error(lambda: copy(location, standin.location("wide")), "64-dimensional")
        assert [r for r in standin.requests[before:] if r.method in ("PUT", "PATCH", "DELETE")] == []
        # A build that does write makes the missing indexes first, then upserts.
        store = open_store(standin.location("v2"), create=("v2", DIM))
        before = len(standin.requests)
        store.add([], [], [])  # nothing to add: nothing sent, as the other stores
        store.add(np.zeros((0, DIM)), [], [], [])
        assert len(standin.requests) == before
        fill(store, vectors, 5)
        sent = [(r.method, r.path) for r in standin.requests[before:]]
        assert sent == [("PUT", "/collections/v2/index")] * 5 + [("PUT", "/collections/v2/points")], sent
        assert set(standin.collections["v2"]["indexes"]) == {"make", "model", "label", "listing", "year"}
        assert_contract(standin)


def check_copy_refuses_the_source_spelled_another_way(tmp: Path) -> None:
    """--rebuild deletes the destination before reading the source: one collection, file or Edge
    folder named two ways is refused before any request."""
    _, vectors = reference(20)
    with StandIn() as standin:
        port = standin.server.server_address[1]
        source = standin.location("cars")
        fill(open_store(source, create=("v1", DIM)), vectors)
        before = len(standin.requests)
        for same in (
            f"{source}?batch_size=10", f"qdrant+http://127.0.0.1:{port}/", f"qdrant+http://127.0.0.1:{port}//cars/",
            f"qdrant+http://localhost:{port}/cars", f"qdrant+https://LocalHost.:{port}/cars?retries=2",
            f"qdrant+http://[::1]:{port}/cars?shards=2&replicas=2", f"qdrant+http://127.0.0.2:{port}/cars",
        ):  # fmt: skip
            one_line_error(lambda d=same: copy(source, d, rebuild=True), "are the same gallery")
            one_line_error(lambda d=same: copy(d, source, rebuild=True), "are the same gallery")
        assert len(standin.requests) == before and len(standin.collections["cars"]["points"]) == 20
        # Another collection, or another port, is another gallery.
        assert copy(source, standin.location("copy"), rebuild=True)["copied"] == 20
        assert copy(source, f"qdrant+http://localhost:{port}/copy", rebuild=True)["copied"] == 20
        assert len(standin.collections["cars"]["points"]) == 20
    edge, _, _, location = build(tmp)  # qdrant://TMP/g, collection cars
    edge.close()
    os.chdir(tmp)
    for same in ("qdrant://g?collection=cars", "qdrant://./g/?quantization=int8", f"qdrant://{tmp}/../{tmp.name}/g"):
        one_line_error(lambda d=same: copy(location, d, rebuild=True), "are the same gallery")
    assert len(open_store(location)) == 300
    assert copy(location, "qdrant://g?collection=other")["copied"] == 300  # another collection in that folder
    Gallery("v1", DIM, path=tmp / "a.npz").add(vectors[:4], *[x[:4] for x in rows_metadata(4)])
    (tmp / "link.npz").symlink_to(tmp / "a.npz")
    for same in ("a.npz", "./a.npz", str(tmp / "link.npz")):
        one_line_error(lambda d=same: copy(str(tmp / "a.npz"), d, rebuild=True), "are the same gallery")
    assert len(Gallery.load(tmp / "a.npz")) == 4


def check_bad_locations_are_one_line_errors_before_any_request(tmp: Path) -> None:
    with StandIn() as standin:
        for options, fragment in (
            ("?shard=2", "unknown option 'shard'"), ("?shards=0", "shards must be a whole number"),
            ("?replicas=two", "replicas must be"), ("?on_disk=maybe", "on_disk must be true or false"),
            ("?quantization=int4", "quantization must be"), ("?batch_size=-1", "batch_size must be"),
            ("?replicas=1&write_consistency=2", "cannot exceed replicas"), ("?retries=100", "retries must be"),
        ):  # fmt: skip
            one_line_error(lambda o=options: open_store(standin.location("cars", o), create=("v1", DIM)), fragment)
        one_line_error(lambda: open_store(standin.location("a/b"), create=("v1", DIM)), "must be a plain name")
        one_line_error(lambda: open_store("qdrant+http:///cars", create=("v1", DIM)), "names no server")
        one_line_error(lambda: open_store("qdrant+http://127.0.0.1:http/cars", create=("v1", DIM)), "the port must")
        assert standin.requests == []


def check_copy_edge_to_npz_and_back_keeps_rows_and_results(tmp: Path) -> None:
    edge, gallery, _, location = build(tmp)  # 300 rows of unit vectors with odd metadata
    edge.close()
    queries = unit_rows(10, DIM, seed=5)
    npz = tmp / "copy.npz"
    summary = copy(location, str(npz), batch_size=128)
    assert (summary["copied"], summary["already_present"], summary["total"]) == (300, 0, 300)
    copied = Gallery.load(npz)
    assert copied.model_version == "v1" and sorted(copied.rows, key=lambda r: r["path"]) == gallery.rows
    order = [copied.paths.index(p) for p in gallery.paths]
    assert np.allclose(copied.embeddings[order], gallery.embeddings, atol=1e-6)
    for query in queries:
        assert [(h.path, round(h.score, 5)) for h in copied.search(query, 10)] == [
            (h.path, round(h.score, 5)) for h in gallery.search(query, 10)
        ]
    back = f"qdrant://{tmp / 'back'}"
    assert copy(str(npz), back, batch_size=100)["copied"] == 300
    store = open_store(back)
    assert_same_top_k(store, gallery, queries)
    for text in ("make=Audi", "year>=2010", "flag=True", "price!=15000"):
        where = (parse_where(text),)
        assert [h.path for h in store.search(queries[0], 10, where)] == [
            h.path for h in gallery.search(queries[0], 10, where)
        ], text
    assert store.get(gallery.rows[17]["id"]) == gallery.rows[17]  # a list attribute, back as a list
    store.close()


def check_copy_resumes_after_a_partial_copy(tmp: Path) -> None:
    edge, gallery, vectors, location = build(tmp)
    edge.close()
    destination = f"qdrant://{tmp / 'dst'}"
    partial = open_store(destination, create=("v1", DIM))  # what a copy killed after 100 rows leaves
    fill(partial, vectors, 100)
    partial.close()
    summary = copy(location, destination, batch_size=64)
    assert (summary["copied"], summary["already_present"], summary["total"]) == (200, 100, 300)
    assert copy(location, destination)["copied"] == 0  # complete: a rerun adds nothing
    store = open_store(destination)
    assert store.known_paths() == set(gallery.paths)
    assert_same_top_k(store, gallery, unit_rows(5, DIM, seed=6))
    store.close()


def check_copy_refuses_another_model_and_bad_arguments(tmp: Path) -> None:
    edge, _, vectors, location = build(tmp)
    edge.close()
    other = tmp / "other.npz"
    Gallery("v2", DIM, path=other).add(vectors[:3], *[x[:3] for x in rows_metadata(3)])
    one_line_error(lambda: copy(location, str(other)), "holds embeddings of model v2", "of model v1", "--rebuild")
    assert len(Gallery.load(other)) == 3  # untouched
    assert copy(location, str(other), rebuild=True)["total"] == 300  # --rebuild replaces it
    wide = tmp / "wide.npz"
    Gallery("v1", DIM * 2, path=wide).add(np.ones((1, DIM * 2)), ["/w.jpg"], ["w"])
    one_line_error(lambda: copy(location, str(wide)), "64-dimensional", "32")
    one_line_error(lambda: copy(location, location), "the same gallery")
    one_line_error(lambda: copy(str(tmp / "missing.npz"), str(tmp / "x.npz")), "no gallery at")
    one_line_error(lambda: copy(location, str(tmp / "x.txt")), "ends in .npz")
    empty = f"qdrant://{tmp / 'empty'}"
    open_store(empty, create=("v9", DIM)).close()
    assert copy(location, empty)["copied"] == 300 and open_store(empty).model_version == "v1"  # empty: takes v1


def check_copy_edge_to_a_server_and_back(tmp: Path) -> None:
    """The documented Edge -> server command, against the stand-in, then the server's rows back."""
    edge, gallery, _, location = build(tmp)
    edge.close()
    with StandIn() as standin:
        server = standin.location("cars", "?shards=2&replicas=2&batch_size=50")
        summary = copy(location, server, batch_size=128)
        assert (summary["copied"], summary["total"]) == (300, 300)
        upserts = standin.calls("PUT", "/collections/cars/points")
        assert [len(r.body["points"]) for r in upserts] == [50, 50, 28, 50, 50, 28, 44]  # 128, 128, 44 per add
        assert standin.calls("PUT", "/collections/cars")[0].body["metadata"]["model_version"] == "v1"
        assert copy(location, server)["already_present"] == 300  # resumable: nothing sent again
        assert len(standin.calls("PUT", "/collections/cars/points")) == len(upserts)
        npz = tmp / "from-server.npz"
        copy(server, str(npz))
        assert sorted(Gallery.load(npz).rows, key=lambda r: r["path"]) == gallery.rows
        assert_contract(standin)


def check_reranked_results_match_the_file_store_and_edge(tmp: Path) -> None:
    """Re-ranked searches, groups and recommendations through qdrant-client (the shortlist fetched
    with its vectors) give what the file store and Qdrant Edge give (the stand-in applies no
    filter, so filtered re-ranks are checked through Edge: edge_checks.py)."""
    vectors, paths, labels, extra, gallery = edge_checks.listing_rows()
    ids = [row["id"] for row in gallery.rows]
    rerank = edge_checks.RERANK
    edge = open_store(f"qdrant://{tmp / 'edge'}", create=("v1", DIM))
    edge.add(vectors, paths, labels, extra)
    with StandIn() as standin:
        store = open_store(standin.location("cars"), create=("v1", DIM))
        store.add(vectors, paths, labels, extra)
        for query in unit_rows(4, DIM, seed=11):
            want = gallery.search(query, 10, rerank=rerank)
            assert [h.id for h in want] != [h.id for h in gallery.search(query, 10)]  # the re-rank changed it
            for other in (store, edge):
                edge_checks.same_reranked(other.search(query, 10, rerank=rerank), want)
            want = gallery.search_groups(query, 5, (), "listing", rerank=rerank)
            for other in (store, edge):
                edge_checks.same_reranked(other.search_groups(query, 5, (), "listing", rerank=rerank), want)
        sent = standin.calls("POST", "/collections/cars/points/query")[0].body
        assert sent["limit"] == rerank.shortlist and sent["with_vector"] is True
        # the shortlist's gallery neighbours: ids in one batch, vectors only for rows not shortlisted
        searches = standin.calls("POST", "/collections/cars/points/query/batch")[0].body["searches"]
        assert len(searches) == rerank.shortlist and {s["limit"] for s in searches} == {rerank.k + 1}
        assert not any(s.get("with_vector") for s in searches) and not any(s.get("filter") for s in searches)
        for positive, negative, photos in edge_checks.RECOMMENDATIONS:
            pos, neg = [ids[i] for i in positive], [ids[i] for i in negative]
            photo = vectors[photos] if photos else None
            for group_by in (None, "listing"):
                want = gallery.recommend(pos, neg, photo, 6, (), group_by, rerank=rerank)
                for other in (store, edge):
                    edge_checks.same_reranked(other.recommend(pos, neg, photo, 6, (), group_by, rerank=rerank), want)
        assert not standin.calls("POST", "/collections/cars/points/query/groups")  # grouped from the re-ranked list
        assert_contract(standin)
    edge.close()


CHECKS = {name: function for name, function in sorted(globals().items()) if name.startswith("check_")}


def main(names: list[str]) -> int:
    return edge_checks.main(names, CHECKS)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
