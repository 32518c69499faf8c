"""Gallery search: top-10 latency vs gallery size and dimension, float32 vs float16 rows,
one query and batched queries, exact brute force vs the projected index (clients/search.py).

    python bench/gallery_search.py [--sizes 10000,100000,1000000] [--dims 512,1280,2048]
    (numpy only: runs from .venv-client too; --json for the results)

Rows are unit vectors drawn with the eigenvalue spectrum of a real gallery (`--spectrum`, default
runs/cars-mnv2/gallery.npz, 4,052 MobileNetV2 car embeddings; resampled to other dimensions; a
power law fitted to it when the file is absent) or,
`--isotropic`, uniformly on the sphere: the worst case, where no projection helps and the index
falls back to brute force. Queries are fresh draws from the same distribution. Latency is the
median over --queries single queries (and over --batches batches of --batch queries, per query); recall@10
compares the index's top 10 with exact float32 brute force on the same rows. Combinations whose
float32 + float16 copies exceed --max-gb are skipped (listed).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np


from bench.common import ROOT, machine, median, parse_list, table, write_json
from clients.search import ProjectedIndex, exact_top_k

TOP_K = 10
# Eigenvalue i of the real MobileNetV2 car gallery (4,052 x 1,280) falls roughly as i^-1.25 (i = 1..512).
POWER_LAW = 1.25


def spectrum(source: Path | None, dim: int) -> tuple[np.ndarray, str]:
    """Per-axis standard deviations for `dim` dimensions and where they came from."""
    if source is not None and source.is_file():
        with np.load(source, allow_pickle=False) as data:
            rows = np.asarray(data["embeddings"], dtype=np.float64)
        eigenvalues = np.clip(np.linalg.eigvalsh(rows.T @ rows / len(rows))[::-1], 0, None)
        # Resample the curve to `dim` points (relative position), keep its shape, not its length.
        positions = np.linspace(0, 1, len(eigenvalues))
        resampled = np.interp(np.linspace(0, 1, dim), positions, np.log(eigenvalues + 1e-12))
        return np.sqrt(np.exp(resampled)).astype(np.float32), f"spectrum of {source} ({len(rows)} x {rows.shape[1]})"
    if source is not None:  # no real gallery here: a power law fitted to runs/cars-mnv2's spectrum
        return np.arange(1, dim + 1, dtype=np.float32) ** (-POWER_LAW / 2), f"power-law spectrum i^-{POWER_LAW}"
    return np.ones(dim, dtype=np.float32), "isotropic (uniform on the sphere)"


def draw(n: int, scales: np.ndarray, rng: np.random.Generator, dtype=np.float32) -> np.ndarray:
    """n unit rows, generated in blocks (1M x 2048 would not fit twice)."""
    out = np.empty((n, len(scales)), dtype=dtype)
    for start in range(0, n, 65_536):
        block = rng.standard_normal((min(65_536, n - start), len(scales)), dtype=np.float32) * scales
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        out[start : start + len(block)] = block
    return out


def timed(work, repeats: int) -> float:
    """Median milliseconds of `repeats` calls."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        times.append((time.perf_counter() - started) * 1000)
    return median(times)


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(found, truth, strict=True)]))


def time_search(search, queries: np.ndarray, batch: np.ndarray, batches: int) -> tuple[float, float]:
    """Median ms of one query (cycling through `queries`) and ms per query of a batch."""
    cursor = iter(range(10**9))
    single = timed(lambda: search(queries[next(cursor) % len(queries)], TOP_K), len(queries))
    batched = timed(lambda: search(batch, TOP_K), batches) / len(batch)
    return round(single, 2), round(batched, 3)


