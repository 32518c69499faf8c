"""Gallery stores side by side: exact numpy brute force, the hand-made PCA index, Qdrant Edge (HNSW)
and Qdrant Edge with int8 scalar quantization, on the same rows and queries.

    .venv-client/bin/python bench/store_search.py [--sizes 100000,1000000]
        [--edge 100000:none,100000:int8] [--hnsw-ef 128,256,512] [--results FILE]
    (numpy + qdrant-edge-py: the thin client venv)

Rows are the synthetic unit vectors of bench/gallery_search.py (float32, the eigenvalue spectrum
of the real gallery when runs/cars-mnv2/gallery.npz exists, else the power law fitted to it);
queries are fresh draws. Per method: build time (Edge: upserting the points with their row
metadata, then `optimize()`, which builds the HNSW graph, then `flush()`); the median latency of
one top-10 query over --queries queries and the latency per query of a batch of --batch queries
(numpy: one matrix product; Edge: `query_batch`), Edge's after reopening the shard and a warm-up
of other queries; recall@10 against exact float32 brute force; memory: the RSS growth while
building (numpy) or from reopening the shard to the end of its queries (Edge: what a query
process holds), and Edge's size on disk. Edge is searched through `clients.edge_store.EdgeGallery`
(rescoring and payloads as the store uses them) at every --hnsw-ef, and built only where --edge
says: an HNSW build of 1M x 1280 on 2 cores is long.
"""

from __future__ import annotations

import argparse
import gc
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import ROOT, machine, parse_list, table, write_json
from bench.gallery_search import TOP_K, draw, recall, spectrum, time_search
from clients.metadata import row_metadata
from clients.search import ProjectedIndex, exact_top_k
from core.files import write_json_atomic

COLUMNS = [
    "rows", "dim", "method", "hnsw_ef", "build_s", "1q_ms", "batch_ms/q", "recall@10", "rss_MB", "disk_MB", "note"
]  # fmt: skip


