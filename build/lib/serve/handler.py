"""TorchServe handler: a thin adapter over `serve.embedder.Embedder`.

It parses each request of a batch (raw bytes, multipart field `data`, or JSON `{"image":
"<base64>"}`), answers a bad item with its own 4xx and a JSON error without failing the others,
embeds the good ones in one batch, and reports the batch size as a metric.

Responses are encoded here, not by TorchServe: its fallback for dicts is `json.dumps(indent=2)`,
which takes Python's slow pure-Python encoder and, on a GPU, caps a worker well below the model
(docs/benchmarks.md). A client that sends `Accept: application/octet-stream` gets the embedding as
raw little-endian float32 bytes, with its dimension and model version in `X-Embedding-Dim` and
`X-Model-Version` headers; everyone else gets compact JSON.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
from typing import Any

import torch
from ts.metrics.metric_type_enum import MetricTypes
from ts.torch_handler.base_handler import BaseHandler

from serve.embedder import Embedder, ImageLimits, InvalidImage

logger = logging.getLogger(__name__)

USAGE = 'send image bytes, a multipart file field "data", or JSON {"image": "<base64>"}'
JSON = "application/json"
BINARY = "application/octet-stream"  # what a client puts in Accept to get raw float32 bytes


def request_bytes(item: dict[str, Any], content_type: str = "") -> bytes:
    """The encoded image of one request; TorchServe has already parsed JSON and text bodies."""
    body = item.get("data")
    if body is None:
        body = item.get("body")
    if body is None:
        raise InvalidImage(f"no image in the request: {USAGE}", 400)
    if isinstance(body, (bytes, bytearray)):
        if content_type.startswith("application/json"):  # TorchServe could not parse it
            raise InvalidImage('invalid JSON: send {"image": "<base64>"}', 400)
        return bytes(body)
    if isinstance(body, dict):
        encoded = body.get("image")
        if not isinstance(encoded, str):
            raise InvalidImage('JSON body must be an object {"image": "<base64>"}', 400)
        try:
            return base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidImage('"image" is not valid base64', 400) from None
    if isinstance(body, list):
        raise InvalidImage('JSON body must be an object {"image": "<base64>"}, not an array', 400)
    if content_type.startswith("application/json"):  # a JSON string, number, true/false
        raise InvalidImage(f'JSON body must be an object {{"image": "<base64>"}}, not {type(body).__name__}', 400)
    raise InvalidImage(f"text is not an image: {USAGE}", 415)


def limits_from(config: dict[str, Any]) -> ImageLimits:
    """Caps from a model config's `handler:` section if given, else the environment, else defaults."""
    defaults = ImageLimits()
    return ImageLimits(
        max_bytes=int(config.get("max_bytes", os.environ.get("CARS_MAX_BYTES", defaults.max_bytes))),
        max_pixels=int(config.get("max_pixels", os.environ.get("CARS_MAX_PIXELS", defaults.max_pixels))),
    )


def json_bytes(payload: dict[str, Any]) -> bytes:
    """Compact JSON through the C encoder (2x TorchServe's indented fallback, and a smaller body)."""
    return json.dumps(payload, separators=(",", ":")).encode()


def header(context, index: int, name: str) -> str:
    """A request header, whatever case the frontend passed it in."""
    value = context.get_request_header(index, name) or context.get_request_header(index, name.lower())
    return value or ""


class CarsHandler(BaseHandler):
    def initialize(self, context) -> None:
        properties = context.system_properties
        gpu_id = properties.get("gpu_id")
        device = f"cuda:{gpu_id}" if torch.cuda.is_available() and gpu_id is not None else "cpu"
        self.limits = limits_from((context.model_yaml_config or {}).get("handler", {}))
        self.embedder = Embedder.load(properties["model_dir"], device=device)
        self.initialized = True
        logger.info(
            "cars model %s on %s: dim %d, limits %s",
            self.embedder.model_version[:12],
            device,
            self.embedder.dim,
            self.limits,
        )

    def handle(self, data: list[dict[str, Any]], context) -> list[bytes]:
        responses: list[bytes] = [b"" for _ in data]
        bodies, positions = [], []
        for index, item in enumerate(data):
            try:
                content_type = header(context, index, "Content-Type")
                bodies.append(request_bytes(item, content_type.lower()))
                positions.append(index)
            except InvalidImage as error:
                self._reject(context, responses, index, error)
        # One call for the whole batch: on CUDA the embedder decodes its JPEGs together (nvJPEG).
        results = self.embedder.embed_bytes(bodies, self.limits) if bodies else []
        dim, version = self.embedder.dim, self.embedder.model_version
        for position, result in zip(positions, results, strict=True):
            if isinstance(result, InvalidImage):
                self._reject(context, responses, position, result)
            elif BINARY in header(context, position, "Accept").lower():
                context.set_response_content_type(position, BINARY)
                context.set_response_header(position, "X-Embedding-Dim", str(dim))
                context.set_response_header(position, "X-Model-Version", version)
                responses[position] = result.astype("<f4").tobytes()
            else:
                context.set_response_content_type(position, JSON)
                responses[position] = json_bytes({"embedding": result.tolist(), "dim": dim, "model_version": version})
        context.metrics.add_metric("BatchSize", len(data), "count", metric_type=MetricTypes.GAUGE)
        return responses

    @staticmethod
    def _reject(context, responses: list[bytes], index: int, error: InvalidImage) -> None:
        context.set_response_status(code=error.status, phrase=str(error)[:100], idx=index)
        context.set_response_content_type(index, JSON)
        responses[index] = json_bytes({"error": str(error), "status": error.status})
