"""A stand-in for a Qdrant server's REST API, for the contract tests of clients/qdrant_store.py.

This project ships no Qdrant server and none can be installed on this machine (docs/deploy.md), so
the tests check what qdrant-client sends against qdrant-client's own REST models instead. The
stand-in listens on a free port of 127.0.0.1, records every request (method, path, query, JSON
body) and answers with minimal valid Qdrant responses: collections and points kept in memory,
scroll, count and retrieve over them, and queries scored by brute-force cosine **without applying
their filter** (a filter's shape is checked, not evaluated: the real engine's filtering is tested
through Qdrant Edge). `fail` makes it answer the next requests of a route with an error status
(and headers, such as a 429's Retry-After).
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
from qdrant_client.http import models

# The REST model of each request body the store sends, by method and path (qdrant-client 1.20).
REQUEST_MODELS = {
    ("PUT", r"/collections/[^/]+"): models.CreateCollection,
    ("PATCH", r"/collections/[^/]+"): models.UpdateCollection,
    ("PUT", r"/collections/[^/]+/index"): models.CreateFieldIndex,
    ("PUT", r"/collections/[^/]+/points"): models.PointsList,
    ("POST", r"/collections/[^/]+/points"): models.PointRequest,
    ("POST", r"/collections/[^/]+/points/scroll"): models.ScrollRequest,
    ("POST", r"/collections/[^/]+/points/count"): models.CountRequest,
    ("POST", r"/collections/[^/]+/points/query"): models.QueryRequest,
    ("POST", r"/collections/[^/]+/points/query/groups"): models.QueryGroupsRequest,
    ("POST", r"/collections/[^/]+/points/query/batch"): models.QueryRequestBatch,
    ("PUT", r"/collections/[^/]+/points/payload"): models.SetPayload,
    ("POST", r"/collections/[^/]+/points/delete"): models.PointIdsList,
}


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    body: Any

    def model(self):
        """The qdrant-client REST model this request's body must validate against, or None."""
        return next(
            (model for (method, pattern), model in REQUEST_MODELS.items()
             if method == self.method and re.fullmatch(pattern, self.path)),
            None,
        )  # fmt: skip


