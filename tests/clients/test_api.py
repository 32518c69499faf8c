"""EmbeddingClient against the real server: the binary answer it asks for and the JSON fallback."""

from __future__ import annotations

import numpy as np
import pytest
import requests

from clients.api import ClientError, EmbeddingClient
from serve.embedder import Embedder, decode_image
from tests.serve.images import valid_images

pytestmark = pytest.mark.slow


def test_binary_and_json_answers_give_the_in_process_embedding(server):
    body = valid_images()["jpeg"]
    binary_client = EmbeddingClient(server["url"], retries=0)
    json_client = EmbeddingClient(server["url"], retries=0)
    json_client.session.headers["Accept"] = "application/json"  # what a server without binary answers does
    binary, as_json = binary_client.embed(body), json_client.embed(body)
    embedder = Embedder.load(server["run"])
    assert binary.model_version == as_json.model_version == embedder.model_version
    assert binary.vector.dtype == np.float32 and binary.vector.flags.writeable
    assert np.array_equal(binary.vector, as_json.vector)
    assert np.allclose(binary.vector, embedder.embed([decode_image(body)])[0], atol=1e-5)


@pytest.mark.parametrize(
    "content, headers",
    [
        (b"\x00" * 10, {"X-Embedding-Dim": "4", "X-Model-Version": "v"}),  # truncated body
        (b"\x00" * 16, {"X-Embedding-Dim": "four", "X-Model-Version": "v"}),
        (b"\x00" * 16, {"X-Embedding-Dim": "4"}),  # no model version
    ],
)
def test_malformed_binary_answer_is_a_client_error(content, headers):
    response = requests.Response()
    response.status_code = 200
    response.headers.update({"Content-Type": "application/octet-stream", **headers})
    response._content = content
    with pytest.raises(ClientError, match="malformed binary answer"):
        EmbeddingClient("http://127.0.0.1:1/predictions/cars")._parse(response)
