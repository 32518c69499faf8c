"""Model upgrades without downtime: re-embed a gallery with the newly served model, then switch.

    python search_service/reindex.py --from galleries/gallery.npz --to galleries/gallery-v2.npz \\
        --url http://127.0.0.1:8090/predictions/cars [--switch http://127.0.0.1:8000]

1. Serve the new model beside the old one (a second TorchServe, `--url`); the search service keeps
   answering from the old gallery with the old model all along.
2. This re-embeds the photo of every row of --from through --url into --to (a new file or
   collection, created with the new model's version), with its label and metadata, in durable
   checkpoints: killed, it resumes where it stopped; run again, it adds only what --from gained,
   drops what --from lost and copies changed metadata. A calibrated gallery's copy is calibrated
   anew (clients/calibration.py): the new model's scores are other scores.
3. `--switch URL_OF_THE_SEARCH_SERVICE` then asks the running service (`POST /admin/switch`, with
   the write key from CARS_WRITE_KEY) to catch up on the writes made since (the same sync, under
   its store lock) and to move to the new gallery and model in one step: each search uses one
   gallery and one model from start to end, so none mixes two model versions.

A row whose photo is no longer readable cannot be re-embedded: it is left out and listed.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import requests
from tqdm import tqdm

from clients.calibration import calibrate_store, of_store
from clients.api import DEFAULT_URL, ClientError, Embedding, EmbeddingClient, ImageRejected
from clients.cli import add_api_key_argument, run_cli
from clients.metadata import row_extra, row_id
from clients.store import GalleryStore, open_store, same_gallery
from search_service.writes import WRITE_KEY_ENV
from core.cli import add_common_flags, parse_args, show_progress

CHECKPOINT = 64  # rows re-embedded per durable step


def probe_image() -> bytes:
    """A small valid JPEG: enough to ask a server which model it runs."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (90, 120, 160)).save(buffer, format="JPEG")
    return buffer.getvalue()


def served_version(client: EmbeddingClient) -> tuple[str, int]:
    embedding = client.embed(probe_image())
    return embedding.model_version, len(embedding.vector)


def rows_by_path(store: GalleryStore) -> dict[str, dict[str, Any]]:
    return {row["path"]: row for _, rows in store.export() for row in rows}


