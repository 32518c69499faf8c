"""Encoded test images: every accepted format and mode, and every kind of hostile input."""

from __future__ import annotations

import io
import struct
import zipfile
import zlib

import numpy as np
from PIL import Image


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def photo(size: tuple[int, int] = (96, 64), seed: int = 0) -> Image.Image:
    """A colourful RGB picture (noise + gradient): survives lossy formats recognisably."""
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 255, size[0], dtype=np.float32)
    base = np.stack([np.tile(x, (size[1], 1)), np.full((size[1], size[0]), 128.0), np.tile(x[::-1], (size[1], 1))], -1)
    noisy = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(noisy, "RGB")


def valid_images() -> dict[str, bytes]:
    """Unusual-but-valid inputs the server must accept (200)."""
    rgb = photo()
    exif = Image.Exif()
    exif[0x0112] = 6
    frames = [photo(seed=1).convert("P"), photo(seed=2).convert("P")]
    gif = io.BytesIO()
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:])
    sixteen = Image.fromarray(np.arange(96 * 64, dtype=np.uint16).reshape(64, 96) * 10)  # mode I;16
    return {
        "jpeg": encode(rgb, "JPEG"),
        "png": encode(rgb, "PNG"),
        "webp": encode(rgb, "WEBP"),
        "bmp": encode(rgb, "BMP"),
        "tiff": encode(rgb, "TIFF"),
        "gif-animated": gif.getvalue(),
        "grayscale": encode(rgb.convert("L"), "PNG"),
        "cmyk-jpeg": encode(rgb.convert("CMYK"), "JPEG"),
        "palette": encode(rgb.convert("P"), "PNG"),
        "rgba": encode(rgb.convert("RGBA"), "PNG"),
        "16-bit": encode(sixteen, "PNG"),
        "exif-rotated": encode(rgb, "JPEG", exif=exif),
    }


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height pixels (a decompression bomb's header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


def zip_named_jpg() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("car.jpg", b"not really")
    return buffer.getvalue()


def bad_images() -> dict[str, tuple[bytes, int]]:
    """Hostile or broken bodies and the HTTP status each must get."""
    jpeg = encode(photo(), "JPEG")
    png = encode(photo(), "PNG")
    rng = np.random.default_rng(0)
    return {
        "empty": (b"", 400),
        "text": (b"hello, this is not an image", 415),
        "html": (b"<!doctype html><html><body>car</body></html>", 415),
        "svg": (b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect/></svg>', 415),
        "random-bytes": (rng.bytes(5000), 415),
        "truncated-jpeg": (jpeg[: len(jpeg) // 2], 400),
        "corrupt-png-body": (png[:60] + rng.bytes(len(png) - 60), 400),
        "zip-named-jpg": (zip_named_jpg(), 415),
        "bomb-header-100k": (png_claiming(100_000, 100_000), 413),
        "bomb-header-30k": (png_claiming(30_000, 30_000), 413),
    }
