"""What re-ranking costs a search in the file store (clients/gallery.py), against the plain search.

    python -m bench.rerank_cost [--sizes 4052,100000] [--dim 3840] [--queries 20] [--json FILE]

A re-ranked search (core/rerank.py DEFAULT) takes the store's top `shortlist` rows and, for each,
its k nearest rows of the whole gallery: a [shortlist, N] product the first time a row is
shortlisted, nothing once the gallery keeps its neighbours (until the gallery changes). "cold"
times each query on a gallery that has looked up no neighbours yet, "warm" the same query again:
the two ends of a service's life between writes. Rows are random unit vectors with a few
clusters (numpy only: runs from .venv-client too); the median over --queries is reported.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from bench.common import machine, median, parse_list, table, write_json
from clients.gallery import Gallery
from core.rerank import DEFAULT


def random_gallery(size: int, dim: int, seed: int = 0) -> Gallery:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(max(size // 40, 1), dim)).astype(np.float32)
    rows = centres[rng.integers(len(centres), size=size)] + rng.normal(size=(size, dim)).astype(np.float32)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    paths = [f"car{i}.jpg" for i in range(size)]
    return Gallery("bench", dim, rows, paths, ["car"] * size)


def timed(search) -> float:
    began = time.perf_counter()
    search()
    return (time.perf_counter() - began) * 1000


def measure(size: int, dim: int, queries: int) -> dict[str, float]:
    gallery = random_gallery(size, dim)
    rng = np.random.default_rng(1)
    picks = gallery.embeddings[rng.integers(size, size=queries)] + 0.5 * rng.normal(size=(queries, dim)) / dim**0.5
    plain, cold, warm = [], [], []
    for query in picks.astype(np.float32):
        plain.append(timed(lambda q=query: gallery.search(q, 10)))
        gallery._nearest.clear()  # as after a write: no neighbours known
        cold.append(timed(lambda q=query: gallery.search(q, 10, rerank=DEFAULT)))
        warm.append(timed(lambda q=query: gallery.search(q, 10, rerank=DEFAULT)))
    return {"rows": size, "dim": dim, "plain_ms": round(median(plain), 2), "reranked_cold_ms": round(median(cold), 2),
            "reranked_warm_ms": round(median(warm), 2)}  # fmt: skip


def main(argv: list[str] | None = None) -> list[dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=parse_list, default=[4052, 100_000], help="gallery rows")
    parser.add_argument("--dim", type=int, default=3840, help="embedding dimension (the CPU default's: 3840)")
    parser.add_argument("--queries", type=int, default=20, help="queries timed (default: %(default)s)")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    rows = [measure(size, args.dim, args.queries) for size in args.sizes]
    print(f"re-rank {DEFAULT.as_dict()}, top 10, one query at a time, median of {args.queries}")
    print(table(rows, ["rows", "dim", "plain_ms", "reranked_cold_ms", "reranked_warm_ms"]))
    if args.json:
        write_json(args.json, {"machine": machine(), "settings": DEFAULT.as_dict(), "results": rows})
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
