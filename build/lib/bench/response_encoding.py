"""What answering costs: encoding one embedding per response, on one core.

    python -m bench.response_encoding [--dims 512,1280,2048] [--seconds 1] [--json FILE]

A TorchServe worker encodes every answer in Python after the batch's forward pass, one core per
worker. On a GPU that is the bound (docs/benchmarks.md), so it is measured on its own here:
  torchserve_json   TorchServe's fallback for a dict answer: `json.dumps(answer, indent=2)`
  handler_json      the handler's compact JSON (`serve.handler.json_bytes`, Python's C encoder)
  handler_binary    the float32 bytes sent for `Accept: application/octet-stream`
and on the client side, turning the body back into a float32 vector. Figures are answers/s
(median of `--repeats` timed runs of about `--seconds` each) and the body's size.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time

import numpy as np

from bench.common import machine, median, parse_list, table, write_json
from serve.handler import json_bytes

MODEL_VERSION = "0123456789abcdef" * 4  # a sha256 hex, as in real answers


def answer(dim: int, seed: int = 0) -> tuple[dict, np.ndarray]:
    """A unit float32 embedding and the dict answer the handler builds from it."""
    vector = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    vector /= np.linalg.norm(vector)
    return {"embedding": vector.tolist(), "dim": dim, "model_version": MODEL_VERSION}, vector


def rate(work, seconds: float, repeats: int) -> float:
    """Calls/s of `work()`, median of `repeats` runs of about `seconds` each, after one warm-up call."""
    work()
    rates = []
    for _ in range(repeats):
        start, done = time.perf_counter(), 0
        while (elapsed := time.perf_counter() - start) < seconds:
            work()
            done += 1
        rates.append(done / elapsed)
    return median(rates)


def measure(dim: int, seconds: float, repeats: int) -> list[dict]:
    payload, vector = answer(dim)
    encoders = {
        "torchserve_json": (lambda: json.dumps(payload, indent=2).encode(), "json"),
        "handler_json": (lambda: json_bytes(payload), "json"),
        "handler_binary": (lambda: vector.astype("<f4").tobytes(), "binary"),
    }
    decoders = {
        "json": lambda body: np.asarray(json.loads(body)["embedding"], dtype=np.float32),
        "binary": lambda body: np.frombuffer(body, dtype="<f4").astype(np.float32),
    }
    rows = []
    for name, (encode, kind) in encoders.items():
        body, decode = encode(), decoders[kind]
        if not np.array_equal(decode(body), vector):
            raise RuntimeError(f"{name} does not round-trip the embedding exactly")
        rows.append(
            {
                "dim": dim,
                "encoding": name,
                "bytes": len(body),
                "encode_per_s": round(rate(encode, seconds, repeats)),
                "decode_per_s": round(rate(functools.partial(decode, body), seconds, repeats)),
            }
        )
    base = rows[0]["encode_per_s"]
    for row in rows:
        row["encode_vs_torchserve"] = round(row["encode_per_s"] / base, 1)
    return rows


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--dims", type=parse_list, default=[512, 1280, 2048], help="comma list (default: 512,1280,2048)"
    )
    parser.add_argument("--seconds", type=float, default=1.0, help="length of one timed run (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs, median reported (default: %(default)s)")
    parser.add_argument("--results", "--json", dest="json", help="write the results to this JSON file")
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = get_args_parser().parse_args(argv)
    results = [row for dim in args.dims for row in measure(dim, args.seconds, args.repeats)]
    print(table(results, list(results[0])))
    payload = {"benchmark": "response_encoding", "argv": sys.argv[1:] if argv is None else argv,
               "machine": machine(), "results": results}  # fmt: skip
    write_json(args.json, payload)
    return payload


if __name__ == "__main__":
    main()
