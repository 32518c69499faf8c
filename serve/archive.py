"""Pack a trained run into a TorchServe archive: `model_store/cars.mar`.

    python -m serve.archive --run runs/latest [--model-store model_store]

The archive holds only what serving needs: the handler, the embedder, the model-definition
modules the servable loads (`train/encoders.py`, `train/heads.py`, `train/preprocessing.py`), the
servable and its `run.json`. No model-config.yaml is packed: its defaults would override the worker settings of
serve/config.properties (responseTimeout, for one). The archive's TorchServe version stays "1.0"
so that `models=` in serve/config.properties applies (TorchServe silently ignores settings keyed
by another version); the model's identity is `model_version` from run.json, returned with every
embedding.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from serve.server import MODEL, find_tool
from train.artifacts import directory_sha256
from train.errors import UsageError, run_cli

ROOT = Path(__file__).resolve().parents[1]
ARCHIVE_VERSION = "1.0"
# Source files the servable needs at load time, relative to the repository root.
RUNTIME_SOURCES = (
    "serve/__init__.py",
    "serve/embedder.py",
    "train/__init__.py",
    "train/errors.py",
    "train/encoders.py",
    "train/heads.py",
    "train/preprocessing.py",
)


def check_run(run_dir: Path) -> dict:
    if not (run_dir / "run.json").is_file() or not (run_dir / "servable").is_dir():
        raise UsageError(f"no trained run at {run_dir}: train one first (make train RUN={run_dir})")
    try:
        run = json.loads((run_dir / "run.json").read_text())
    except ValueError as error:
        raise UsageError(f"{run_dir}/run.json is not valid JSON: {error}") from None
    actual = directory_sha256(run_dir / "servable")
    if run.get("model_version") != actual:
        raise UsageError(f"{run_dir}/servable does not match its run.json (content changed after training?)")
    return run


def stage(run_dir: Path, into: Path) -> None:
    for source in RUNTIME_SOURCES:
        (into / source).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / source, into / source)
    shutil.copytree(run_dir / "servable", into / "servable")
    shutil.copy2(run_dir / "run.json", into / "run.json")


def build_archive(run_dir: Path, model_store: Path, name: str = MODEL) -> Path:
    """Writes model_store/<name>.mar atomically and returns its path."""
    run = check_run(run_dir)
    archiver = find_tool("torch-model-archiver")
    model_store.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=model_store, prefix=".archive-") as tmp:
        staged, export = Path(tmp) / "extra", Path(tmp) / "export"
        stage(run_dir, staged)
        export.mkdir()
        command = [
            archiver,
            "--model-name", name,
            "--version", ARCHIVE_VERSION,
            "--handler", str(ROOT / "serve" / "handler.py"),
            "--extra-files", str(staged),
            "--export-path", str(export),
        ]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            last = (result.stderr or result.stdout).strip().splitlines()
            raise UsageError(f"torch-model-archiver failed: {last[-1] if last else f'status {result.returncode}'}")
        target = model_store / f"{name}.mar"
        os.replace(export / f"{name}.mar", target)
    print(f"Wrote {target} ({target.stat().st_size / 1e6:.1f} MB), model version {run['model_version'][:12]}")
    return target


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="runs/latest", help="trained run directory (default: runs/latest)")
    parser.add_argument("--model-store", default="model_store", help="where to write the .mar (default: model_store)")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = get_args_parser().parse_args(argv)
    build_archive(Path(args.run), Path(args.model_store))


if __name__ == "__main__":
    sys.exit(run_cli(main))
