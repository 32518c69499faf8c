"""What every gallery row carries besides its vector, and the filters over it.

Each row has `id` (stable: derived from the image path, so re-adding an image replaces it),
`path`, `label` and, for Stanford Cars style labels ("[NNN_]Make Model Body Year"), `make`,
`model` and `year` parsed from the label; a sidecar file (`--metadata`, CSV or JSON keyed by image
path or file name) adds any other attributes, e.g. a listing id or a price.

Filters are `FIELD OP VALUE` conditions (`make=Audi`, `year>=2010`, `price<20000`), all of which
must hold. `matches` is the reference semantics: the file store evaluates it as a numpy mask and
the Qdrant stores translate it into their payload filter; a test checks that they agree.
"""

from __future__ import annotations

import csv
import json
import math
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clients.api import ClientError
from core.labels import parse_label

OPERATORS = ("<=", ">=", "!=", "=", "<", ">")  # longest first: "<=" before "<"
FIELD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*$")
RESERVED = ("id", "path", "label")  # set by the gallery itself; a sidecar may not override them
# Payload indexes of the Qdrant stores (Edge and server alike). `year` is a float index, so that a
# year written as 2010.5 is still found by `year>=2010`, as `matches` finds it.
KEYWORD_FIELDS = ("make", "model", "label", "listing")  # indexed by the Qdrant stores
NUMBER_FIELDS = ("year",)
# Payload key of the original values of fields stored as text (see `stored_payload`); no filter can
# name it (a filter field is a plain name), so it never takes part in filtering.
ORIGINAL = "@original"


