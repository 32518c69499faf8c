"""Atomic writes and content hashes: the one place that writes anything persistent.

A killed run must never leave a half-written `run.json`, gallery or servable where a finished one
was. Files appear with the permissions a plain `open()` would give them (the umask applies), not
`mkstemp`'s private 0600.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from core.errors import UsageError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_file_atomic(path: str | Path, write: Callable[[IO[bytes]], None]) -> None:
    """Calls `write(f)` on a temp file in the same directory, fsyncs it, then renames it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | Path, data: Any) -> None:
    """JSON as every tool can read it: NaN and infinities become null, never bare `NaN`."""
    text = json.dumps(_finite(data), indent=2, allow_nan=False)
    write_file_atomic(path, lambda f: f.write(text.encode() + b"\n"))


def _finite(value: Any) -> Any:
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


def check_replaceable(path: str | Path, marker: str | None = None, overwrite: bool = False) -> None:
    """Refuses, before any work, to replace what the caller did not write: a file, or a non-empty
    directory without `marker` (the file a previous output of the same command holds)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UsageError(f"{path} is a file, not a directory: choose another output directory")
    if overwrite or not path.is_dir() or not any(path.iterdir()):
        return
    if marker is None or not (path / marker).is_file():
        raise UsageError(
            f"{path} already exists and holds files this command did not write; choose another "
            "directory, or pass --overwrite to replace it"
        )


def write_dir_atomic(
    path: str | Path, fill: Callable[[str], None], *, marker: str | None = None, overwrite: bool = False
) -> None:
    """Calls `fill(tmp_dir)`, then swaps the finished directory into `path`.

    An existing `path` is replaced only if `check_replaceable` allows it: with a `marker`, the
    finished directory gets that file, so the next run of the same command may replace it.
    """
    path = Path(path)
    check_replaceable(path, marker, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    old = path.with_name(f".{path.name}.old")
    if old.exists() and not path.exists():  # a swap was interrupted: put the previous one back
        os.replace(old, path)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        os.chmod(tmp, 0o777 & ~_umask())
        fill(str(tmp))
        if marker is not None:
            (tmp / marker).write_text("written by this project; a later run of the same command may replace it\n")
        shutil.rmtree(old, ignore_errors=True)
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def directory_sha256(path: str | Path) -> str:
    """Hash of every file's relative path and bytes: the model version of a servable."""
    root = Path(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(file.relative_to(root).as_posix().encode() + b"\0")
        with open(file, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        digest.update(b"\0")
    return digest.hexdigest()