def changed_fields(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """What `update` must set (and remove, as None) to turn `new`'s metadata into `old`'s."""
    want, have = row_extra(old), row_extra(new)
    return {**{k: v for k, v in want.items() if have.get(k) != v}, **{k: None for k in have if k not in want}}


def sync(source: GalleryStore, target: GalleryStore, client: EmbeddingClient, concurrency: int = 8,
         progress: bool = False) -> dict[str, Any]:  # fmt: skip
    """Makes `target` hold `source`'s rows, embedded by `client`'s model: adds what it lacks (in
    durable checkpoints), deletes what `source` no longer has, copies changed metadata."""
    wanted, have = rows_by_path(source), rows_by_path(target)
    missing = [row for path, row in wanted.items() if path not in have]
    stale = [row_id(path) for path in have if path not in wanted]
    updated = 0
    for path, row in wanted.items():
        if path in have and (fields := changed_fields(row, have[path])):
            target.update(row["id"], fields)
            updated += 1
    if stale:
        target.delete(stale)
    added, unreadable = 0, []
    with ThreadPoolExecutor(concurrency) as pool, tqdm(total=len(missing), desc="re-embedding", unit="img",
                                                       disable=not progress) as bar:  # fmt: skip
        for start in range(0, len(missing), CHECKPOINT):
            chunk = missing[start : start + CHECKPOINT]
            results = list(pool.map(lambda row: embed_row(client, row), chunk))
            done = [(row, found) for row, found in zip(chunk, results, strict=True) if found is not None]
            unreadable += [row["path"] for row, found in zip(chunk, results, strict=True) if found is None]
            for version in {found.model_version for _, found in done}:  # a model swapped under us: refuse
                target.check_version(version, client.url)
            if done:
                target.add(np.stack([found.vector for _, found in done]), [row["path"] for row, _ in done],
                           [row["label"] for row, _ in done], [row_extra(row) for row, _ in done])  # fmt: skip
                added += len(done)
            bar.update(len(chunk))
    return {"added": added, "deleted": len(stale), "updated": updated, "unreadable": unreadable,
            "total": len(target), "model_version": target.model_version}  # fmt: skip


def embed_row(client: EmbeddingClient, row: dict[str, Any]) -> Embedding | None:
    """The new embedding of a row's photo, or None when the photo is gone or no longer an image."""
    try:
        return client.embed(Path(row["path"]).read_bytes())
    except (OSError, ImageRejected):
        return None


def reindex(source: str, destination: str, client: EmbeddingClient, concurrency: int = 8,
            progress: bool = False) -> dict[str, Any]:  # fmt: skip
    if same_gallery(source, destination):
        raise ClientError(f"--from {source} and --to {destination} are the same gallery: re-embed into a new one")
    version, dim = served_version(client)
    src = open_store(source)
    try:
        if src.model_version == version:
            raise ClientError(
                f"{client.url} serves model {version[:12]}, the one {source} was built with: serve the new model "
                "there (a second TorchServe) and pass its URL"
            )
        dst = open_store(destination, create=(version, dim))
        try:
            dst.check_version(version, client.url)
            summary = sync(src, dst, client, concurrency, progress)
            if of_store(src) is not None:  # the new model's scores are other scores: calibrate anew
                summary["calibrated"] = calibrate_store(dst)["thresholds"]
        finally:
            dst.close()
    finally:
        src.close()
    return {"from": source, "to": destination, **summary}


def switch(service: str, gallery: str, url: str, key: str) -> dict[str, Any]:
    """Asks the search service at `service` to move to `gallery`, embedded by the model at `url`."""
    try:
        response = requests.post(
            f"{service.rstrip('/')}/admin/switch", json={"gallery": gallery, "url": url},
            headers={"Authorization": f"Bearer {key}"}, timeout=600,
        )  # fmt: skip
    except requests.RequestException as error:
        raise ClientError(f"cannot reach the search service at {service} ({type(error).__name__})") from None
    try:
        answer = response.json()
    except ValueError:
        answer = {}
    if response.status_code != 200:
        raise ClientError(f"the search service refused the switch (HTTP {response.status_code}): "
                          f"{answer.get('error', response.text[:200])}")  # fmt: skip
    return answer


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from", dest="source", required=True, help="the gallery in service (read only)")
    parser.add_argument("--to", dest="destination", required=True, help="the new gallery (created, or completed)")
    parser.add_argument("--url", default=DEFAULT_URL, help="the endpoint serving the NEW model (default: %(default)s)")
    add_api_key_argument(parser)
    parser.add_argument("--concurrency", type=int, default=8, help="photos embedded at once (default: %(default)s)")
    parser.add_argument(
        "--switch", metavar="SERVICE_URL", help=f"then switch this running search service over (needs ${WRITE_KEY_ENV})"
    )
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    return add_common_flags(parser)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(get_args_parser(), argv)
    if not 1 <= args.concurrency <= 256:
        raise ClientError("--concurrency must be in 1..256")
    key = os.environ.get(WRITE_KEY_ENV, "")
    if args.switch and not key:
        raise ClientError(f"--switch needs the service's write key in {WRITE_KEY_ENV}")
    client = EmbeddingClient(args.url, api_key=args.api_key)
    summary = reindex(args.source, args.destination, client, args.concurrency,
                      progress=not args.json and show_progress(not args.quiet))  # fmt: skip
    if args.switch:
        summary["switch"] = switch(args.switch, args.destination, args.url, key)
    if args.json:
        print(json.dumps(summary, indent=2))
        return
    print(f"{summary['to']}: {summary['total']} rows of model {summary['model_version'][:12]} (re-embedded "
          f"{summary['added']}, removed {summary['deleted']}, metadata updated {summary['updated']})")  # fmt: skip
    if summary["unreadable"]:
        print(f"left out {len(summary['unreadable'])} rows whose photo is unreadable, e.g. {summary['unreadable'][0]}")
    if args.switch:
        print(f"{args.switch} now searches {args.destination} with model {summary['model_version'][:12]}")


def cli() -> int:
    """The console script's entry point (pyproject.toml [project.scripts])."""
    return run_cli(main)


if __name__ == "__main__":
    sys.exit(cli())
