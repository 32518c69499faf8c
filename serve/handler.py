"""TorchServe handler: a thin adapter over `serve.embedder.Embedder`.

It parses each request of a batch (raw bytes, multipart field `data`, or JSON `{"image":
"<base64>"}`), answers a bad item with its own 4xx and a JSON error without failing the others,
embeds the good ones in one batch, and reports the batch size as a metric.

Responses are encoded here, not by TorchServe: its fallback for dicts is `json.dumps(indent=2)`,
which takes Python's slow pure-Python encoder and, on a GPU, caps a worker well below the model
(docs/benchmarks.md). A client that sends `Accept: application/octet-stream` gets the embedding as
raw little-endian float32 bytes, with its dimension and model version in `X-Embedding-Dim` and
`X-Model-Version` headers; everyone else gets compact JSON.

Under KServe (serve/config.kserve.properties, docs/deploy.md) TorchServe's own envelope parses each
request and calls the handler with its images: the v1 protocol's `instances` (base64 strings, or
objects {"data": "<base64>"} / {"b64": ...}) or the open inference protocol's (v2) `inputs` (datatype
BYTES, one base64 image each). The handler embeds them in one batch and returns one JSON object per
image, an embedding or an error, which the envelope wraps into `{"predictions": [...]}` (v1) or
`{"outputs": [...]}` (v2, each output a BYTES string holding that JSON object).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import sys
from typing import Any

import torch
from ts.metrics.metric_type_enum import MetricTypes
from ts.torch_handler.base_handler import BaseHandler
from ts.torch_handler.request_envelope.kserve import KServeEnvelope
from ts.torch_handler.request_envelope.kservev2 import KServev2Envelope

from serve.embedder import Embedder, ImageLimits, InvalidImage

logger = logging.getLogger(__name__)

USAGE = 'send image bytes, a multipart file field "data", or JSON {"image": "<base64>"}'
JSON = "application/json"
BINARY = "application/octet-stream"  # what a client puts in Accept to get raw float32 bytes
V1_USAGE = '{"instances": ["<base64>", {"data": "<base64>"}, {"b64": "<base64>"}, ...]}'
V2_USAGE = '{"inputs": [{"name": "car-0", "shape": [1], "datatype": "BYTES", "data": ["<base64>"]}, ...]}'
V1_KEYS = ("data", "b64", "image")  # where a v1 instance object may hold its base64 image


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
        return decode_base64(encoded, '"image"')
    if isinstance(body, list):
        raise InvalidImage('JSON body must be an object {"image": "<base64>"}, not an array', 400)
    if content_type.startswith("application/json"):  # a JSON string, number, true/false
        raise InvalidImage(f'JSON body must be an object {{"image": "<base64>"}}, not {type(body).__name__}', 400)
    raise InvalidImage(f"text is not an image: {USAGE}", 415)


def decode_base64(encoded: str, what: str) -> bytes:
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidImage(f"{what} is not valid base64", 400) from None


def instance_bytes(instance: Any) -> bytes:
    """The image of one KServe v1 instance: a base64 string, or an object holding one under "data",
    "b64" or "image"."""
    encoded = instance
    if isinstance(instance, dict):
        encoded = next((instance[key] for key in V1_KEYS if key in instance), None)
    if not isinstance(encoded, str):
        raise InvalidImage(f'an instance is a base64 string or {{"data": "<base64>"}}: send {V1_USAGE}', 400)
    return decode_base64(encoded, "instance")


def input_bytes(tensor: Any) -> bytes:
    """The image of one open inference protocol (v2) input: datatype BYTES, shape [1] (or [-1]), one
    base64 string. TorchServe's kservev2 envelope has already replaced `data` by its first element,
    so an input of several images cannot be embedded whole: it is refused rather than cut short."""
    if not isinstance(tensor, dict) or tensor.get("datatype") != "BYTES":
        raise InvalidImage(f"an input is an image as base64 with datatype BYTES: send {V2_USAGE}", 400)
    name, shape = tensor.get("name"), tensor.get("shape") or [1]
    if not isinstance(shape, list) or any(not isinstance(size, int) or size > 1 for size in shape):
        raise InvalidImage(f"input {name!r} has shape {shape}: one image per input (shape [1]), N inputs for N", 400)
    if not isinstance(tensor.get("data"), str):
        raise InvalidImage(f'input {name!r}: "data" must be ["<base64>"]', 400)
    return decode_base64(tensor["data"], f"input {name!r}")


def envelope_of(caller: object) -> str | None:
    """The protocol, "v1" or "v2", when TorchServe's KServe envelope (service_envelope=kserve or
    kservev2) is the handler's caller, else None (TorchServe's own requests).

    An envelope does not tell the handler it is there: `BaseEnvelope.handle` parses the request, calls
    the handler with its instances or inputs and wraps what it returns, which must then be
    JSON-serialisable. So the handler asks who called it."""
    if isinstance(caller, KServev2Envelope):
        return "v2"
    if isinstance(caller, KServeEnvelope):
        return "v1"
    return None


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

    def handle(self, data: list[Any] | None, context) -> list[bytes] | list[dict[str, Any] | str]:
        protocol = envelope_of(sys._getframe(1).f_locals.get("self"))
        if protocol is not None:
            return self._handle_kserve(protocol, data or [], context)
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

    def _handle_kserve(self, protocol: str, items: list[Any], context) -> list[dict[str, Any] | str]:
        """The images of one KServe request, embedded in one batch. Per image a JSON object, an
        embedding or an error (the request stays 200 when some images fail); v2 gets it as a string,
        the content of a BYTES output. A request without images is answered 400 (for v2 the envelope
        then fails, having no input to name the answer after, and TorchServe answers 503)."""
        context.set_response_content_type(0, JSON)
        context.metrics.add_metric("BatchSize", len(items), "count", metric_type=MetricTypes.GAUGE)
        answers: list[dict[str, Any]] = [{} for _ in items]
        if not items:
            message = f"no images in the request: send {V1_USAGE if protocol == 'v1' else V2_USAGE}"
            context.set_response_status(code=400, phrase=message[:100], idx=0)
            answers = [{"error": message, "status": 400}]
        parse = instance_bytes if protocol == "v1" else input_bytes
        bodies, positions = [], []
        for index, item in enumerate(items):
            try:
                bodies.append(parse(item))
                positions.append(index)
            except InvalidImage as error:
                answers[index] = {"error": str(error), "status": error.status}
        results = self.embedder.embed_bytes(bodies, self.limits) if bodies else []
        dim, version = self.embedder.dim, self.embedder.model_version
        for position, result in zip(positions, results, strict=True):
            if isinstance(result, InvalidImage):
                answers[position] = {"error": str(result), "status": result.status}
            else:
                answers[position] = {"embedding": result.tolist(), "dim": dim, "model_version": version}
        return answers if protocol == "v1" else [json.dumps(answer, separators=(",", ":")) for answer in answers]

    @staticmethod
    def _reject(context, responses: list[bytes], index: int, error: InvalidImage) -> None:
        context.set_response_status(code=error.status, phrase=str(error)[:100], idx=index)
        context.set_response_content_type(index, JSON)
        responses[index] = json_bytes({"error": str(error), "status": error.status})
