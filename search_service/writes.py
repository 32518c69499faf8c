"""Apps write to the gallery: the rules of POST / PATCH / DELETE /gallery, apart from HTTP.

A row an app adds is named by the app's own `id` (e.g. a listing photo's id in the app's database).
Its photo is kept under the photo folder, named by a hash of that id, so that thumbnails and a
re-embedding with a new model (a model upgrade) find it; the store's row id is derived from that
path as for any photo (clients/metadata.py row_id). Every other form field is metadata.

Writes need the write key (`Authorization: Bearer KEY`), compared in constant time; with no key
configured, writes are refused (403), never open. The key comes from CARS_WRITE_KEY or a file,
never a flag's value (a flag shows in the process list).
"""

from __future__ import annotations

import hashlib
import hmac
import io
import math
import os
import re
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from clients.api import ClientError
from clients.metadata import FIELD, RESERVED, _typed, row_id
from core.files import write_file_atomic

WRITE_KEY_ENV = "CARS_WRITE_KEY"
APP_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")  # what an app's id may be
MAX_FIELDS = 32
MAX_TEXT = 1024  # characters of one metadata value
FORMATS = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp", "TIFF": ".tif"}


class WriteError(ClientError):
    """A refused write, with the HTTP status an app gets."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


def load_write_key(key_file: str | None) -> str | None:
    """The write key from `key_file` (its first line) or CARS_WRITE_KEY; None when neither is set."""
    if key_file:
        try:
            key = Path(key_file).read_text().strip()
        except OSError as error:
            raise ClientError(f"cannot read the write key file {key_file}: {error.strerror}") from None
        if len(key) < 16:
            raise ClientError(f"the write key in {key_file} is shorter than 16 characters")
        return key
    key = os.environ.get(WRITE_KEY_ENV, "").strip()
    if key and len(key) < 16:
        raise ClientError(f"{WRITE_KEY_ENV} is shorter than 16 characters")
    return key or None


def check_write_key(configured: str | None, authorization: str | None) -> None:
    """403 when this service takes no writes, 401 for a missing or wrong key."""
    if configured is None:
        raise WriteError(f"this service takes no writes: start it with {WRITE_KEY_ENV} or --write-key-file", 403)
    scheme, _, sent = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(sent.strip().encode(), configured.encode()):
        raise WriteError("a write needs the write key: Authorization: Bearer KEY", 401)


def check_app_id(app_id: str) -> str:
    if not isinstance(app_id, str) or not APP_ID.fullmatch(app_id):
        raise WriteError("id must be 1-128 characters: letters, digits and _ . : - (not first)", 400)
    return app_id


def photo_path(photos: Path, app_id: str, extension: str) -> Path:
    return photos / f"{hashlib.sha256(app_id.encode()).hexdigest()[:40]}{extension}"


def existing_photo(photos: Path, app_id: str) -> Path | None:
    """The photo an app's id names, whatever its format, or None."""
    return next((p for ext in FORMATS.values() if (p := photo_path(photos, app_id, ext)).is_file()), None)


def row_of(photos: Path, app_id: str) -> str | None:
    """The store's row id of an app's id, or None when no photo is kept for it."""
    path = existing_photo(photos, app_id)
    return row_id(str(path)) if path is not None else None


def image_extension(data: bytes) -> str:
    """The file extension of an image's format; 415 for anything else (checked before any write)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image_format = image.format
    except (UnidentifiedImageError, OSError, ValueError):
        raise WriteError("the file is not a supported image (JPEG, PNG, WebP, GIF, BMP, TIFF)", 415) from None
    if image_format not in FORMATS:
        raise WriteError(f"image format {image_format} is not supported", 415)
    return FORMATS[image_format]


def metadata_value(name: str, value: Any, from_form: bool) -> Any:
    """One metadata value, checked: text (numbers in a form become numbers), a finite number, a
    bool, or None (PATCH: remove the field)."""
    if not FIELD.match(name) or name in RESERVED or name == "app_id":
        raise WriteError(f"field {name!r} is reserved or not a plain name (letters, digits, _)", 400)
    if from_form and name != "listing":  # a listing is a name, even when it looks like a number
        value = _typed(value)
    if value is None and not from_form:
        return None
    if name == "listing" and not isinstance(value, str):
        raise WriteError("field 'listing': a listing is text (send it as a JSON string)", 400)
    if isinstance(value, bool) or (isinstance(value, int) and abs(value) < 2**53):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return value
    if isinstance(value, str) and len(value) <= MAX_TEXT:
        return value
    raise WriteError(f"field {name!r}: a value must be text (<= {MAX_TEXT} characters), a finite number or a bool", 400)


def metadata_fields(fields: dict[str, Any], from_form: bool) -> dict[str, Any]:
    if len(fields) > MAX_FIELDS:
        raise WriteError(f"at most {MAX_FIELDS} metadata fields", 400)
    return {name: metadata_value(name, value, from_form) for name, value in fields.items()}


def keep_photo(photos: Path, app_id: str, data: bytes, extension: str) -> Path:
    """Writes the photo atomically (a reader sees none or all of it) and returns its path."""
    path = photo_path(photos, app_id, extension)
    write_file_atomic(path, lambda f: f.write(data))
    return path
