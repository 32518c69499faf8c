"""Find the gallery cars most similar to an image.

    python clients/query.py car.jpg [--top-k 5] [--gallery galleries/gallery.npz] [--rerank] [--json] [--show out.png]

Embeds IMAGE through the server and ranks the gallery by exact cosine similarity; `--rerank`
orders the best 300 as the search service does by default (core/rerank.py: each row and the
query averaged with their gallery neighbours), the printed score staying the raw similarity.
Refuses a gallery built with another model version than the server's.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


from core.cli import add_common_flags, parse_args
from clients.api import DEFAULT_URL, ClientError, EmbeddingClient, ImageRejected
from clients.cli import add_api_key_argument, run_cli
from clients.metadata import Condition, parse_where
from clients.store import DEFAULT_GALLERY, open_store
from core.rerank import DEFAULT as RERANK_SETTINGS
from core.rerank import RerankSettings


def check_image(image: Path) -> None:
    if image.is_dir():
        raise ClientError(f"{image} is a directory: give one image file (build_gallery.py embeds directories)")
    if not image.is_file():
        raise ClientError(f"image not found: {image}")


def query(
    image: Path, gallery, client: EmbeddingClient, top_k: int, where: tuple[Condition, ...] = (),
    rerank: RerankSettings | None = None,
) -> dict:  # fmt: skip
    check_image(image)
    try:
        embedding = client.embed(image.read_bytes())
    except ImageRejected as error:
        raise ClientError(f"the server cannot use {image}: {error}") from None
    gallery.check_version(embedding.model_version, client.url)
    # The query's own file, if it is in the gallery, is not a result: it would always rank first.
    itself = str(image.resolve())
    hits = [hit for hit in gallery.search(embedding.vector, top_k + 1, where, rerank=rerank) if hit.path != itself]
    results = [
        {**hit.metadata, "rank": rank, "score": round(hit.score, 4), "label": hit.label, "path": hit.path}
        for rank, hit in enumerate(hits[:top_k], start=1)
    ]
    if rerank is not None:  # what ordered them (None past the shortlist), as the search API answers
        for result, hit in zip(results, hits, strict=False):
            result["rerank_score"] = None if hit.rerank_score is None else round(hit.rerank_score, 4)
    answer = {"query": str(image), "model_version": embedding.model_version, "rerank": rerank is not None,
              "results": results}  # fmt: skip
    return {**answer, "where": [str(c) for c in where]} if where else answer


def format_table(answer: dict) -> str:
    lines = [f"Most similar to {answer['query']} (model {answer['model_version'][:12]}):"]
    lines.append(f"{'rank':>4}  {'score':>6}  {'label':<32}  path")
    for r in answer["results"]:
        lines.append(f"{r['rank']:>4}  {r['score']:>6.3f}  {r['label'][:32]:<32}  {r['path']}")
    return "\n".join(lines)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("image", help="image file to search with")
    parser.add_argument("--top-k", type=int, default=5, help="number of results (default: %(default)s)")
    parser.add_argument(
        "--gallery", "--store", dest="gallery", default=DEFAULT_GALLERY,
        help="gallery: a .npz file or a qdrant://... location (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument("--url", default=DEFAULT_URL, help="prediction endpoint (default: %(default)s)")
    add_api_key_argument(parser)
    parser.add_argument(
        "--where", action="append", default=[], metavar="FILTER",
        help="keep results whose metadata passes, e.g. make=Audi or year>=2010 (repeat: all must hold)",
    )  # fmt: skip
    parser.add_argument(
        "--compare", metavar="GALLERY", help="also search this gallery (e.g. of the base model) and show both"
    )
    parser.add_argument("--compare-url", help="the endpoint of the model that built --compare (default: --url)")
    parser.add_argument(
        "--rerank", action="store_true",
        help=f"re-rank the best {RERANK_SETTINGS.shortlist} with their gallery neighbours (the search page's default)",
    )  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--show", metavar="PNG", help="also draw the query and its results into this picture")
    return add_common_flags(parser, quiet=False)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(get_args_parser(), argv)
    if args.top_k < 1:
        raise ClientError(f"--top-k must be >= 1, got {args.top_k}")
    check_image(Path(args.image))  # before the gallery is read: a typo costs nothing
    where = tuple(parse_where(text) for text in args.where)
    gallery = open_store(args.gallery)
    other = open_store(args.compare) if args.compare else None
    rerank = RERANK_SETTINGS if args.rerank else None
    client = EmbeddingClient(args.url, api_key=args.api_key)
    answer = query(Path(args.image), gallery, client, args.top_k, where, rerank)
    if other is not None:
        client = EmbeddingClient(args.compare_url or args.url, api_key=args.api_key)
        compared = query(Path(args.image), other, client, args.top_k, where, rerank)
        answer["compare"] = {"gallery": args.compare, **compared}
    if args.show:
        from clients.picture import draw_results

        draw_results(answer, Path(args.show))
    if args.json:
        print(json.dumps(answer, indent=2))
    else:
        print(format_table(answer))
        if other is not None:
            print(f"\nThe same query in {args.compare}:\n{format_table(answer['compare'])}")
    if args.show and not args.json:
        print(f"Wrote {args.show}")
    return answer


def cli() -> int:
    """The console script's entry point (pyproject.toml [project.scripts])."""
    return run_cli(main)


if __name__ == "__main__":
    sys.exit(cli())
