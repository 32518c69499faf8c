"""Plain-Python car embedder: image bytes -> L2-normalised float32 embeddings.

No TorchServe import: the handler is a thin adapter over this, and tests and benchmarks use it
directly. Decoding is guarded (byte and pixel caps checked *before* pixels are decoded) and uses
the servable's own preprocessing, so serving applies exactly what training did.

Two decoders feed the same model. "pil" (the CPU default) is training's own path: PIL decode,
`to_rgb`, the servable's `Preprocessing`. "tensor" (the CUDA default) decodes plain JPEGs as a
batch with torchvision (nvJPEG on CUDA) and hands them to the same `Preprocessing`'s tensor
backend on the device; every other input (PNG, CMYK, EXIF-rotated, truncated, ...) still goes
through PIL. The embedder only picks a backend: the transform itself lives in `core.preprocessing`. On the GPU, bf16
autocast, channels_last and optionally `torch.compile` speed the forward pass up.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from quaterion_models import SimilarityModel

from core.preprocessing import Preprocessing, to_rgb
from core.run import Run

DECODERS = ("auto", "pil", "tensor")

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


def open_image(data: bytes, limits: ImageLimits = ImageLimits()) -> Image.Image:
    """Checks the byte cap, reads only the header and checks the pixel cap; raises InvalidImage."""
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
    return image


def load_rgb(image: Image.Image) -> Image.Image:
    """Decodes the pixels of an image opened by `open_image` into upright RGB."""
    try:
        image.load()
        return to_rgb(image)
    except Image.DecompressionBombError as error:
        raise InvalidImage(f"image too large: {error}", 413) from None
    except Exception as error:  # truncated or corrupt data: PIL raises many types
        raise InvalidImage(f"cannot decode image: {type(error).__name__}: {error}", 400) from None


def decode_image(data: bytes, limits: ImageLimits = ImageLimits()) -> Image.Image:
    """Checks and decodes one encoded image; raises InvalidImage with a 4xx status."""
    return load_rgb(open_image(data, limits))


def is_plain_jpeg(image: Image.Image, data: bytes) -> bool:
    """A JPEG a tensor decoder reproduces exactly as `to_rgb` would: RGB or grayscale, no EXIF
    rotation, and complete (ends with the EOI marker; a truncated file goes to PIL, which rejects it)."""
    if image.format != "JPEG" or image.mode not in ("RGB", "L"):
        return False
    if image.getexif().get(0x0112, 1) != 1:  # orientation tag
        return False
    return data.rstrip(b"\x00")[-2:] == b"\xff\xd9"


def default_batch_size(device: torch.device) -> int:
    """Images per forward pass. On a CPU, 8: the fastest or tied in every layout the 2-core VM ran
    (1 process x 2 threads, 2 x 1, with and without huge pages: core/huge_pages.py), up to 1.6x
    the images/s of 32, since a smaller batch's activations are smaller; a GPU wants larger batches."""
    return 32 if device.type == "cuda" else 8