def row_id(path: str) -> str:
    """The stable id of the row of `path` (a UUID, as Qdrant requires)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, path))


def row_metadata(path: str, label: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    return {**parse_label(label), **(extra or {}), "id": row_id(path), "path": path, "label": label}


def _typed(value: str) -> Any:
    """Sidecar cells: numbers become numbers (so `price<20000` compares numbers), the rest stays text."""
    try:
        number = float(value)
    except ValueError:
        return value
    return int(number) if number.is_integer() and "." not in value else number


def load_sidecar(path: str | Path) -> dict[str, dict[str, Any]]:
    """Extra attributes per image from a CSV (a `path` or `file` column) or a JSON object
    {path or file name: {attribute: value}}; keys are matched by full path, then by file name."""
    path = Path(path)
    if not path.is_file():
        raise ClientError(f"metadata file not found: {path}")
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(path.read_text())
            if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
                raise ClientError(f"{path}: expected a JSON object {{image: {{attribute: value}}}}")
            table = {str(k): dict(v) for k, v in data.items()}
        else:
            with open(path, newline="") as f:
                rows = list(csv.DictReader(f))
            key = next((k for k in ("path", "file") if rows and k in rows[0]), None)
            if key is None:
                raise ClientError(f"{path}: a metadata CSV needs a 'path' or 'file' column")
            table = {row.pop(key): {k: _typed(v) for k, v in row.items() if k and v != ""} for row in rows}
    except (OSError, UnicodeDecodeError, ValueError, csv.Error) as error:
        raise ClientError(f"cannot read metadata file {path}: {error}") from None
    for key, attributes in table.items():
        bad = [name for name in attributes if name in RESERVED or not FIELD.match(name)]
        if bad:
            raise ClientError(f"{path}: attribute {bad[0]!r} of {key!r} is reserved or not a plain name")
    return table


def sidecar_for(table: dict[str, dict[str, Any]], image_path: str) -> dict[str, Any]:
    return table.get(image_path) or table.get(Path(image_path).name) or {}


@dataclass(frozen=True)
class Condition:
    field: str
    op: str
    value: str | float

    @property
    def numeric(self) -> bool:
        return isinstance(self.value, float)

    def __str__(self) -> str:
        value = self.value if not self.numeric else f"{self.value:g}"
        return f"{self.field}{self.op}{value}"


def parse_where(text: str) -> Condition:
    """`make=Audi`, `year>=2010` -> a Condition; a ClientError names what is wrong."""
    for op in OPERATORS:
        field, found, value = text.partition(op)
        if found:
            break
    else:
        raise ClientError(f"bad filter {text!r}: use FIELD=VALUE or FIELD>=NUMBER (operators {' '.join(OPERATORS)})")
    field, value = field.strip(), value.strip()
    if not FIELD.match(field) or not value:
        raise ClientError(f"bad filter {text!r}: the field must be a plain name and the value non-empty")
    try:
        number: float | None = float(value)
    except ValueError:
        number = None
    if op in ("<", "<=", ">", ">=") and number is None:
        raise ClientError(f"bad filter {text!r}: {op} compares numbers, and {value!r} is not one")
    return Condition(field, op, number if number is not None else value)


def _compare(actual: Any, condition: Condition) -> bool:
    if condition.numeric:
        if isinstance(actual, bool) or not isinstance(actual, (int, float)):
            return condition.op == "!="  # a row without this number differs from it
        left, right = float(actual), condition.value
    else:
        if actual is None:
            return condition.op == "!="
        left, right = str(actual), condition.value
    return {
        "=": left == right, "!=": left != right, "<": left < right,
        "<=": left <= right, ">": left > right, ">=": left >= right,
    }[condition.op]  # fmt: skip


@dataclass(frozen=True)
class Clause:
    """One condition of a Qdrant payload filter: a numeric `range` (bounds by name) or a text `match`."""

    field: str
    range: dict[str, float] | None = None
    match: str | None = None


def payload_clauses(where: tuple[Condition, ...]) -> tuple[list[Clause], list[Clause]]:
    """(must, must_not) of a Qdrant payload filter with `matches`' semantics, for both Qdrant stores
    to build with their own client's classes: a number condition is a range (`=` the range [v, v]),
    a text one an exact keyword match, `!=` a must_not (so a row without the field passes it)."""
    must, must_not = [], []
    for c in where:
        if c.numeric:
            bounds = {"=": ("gte", "lte"), "!=": ("gte", "lte"), "<": ("lt",), "<=": ("lte",), ">": ("gt",),
                      ">=": ("gte",)}[c.op]  # fmt: skip
            clause = Clause(c.field, range={bound: c.value for bound in bounds})
        else:
            clause = Clause(c.field, match=c.value)
        (must_not if c.op == "!=" else must).append(clause)
    return must, must_not


def matches(metadata: dict[str, Any], conditions: list[Condition] | tuple[Condition, ...]) -> bool:
    """Whether a row passes every condition (the reference every store must agree with)."""
    return all(_compare(metadata.get(c.field), c) for c in conditions)


def stored_payload(payload: dict[str, Any]) -> dict[str, Any]:
    """A row as a Qdrant store keeps it. `matches` compares text conditions with str(value) and
    numbers only with finite int/float values; Qdrant would match a list by any element and cannot
    match a bool from Python. So bools, lists, objects and non-finite floats are stored as
    str(value), which filters exactly as `matches` does, and their original values go, as JSON,
    under ORIGINAL."""
    stored, original = {}, {}
    for key, value in payload.items():
        plain = value is None or isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))
        if plain or (isinstance(value, float) and math.isfinite(value)):
            stored[key] = value
        else:
            stored[key], original[key] = str(value), value
    if original:
        stored[ORIGINAL] = json.dumps(original)
    return stored


def payload_row(payload: dict[str, Any]) -> dict[str, Any]:
    """The row metadata back from a stored payload (`stored_payload`'s inverse, without the model version)."""
    row = {key: value for key, value in payload.items() if key not in ("model_version", ORIGINAL)}
    if ORIGINAL in payload:
        row.update(json.loads(payload[ORIGINAL]))
    return row


def row_extra(row: dict[str, Any]) -> dict[str, Any]:
    """What `row_metadata` needs besides path and label to give `row` back: a copy between
    stores adds rows with this as their sidecar attributes."""
    return {key: value for key, value in row.items() if key not in RESERVED}


def updated_row(row: dict[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
    """`row` with `fields` set (or, with None, removed): what every store's `update` writes back.
    The gallery's own keys (id, path, label) cannot be changed this way."""
    bad = [name for name in fields if name in RESERVED or not FIELD.match(name)]
    if bad:
        raise ClientError(f"field {bad[0]!r} is reserved or not a plain name (letters, digits, _)")
    changed = {**row, **{key: value for key, value in fields.items() if value is not None}}
    return {key: value for key, value in changed.items() if fields.get(key, 0) is not None}
