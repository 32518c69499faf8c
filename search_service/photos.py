"""A region of the query photo: `crop=x,y,w,h` in pixels of the photo as people see it.

The page lets a person draw a box on the photo as the browser shows it, i.e. turned upright by its
EXIF orientation; the box is checked against that size and cut out before embedding, so the
model sees only the car the person meant (one of two in a photo, a car in a street).
"""

from __future__ import annotations

import io
import re
import warnings

from PIL import Image, ImageOps, UnidentifiedImageError

MIN_SIDE = 16  # pixels: a smaller region holds nothing the model can compare
MAX_PIXELS = 50_000_000  # what the photo may decode to (the server's own limit is lower)
BOX = re.compile(r"\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*")


class CropError(ValueError):
    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def parse_box(text: str) -> tuple[int, int, int, int]:
    found = BOX.fullmatch(text or "")
    if not found:
        raise CropError(f"crop must be x,y,w,h in whole pixels, e.g. crop=40,30,200,120 (got {text!r})")
    return tuple(int(v) for v in found.groups())  # type: ignore[return-value]


def crop_photo(data: bytes, box: tuple[int, int, int, int]) -> bytes:
    """The region `box` (x, y, width, height) of the upright photo, as PNG bytes (lossless)."""
    x, y, width, height = box
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                if image.width * image.height > MAX_PIXELS:
                    raise CropError(f"the photo is {image.width}x{image.height} pixels, over {MAX_PIXELS:,}", 413)
                upright = ImageOps.exif_transpose(image)
                upright.load()
    except CropError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise CropError("the file is not a supported image", 415) from None
    if width < MIN_SIDE or height < MIN_SIDE:
        raise CropError(f"crop {x},{y},{width},{height}: a region must be at least {MIN_SIDE}x{MIN_SIDE} pixels")
    if x + width > upright.width or y + height > upright.height:
        raise CropError(
            f"crop {x},{y},{width},{height} reaches outside the photo, which is {upright.width}x{upright.height} pixels"
        )
    region = upright.convert("RGB").crop((x, y, x + width, y + height))
    buffer = io.BytesIO()
    region.save(buffer, format="PNG")
    return buffer.getvalue()
