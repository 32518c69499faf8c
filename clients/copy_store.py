"""Copy a gallery between stores: the path from the embedded Qdrant Edge store (or a .npz file) to
a Qdrant server or cluster, and back.

    python -m clients.copy_store --from qdrant://galleries/edge \\
        --to 'qdrant+http://HOST:6333/cars?shards=6&replicas=2&quantization=int8'

Reads every row with its vector (`GalleryStore.export`) in steps of --batch-size rows and adds
each step to the destination, which is created with the source's model version and dimension when
it does not exist; a qdrant+http(s) destination sends each step as upserts of its own ?batch_size=
points. Resumable: rows whose image is already in the destination are skipped and each step is
durable once added, so a copy that was killed completes when run again. A destination holding
another model's embeddings or another dimension is refused, and so is one that is the source
spelled another way (`clients.store.same_gallery`), which --rebuild would delete before reading.
Qdrant Edge 0.9 cannot write a snapshot that a server restores (it only reads the server's), so
this re-upload is the way from Edge to a server.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tqdm import tqdm

from clients.api import ClientError
from clients.cli import run_cli
from clients.metadata import row_extra
from clients.store import is_qdrant, open_store, same_gallery
from core.cli import add_common_flags, parse_args, show_progress

BATCH = 1024  # rows read and added per step: one durable step of the copy
NPZ_BATCH = 65_536  # a .npz file is rewritten whole at every `add`: fewer, larger steps


def copy(source: str, destination: str, batch_size: int | None = None, rebuild: bool = False,
         progress: bool = False) -> dict:  # fmt: skip
    """Copies every row of `source` that `destination` lacks; returns a summary."""
    if same_gallery(source, destination):  # before opening either: --rebuild would delete the source
        raise ClientError(f"--from {source} and --to {destination} are the same gallery")
    if not is_qdrant(destination) and Path(destination).suffix != ".npz":
        raise ClientError(f"--to {destination}: a gallery file ends in .npz (or use qdrant://DIR, qdrant+http://...)")
    batch_size = batch_size or (BATCH if is_qdrant(destination) else NPZ_BATCH)
    src = open_store(source)
    try:
        dst = open_store(destination, create=(src.model_version, src.dim), fresh=rebuild)
        try:
            return _copy(src, dst, source, destination, batch_size, progress)
        finally:
            dst.close()
    finally:
        src.close()


def _copy(src, dst, source: str, destination: str, batch_size: int, progress: bool) -> dict:
    if dst.dim != src.dim:
        raise ClientError(f"--to {destination} holds {dst.dim}-dimensional rows, --from {source} {src.dim}: "
                          "copy into another location, or pass --rebuild to replace it")  # fmt: skip
    if dst.model_version != src.model_version:
        if len(dst) > 0:
            raise ClientError(
                f"--to {destination} holds embeddings of model {dst.model_version[:12]}, --from {source} of model "
                f"{src.model_version[:12]}: copy into another location, or pass --rebuild to replace it"
            )
        dst.check_version(src.model_version, source)  # empty: it takes the source's model
    done = dst.known_paths()
    copied = present = 0
    with tqdm(total=len(src), desc="copying", unit="row", disable=not progress) as bar:
        for vectors, rows in src.export(batch_size):
            keep = [i for i, row in enumerate(rows) if row["path"] not in done]
            present += len(rows) - len(keep)
            if keep:
                picked = [rows[i] for i in keep]
                dst.add(vectors[keep], [r["path"] for r in picked], [r["label"] for r in picked],
                        [row_extra(r) for r in picked])  # fmt: skip
                copied += len(keep)
            bar.update(len(rows))
    return {"from": source, "to": destination, "copied": copied, "already_present": present, "total": len(dst),
            "model_version": src.model_version, "dim": src.dim}  # fmt: skip


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--from",
        dest="source",
        required=True,
        help="the gallery to read: FILE.npz, qdrant://DIR?collection=NAME or qdrant+http://HOST:PORT/NAME",
    )
    parser.add_argument(
        "--to",
        dest="destination",
        required=True,
        help="the gallery to fill (created if missing; its options, e.g. ?shards=6&replicas=2, "
        "apply when it is created)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        help=f"rows read from --from and added to --to per durable step (default {BATCH}; {NPZ_BATCH} into a .npz "
        "file, which is rewritten at every step); a qdrant+http(s) --to sends each step as upserts of its own "
        "?batch_size= points (default 256)",
    )
    parser.add_argument("--rebuild", action="store_true", help="replace the destination instead of completing it")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    return add_common_flags(parser)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(get_args_parser(), argv)
    if args.batch_size is not None and args.batch_size < 1:
        raise ClientError("--batch-size must be >= 1")
    summary = copy(args.source, args.destination, args.batch_size, args.rebuild,
                   progress=not args.json and show_progress(not args.quiet))  # fmt: skip
    if args.json:
        print(json.dumps(summary, indent=2))
        return
    print(f"{summary['to']}: {summary['total']} rows (copied {summary['copied']}, already present "
          f"{summary['already_present']}), model {summary['model_version'][:12]}")  # fmt: skip


def cli() -> int:
    """The console script's entry point (pyproject.toml [project.scripts])."""
    return run_cli(main)


if __name__ == "__main__":
    sys.exit(cli())
