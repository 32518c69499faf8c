"""Pack a trained run into a TorchServe archive: `model_store/cars.mar`.

    python -m serve.archive --run runs/latest [--model-store model_store]

The archive holds only what serving needs: the `serve` and `core` packages whole (the handler,
the embedder, and the model-definition modules the servable loads), the servable and its
`run.json`. No file list is kept by hand: a module added to either package ships with it.
No model-config.yaml is packed: its defaults would override the worker settings of
serve/config.properties (responseTimeout, for one). The archive's TorchServe version stays "1.0"
so that `models=` in serve/config.properties applies (TorchServe silently ignores settings keyed
by another version); the model's identity is `model_version` from run.json, returned with every
embedding.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from serve.torchserve import BASE_MODEL, MODEL, find_tool
from core.cli import add_common_flags, parse_args
from core.errors import UsageError, run_cli
from core.run import RUN_FILE, SERVABLE_DIR, Run

ROOT = Path(__file__).resolve().parents[1]
ARCHIVE_VERSION = "1.0"
# Packages serving imports at run time, shipped whole (only their .py files, no caches).
RUNTIME_PACKAGES = ("core", "serve")


def stage(run: Run, into: Path) -> None:
    for package in RUNTIME_PACKAGES:
        for source in sorted((ROOT / package).glob("*.py")):
            target = into / package / source.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    shutil.copytree(run.servable_dir, into / SERVABLE_DIR)
    shutil.copy2(run.path / RUN_FILE, into / RUN_FILE)


def build_archive(run_dir: Path, model_store: Path, name: str = MODEL) -> Path:
    """Writes model_store/<name>.mar atomically and returns its path."""
    if model_store.exists() and not model_store.is_dir():
        raise UsageError(f"--model-store {model_store} is a file, not a directory")
    run = Run.open(run_dir, verify=True)
    archiver = find_tool("torch-model-archiver")
    model_store.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=model_store, prefix=".archive-") as tmp:
        staged, export = Path(tmp) / "extra", Path(tmp) / "export"
        stage(run, staged)
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
    print(f"Wrote {target} ({target.stat().st_size / 1e6:.1f} MB), model version {run.model_version[:12]}")
    return target


def build_base_archive(run_dir: Path, model_store: Path) -> Path:
    """model_store/cars-base.mar: the untuned network the run started from (same encoder and
    preprocessing, no trained head), served beside the tuned model for the comparison page."""
    from core.servable import base_model  # torch + quaterion-models: only this path needs them

    run = Run.open(run_dir, verify=True)
    base = base_model(run.load_model(), run.base_top_file)
    info = {
        "note": f"the untuned base model of run {run.path} (model {run.model_version[:12]}): for comparison",
        "base_of": run.model_version,
        "embedding_size": base.head.output_size,
    }
    with tempfile.TemporaryDirectory(dir=model_store if model_store.is_dir() else None) as tmp:
        base_run = Run.write(Path(tmp) / "base-run", base.save, info)
        return build_archive(base_run.path, model_store, name=BASE_MODEL)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="runs/latest", help="trained run directory (default: runs/latest)")
    parser.add_argument("--model-store", default="model_store", help="where to write the .mar (default: model_store)")
    parser.add_argument(
        "--base", action="store_true", help=f"also pack the untuned base model as {BASE_MODEL}.mar (for comparisons)"
    )
    return add_common_flags(parser, quiet=False)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(get_args_parser(), argv)
    build_archive(Path(args.run), Path(args.model_store))
    if args.base:
        build_base_archive(Path(args.run), Path(args.model_store))


def cli() -> int:
    """The console script's entry point (pyproject.toml [project.scripts])."""
    return run_cli(main)


if __name__ == "__main__":
    sys.exit(cli())