class StandIn:
    def __init__(self) -> None:
        self.requests: list[Request] = []
        self.collections: dict[str, dict[str, Any]] = {}
        # [method, path pattern, status, times left, requests to let through first, headers]
        self.failures: list[list] = []
        self.lock = threading.Lock()
        handler = type("Handler", (_Handler,), {"standin": self})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> StandIn:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def location(self, collection: str = "cars", options: str = "") -> str:
        return f"qdrant+http://127.0.0.1:{self.server.server_address[1]}/{collection}{options}"

    def fail(
        self, method: str, pattern: str, status: int, times: int, after: int = 0, headers: dict | None = None
    ) -> None:
        """Answers `times` requests of `method` on a path matching `pattern` with `status` (and
        `headers`), once `after` such requests have been answered normally."""
        with self.lock:
            self.failures.append([method, pattern, status, times, after, headers or {}])

    def calls(self, method: str, pattern: str) -> list[Request]:
        return [r for r in self.requests if r.method == method and re.fullmatch(pattern, r.path)]

    # The server side -----------------------------------------------------------------------------

    def handle(self, method: str, path: str, query: dict[str, str], body: Any) -> tuple:
        """(status, JSON answer) or (status, JSON answer, headers)."""
        with self.lock:
            self.requests.append(Request(method, path, query, body))
            for failure in self.failures:
                if failure[0] == method and re.fullmatch(failure[1], path) and failure[3] > 0:
                    if failure[4] > 0:
                        failure[4] -= 1
                        break
                    failure[3] -= 1
                    error = {"status": {"error": f"stand-in: injected {failure[2]}"}, "time": 0.0}
                    return failure[2], error, failure[5]
            if method == "GET" and path == "/":
                return 200, {"title": "qdrant - vector search engine", "version": "1.20.0"}
            match = re.fullmatch(r"/collections/([^/]+)(/.*)?", path)
            if not match:
                return 404, {"status": {"error": f"stand-in: no route {method} {path}"}, "time": 0.0}
            name, rest = match.group(1), match.group(2) or ""
            result = self._collection(method, name, rest, body or {})
        if isinstance(result, tuple):
            return result
        return 200, {"result": result, "status": "ok", "time": 0.0}

    def _collection(self, method: str, name: str, rest: str, body: dict) -> Any:
        collection = self.collections.get(name)
        if (method, rest) == ("GET", "/exists"):
            return {"exists": collection is not None}
        if (method, rest) == ("PUT", ""):
            if collection is not None:
                return 400, {"status": {"error": f"Wrong input: Collection `{name}` already exists!"}, "time": 0.0}
            self.collections[name] = {"config": body, "points": {}, "indexes": {}, "metadata": body.get("metadata")}
            return True
        if collection is None:
            return 404, {"status": {"error": f"Not found: Collection `{name}` doesn't exist!"}, "time": 0.0}
        points = collection["points"]
        if (method, rest) == ("GET", ""):
            return self._info(collection)
        if (method, rest) == ("DELETE", ""):
            del self.collections[name]
            return True
        if (method, rest) == ("PATCH", ""):
            collection["metadata"] = {**(collection["metadata"] or {}), **(body.get("metadata") or {})}
            return True
        if (method, rest) == ("PUT", "/index"):
            collection["indexes"][body["field_name"]] = body["field_schema"]
            return {"operation_id": 0, "status": "completed"}
        if (method, rest) == ("PUT", "/points"):
            for point in body["points"]:
                vector = np.asarray(point["vector"], dtype=np.float32)
                points[str(point["id"])] = (vector / np.linalg.norm(vector), point.get("payload") or {})
            return {"operation_id": 0, "status": "completed"}
        if (method, rest) == ("PUT", "/points/payload"):  # overwrite_payload
            for i in body["points"]:
                if str(i) in points:
                    points[str(i)] = (points[str(i)][0], dict(body["payload"]))
            return {"operation_id": 0, "status": "completed"}
        if (method, rest) == ("POST", "/points/delete"):
            for i in body["points"]:
                points.pop(str(i), None)
            return {"operation_id": 0, "status": "completed"}
        if (method, rest) == ("POST", "/points/count"):
            return {"count": len(points)}
        if (method, rest) == ("POST", "/points"):
            return [self._record(i, points[str(i)], body) for i in body["ids"] if str(i) in points]
        if (method, rest) == ("POST", "/points/scroll"):
            ids = sorted(i for i in points if body.get("offset") is None or i >= str(body["offset"]))
            limit = body.get("limit") or 10
            page, rest_ids = ids[:limit], ids[limit:]
            return {"points": [self._record(i, points[i], body) for i in page],
                    "next_page_offset": rest_ids[0] if rest_ids else None}  # fmt: skip
        if (method, rest) == ("POST", "/points/query"):
            return self._answer(body, points)
        if (method, rest) == ("POST", "/points/query/batch"):
            return [self._answer(search, points) for search in body["searches"]]
        if (method, rest) == ("POST", "/points/query/groups"):  # Qdrant's grouping, filter not applied
            query, examples = self._query_vector(body["query"], points)
            scored = sorted(((float(v @ query), i) for i, (v, _) in points.items() if i not in examples), reverse=True)
            groups: dict = {}
            for score, i in scored:
                value = points[i][1].get(body["group_by"])
                if value is None or (value not in groups and len(groups) == (body.get("limit") or 10)):
                    continue
                hits = groups.setdefault(value, [])
                if len(hits) < (body.get("group_size") or 3):
                    hits.append({**self._record(i, points[i], body), "score": score, "version": 0})
            return {"groups": [{"id": value, "hits": hits} for value, hits in groups.items()]}
        return 404, {"status": {"error": f"stand-in: no route {method} /collections/{name}{rest}"}, "time": 0.0}

    def _answer(self, body: dict, points: dict) -> dict:
        """One query's best `limit` points, by brute-force cosine."""
        query, examples = self._query_vector(body["query"], points)
        scored = sorted(((float(v @ query), i) for i, (v, _) in points.items() if i not in examples), reverse=True)
        found = scored[: body.get("limit") or 10]
        return {"points": [{**self._record(i, points[i], body), "score": s, "version": 0} for s, i in found]}

    @staticmethod
    def _query_vector(query: Any, points: dict) -> tuple[np.ndarray, set[str]]:
        """A nearest query's vector, or a sum_scores recommendation's (sum of positives minus sum
        of negatives, ids looked up), with the example ids Qdrant leaves out of the results."""
        if not isinstance(query, dict):
            return np.asarray(query, dtype=np.float32), set()
        if "nearest" in query:
            return np.asarray(query["nearest"], dtype=np.float32), set()
        recommend = query["recommend"]
        assert recommend.get("strategy") == "sum_scores", recommend

        def vectors(examples):
            return [points[str(e)][0] if isinstance(e, str) else np.asarray(e, np.float32) for e in examples or []]

        total = sum(vectors(recommend.get("positive")), np.float32(0)) - sum(vectors(recommend.get("negative")), 0)
        ids = {e for e in (recommend.get("positive") or []) + (recommend.get("negative") or []) if isinstance(e, str)}
        return np.asarray(total, dtype=np.float32), ids

    @staticmethod
    def _record(point_id: str, point: tuple[np.ndarray, dict], body: dict) -> dict:
        vector, payload = point
        selector = body.get("with_payload")
        if isinstance(selector, dict):
            selector = selector.get("include")
        if isinstance(selector, list):
            payload = {key: value for key, value in payload.items() if key in selector}
        record = {"id": point_id, "payload": payload if selector else None}
        if body.get("with_vector"):
            record["vector"] = vector.tolist()
        return record

    @staticmethod
    def _info(collection: dict) -> dict:
        """GET /collections/NAME, built with qdrant-client's own models so that it parses as theirs."""
        config = collection["config"]
        hnsw = {"m": 16, "ef_construct": 100, "full_scan_threshold": 10_000, **(config.get("hnsw_config") or {})}
        info = models.CollectionInfo(
            status=models.CollectionStatus.GREEN, optimizer_status=models.OptimizersStatusOneOf.OK,
            segments_count=1, points_count=len(collection["points"]), indexed_vectors_count=0,
            config=models.CollectionConfig(
                params=models.CollectionParams(
                    vectors=config["vectors"], shard_number=config.get("shard_number") or 1,
                    replication_factor=config.get("replication_factor") or 1,
                    write_consistency_factor=config.get("write_consistency_factor") or 1,
                    on_disk_payload=config.get("on_disk_payload", True),
                ),
                hnsw_config=models.HnswConfig(**hnsw),
                optimizer_config=models.OptimizersConfig(default_segment_number=0, flush_interval_sec=5),
                quantization_config=config.get("quantization_config"), metadata=collection["metadata"],
            ),
            payload_schema={
                field: models.PayloadIndexInfo(data_type=schema, points=len(collection["points"]))
                for field, schema in collection["indexes"].items()
            },
        )  # fmt: skip
        return info.model_dump(mode="json", exclude_none=True)


class _Handler(BaseHTTPRequestHandler):
    standin: StandIn
    protocol_version = "HTTP/1.1"

    def _serve(self) -> None:
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        body = json.loads(raw) if raw else None
        query = {key: values[-1] for key, values in parse_qs(url.query).items()}
        headers: dict[str, str] = {}
        try:
            status, answer, *more = self.standin.handle(self.command, url.path, query, body)
            headers = more[0] if more else {}
        except Exception as error:  # a stand-in bug: a 500 the test sees, not a dropped connection
            status, answer = 500, {"status": {"error": f"stand-in: {type(error).__name__}: {error}"}, "time": 0.0}
        data = json.dumps(answer).encode()
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_PATCH = do_DELETE = _serve

    def log_message(self, *args) -> None:
        pass
