"""HTTP client of the embedding server: requests + numpy only (no torch).

Retries what is worth retrying (connection refused or reset, 503 while no worker is ready, 507
"Worker died." for the requests of a batch whose worker process died) with exponential backoff,
and turns every failure into a `ClientError` with one readable line. With token authorization on
(serve/config.public.properties) it sends the inference key from CARS_API_KEY or `api_key`.

It asks for the binary answer (`Accept: application/octet-stream`: float32 bytes, a sixth of the
JSON's size and no float formatting on the server) and still reads JSON from a server that
answers with it.

A KServe predictor URL (docs/deploy.md) is recognised by its path and spoken to in its protocol:
`.../v1/models/cars:predict` gets `{"instances": [{"data": "<base64>"}]}`, `.../v2/models/cars/infer`
the open inference protocol's BYTES input; either answers with the handler's JSON object for the
image, inside the envelope. The bearer token goes along as to TorchServe (CARS_API_KEY or `api_key`):
on KServe the cluster's ingress checks it.
"""

from __future__ import annotations

import base64
import json
import os
import re
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import numpy as np
import requests

from core.errors import UsageError

DEFAULT_URL = "http://127.0.0.1:8080/predictions/cars"
API_KEY_ENV = "CARS_API_KEY"
# Embedding is idempotent, so a retry is always safe. TorchServe 0.12 answers the requests of a
# batch whose worker died with 507 ("Worker died."), then restarts the worker.
RETRYABLE_STATUS = {502, 503, 504, 507}
IMAGE_ERRORS = {400, 413, 415}  # the handler's verdicts on one image
BINARY = "application/octet-stream"
# KServe predictor paths: the v1 protocol and the open inference protocol (v2), any model name.
KSERVE_PATHS = {
    "kserve-v1": re.compile(r"/v1/models/[^/:]+:predict"),
    "kserve-v2": re.compile(r"/v2/models/[^/]+(/versions/[^/]+)?/infer"),
}


def protocol_of(url: str) -> str:
    """The protocol `url` speaks: "kserve-v1" or "kserve-v2" (a KServe predictor), else "torchserve"."""
    path = urlsplit(url).path.rstrip("/")
    return next((name for name, pattern in KSERVE_PATHS.items() if pattern.fullmatch(path)), "torchserve")


def kserve_request(protocol: str, image: bytes) -> dict:
    """The JSON body that asks a KServe predictor for the embedding of one image."""
    encoded = base64.b64encode(image).decode()
    if protocol == "kserve-v1":
        return {"instances": [{"data": encoded}]}
    return {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [encoded]}]}


def kserve_answer(protocol: str, payload: object) -> dict:
    """The handler's object for the one image of a KServe answer (an embedding or an error); {} if
    the answer has none: v1 `{"predictions": [object]}`, v2 `{"outputs": [{"data": ["<object as JSON>"]}]}`."""
    try:
        if protocol == "kserve-v1":
            answer = payload["predictions"][0]
        else:
            answer = json.loads(payload["outputs"][0]["data"][0])
    except (KeyError, IndexError, TypeError, ValueError):
        return {}
    return answer if isinstance(answer, dict) else {}


class ClientError(UsageError):
    """Anything the user must fix or retry later; CLIs print it as one line and exit 2."""


class ServerUnavailable(ClientError):
    """The embedding server could not be reached or stayed busy through every retry (HTTP 503 for an app)."""


