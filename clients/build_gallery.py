"""Embed every image under DIR through the server into a gallery file.

    python clients/build_gallery.py DIR [--gallery galleries/gallery.npz] [--url URL] [--concurrency 8]

Labels come from the ImageFolder layout (DIR/<label>/<image>); images directly in DIR have no
label and are refused unless --unlabelled says that is meant. Concurrent requests let the server
batch. Resumable: images already in the gallery are skipped, progress is saved atomically every
--checkpoint-every images, so a killed build loses at most that much and never the old gallery.
Images the server rejects are reported and skipped.
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path


import numpy as np
from tqdm import tqdm

from core.cli import add_common_flags, parse_args, show_progress
from clients.api import DEFAULT_URL, ClientError, EmbeddingClient, ImageRejected
from clients.cli import add_api_key_argument, run_cli
from clients.metadata import load_sidecar, sidecar_for
from clients.store import DEFAULT_GALLERY, is_qdrant, open_store

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}


def list_images(root: Path, unlabelled: bool = False) -> list[tuple[str, str]]:
    """(absolute path, label) of every image file; label = first folder under root ("" for
    images directly in root, refused unless `unlabelled`)."""
    if not root.is_dir():
        raise ClientError(f"image directory not found: {root}")
    found = []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES):
        relative = path.relative_to(root)
        found.append((str(path.resolve()), relative.parts[0] if len(relative.parts) > 1 else ""))
    if not found:
        raise ClientError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {root}")
    loose = [path for path, label in found if not label]
    if loose and not unlabelled:
        raise ClientError(
            f"{len(loose)} images lie directly in {root} (e.g. {Path(loose[0]).name}) with no class folder: put "
            f"them in {root}/<label>/, or pass --unlabelled to add them without a label"
        )
    return found


def check_gallery_location(gallery: str) -> None:
    """Refuses a gallery location that cannot work before any image is embedded."""
    if gallery.startswith("qdrant://"):
        from clients.edge_store import parse_location

        parse_location(gallery)  # its options, before any image is embedded (the store opens later)
        return
    if is_qdrant(gallery):
        from clients.qdrant_store import parse_location

        parse_location(gallery)
        return
    path = Path(gallery)
    if path.is_dir():
        raise ClientError(f"--gallery {gallery} is a directory: give a file such as {path / 'gallery.npz'}")
    if path.suffix != ".npz":
        raise ClientError(f"--gallery {gallery}: a gallery file ends in .npz (or use qdrant://DIR)")


def existing_store(store: str):
    """The gallery to resume, or None when there is none yet."""
    if not is_qdrant(store) and not Path(store).exists():
        return None
    try:
        return open_store(store)
    except ClientError as error:
        if str(error).startswith("no gallery at"):
            return None
        raise


def probe_version(client: EmbeddingClient, images: list[tuple[str, str]]) -> str:
    """The model version the server runs, from the first image it accepts."""
    for path, _ in images[:20]:
        try:
            return embed_file(client, path).model_version
        except (ImageRejected, OSError):
            continue
    raise ClientError("the server rejected the first 20 images; is this an image directory?")


def embed_file(client: EmbeddingClient, path: str):
    return client.embed(Path(path).read_bytes())


def build(args: argparse.Namespace) -> dict:
    check_gallery_location(args.gallery)
    images = list_images(Path(args.images), args.unlabelled)
    sidecar = load_sidecar(args.metadata) if args.metadata else {}
    out = args.gallery
    client = EmbeddingClient(args.url, api_key=args.api_key)
    gallery = None if args.rebuild else existing_store(out)
    if gallery is not None:  # refuse another model before adding anything, even with nothing to add
        gallery.check_version(probe_version(client, images), args.url)
    done = gallery.known_paths() if gallery is not None else set()
    pending = [(p, label) for p, label in images if p not in done]
    added, skipped, batch = 0, [], []  # batch: rows not yet in the gallery, added in bulk

    def flush() -> None:  # every store's `add` is durable when it returns
        if batch:
            paths = [p for _, p, _ in batch]
            extra = [sidecar_for(sidecar, p) for p in paths]
            gallery.add(np.stack([r.vector for r, _, _ in batch]), paths, [lb for _, _, lb in batch], extra)
            batch.clear()

    with ThreadPoolExecutor(max_workers=args.concurrency) as pool:
        futures = {pool.submit(embed_file, client, path): (path, label) for path, label in pending}
        try:
            for future in tqdm(
                as_completed(futures), total=len(futures), desc="embedding", unit="img",
                disable=args.json or not show_progress(not args.quiet),
            ):  # fmt: skip
                path, label = futures[future]
                try:
                    result = future.result()
                except (ImageRejected, OSError) as error:
                    skipped.append({"path": path, "error": str(error)})
                    continue
                if gallery is None:
                    gallery = open_store(out, create=(result.model_version, len(result.vector)), fresh=args.rebuild)
                gallery.check_version(result.model_version, args.url)
                batch.append((result, path, label))
                added += 1
                if added % args.checkpoint_every == 0:
                    flush()
        except BaseException:
            for future in futures:
                future.cancel()
            if gallery is not None and added:
                flush()  # keep what is done: the next run resumes from here
            raise
    if gallery is None:
        raise ClientError(f"the server rejected every image under {args.images}; first: {skipped[0]['error']}")
    flush()
    return {"gallery": out, "added": added, "already_present": len(images) - len(pending),
            "skipped": skipped, "total": len(gallery), "model_version": gallery.model_version}  # fmt: skip


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", nargs="?", help="directory of images (DIR/<label>/<image> gives labels)")
    parser.add_argument("--data", help="the same directory, as the other commands name it")
    parser.add_argument("--unlabelled", action="store_true", help="accept images directly in DIR (no label)")
    parser.add_argument(
        "--metadata", help="CSV (a path or file column) or JSON {image: {attribute: value}} of extra attributes"
    )
    parser.add_argument(
        "--gallery", "--out", "--store", dest="gallery", default=DEFAULT_GALLERY,
        help="gallery: a .npz file, or qdrant://DIR?collection=NAME (embedded) / qdrant+http://HOST:PORT/NAME "
        "(default: %(default)s)",
    )  # fmt: skip
    parser.add_argument("--url", default=DEFAULT_URL, help="prediction endpoint (default: %(default)s)")
    add_api_key_argument(parser)
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight (default: %(default)s)")
    parser.add_argument(
        "--checkpoint-every", type=int, default=200, help="save every N new images (default: %(default)s)"
    )
    parser.add_argument("--rebuild", action="store_true", help="start over instead of resuming --gallery")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    return add_common_flags(parser)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(get_args_parser(), argv)
    if args.concurrency < 1 or args.checkpoint_every < 1:
        raise ClientError("--concurrency and --checkpoint-every must be >= 1")
    if (args.images is None) == (args.data is None):
        raise ClientError("give the image directory once: as DIR or as --data DIR")
    args.images = args.images or args.data
    summary = build(args)
    if args.json:
        print(json.dumps(summary, indent=2))
        return
    print(
        f"{summary['gallery']}: {summary['total']} images (added {summary['added']}, "
        f"already present {summary['already_present']}, skipped {len(summary['skipped'])}), "
        f"model {summary['model_version'][:12]}"
    )
    for item in summary["skipped"][:10]:
        print(f"  skipped {item['path']}: {item['error']}")


def cli() -> int:
    """The console script's entry point (pyproject.toml [project.scripts])."""
    return run_cli(main)


if __name__ == "__main__":
    sys.exit(cli())
