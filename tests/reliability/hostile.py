"""Hostile request bodies beyond tests/serve/images.py: real decompression bombs and malformed requests."""

from __future__ import annotations

import base64
import struct
import zlib
from functools import cache

from tests.serve.images import bad_images, valid_images


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


@cache
def png_bomb(width: int = 30_000, height: int = 30_000) -> bytes:
    """A complete, valid 1-bit black PNG: 30000 x 30000 = 900 MP in ~110 KB (decoded RGB: 2.7 GB)."""
    row = b"\0" * (1 + (width + 7) // 8)  # filter byte + packed bits
    packer = zlib.compressobj(9)
    data = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # bit depth 1, grayscale
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", data) + _chunk(b"IEND", b"")


def hostile_requests() -> dict[str, tuple[dict, int]]:
    """name -> (keyword arguments of requests.post, the 4xx the server must answer with)."""
    cases = {name: ({"data": body}, status) for name, (body, status) in bad_images().items()}
    jpeg = valid_images()["jpeg"]
    cases |= {
        "bomb-30k-real-110kb": ({"data": png_bomb()}, 413),
        "bomb-8k-over-40mp-cap": ({"data": png_bomb(8_000, 8_000)}, 413),
        "over-handler-byte-cap": ({"data": jpeg + b"\0" * (11 * 2**20)}, 413),
        "over-frontend-request-size": ({"data": jpeg + b"\0" * (17 * 2**20)}, 413),
        "json-array": ({"json": [1, 2, 3]}, 400),
        "json-string": ({"json": "car.jpg"}, 400),
        "json-number": ({"json": 42}, 400),
        "json-null-image": ({"json": {"image": None}}, 400),
        "json-object-without-image": ({"json": {"picture": "abc"}}, 400),
        "json-malformed": ({"data": b'{"image": "ab', "headers": {"Content-Type": "application/json"}}, 400),
        "base64-not-decoding": ({"json": {"image": "%%% not base64 %%%"}}, 400),
        "base64-of-text": ({"json": {"image": base64.b64encode(b"just some text").decode()}}, 415),
        "base64-of-truncated-jpeg": ({"json": {"image": base64.b64encode(jpeg[: len(jpeg) // 2]).decode()}}, 400),
        "multipart-without-file": ({"data": {"note": "no file here"}}, 400),
        "multipart-other-field": ({"files": {"picture": ("car.jpg", jpeg, "image/jpeg")}}, 400),
        "multipart-empty-file": ({"files": {"data": ("car.jpg", b"", "image/jpeg")}}, 400),
        "text-plain": ({"data": b"hello", "headers": {"Content-Type": "text/plain"}}, 415),
    }
    return cases
