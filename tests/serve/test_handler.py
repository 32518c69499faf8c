"""The handler with TorchServe's own request context (the real server is in test_server.py)."""

import base64
import json

import numpy as np
import pytest
from ts.context import Context, RequestProcessor

from serve.embedder import Embedder, decode_image
from serve.handler import CarsHandler
from tests.serve.images import bad_images, valid_images


class RecordedMetrics:
    """Stands in for TorchServe's metrics cache, which needs a running frontend's config."""

    def __init__(self):
        self.recorded = []

    def add_metric(self, name, value, unit, idx=None, dimensions=None, metric_type=None):
        self.recorded.append((name, value))


def make_context(model_dir, headers: list[dict[str, str]] | None = None, batch: int = 1) -> Context:
    """ts.context.Context as the worker builds it for a batch of requests with these headers."""
    context = Context("cars", str(model_dir), {}, batch, None, "0.12.0", metrics=RecordedMetrics())
    context.model_yaml_config = {}
    headers = headers or [{} for _ in range(batch)]
    context.request_processor = [RequestProcessor(h) for h in headers]
    return context


def statuses(context: Context, size: int) -> dict[int, int]:
    """Non-200 statuses by batch index."""
    codes = {i: context.get_response_status(i)[0] for i in range(size)}
    return {i: code for i, code in codes.items() if code != 200}


@pytest.fixture(scope="module")
def handler(tiny_run):
    handler = CarsHandler()
    handler.initialize(make_context(tiny_run))
    return handler


def test_mixed_batch_answers_each_item_on_its_own(handler, tiny_run):
    good = valid_images()["jpeg"]
    bad, bad_status = bad_images()["truncated-jpeg"]
    batch = [
        {"body": good},
        {"data": bad},
        {"body": {"image": base64.b64encode(good).decode()}},
        {"body": {"image": "%%%"}},
        {"body": [1, 2]},
        {"body": "plain text"},
        {"other": good},
        {"data": b"{not json"},
    ]
    headers = [{} for _ in batch]
    headers[7] = {"Content-Type": "application/json"}
    context = make_context(tiny_run, headers, len(batch))
    responses = handler.handle(batch, context)
    assert len(responses) == len(batch)
    failed = statuses(context, len(batch))
    assert failed == {1: bad_status, 3: 400, 4: 400, 5: 415, 6: 400, 7: 400}
    payloads = [json.loads(response) for response in responses]
    for index, payload in enumerate(payloads):
        assert context.get_response_content_type(index) == "application/json"
        if index in failed:
            assert set(payload) == {"error", "status"} and payload["status"] == failed[index]
        else:
            assert len(payload["embedding"]) == payload["dim"] == handler.embedder.dim
            assert payload["model_version"] == handler.embedder.model_version
    assert np.allclose(payloads[0]["embedding"], payloads[2]["embedding"])  # raw bytes == base64 JSON
    expected = Embedder.load(tiny_run).embed([decode_image(good)])[0]
    assert np.allclose(payloads[0]["embedding"], expected, atol=1e-6)
    assert context.metrics.recorded == [("BatchSize", len(batch))]


def test_binary_answers_are_the_json_embedding_as_float32_bytes(handler, tiny_run):
    good = valid_images()["jpeg"]
    bad, bad_status = bad_images()["truncated-jpeg"]
    binary = {"Accept": "application/octet-stream"}
    context = make_context(tiny_run, [binary, {"Accept": "*/*"}, binary], batch=3)
    raw, as_json, refused = handler.handle([{"body": good}, {"body": good}, {"body": bad}], context)
    assert context.get_response_content_type(0) == "application/octet-stream"
    headers = context.get_response_headers(0)
    assert int(headers["X-Embedding-Dim"]) == handler.embedder.dim
    assert headers["X-Model-Version"] == handler.embedder.model_version
    vector = np.frombuffer(raw, dtype="<f4")
    assert np.array_equal(vector, np.asarray(json.loads(as_json)["embedding"], dtype=np.float32))
    # An error stays a JSON message whatever the client accepts.
    assert statuses(context, 3) == {2: bad_status}
    assert context.get_response_content_type(2) == "application/json" and json.loads(refused)["error"]


def test_limits_come_from_the_model_config_or_the_environment(tiny_run, monkeypatch):
    monkeypatch.setenv("CARS_MAX_BYTES", "1000")
    handler = CarsHandler()
    context = make_context(tiny_run)
    context.model_yaml_config = {"handler": {"max_pixels": 500}}
    handler.initialize(context)
    assert handler.limits.max_bytes == 1000 and handler.limits.max_pixels == 500
    handler.handle([{"body": valid_images()["png"]}], context)
    assert statuses(context, 1) == {0: 413}
