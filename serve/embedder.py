"""Plain-Python car embedder: image bytes -> L2-normalised float32 embeddings.

No TorchServe import: the handler is a thin adapter over this, and tests and benchmarks use it
directly. Decoding is guarded (byte and pixel caps checked *before* pixels are decoded) and uses
the servable's own preprocessing, so serving applies exactly what training did.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from quaterion_models import SimilarityModel

from train.preprocessing import Preprocessing, to_rgb

FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF")


class InvalidImage(ValueError):
    """A request item that cannot be embedded; `status` is the HTTP code to answer with."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class ImageLimits:
    """Caps on what one request item may cost before any pixel is decoded."""

    max_bytes: int = 10 * 1024 * 1024
    max_pixels: int = 40_000_000  # 40 MP: well above any camera photo of a car


def decode_image(data: bytes, limits: ImageLimits = ImageLimits()) -> Image.Image:
    """Checks and decodes one encoded image; raises InvalidImage with a 4xx status."""
    if not data:
        raise InvalidImage("empty request body: send an image", 400)
    if len(data) > limits.max_bytes:
        raise InvalidImage(f"image has {len(data)} bytes; the limit is {limits.max_bytes} bytes", 413)
    try:
        image = Image.open(io.BytesIO(data), formats=FORMATS)  # reads the header only
    except Image.DecompressionBombError as error:
        raise InvalidImage(f"image too large: {error}", 413) from None
    except (UnidentifiedImageError, OSError, ValueError):
        raise InvalidImage(f"not a supported image; send one of {', '.join(FORMATS)}", 415) from None
    width, height = image.size
    if width * height > limits.max_pixels:
        raise InvalidImage(f"image has {width}x{height} pixels; the limit is {limits.max_pixels} pixels", 413)
    try:
        image.load()
        return to_rgb(image)
    except Image.DecompressionBombError as error:
        raise InvalidImage(f"image too large: {error}", 413) from None
    except Exception as error:  # truncated or corrupt data: PIL raises many types
        raise InvalidImage(f"cannot decode image: {type(error).__name__}: {error}", 400) from None


class Embedder:
    """Loads a servable directory and embeds batches of images on one device."""

    def __init__(self, model: SimilarityModel, model_version: str, device: str = "cpu", batch_size: int = 32):
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.model.eval()  # SimilarityModel.eval() returns None: never chain it
        self.model_version = model_version
        self.batch_size = batch_size
        self.encoder = next(iter(model.encoders.values()))
        self.preprocessing: Preprocessing = self.encoder.preprocessing
        self.dim: int = model.head.output_size
        # On GPU: bf16 autocast and channels_last speed convolutions up; CPU stays float32.
        self.autocast = self.device.type == "cuda"
        if self.autocast:
            self.encoder.to(memory_format=torch.channels_last)

    @classmethod
    def load(cls, model_dir: str | Path, device: str = "cpu", batch_size: int = 32) -> Embedder:
        """`model_dir` holds `servable/` and the run's `run.json` (a run directory or an unpacked .mar)."""
        model_dir = Path(model_dir)
        run = json.loads((model_dir / "run.json").read_text())
        model = SimilarityModel.load(str(model_dir / "servable"))
        return cls(model, run["model_version"], device, batch_size)

    def embed(self, images: list[Image.Image]) -> np.ndarray:
        """RGB PIL images -> float32 [N, dim], each row of unit length."""
        chunks = [np.zeros((0, self.dim), dtype=np.float32)]
        with torch.inference_mode():
            for start in range(0, len(images), self.batch_size):
                batch = self.preprocessing.batch(images[start : start + self.batch_size])
                chunks.append(self._forward(batch).cpu().numpy())
        return np.concatenate(chunks)

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        batch = batch.to(self.device, non_blocking=True)
        if self.autocast:
            batch = batch.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            embeddings = self.model.head(self.encoder(batch), meta=[])
        return F.normalize(embeddings.float(), dim=1)