class Embedder:
    """Loads a servable directory and embeds batches of images on one device.

    `decode`: "pil" (training's exact path), "tensor" (batched JPEG decode and resize on the
    device, PIL for the rest) or "auto" (tensor on CUDA, pil on CPU). `amp` (bf16 autocast) defaults
    to on for CUDA and off for CPU, where float32 stays as trained; `channels_last` to on;
    `compile=True` wraps the network in `torch.compile` (call `warm_up` before timing).
    `batch_size`: images per forward pass (`default_batch_size` when None); larger lists are chunked.
    """

    def __init__(
        self,
        model: SimilarityModel,
        model_version: str,
        device: str = "cpu",
        batch_size: int | None = None,
        *,
        decode: str = "auto",
        amp: bool | None = None,
        channels_last: bool | None = None,
        compile: bool = False,
    ):
        if decode not in DECODERS:
            raise ValueError(f"decode must be one of {DECODERS}, got {decode!r}")
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.model.eval()  # SimilarityModel.eval() returns None: never chain it
        self.model_version = model_version
        self.batch_size = batch_size or default_batch_size(self.device)
        self.encoder = next(iter(model.encoders.values()))
        self.preprocessing: Preprocessing = self.encoder.preprocessing
        self.dim: int = model.head.output_size
        on_gpu = self.device.type == "cuda"
        self.decode = ("tensor" if on_gpu else "pil") if decode == "auto" else decode
        self.autocast = on_gpu if amp is None else amp
        # channels_last also on CPU: oneDNN's NHWC kernels ran MobileNetV2 ~1.3x faster here, ResNet50 the
        # same, with float32 results equal to 1e-15 (docs/benchmarks.md); bf16 stays GPU-only.
        self.channels_last = True if channels_last is None else channels_last
        if self.channels_last:
            self.encoder.to(memory_format=torch.channels_last)
        self._network = torch.compile(self._network_forward) if compile else self._network_forward

    @classmethod
    def load(cls, model_dir: str | Path, device: str = "cpu", batch_size: int | None = None, **options) -> Embedder:
        """`model_dir` holds `servable/` and the run's `run.json` (a run directory or an unpacked .mar)."""
        run = Run.open(model_dir)
        return cls(run.load_model(), run.model_version, device, batch_size, **options)

    def embed(self, images: list[Image.Image]) -> np.ndarray:
        """RGB PIL images -> float32 [N, dim], each row of unit length."""
        chunks = [np.zeros((0, self.dim), dtype=np.float32)]
        with torch.inference_mode():
            for start in range(0, len(images), self.batch_size):
                batch = self.preprocessing.batch(images[start : start + self.batch_size])
                chunks.append(self._forward(batch).cpu().numpy())
        return np.concatenate(chunks)

    def embed_bytes(self, bodies: list[bytes], limits: ImageLimits = ImageLimits()) -> list[np.ndarray | InvalidImage]:
        """Encoded images -> per item, a float32 [dim] unit vector or the InvalidImage to answer with.

        Same checks and errors as `decode_image`; the "tensor" decoder takes plain JPEGs only.
        """
        results: list[np.ndarray | InvalidImage | None] = [None] * len(bodies)
        pil_items: dict[int, Image.Image] = {}
        jpeg_items: dict[int, bytes] = {}
        for index, data in enumerate(bodies):
            try:
                image = open_image(data, limits)
                if self.decode == "tensor" and is_plain_jpeg(image, data):
                    jpeg_items[index] = data
                else:
                    pil_items[index] = load_rgb(image)
            except InvalidImage as error:
                results[index] = error
        with torch.inference_mode():
            tensors = self._decode_jpegs(jpeg_items)
            for index in jpeg_items.keys() - tensors.keys():  # the tensor decoder refused it: PIL decides
                try:
                    pil_items[index] = decode_image(jpeg_items[index], limits)
                except InvalidImage as error:
                    results[index] = error
            for index, image in pil_items.items():
                tensors[index] = self.preprocessing(image)
            order = sorted(tensors)
            for start in range(0, len(order), self.batch_size):
                chunk = order[start : start + self.batch_size]
                batch = torch.stack([tensors[i].to(self.device, non_blocking=True) for i in chunk])
                for index, row in zip(chunk, self._forward(batch).cpu().numpy(), strict=True):
                    results[index] = row
        return results  # type: ignore[return-value]

    def _decode_jpegs(self, jpegs: dict[int, bytes]) -> dict[int, torch.Tensor]:
        """Batched JPEG decode (nvJPEG on CUDA) + resize/normalise on the device; drops failures."""
        if not jpegs:
            return {}
        from torchvision.io import ImageReadMode, decode_jpeg

        indices = list(jpegs)
        raw = [torch.frombuffer(bytearray(jpegs[i]), dtype=torch.uint8) for i in indices]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torchvision 0.29 marks its image decoders deprecated
            try:
                decoded = decode_jpeg(raw, mode=ImageReadMode.RGB, device=self.device)
            except RuntimeError:  # one bad item fails the whole batch: retry one by one
                decoded = []
                for data in raw:
                    try:
                        decoded.append(decode_jpeg(data, mode=ImageReadMode.RGB, device=self.device))
                    except RuntimeError:
                        decoded.append(None)
        kept = [(index, pixels) for index, pixels in zip(indices, decoded, strict=True) if pixels is not None]
        if not kept:
            return {}
        batch = self.preprocessing.tensor_batch([pixels for _, pixels in kept])
        return dict(zip([index for index, _ in kept], batch.unbind(0), strict=True))

    def warm_up(self, batch_sizes: tuple[int, ...] = (1,)) -> None:
        """Runs the network once per batch size: compiles (`compile=True`) and sizes cuDNN's plans."""
        with torch.inference_mode():
            for n in batch_sizes:
                self._forward(torch.zeros(n, 3, *self.preprocessing.shape))
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        batch = batch.to(self.device, non_blocking=True)
        if self.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            embeddings = self._network(batch)
        return F.normalize(embeddings.float(), dim=1)

    def _network_forward(self, batch: torch.Tensor) -> torch.Tensor:
        return self.model.head(self.encoder(batch), meta=[])
