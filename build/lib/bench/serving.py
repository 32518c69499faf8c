"""Serving end to end: a load generator against a real TorchServe, next to the in-process ceiling.

    python -m bench.serving --run runs/cars-mnv2 [--device cpu|cuda] \\
        [--batch-size 4,8,16] [--max-batch-delay 10] [--workers 1,2] [--concurrency 8,32]

Same run, same JPEGs, same device, one command:
 1. the ceiling without HTTP (bench/inprocess.py): `Embedder.embed_bytes` (decode + preprocess +
    forward, batched) and the network alone on pre-decoded tensors, in as many processes with as
    many threads each as every --workers setting gives TorchServe's workers;
 2. for every (batchSize, maxBatchDelay, workers) it starts TorchServe itself (free loopback ports,
    the archive built once), and for every concurrency runs closed-loop keep-alive clients:
    images/s, p50/p95/p99 latency and errors (medians of --repeats windows after --warmup s),
    and the batch sizes the model really saw (the handler's BatchSize metric, one line per batch
    in the server's output);
 3. per configuration, an open-loop run at half of its best throughput: p99 / p50 there.
Ratios: end-to-end / in-process at the same batch size and parallelism, in-process / forward-only.

Without Java (e.g. a GPU machine) `--no-torchserve` measures step 1 and the handler in process.
On CPU each worker gets OMP_NUM_THREADS = cores / workers (`--worker-threads` overrides).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from bench.common import (
    add_model_and_photo_arguments,
    run_and_photos,
    machine,
    median,
    parse_list,
    table,
    write_json,
)
from bench.inprocess import measure
from bench.loadgen import ACCEPT, Sample, closed_loop, open_loop, windows

BATCH_METRIC = re.compile(rb"\[METRICS\]BatchSize\.Count:(\d+)")


def batch_sizes_since(log: Path, offset: int) -> tuple[list[int], int]:
    """Batch sizes the handler reported after byte `offset` of the server's output, and the new offset."""
    with open(log, "rb") as f:
        f.seek(offset)
        text = f.read()
    return [int(m) for m in BATCH_METRIC.findall(text)], offset + len(text)


