"""The one definition of image preprocessing.

Training, evaluation and serving all turn images into tensors through `Preprocessing`. Its
parameters are saved inside the servable (see `encoders.CarsEncoder`), so the server applies
exactly the transform the model was trained with. Training-only augmentation lives here too and
works on PIL images *before* the shared transform, so it never changes what serving does.
"""

from __future__ import annotations

import io
import os
from dataclasses import asdict, dataclass, field
from typing import Any
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image, ImageOps
from torchvision import transforms
from torchvision.transforms import InterpolationMode

# ImageNet statistics: every torchvision backbone was pretrained with them.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

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
    """Deterministic image -> tensor transform: squash-resize to a square, scale, normalise.

    Squashing (as Quaterion's cars example does) keeps the whole car in view; a centre crop of
    a wide car photo would cut off its front and back.
    """

    input_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"
    _transform: Callable = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.input_size, int) or self.input_size < 16:
            raise ValueError(f"input_size must be an integer >= 16, got {self.input_size!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(
                f"Unknown interpolation {self.interpolation!r}. Choose one of: {', '.join(INTERPOLATIONS)}"
            )
        object.__setattr__(self, "mean", tuple(float(x) for x in self.mean))
        object.__setattr__(self, "std", tuple(float(x) for x in self.std))
        transform = transforms.Compose(
            [
                transforms.Resize(
                    (self.input_size, self.input_size),
                    interpolation=INTERPOLATIONS[self.interpolation],
                    antialias=True,
                ),
                transforms.ToTensor(),
                transforms.Normalize(self.mean, self.std),
            ]
        )
        object.__setattr__(self, "_transform", transform)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        """Maps one PIL image to a float32 tensor [3, input_size, input_size]."""
        if not isinstance(image, Image.Image):
            raise TypeError(f"expected a PIL image, got {type(image).__name__}")
        return self._transform(image.convert("RGB"))

    def batch(self, images: list[Image.Image]) -> torch.Tensor:
        """Stacks a list of PIL images into [N, 3, S, S]; the encoder's collate function."""
        return torch.stack([self(image) for image in images])

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("_transform")
        data["mean"], data["std"] = list(self.mean), list(self.std)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocessing:
        known = {"input_size", "mean", "std", "interpolation"}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown preprocessing keys {sorted(unknown)}; known: {sorted(known)}")
        return cls(**data)


def training_augmentation(input_size: int) -> Callable[[Image.Image], Image.Image]:
    """PIL -> PIL augmentation for training without the encoder cache.

    Outputs stay PIL images so that the shared `Preprocessing` still does the final resize and
    normalisation, exactly as in serving.
    """
    return transforms.Compose(
        [
            transforms.RandomResizedCrop(input_size, scale=(0.6, 1.0), ratio=(0.75, 2.0)),
            transforms.RandomHorizontalFlip(),
            transforms.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2),
        ]
    )
