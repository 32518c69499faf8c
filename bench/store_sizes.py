"""How big each gallery store gets: rows x dim x bytes at 1M, 10M and 100M images, computed (not
measured) from the stores' formats, for docs/deploy.md.

    python bench/store_sizes.py [--rows 1000000,10000000,100000000] [--dims 1280,2048] [--json]
        [--path-chars 96] [--label-chars 32 | --label TEXT] [--model-version-chars 64] [--index-bytes 48]

Per row (GB = 10^9 bytes):
  vectors   dim x 4            float32, in every store
  int8      dim x 1            quantization=int8's codes (Edge and server; kept in RAM)
  graph     2 x m x 4          HNSW layer-0 links: up to 2m neighbours of 4 bytes (upper layers add
                               about 1/m more, left out); m = 16, the stores' default
  payload   JSON of the stored payload (clients/metadata.py: id, path, label, make, model, year,
            model version) of a row with a --path-chars path, a Stanford Cars style label of
            --label-chars (make Audi, year 2012; or --label verbatim) and a --model-version-chars
            model version (64: a sha256, as the servers report it)
  indexes   --index-bytes      the payload indexes on make, model, label and year (an assumption,
                               not derived from Qdrant's index formats)
  .npz      vectors + the metadata arrays, which numpy keeps as fixed-width UTF-32 strings
            (4 bytes per character of the longest path, label and row JSON): the file's size.
            `Gallery.load` reads it whole: the float32 matrix plus the paths, labels and rows as
            Python objects; that memory is of the same order but was not measured.
Edge and a server hold the same per replica: on disk vectors + graph + payload + indexes (+ int8);
in RAM for fast search float32 vectors + graph + indexes, or with int8 codes in RAM and float32
vectors on disk (read only to rescore the candidates) int8 + graph + indexes. A cluster multiplies
all of it by --replicas, spread over its nodes. Write-ahead logs, the id tracker and optimizer
headroom (temporary segments while indexing: up to about one more copy of a segment) come on top.
"""

from __future__ import annotations

import argparse
import json
import sys

from clients.metadata import row_metadata, stored_payload


def cars_label(chars: int) -> str:
    """A Stanford Cars style label of `chars` characters, "Audi SSS... 2012", which parses to make,
    model and year (shorter than 11 characters: a plain label, without them)."""
    return f"Audi {'S' * (chars - 10)} 2012" if chars >= 11 else "L" * chars


def per_row(
    dim: int, m: int, path_chars: int, label_chars: int, index_bytes: int, model_version_chars: int = 64,
    label: str | None = None,
) -> dict[str, int]:  # fmt: skip
    """Bytes per row of each part (see the module docstring)."""
    path, label = "/" + "p" * (path_chars - 1), cars_label(label_chars) if label is None else label
    row = row_metadata(path, label)
    payload = len(json.dumps(stored_payload({**row, "model_version": "0" * model_version_chars})).encode())
    npz_metadata = 4 * (len(path) + len(label) + len(json.dumps(row)))
    return {"vectors": 4 * dim, "int8": dim, "graph": 2 * m * 4, "payload": payload, "indexes": index_bytes,
            "npz_metadata": npz_metadata}  # fmt: skip


def sizes(rows: int, dim: int, args: argparse.Namespace) -> dict:
    """GB per store for `rows` rows of `dim` floats."""
    part = row_parts(dim, args)
    gb = {name: rows * value / 1e9 for name, value in part.items()}  # rounded at the end, not here
    replica_disk = gb["vectors"] + gb["graph"] + gb["payload"] + gb["indexes"]
    result = {
        "rows": rows, "dim": dim,
        "vectors_GB": gb["vectors"], "int8_GB": gb["int8"], "graph_GB": gb["graph"], "payload_GB": gb["payload"],
        "indexes_GB": gb["indexes"],
        "npz_GB": gb["vectors"] + gb["npz_metadata"],  # the file (what a process loads is not measured)
        "edge_disk_GB": replica_disk, "edge_disk_int8_GB": replica_disk + gb["int8"],
        "ram_float32_GB": gb["vectors"] + gb["graph"] + gb["indexes"],
        "ram_int8_GB": gb["int8"] + gb["graph"] + gb["indexes"],
        "cluster_disk_int8_GB": args.replicas * (replica_disk + gb["int8"]),
        "cluster_ram_int8_GB": args.replicas * (gb["int8"] + gb["graph"] + gb["indexes"]),
    }  # fmt: skip
    return {key: round(value, 4) if isinstance(value, float) else value for key, value in result.items()}


def row_parts(dim: int, args: argparse.Namespace) -> dict[str, int]:
    return per_row(dim, args.m, args.path_chars, args.label_chars, args.index_bytes, args.model_version_chars,
                   args.label)  # fmt: skip


def markdown(results: list[dict], replicas: int) -> str:
    header = ["rows", "dim", ".npz file", "Edge / server disk", "+ int8", "RAM, float32 search",
              "RAM, int8 + float32 on disk", f"cluster disk ×{replicas} replicas (int8)",
              f"cluster RAM ×{replicas} (int8)"]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for r in results:
        cells = [f"{r['rows'] / 1e6:g}M", str(r["dim"])] + [
            f"{r[key]:,.1f} GB" for key in ("npz_GB", "edge_disk_GB", "edge_disk_int8_GB", "ram_float32_GB",
                                            "ram_int8_GB", "cluster_disk_int8_GB", "cluster_ram_int8_GB")
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="1000000,10000000,100000000", help="gallery sizes (default: %(default)s)")
    parser.add_argument("--dims", default="1280,2048", help="MobileNetV2 1280, ResNet152 2048 (default: %(default)s)")
    parser.add_argument("--m", type=int, default=16, help="HNSW links per node (default: %(default)s)")
    parser.add_argument("--replicas", type=int, default=2, help="cluster replication factor (default: %(default)s)")
    parser.add_argument("--path-chars", type=int, default=96, help="image path length (default: %(default)s)")
    parser.add_argument("--label-chars", type=int, default=32, help="label length (default: %(default)s)")
    parser.add_argument("--label", help="a label to use as it is, instead of one of --label-chars")
    parser.add_argument(
        "--model-version-chars", type=int, default=64, help="model version length (default: %(default)s, a sha256)"
    )
    parser.add_argument(
        "--index-bytes", type=int, default=48, help="payload index bytes per row, 4 fields (default: %(default)s)"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a Markdown table")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    try:
        rows = [int(float(r)) for r in args.rows.split(",")]
        dims = [int(d) for d in args.dims.split(",")]
    except ValueError:
        print("error: --rows and --dims are comma-separated whole numbers", file=sys.stderr)
        return 2
    positive = [args.m, args.replicas, args.path_chars, args.label_chars, args.model_version_chars]
    if min(rows + dims + positive) < 1 or args.index_bytes < 0:
        print("error: sizes, dimensions, --m, --replicas and lengths must be positive", file=sys.stderr)
        return 2
    results = [sizes(r, d, args) for r in rows for d in dims]
    if args.json:
        per = {d: row_parts(d, args) for d in dims}
        print(json.dumps({"per_row_bytes": per, "replicas": args.replicas, "results": results}, indent=2))
    else:
        print(markdown(results, args.replicas))
    return 0


if __name__ == "__main__":
    sys.exit(main())
