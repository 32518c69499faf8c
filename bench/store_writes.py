"""What one write costs each embedded store: add, update and delete of one row in a gallery of N.

    .venv-client/bin/python bench/store_writes.py [--sizes 1000,10000,50000] [--dim 1280] [--repeats 5] [--json]

Apps write to the search service one row at a time (POST / PATCH / DELETE /gallery). The `.npz`
file store rewrites its whole file atomically at each write; Qdrant Edge writes one point and
flushes. Random unit rows of --dim (MobileNetV2's feature width), each gallery in a temporary
folder, filled in steps of 5,000; then --repeats writes of each kind, timed one by one (mean).
numpy and qdrant-edge-py only: runs from .venv-client.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import machine, parse_list, table
from clients.metadata import row_id
from clients.store import open_store


def timed_ms(work, repeats: int) -> float:
    start = time.perf_counter()
    for i in range(repeats):
        work(i)
    return round((time.perf_counter() - start) / repeats * 1000, 1)


def measure(kind: str, rows: int, dim: int, repeats: int) -> dict:
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(rows, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    paths = [f"/photos/{i}.jpg" for i in range(rows)]
    with tempfile.TemporaryDirectory(prefix="bench-writes-") as tmp:
        location = str(Path(tmp) / "g.npz") if kind == "file" else f"qdrant://{tmp}/edge"
        store = open_store(location, create=("v1", dim))
        try:
            for start in range(0, rows, 5000):
                store.add(vectors[start : start + 5000], paths[start : start + 5000], ["Audi A4 Sedan 2012"] * len(
                    paths[start : start + 5000]))  # fmt: skip
            one = vectors[:1]
            return {
                "store": kind, "rows": rows,
                "add_ms": timed_ms(lambda i: store.add(one, [f"/new/{i}.jpg"], ["Audi A4 Sedan 2012"]), repeats),
                "update_ms": timed_ms(lambda i: store.update(row_id(paths[i]), {"price": i}), repeats),
                "delete_ms": timed_ms(lambda i: store.delete([row_id(paths[repeats + i])]), repeats),
            }  # fmt: skip
        finally:
            store.close()


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--sizes", type=parse_list, default=[1000, 10000, 50000], help="gallery rows (default: 1000,10000,50000)"
    )
    parser.add_argument("--dim", type=int, default=1280, help="(default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=5, help="writes of each kind timed (default: %(default)s)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    if min(args.sizes) <= 2 * args.repeats or args.dim < 1 or args.repeats < 1:
        raise SystemExit("error: every size must exceed 2 x --repeats; --dim and --repeats must be >= 1")
    rows = [measure(kind, size, args.dim, args.repeats) for size in args.sizes for kind in ("file", "edge")]
    if args.json:
        print(json.dumps({"machine": machine(), "rows": rows}, indent=2))
    else:
        print(table(rows, ["store", "rows", "add_ms", "update_ms", "delete_ms"]))
    return rows


if __name__ == "__main__":
    main()
