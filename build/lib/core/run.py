"""`Run`: the owner of the run directory, the format training writes and everyone else reads.

    RUN_DIR/run.json     what was trained, how, on which classes, and the servable's model version
    RUN_DIR/servable/    the quaterion-models `SimilarityModel` (see `core.servable`)
    RUN_DIR/base_top.pt  optional: the pretrained top stages, evaluation's untuned baseline

Training (and bench/random_servable.py) write a run only through `Run.write`: the servable is
swapped in atomically, its content hash becomes the model version, and run.json is written last,
so a killed run never leaves a run.json that describes another servable. Evaluation, the archive,
the embedder and the benchmarks open it with `Run.open`; what a command needs and the run lacks
is one readable line (a `UsageError`), never a traceback. Torch-free: `load_model` imports the
model stack only when called.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from core.errors import UsageError
from core.files import directory_sha256, write_dir_atomic, write_file_atomic, write_json_atomic

RUN_FILE = "run.json"
SERVABLE_DIR = "servable"
BASE_TOP_FILE = "base_top.pt"
RUN_FORMAT = 2  # 1: written before this module existed (no "run_format" key); both open


class Run:
    """An opened run directory: its path and its run.json."""

    def __init__(self, path: str | Path, info: dict[str, Any]):
        self.path = Path(path)
        self.info = info

    @property
    def model_version(self) -> str:
        return self.info["model_version"]

    @property
    def servable_dir(self) -> Path:
        return self.path / SERVABLE_DIR

    @property
    def base_top_file(self) -> Path:
        return self.path / BASE_TOP_FILE

    @property
    def trained(self) -> bool:
        """Made by training (it knows its class split), not a random-weights benchmark servable."""
        return isinstance(self.info.get("classes"), dict)

    @staticmethod
    def exists(path: str | Path) -> bool:
        return (Path(path) / RUN_FILE).is_file()

    @classmethod
    def open(cls, path: str | Path, *, verify: bool = False) -> Run:
        """Reads RUN_DIR/run.json and checks the servable is there; `verify` also re-hashes the
        servable against the recorded model version (what the archive ships must be what was trained)."""
        path = Path(path)
        if not (path / RUN_FILE).is_file():
            raise UsageError(
                f"no trained run at {path}: it is not a finished training run (no {RUN_FILE}); "
                f"train one first (make train RUN={path})"
            )
        try:
            info = json.loads((path / RUN_FILE).read_text())
        except (OSError, UnicodeDecodeError, ValueError) as error:
            raise UsageError(f"{path}/{RUN_FILE} is not valid JSON: {error}") from None
        if not isinstance(info, dict) or not isinstance(info.get("model_version"), str):
            raise UsageError(f"{path}/{RUN_FILE} has no model_version: not a run written by train.train")
        run = cls(path, info)
        if not run.servable_dir.is_dir():
            raise UsageError(f"{path} is not a finished training run: {SERVABLE_DIR}/ is missing")
        if verify and directory_sha256(run.servable_dir) != run.model_version:
            raise UsageError(f"{path}/{SERVABLE_DIR} does not match its {RUN_FILE} (content changed after training?)")
        return run

    def require_trained(self, purpose: str) -> None:
        """`purpose` (e.g. "evaluation") needs a run made by training, with its class split."""
        if not self.trained:
            note = self.info.get("note", "it records no class split")
            raise UsageError(f"{self.path} is not a trained run ({note}); {purpose} needs one made by train.train")

    def load_model(self):
        """The servable as a `quaterion_models.SimilarityModel` (weights loaded weights-only)."""
        from core.servable import load_servable

        return load_servable(self.servable_dir)

    @classmethod
    def write(
        cls,
        path: str | Path,
        save_servable: Callable[[str], None],
        info: dict[str, Any],
        extra_files: dict[str, Callable[[IO[bytes]], None]] | None = None,
    ) -> Run:
        """Writes a run: `save_servable(dir)` fills the servable, `extra_files` are written by name
        next to it, then run.json = {run_format, model_version, **info}; each step atomic."""
        path = Path(path)
        write_dir_atomic(path / SERVABLE_DIR, save_servable, overwrite=True)  # the caller decided on --overwrite
        for name, write in (extra_files or {}).items():
            write_file_atomic(path / name, write)
        full = {"run_format": RUN_FORMAT, "model_version": directory_sha256(path / SERVABLE_DIR), **info}
        write_json_atomic(path / RUN_FILE, full)
        return cls(path, full)
