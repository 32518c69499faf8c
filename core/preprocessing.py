"""The one definition of image preprocessing.

Training, evaluation and serving all turn images into tensors through `Preprocessing`. Its
parameters are saved inside the servable (see `core.encoders.CarsEncoder`), so the server applies
exactly the transform the model was trained with. It has two backends, as torchvision's presets
do: PIL images one at a time (`__call__`, `batch`), and batches of decoded uint8 tensors on any
device (`tensor_batch`, the GPU server's path). Both read the same fields, and a test holds them
together. Training-only augmentation lives here too and works on PIL images *before* the shared
transform, so it never changes what serving does.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from torchvision import transforms
from torchvision.transforms import InterpolationMode

# ImageNet statistics: every torchvision backbone was pretrained with them.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Bounds of the input's shape, shared with the training CLI's own checks.
MIN_INPUT_SIZE = 16
ASPECT_RANGE = (0.25, 4.0)

INTERPOLATIONS = {"bilinear": InterpolationMode.BILINEAR, "bicubic": InterpolationMode.BICUBIC}


def to_rgb(image: Image.Image) -> Image.Image:
    """Any decoded image -> upright 8-bit RGB: EXIF orientation applied, first frame of an
    animation, 16-bit scaled down (not clipped), transparency composited onto white."""
    if getattr(image, "n_frames", 1) > 1:
        image.seek(0)
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        wide = np.asarray(image, dtype=np.int64)
        image = Image.fromarray((np.clip(wide, 0, 65535) >> 8).astype(np.uint8), "L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        image = Image.new("RGB", rgba.size, (255, 255, 255))
        image.paste(rgba, mask=rgba.getchannel("A"))
    return image.convert("RGB")


def load_image(source: str | os.PathLike | bytes) -> Image.Image:
    """Decodes a file path or encoded bytes into RGB, exactly as the server does (`to_rgb`)."""
    with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
        return to_rgb(image)


@dataclass(frozen=True)
class Preprocessing:
    """Deterministic image -> tensor transform: squash-resize to `input_size` high and
    `input_aspect` times that wide, scale, normalise.

    Squashing (as Quaterion's cars example does) keeps the whole car in view; a centre crop of
    a wide car photo would cut off its front and back. A wide input (`input_aspect` > 1) squashes
    car photos, about twice as wide as high, less, so the frozen network sees car shapes closer to
    those it learned from (docs/quality.md measures it).
    """

    input_size: int = 224
    input_aspect: float = 1.0  # width / height of the network's input
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"
    _transform: Callable = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.input_size, int) or self.input_size < MIN_INPUT_SIZE:
            raise ValueError(f"input_size must be an integer >= {MIN_INPUT_SIZE}, got {self.input_size!r}")
        low, high = ASPECT_RANGE
        if not low <= self.input_aspect <= high:
            raise ValueError(f"input_aspect must be in [{low:g}, {high:g}], got {self.input_aspect!r}")
        object.__setattr__(self, "input_aspect", float(self.input_aspect))
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(
                f"Unknown interpolation {self.interpolation!r}. Choose one of: {', '.join(INTERPOLATIONS)}"
            )
        object.__setattr__(self, "mean", tuple(float(x) for x in self.mean))
        object.__setattr__(self, "std", tuple(float(x) for x in self.std))
        transform = transforms.Compose(
            [
                transforms.Resize(
                    self.shape,
                    interpolation=INTERPOLATIONS[self.interpolation],
                    antialias=True,
                ),
                transforms.ToTensor(),
                transforms.Normalize(self.mean, self.std),
            ]
        )
        object.__setattr__(self, "_transform", transform)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        """Maps one PIL image to a float32 tensor [3, height, width] (`shape`)."""
        if not isinstance(image, Image.Image):
            raise TypeError(f"expected a PIL image, got {type(image).__name__}")
        return self._transform(image.convert("RGB"))

    @property
    def shape(self) -> tuple[int, int]:
        """(height, width) of every tensor this produces."""
        return self.input_size, max(1, round(self.input_size * self.input_aspect))

    def batch(self, images: list[Image.Image]) -> torch.Tensor:
        """Stacks a list of PIL images into [N, 3, H, W]; the encoder's collate function."""
        return torch.stack([self(image) for image in images])

    def tensor_batch(self, images: list[torch.Tensor]) -> torch.Tensor:
        """Decoded uint8 RGB images [3, H, W] (any sizes, on any device) -> float32 [N, 3, *shape].

        The same squash-resize, antialiased as PIL's and rounded back to 8 bits as PIL's resize
        does, then ToTensor's /255 and the same Normalize; within ~1 grey level of `batch`
        (tests/core/test_preprocessing.py states the tolerance).
        """
        if not images:
            raise ValueError("tensor_batch needs at least one image")
        resized = torch.stack([self._resize_tensor(image) for image in images])
        mean = torch.tensor(self.mean, device=resized.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=resized.device).view(1, 3, 1, 1)
        return (resized / 255.0 - mean) / std

    def _resize_tensor(self, pixels: torch.Tensor) -> torch.Tensor:
        if pixels.dtype != torch.uint8 or pixels.dim() != 3 or pixels.shape[0] != 3:
            raise TypeError(f"expected a uint8 tensor [3, H, W], got {pixels.dtype} {tuple(pixels.shape)}")
        image = pixels.unsqueeze(0).float()
        if tuple(image.shape[-2:]) != self.shape:
            image = F.interpolate(image, size=self.shape, mode=self.interpolation, antialias=True)
            image = image.round_().clamp_(0, 255)
        return image[0]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("_transform")
        data["mean"], data["std"] = list(self.mean), list(self.std)
        if data["input_aspect"] == 1.0:  # square: saved as before the option existed, same model version
            del data["input_aspect"]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocessing:
        known = {"input_size", "input_aspect", "mean", "std", "interpolation"}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown preprocessing keys {sorted(unknown)}; known: {sorted(known)}")
        return cls(**data)


def training_augmentation(shape: tuple[int, int]) -> Callable[[Image.Image], Image.Image]:
    """PIL -> PIL augmentation for training without the encoder cache.

    Outputs stay PIL images so that the shared `Preprocessing` still does the final resize and
    normalisation, exactly as in serving.
    """
    return transforms.Compose(
        [
            transforms.RandomResizedCrop(shape, scale=(0.6, 1.0), ratio=(0.75, 2.0)),
            transforms.RandomHorizontalFlip(),
            transforms.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2),
        ]
    )
