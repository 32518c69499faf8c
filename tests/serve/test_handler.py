"""The handler with a small fake TorchServe context (the real server is in test_server.py)."""

import base64

import numpy as np
import pytest

from serve.embedder import Embedder, decode_image
from serve.handler import CarsHandler
from tests.serve.images import bad_images, valid_images


class FakeMetrics:
    def __init__(self):
        self.recorded = []

    def add_metric(self, name, value, unit, idx=None, dimensions=None, metric_type=None):
        self.recorded.append((name, value))


class FakeContext:
    """The parts of ts.context.Context the handler uses."""

    def __init__(self, model_dir, headers=None):
        self.system_properties = {"model_dir": str(model_dir), "gpu_id": None}
        self.model_yaml_config = {}
        self.headers = headers or {}
        self.statuses = {}
        self.metrics = FakeMetrics()

    def get_request_header(self, idx, key):
        return self.headers.get(idx, {}).get(key)

    def set_response_status(self, code=200, phrase="", idx=0):
        self.statuses[idx] = code


@pytest.fixture(scope="module")
def handler(tiny_run):
    handler = CarsHandler()
    handler.initialize(FakeContext(tiny_run))
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
    context = FakeContext(tiny_run, headers={7: {"Content-Type": "application/json"}})
    responses = handler.handle(batch, context)
    assert len(responses) == len(batch)
    assert context.statuses == {1: bad_status, 3: 400, 4: 400, 5: 415, 6: 400, 7: 400}
    for index, response in enumerate(responses):
        if index in context.statuses:
            assert set(response) == {"error", "status"} and response["status"] == context.statuses[index]
        else:
            assert len(response["embedding"]) == response["dim"] == handler.embedder.dim
            assert response["model_version"] == handler.embedder.model_version
    assert np.allclose(responses[0]["embedding"], responses[2]["embedding"])  # raw bytes == base64 JSON
    expected = Embedder.load(tiny_run).embed([decode_image(good)])[0]
    assert np.allclose(responses[0]["embedding"], expected, atol=1e-6)
    assert context.metrics.recorded == [("BatchSize", len(batch))]


def test_limits_come_from_the_model_config_or_the_environment(tiny_run, monkeypatch):
    monkeypatch.setenv("CARS_MAX_BYTES", "1000")
    handler = CarsHandler()
    context = FakeContext(tiny_run)
    context.model_yaml_config = {"handler": {"max_pixels": 500}}
    handler.initialize(context)
    assert handler.limits.max_bytes == 1000 and handler.limits.max_pixels == 500
    handler.handle([{"body": valid_images()["png"]}], context)
    assert context.statuses == {0: 413}