class ImageRejected(ClientError):
    """The server refused this image (a 4xx): the file is the problem, not the server."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Embedding:
    vector: np.ndarray  # float32 [dim], unit length
    model_version: str


class EmbeddingClient:
    """Keep-alive connections to `/predictions/<model>` or a KServe predictor URL; safe to share
    between threads (a requests.Session per thread, since Session itself is not guaranteed thread-safe)."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        timeout: float = 60.0,
        retries: int = 4,
        backoff: float = 0.25,
        api_key: str | None = None,
    ):
        self.url = url
        self.protocol = protocol_of(url)
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.api_key = api_key or os.environ.get(API_KEY_ENV) or None
        self._local = threading.local()

    @property
    def session(self) -> requests.Session:
        if not hasattr(self._local, "session"):
            self._local.session = requests.Session()
            self._local.session.headers["Accept"] = f"{BINARY}, application/json;q=0.5"
            if self.api_key:
                self._local.session.headers["Authorization"] = f"Bearer {self.api_key}"
        return self._local.session

    def embed(self, image: bytes) -> Embedding:
        body = {"data": image} if self.protocol == "torchserve" else {"json": kserve_request(self.protocol, image)}
        for attempt in range(self.retries + 1):
            try:
                response = self.session.post(self.url, timeout=self.timeout, **body)
            except requests.exceptions.InvalidURL as error:
                raise ClientError(f"invalid server URL {self.url!r}: {error}") from None
            except (requests.exceptions.MissingSchema, requests.exceptions.InvalidSchema) as error:
                raise ClientError(f"invalid server URL {self.url!r}: {error}") from None
            except requests.RequestException as error:
                if attempt == self.retries:
                    raise ServerUnavailable(
                        f"cannot reach the server at {self.url} ({type(error).__name__}); is it running? (make serve)"
                    ) from None
            else:
                if response.status_code not in RETRYABLE_STATUS or attempt == self.retries:
                    return self._parse(response)
            time.sleep(self.backoff * 2**attempt)
        raise AssertionError("unreachable")

    def _parse(self, response: requests.Response) -> Embedding:
        if response.status_code == 200 and response.headers.get("Content-Type", "").startswith(BINARY):
            return self._parse_binary(response)
        try:
            payload = response.json()
        except ValueError:
            payload = {}
        if not isinstance(payload, dict):
            payload = {}
        if response.status_code == 200 and self.protocol != "torchserve":
            payload = kserve_answer(self.protocol, payload)  # per image, errors included: the request is 200
            if "error" in payload:
                status = payload.get("status")
                raise ImageRejected(str(payload["error"]), status if isinstance(status, int) else 400)
        if response.status_code in IMAGE_ERRORS and "error" in payload:
            raise ImageRejected(payload["error"], response.status_code)
        if response.status_code == 413:  # over the frontend's max_request_size: no JSON from it
            raise ImageRejected("request body too large for the server (its max_request_size)", 413)
        if response.status_code == 401 or payload.get("type") == "InvalidKeyException":
            sent = "wrong or expired key" if self.api_key else "no key sent"
            if self.protocol != "torchserve":
                raise ClientError(
                    f"the server at {self.url} requires a bearer token ({sent}): "
                    f"set {API_KEY_ENV} or --api-key to the token its ingress accepts (docs/deploy.md)"
                )
            raise ClientError(
                f"the server at {self.url} requires its API key ({sent}): "
                f"set {API_KEY_ENV} or --api-key to the inference key in the server's key_file.json"
            )
        if response.status_code == 404:
            raise ClientError(f"no model at {self.url} (HTTP 404): check --url and that the model is served")
        if response.status_code in RETRYABLE_STATUS:
            detail = payload.get("message") or payload.get("error") or f"HTTP {response.status_code}"
            raise ServerUnavailable(f"the server at {self.url} is not ready: {detail}")
        if response.status_code != 200 or "embedding" not in payload:
            detail = payload.get("message") or payload.get("error") or response.text[:200]
            raise ClientError(f"server error HTTP {response.status_code} from {self.url}: {detail}")
        return Embedding(np.asarray(payload["embedding"], dtype=np.float32), payload["model_version"])

    def _parse_binary(self, response: requests.Response) -> Embedding:
        """Little-endian float32 bytes, their count and model version in headers (serve/handler.py)."""
        dim, version = response.headers.get("X-Embedding-Dim", ""), response.headers.get("X-Model-Version")
        if not dim.isdigit() or not version or len(response.content) != 4 * int(dim):
            raise ClientError(
                f"malformed binary answer from {self.url}: {len(response.content)} bytes, "
                f"X-Embedding-Dim {dim!r}, X-Model-Version {version!r}"
            )
        return Embedding(np.frombuffer(response.content, dtype="<f4").astype(np.float32), version)