def worker_threads(args: argparse.Namespace, workers: int) -> int:
    """Torch threads per CPU worker: the cores shared out, unless --worker-threads says otherwise."""
    return args.worker_threads or max(1, (os.cpu_count() or 1) // workers)


def summarise_point(samples: list[Sample], start: float, end: float, repeats: int) -> dict:
    parts = windows(samples, start, end, repeats)
    return {
        "img_s": round(median([p["img_s"] for p in parts]), 1),
        "p50_ms": round(median([p["p50_ms"] for p in parts]), 1),
        "p95_ms": round(median([p["p95_ms"] for p in parts]), 1),
        "p99_ms": round(median([p["p99_ms"] for p in parts]), 1),
        "errors": sum(p["errors"] for p in parts),
    }


def describe_batches(sizes: list[int]) -> dict:
    if not sizes:
        return {"batches": 0, "mean_batch": float("nan"), "batch_sizes": ""}
    common = ", ".join(f"{size}x{count}" for size, count in sorted(Counter(sizes).most_common(4)))
    return {"batches": len(sizes), "mean_batch": round(sum(sizes) / len(sizes), 2), "batch_sizes": common}


def sweep_server(run: Path, archive: Path, bodies: list[bytes], config: dict, args: argparse.Namespace) -> list[dict]:
    """Starts TorchServe with `config`, runs every concurrency and the half-load point, stops it."""
    from serve.torchserve import running_torchserve

    workers = config["workers"]
    threads = worker_threads(args, workers)
    env = {"OMP_NUM_THREADS": str(threads)} if args.device == "cpu" else {}
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        root = Path(tmp)
        (root / "store").mkdir()
        shutil.copy2(archive, root / "store" / "cars.mar")
        log = root / "torchserve.out"
        overrides = {
            "batchSize": str(config["batch_size"]),
            "maxBatchDelay": str(config["max_batch_delay"]),
            "minWorkers": str(workers),
            "maxWorkers": str(workers),
        }
        with running_torchserve(run, root, output=log, env=env, **overrides) as server:
            _wait_for_workers(server, workers)
            offset = log.stat().st_size
            label = {**config, "threads": threads if args.device == "cpu" else "-"}
            seconds = args.warmup + args.seconds
            for concurrency in args.concurrency:
                started = time.perf_counter()
                samples = closed_loop(server["url"], bodies, concurrency, seconds, answer=args.answer)
                point = summarise_point(
                    samples, started + args.warmup, started + args.warmup + args.seconds, args.repeats
                )
                sizes, offset = batch_sizes_since(log, offset)
                rows.append({**label, "load": f"{concurrency} clients", **point, **describe_batches(sizes)})
                print(table([rows[-1]], list(rows[-1])).splitlines()[-1], flush=True)
            best = max(r["img_s"] for r in rows)
            if args.half_load and best > 0:
                rate = best / 2
                started = time.perf_counter()
                samples = open_loop(server["url"], bodies, rate, seconds, answer=args.answer)
                point = summarise_point(
                    samples, started + args.warmup, started + args.warmup + args.seconds, args.repeats
                )
                sizes, offset = batch_sizes_since(log, offset)
                row = {**label, "load": f"open {rate:.1f}/s (half)", **point, **describe_batches(sizes)}
                row["p99/p50"] = round(row["p99_ms"] / row["p50_ms"], 2) if row["p50_ms"] else float("nan")
                rows.append(row)
                print(table([row], list(row)).splitlines()[-1], flush=True)
    return rows


def _wait_for_workers(server: dict, workers: int, timeout: float = 180) -> None:
    """running_torchserve returns at the first READY worker; measure only once all are up."""
    import json
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"{server['urls']['management']}/models/cars", timeout=5) as response:
            states = [w["status"] for w in json.loads(response.read())[0]["workers"]]
        if states.count("READY") >= workers:
            return
        time.sleep(0.5)
    raise TimeoutError(f"only {states.count('READY')} of {workers} workers got ready")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_and_photo_arguments(parser, images=256, devices="cpu or cuda")
    sweep = parser.add_argument_group("sweep (comma lists; every combination)")
    sweep.add_argument(
        "--batch-sizes", "--batch-size", dest="batch_size", type=parse_list, default=[4, 8, 16],
        help="TorchServe batchSize values (default: 4,8,16)",
    )
    sweep.add_argument("--max-batch-delay", type=parse_list, default=[10], help="maxBatchDelay ms (default: 10)")
    sweep.add_argument("--workers", type=parse_list, default=[1, 2], help="workers (default: 1,2)")
    sweep.add_argument("--concurrency", type=parse_list, default=[8, 32], help="concurrent clients (default: 8,32)")
    sweep.add_argument("--worker-threads", type=int, help="OMP_NUM_THREADS per CPU worker (default: cores/workers)")
    timing = parser.add_argument_group("timing")
    timing.add_argument("--warmup", type=float, default=3, help="seconds discarded per point (default: %(default)s)")
    timing.add_argument("--seconds", type=float, default=9, help="measured seconds per point (default: %(default)s)")
    timing.add_argument("--repeats", type=int, default=3, help="windows per point, median (default: %(default)s)")
    timing.add_argument("--no-half-load", dest="half_load", action="store_false", help="skip the open-loop points")
    parser.add_argument(
        "--answer",
        choices=tuple(ACCEPT),
        default="binary",
        help="the answer the clients ask for: float32 bytes (what clients/ asks for) or JSON (default: binary)",
    )
    parser.add_argument("--no-torchserve", action="store_true", help="in-process and handler figures only (no Java)")
    parser.add_argument("--results", "--json", dest="json", help="write the results to this JSON file")
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = get_args_parser().parse_args(argv)
    run, bodies, source = run_and_photos(args)
    print("== in process (the ceiling), as many processes and threads as each worker setting", flush=True)
    ceiling = []
    has_ts = importlib.util.find_spec("ts") is not None  # the handler figure needs TorchServe's package
    for workers in sorted(set(args.workers)):
        threads = worker_threads(args, workers) if args.device == "cpu" else None
        ceiling += measure(run, args.device, bodies, sorted(set(args.batch_size)), args.repeats,
                           with_handler=workers == 1 and has_ts, processes=workers, threads=threads)  # fmt: skip
    by_setting = {(row["batch_size"], row["processes"]): row for row in ceiling}
    serving: list[dict] = []
    if not args.no_torchserve:
        from serve.archive import build_archive

        with tempfile.TemporaryDirectory(prefix="bench-archive-") as tmp:
            archive = build_archive(run, Path(tmp))
            for batch_size in args.batch_size:
                for delay in args.max_batch_delay:
                    for workers in args.workers:
                        config = {"batch_size": batch_size, "max_batch_delay": delay, "workers": workers}
                        print(f"== TorchServe {config}", flush=True)
                        serving.extend(sweep_server(run, archive, bodies, config, args))
        for row in (r for r in serving if "clients" in r["load"]):  # closed loop: the throughput points
            ceiling_row = by_setting[(row["batch_size"], row["workers"])]
            row["e2e/inprocess"] = round(row["img_s"] / ceiling_row["inprocess_img_s"], 3)
    print("\nIn process:")
    print(table(ceiling, list(ceiling[0])))
    summary = {}
    if serving:
        columns = ["batch_size", "max_batch_delay", "workers", "threads", "load", "img_s", "p50_ms", "p95_ms",
                   "p99_ms", "errors", "mean_batch", "batch_sizes", "e2e/inprocess", "p99/p50"]  # fmt: skip
        print("\nEnd to end (TorchServe):")
        print(table(serving, columns))
        best = max((r for r in serving if "clients" in r["load"]), key=lambda r: r["img_s"])
        best_inprocess = max(r["inprocess_img_s"] for r in ceiling)  # the best parallelism too
        summary = {
            "best_e2e_img_s": best["img_s"],
            "best_config": {k: best[k] for k in ("batch_size", "max_batch_delay", "workers", "threads", "load")},
            "best_inprocess_img_s": best_inprocess,
            "best_e2e/best_inprocess": round(best["img_s"] / best_inprocess, 3),
        }
        print(f"\nBest end to end {best['img_s']} img/s {summary['best_config']}; best in process "
              f"{best_inprocess} img/s; ratio {summary['best_e2e/best_inprocess']}")  # fmt: skip
    payload = {"benchmark": "serving", "argv": sys.argv[1:] if argv is None else argv, "run": str(run),
               "images": source, "machine": machine(), "device": args.device, "inprocess": ceiling,
               "serving": serving, "summary": summary}  # fmt: skip
    write_json(args.json, payload)
    return payload


if __name__ == "__main__":
    main()