def rss_mb() -> float:
    """Resident set size of this process, MB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def disk_mb(path: Path) -> float:
    """Space the files take on disk (allocated blocks, as `du`: Edge preallocates sparse files)."""
    return sum(f.stat().st_blocks * 512 for f in path.rglob("*") if f.is_file()) / 1e6


def measure_numpy(rows: np.ndarray, queries: np.ndarray, truth: np.ndarray, args) -> list[dict]:
    singles, batch = queries[: args.queries], queries[: args.batch]
    base = {"rows": len(rows), "dim": rows.shape[1]}
    exact = {**base, "method": "exact numpy", "build_s": 0.0, "recall@10": 1.0, "rss_MB": round(rows.nbytes / 1e6)}
    exact["1q_ms"], exact["batch_ms/q"] = time_search(
        lambda q, k: exact_top_k(rows, q, k), singles, batch, args.batches
    )
    exact["note"] = "rss: the float32 matrix itself"
    print(table([exact], COLUMNS).splitlines()[-1], flush=True)
    gc.collect()
    before, started = rss_mb(), time.perf_counter()
    index = ProjectedIndex(rows)
    pca = {**base, "method": "PCA index", "build_s": round(time.perf_counter() - started, 2)}
    pca["rss_MB"] = round(rss_mb() - before)
    index.search(singles[:1], TOP_K)  # touch the head once, as a long-lived process would
    pca["1q_ms"], pca["batch_ms/q"] = time_search(index.search, singles, batch, args.batches)
    pca["recall@10"] = round(recall(index.search(queries, TOP_K)[0], truth), 4)
    pca["note"] = f"{index.head_dim} dims, shortlist {index.shortlist}; rss: + the matrix"
    if not index.usable:
        pca["note"] = "no usable projection: exact brute force"
    print(table([pca], COLUMNS).splitlines()[-1], flush=True)
    del index
    gc.collect()
    return [exact, pca]


def measure_edge(
    rows: np.ndarray, queries: np.ndarray, warmup: np.ndarray, truth: np.ndarray, spec: tuple, args
) -> list[dict]:
    """Builds one shard (spec: rows, quantization, m, ef_construct), reopens it, then measures every
    --hnsw-ef on it."""
    from clients import edge_store

    _, quantization, m, ef_construct = spec
    edge_store.OVERSAMPLING = args.oversampling
    edge_store.HNSW_M, edge_store.HNSW_EF_CONSTRUCT = m, ef_construct
    folder = args.dir / f"{len(rows)}-{quantization}-m{m}-ef{ef_construct}"
    location = f"qdrant://{folder}?quantization={quantization}"
    store = edge_store.EdgeGallery.open(location, create=("bench", rows.shape[1]), fresh=True)
    shard = store.shard
    started = time.perf_counter()
    for start in range(0, len(rows), args.upsert_batch):  # the payload each gallery row carries
        block = rows[start : start + args.upsert_batch]
        points = []
        for offset, vector in enumerate(block):
            payload = {**row_metadata(f"/bench/{start + offset}.jpg", "001_Audi A4 Sedan 2012"), "model_version": "b"}
            points.append(edge_store.edge.Point(payload["id"], vector.tolist(), payload))
        shard.update(edge_store.edge.UpdateOperation.upsert_points(points))
    upserted = time.perf_counter() - started
    shard.optimize()  # Edge has no background optimizer: this builds the HNSW graph (and int8 codes)
    shard.flush()
    built = time.perf_counter() - started
    indexed = shard.info().indexed_vectors_count
    store.close()
    del store, shard, points
    gc.collect()
    before = rss_mb()
    started = time.perf_counter()
    store = edge_store.EdgeGallery.open(location.split("?")[0])
    opened = time.perf_counter() - started
    singles, batch = queries[: args.queries], queries[: args.batch]
    started = time.perf_counter()
    store.search(warmup[0], TOP_K)
    cold = (time.perf_counter() - started) * 1000
    store.search_many(warmup, TOP_K)  # other queries first: the timed ones find the shard paged in

    def search(q: np.ndarray, k: int):
        return store.search_many(q, k) if q.ndim == 2 else store.search(q, k)

    method = f"Edge HNSW m{m}/{ef_construct}" + (" + int8" if quantization == "int8" else "")
    results = []
    for ef in args.hnsw_ef:
        edge_store.HNSW_EF = ef
        row = {"rows": len(rows), "dim": rows.shape[1], "method": method, "hnsw_ef": ef, "build_s": round(built, 1)}
        row["1q_ms"], row["batch_ms/q"] = time_search(search, singles, batch, args.batches)
        found = [[int(Path(h.path).stem) for h in hits] for hits in store.search_many(queries, TOP_K)]
        row["recall@10"] = round(recall(found, truth), 4)
        row["rss_MB"] = round(rss_mb() - before)
        row["disk_MB"] = round(disk_mb(folder))
        row["note"] = (
            f"upsert {upserted:.0f} s + optimize {built - upserted:.0f} s, {indexed} indexed, "
            f"m {m}, ef_construct {ef_construct}"
            + (f", oversampling {args.oversampling:g}" if quantization == "int8" else "")
            + f"; reopen {opened:.1f} s, first query {cold:.0f} ms"
        )
        print(table([row], COLUMNS).splitlines()[-1], flush=True)
        results.append(row)
    store.close()
    if not args.keep:
        shutil.rmtree(folder, ignore_errors=True)
    return results


def edge_specs(text: str) -> list[tuple[int, str, int, int]]:
    """ "100000:int8,100000:none:32:256" -> [(100000, "int8", 16, 128), (100000, "none", 32, 256)]"""
    from clients.edge_store import HNSW_EF_CONSTRUCT, HNSW_M

    specs = []
    for part in text.split(","):
        rows, quantization, *graph = part.split(":")
        m, ef_construct = (int(graph[0]), int(graph[1])) if graph else (HNSW_M, HNSW_EF_CONSTRUCT)
        specs.append((int(rows), quantization, m, ef_construct))
    return specs


def partial(args, results: list[dict], sources: set[str]) -> None:
    """What is measured so far (a run stopped for time keeps it), to --results."""
    if args.json:
        write_json_atomic(args.json, {"benchmark": "store_search", "partial": True, "data": sorted(sources),
                                      "machine": machine(), "results": results})  # fmt: skip


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=parse_list, default=[100_000, 1_000_000], help="gallery rows")
    parser.add_argument(
        "--edge", type=edge_specs, default=edge_specs("100000:none,100000:int8"),
        help="Edge shards to build, ROWS:none|int8[:M:EF_CONSTRUCT] (default: 100000:none,100000:int8; "
        "M and EF_CONSTRUCT: the store's)",
    )  # fmt: skip
    parser.add_argument("--dim", type=int, default=1280, help="embedding dimension (default: %(default)s)")
    parser.add_argument("--spectrum", type=Path, default=ROOT / "runs/cars-mnv2/gallery.npz", help="real gallery .npz")
    parser.add_argument("--queries", type=int, default=30, help="single queries timed (default: %(default)s)")
    parser.add_argument("--batch", type=int, default=64, help="queries per batch (default: %(default)s)")
    parser.add_argument("--batches", type=int, default=3, help="batches timed (default: %(default)s)")
    parser.add_argument("--hnsw-ef", type=parse_list, default=[128, 256, 512], help="Edge search ef values to time")
    parser.add_argument("--oversampling", type=float, default=4.0, help="int8 candidates x this are rescored")
    parser.add_argument("--upsert-batch", type=int, default=1000, help="points per Edge upsert (default: %(default)s)")
    parser.add_argument("--dir", type=Path, help="where the Edge shards go (default: a temporary directory)")
    parser.add_argument("--keep", action="store_true", help="keep the Edge shards")
    parser.add_argument("--results", "--json", dest="json", help="write the results to this JSON file")
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = get_args_parser().parse_args(argv)
    temporary = args.dir is None
    args.dir = Path(tempfile.mkdtemp(prefix="store-bench-")) if temporary else args.dir
    results, skipped, sources = [], [], set()
    try:
        for n in args.sizes:
            scales, source = spectrum(args.spectrum, args.dim)
            sources.add(source)
            rng = np.random.default_rng(n + args.dim)  # the rows bench/gallery_search.py draws
            rows = draw(n, scales, rng)
            queries = draw(max(args.queries, args.batch), scales, rng)
            warmup = draw(2 * args.batch, scales, rng)  # Edge is warmed with these, never timed on them
            truth = exact_top_k(rows, queries, TOP_K)[0]
            results.extend(measure_numpy(rows, queries, truth, args))
            partial(args, results, sources)
            for spec in args.edge:
                if spec[0] == n:
                    results.extend(measure_edge(rows, queries, warmup, truth, spec, args))
                    partial(args, results, sources)
            built = {spec[1] for spec in args.edge if spec[0] == n}
            skipped += [f"Edge {q} at {n} rows (not in --edge)" for q in ("none", "int8") if q not in built]
            del rows
            gc.collect()
    finally:
        if temporary and not args.keep:
            shutil.rmtree(args.dir, ignore_errors=True)
    print(table(results, COLUMNS) if results else "nothing measured")
    for line in skipped:
        print(f"not measured: {line}")
    payload = {"benchmark": "store_search", "argv": sys.argv[1:] if argv is None else argv, "data": sorted(sources),
               "machine": machine(), "results": results, "skipped": skipped}  # fmt: skip
    try:
        import qdrant_edge  # noqa: F401
        from importlib.metadata import version

        payload["machine"]["qdrant-edge-py"] = version("qdrant-edge-py")
    except ImportError:
        pass
    write_json(args.json, payload)
    return payload


if __name__ == "__main__":
    main()