def measure_storage(rows: np.ndarray, queries: np.ndarray, truth: np.ndarray, args: argparse.Namespace) -> dict:
    singles, batch = queries[: args.queries], queries[: args.batch]
    row = {"rows": len(rows), "dim": rows.shape[1], "dtype": str(rows.dtype), "MB": round(rows.nbytes / 1e6)}
    # numpy converts float16 slowly (~1 s per 100k x 1280): fewer brute-force repeats there.
    slow = rows.dtype != np.float32
    row["exact_1q_ms"], row["exact_batch_ms/q"] = time_search(
        lambda q, k: exact_top_k(rows, q, k), singles[:3] if slow else singles, batch, 1 if slow else args.batches
    )
    started = time.perf_counter()
    index = ProjectedIndex(rows)
    row["build_s"] = round(time.perf_counter() - started, 2)
    row["head_dim"] = index.head_dim if index.usable else "-"
    row["shortlist"] = index.shortlist if index.usable else "-"
    index.search(singles[:1], TOP_K)  # touch the head once (page faults), as a long-lived process would
    row["index_1q_ms"], row["index_batch_ms/q"] = time_search(index.search, singles, batch, args.batches)
    row["recall@10"] = round(recall(index.search(queries, TOP_K)[0], truth), 4)
    return row


def measure(n: int, dim: int, scales: np.ndarray, args: argparse.Namespace) -> list[dict]:
    rng = np.random.default_rng(n + dim)
    rows32 = draw(n, scales, rng)
    queries = draw(max(args.queries, args.batch), scales, rng)
    truth = exact_top_k(rows32, queries, TOP_K)[0]  # exact float32: what recall is measured against
    results = []
    for dtype in args.dtypes:
        rows = rows32 if dtype == "float32" else rows32.astype(np.float16)
        results.append(measure_storage(rows, queries, truth, args))
        print(table([results[-1]], list(results[-1])).splitlines()[-1], flush=True)
    return results


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=parse_list, default=[10_000, 100_000, 1_000_000], help="gallery rows")
    parser.add_argument("--dims", type=parse_list, default=[512, 1280, 2048], help="embedding dimensions")
    parser.add_argument("--dtypes", type=lambda t: t.split(","), default=["float32", "float16"], help="row storage")
    parser.add_argument(
        "--pairs",
        type=lambda t: [tuple(int(x) for x in p.split("x")) for p in t.split(",")],
        help="explicit ROWSxDIM list instead of --sizes x --dims, e.g. 1000000x1280,100000x512",
    )
    parser.add_argument("--spectrum", type=Path, default=ROOT / "runs/cars-mnv2/gallery.npz", help="real gallery .npz")
    parser.add_argument("--isotropic", action="store_true", help="uniform random unit rows (worst case)")
    parser.add_argument("--queries", type=int, default=30, help="single queries timed (default: %(default)s)")
    parser.add_argument("--batch", type=int, default=64, help="queries per batch (default: %(default)s)")
    parser.add_argument("--batches", type=int, default=3, help="batches timed (default: %(default)s)")
    parser.add_argument("--max-gb", type=float, default=6.0, help="skip combinations needing more (default: 6)")
    parser.add_argument("--results", "--json", dest="json", help="write the results to this JSON file")
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = get_args_parser().parse_args(argv)
    pairs = args.pairs or [(n, d) for n in args.sizes for d in args.dims]
    results, skipped, sources = [], [], set()
    for n, dim in pairs:
        needed = n * dim * (4 + (2 if "float16" in args.dtypes else 0) + 0.5) / 1e9
        if needed > args.max_gb:
            skipped.append(f"{n}x{dim} (~{needed:.1f} GB > --max-gb {args.max_gb})")
            print(f"skip {skipped[-1]}", flush=True)
            continue
        scales, source = spectrum(None if args.isotropic else args.spectrum, dim)
        sources.add(source)
        results.extend(measure(n, dim, scales, args))
    print(table(results, list(results[0])) if results else "nothing measured")
    payload = {"benchmark": "gallery_search", "argv": sys.argv[1:] if argv is None else argv, "data": sorted(sources),
               "machine": machine(), "results": results, "skipped": skipped}  # fmt: skip
    write_json(args.json, payload)
    return payload


if __name__ == "__main__":
    main()
