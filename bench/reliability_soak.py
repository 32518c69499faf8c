"""Soak and fault run of the real server: many requests at high concurrency, then a worker killed
mid-load. Its figures are in docs/reliability.md; the test suite runs a smaller version of each
(tests/reliability/test_load_and_faults.py).

    python -m bench.reliability_soak [--run runs/latest] [--requests 5000] [--concurrency 64] \\
        [--kill-requests 1000] [--out bench/results/reliability_soak.json]

TorchServe runs with the shipped model settings (serve/config.properties: workers, batchSize,
maxBatchDelay) on free loopback ports, with OMP_NUM_THREADS = cores / workers as `make serve` sets.
Phase 1 (soak): `--requests` requests, no client retries, every error counted; worker RSS sampled
every second. Phase 2 (fault): `--kill-requests` requests through the retrying client; one worker
is SIGKILLed after 20 % of them; reports the answers that were not 200, the slowest request, and
whether every embedding still came back correct.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import requests

from bench.common import ROOT, generated_photo, machine, percentiles, write_json
from clients.api import EmbeddingClient
from serve.torchserve import read_properties, running_torchserve, threads_per_worker
from serve.worker_processes import rss_mib, worker_processes


def shipped_model_settings() -> tuple[dict[str, str], int]:
    properties = read_properties(ROOT / "serve" / "config.properties")
    settings = json.loads(properties["models"])["cars"]["1.0"]
    keys = ("minWorkers", "maxWorkers", "batchSize", "maxBatchDelay", "responseTimeout")
    return {key: str(settings[key]) for key in keys}, threads_per_worker(properties)


class RssSampler(threading.Thread):
    """Total and per-worker RSS (MiB) every `interval` s, as (seconds since start, [rss...])."""

    def __init__(self, frontend: int, interval: float = 1.0):
        super().__init__(daemon=True)
        self.frontend, self.interval, self.samples = frontend, interval, []
        self.stop_event, self.start_time = threading.Event(), time.monotonic()

    def run(self) -> None:
        while not self.stop_event.is_set():
            try:
                rss = sorted(rss_mib(p) for p in worker_processes(self.frontend))
            except Exception:  # a worker vanishing between listing and reading
                rss = []
            self.samples.append((round(time.monotonic() - self.start_time, 1), [round(r, 1) for r in rss]))
            self.stop_event.wait(self.interval)


def drive(client: EmbeddingClient, bodies, expected, count: int, concurrency: int, hook=None, on_progress=None):
    latencies, wrong, errors = [], 0, Counter()
    lock = threading.Lock()

    def one(index: int) -> None:
        nonlocal wrong
        if hook is not None:
            client.session.hooks["response"] = [hook]
        started = time.monotonic()
        try:
            vector = client.embed(bodies[index % len(bodies)]).vector
            ok = np.allclose(vector, expected[index % len(bodies)], atol=1e-4)
            with lock:
                wrong += not ok
        except Exception as error:
            with lock:
                errors[f"{type(error).__name__}: {str(error)[:120]}"] += 1
        with lock:
            latencies.append((time.monotonic() - started) * 1000)
            if on_progress:
                on_progress(len(latencies))

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(one, range(count)))
    seconds = time.monotonic() - started
    return {"requests": count, "concurrency": concurrency, "seconds": round(seconds, 1),
            "throughput_rps": round(count / seconds, 1), "latency_ms": percentiles(latencies),
            "errors": dict(errors), "wrong_embeddings": wrong}  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="runs/latest", help="trained run to serve (default: %(default)s)")
    parser.add_argument("--requests", type=int, default=5000, help="soak requests (default: %(default)s)")
    parser.add_argument("--concurrency", type=int, default=64, help="requests in flight (default: %(default)s)")
    parser.add_argument("--kill-requests", type=int, default=1000, help="requests of the fault phase (0: skip)")
    parser.add_argument("--results", "--out", dest="out", help="write the results to this JSON file")
    args = parser.parse_args(argv)

    settings, threads = shipped_model_settings()
    bodies = [generated_photo(seed) for seed in range(16)]
    with tempfile.TemporaryDirectory(prefix="reliability-soak-") as tmp, running_torchserve(
        Path(args.run), Path(tmp), env={"OMP_NUM_THREADS": str(threads)}, **settings
    ) as server:  # fmt: skip
        deadline = time.monotonic() + 180
        while len(worker_processes(server["pid"])) < int(settings["minWorkers"]) and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(5)  # let every worker finish loading
        reference = EmbeddingClient(server["url"], retries=6)
        expected = [reference.embed(body).vector for body in bodies]

        sampler = RssSampler(server["pid"])
        sampler.start()
        warm = drive(EmbeddingClient(server["url"], retries=0), bodies, expected, 500, args.concurrency)
        warm_rss = sampler.samples[-1][1]
        soak = drive(EmbeddingClient(server["url"], retries=0), bodies, expected, args.requests, args.concurrency)
        end_rss = [round(rss_mib(p), 1) for p in sorted(worker_processes(server["pid"]), key=rss_mib)]
        sampler.stop_event.set()
        soak |= {"worker_rss_mib_after_warmup": warm_rss, "worker_rss_mib_at_end": end_rss,
                 "warmup": {k: warm[k] for k in ("requests", "errors", "wrong_embeddings")}}  # fmt: skip

        fault = None
        if args.kill_requests:
            statuses: Counter = Counter()
            lock = threading.Lock()
            killed: dict = {}

            def record(response: requests.Response, *_, **__) -> None:
                with lock:
                    statuses[response.status_code] += 1

            def kill_once(done: int) -> None:
                if done >= args.kill_requests // 5 and not killed:
                    victim = worker_processes(server["pid"])[0]
                    killed.update(pid=victim.pid, at_request=done, time=time.monotonic())
                    victim.kill()

            client = EmbeddingClient(server["url"], retries=6, backoff=0.25)
            fault = drive(client, bodies, expected, args.kill_requests, args.concurrency, record, kill_once)
            fault["http_statuses_seen"] = {str(k): v for k, v in statuses.items()}
            fault["killed_worker"] = {"pid": killed.get("pid"), "after_request": killed.get("at_request")}
            recovered = time.monotonic()
            while time.monotonic() - recovered < 180:
                described = requests.get(f"{server['urls']['management']}/models/cars", timeout=10).json()[0]
                if [w["status"] for w in described["workers"]].count("READY") == int(settings["minWorkers"]):
                    break
                time.sleep(0.5)
            fault["all_workers_ready_again_s_after_kill"] = round(time.monotonic() - killed["time"], 1)
            after = EmbeddingClient(server["url"], retries=0)
            fault["answers_after_recovery_identical"] = all(
                np.allclose(after.embed(b).vector, e, atol=1e-4) for b, e in zip(bodies, expected, strict=True)
            )
    result = {"machine": machine(), "run": args.run, "model_settings": settings, "omp_threads_per_worker": threads,
              "soak": soak, "fault": fault}  # fmt: skip
    print(json.dumps({"soak": soak, "fault": fault}, indent=2))
    write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
