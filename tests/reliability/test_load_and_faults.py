"""Load and faults against a real TorchServe: sustained concurrency without errors or leaks, a
worker killed mid-load (retryable errors only, no hang, full recovery), a restart (same answers)."""

from __future__ import annotations

import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests

from clients.api import RETRYABLE_STATUS, EmbeddingClient
from serve.worker_processes import rss_mib, the_worker
from tests.serve.images import photo, valid_images, encode
from serve.torchserve import running_torchserve

pytestmark = pytest.mark.slow

# The full 5,000 requests at concurrency 64 is bench/reliability_soak.py (docs/reliability.md).
LOAD_REQUESTS, LOAD_CONCURRENCY, WARM_UP = 1000, 64, 200


def bodies(count: int = 8) -> list[bytes]:
    return [encode(photo(seed=seed), "JPEG") for seed in range(count)]


def test_sustained_load_has_no_errors_and_a_stable_worker_rss(server):
    images = bodies()
    client = EmbeddingClient(server["url"], retries=0)  # every failure counts
    expected = {i: client.embed(body).vector for i, body in enumerate(images)}
    worker = the_worker(server["pid"])

    def one(index: int) -> bool:
        return np.allclose(client.embed(images[index % len(images)]).vector, expected[index % len(images)], atol=1e-5)

    with ThreadPoolExecutor(max_workers=LOAD_CONCURRENCY) as pool:
        assert all(pool.map(one, range(WARM_UP)))
        warm = rss_mib(worker)
        started = time.monotonic()
        assert all(pool.map(one, range(LOAD_REQUESTS)))
        seconds = time.monotonic() - started
    grown = rss_mib(worker) - warm
    print(f"{LOAD_REQUESTS} requests at concurrency {LOAD_CONCURRENCY}: {seconds:.1f} s, "
          f"{LOAD_REQUESTS / seconds:.0f} req/s, worker RSS {warm:.0f} MiB -> {warm + grown:.0f} MiB")  # fmt: skip
    assert the_worker(server["pid"]).pid == worker.pid
    assert grown < 50, f"worker RSS grew {grown:.0f} MiB over {LOAD_REQUESTS} requests"


def test_killed_worker_is_restarted_and_clients_only_see_retryable_errors(tiny_run, tmp_path):
    """SIGKILL the worker while 16 clients send 240 requests. TorchServe answers the dead batch's
    requests with 507 "Worker died.", queues the others until the restarted worker is ready; the
    client retries the 507s, so every embedding arrives, correct, and nothing hangs."""
    images = bodies()
    statuses: Counter[int] = Counter()
    lock = threading.Lock()

    def record(response: requests.Response, *args, **kwargs) -> None:
        with lock:
            statuses[response.status_code] += 1

    with running_torchserve(tiny_run, tmp_path) as server:
        client = EmbeddingClient(server["url"], retries=6, backoff=0.25)
        expected = [client.embed(body).vector for body in images]
        victim = the_worker(server["pid"])
        latencies: list[float] = []

        def one(index: int) -> bool:
            client.session.hooks["response"] = [record]  # this thread's session: sees retried answers too
            started = time.monotonic()
            vector = client.embed(images[index % len(images)]).vector
            latencies.append(time.monotonic() - started)
            return np.allclose(vector, expected[index % len(images)], atol=1e-5)

        with ThreadPoolExecutor(max_workers=16) as pool:
            results = [pool.submit(one, i) for i in range(240)]
            deadline = time.monotonic() + 120
            while sum(statuses.values()) < 48 and time.monotonic() < deadline:  # kill mid-load
                time.sleep(0.01)
            victim.kill()
            assert all(result.result(timeout=180) for result in results)  # no lost or wrong answer, no hang
        replacement = the_worker(server["pid"])
        failures = {status: n for status, n in statuses.items() if status != 200}
        print(f"worker {victim.pid} killed -> {replacement.pid}; non-200 answers {failures}; "
              f"slowest request {max(latencies):.1f} s")  # fmt: skip
        assert replacement.pid != victim.pid
        assert failures and set(failures) <= RETRYABLE_STATUS, failures
        # the batch in flight and the one already handed to the dead worker (batchSize 8), not the load
        assert sum(failures.values()) <= 4 * 8, failures
        described = requests.get(f"{server['urls']['management']}/models/cars", timeout=10).json()[0]
        assert [w["status"] for w in described["workers"]] == ["READY"]
        after = EmbeddingClient(server["url"], retries=0)
        assert all(np.allclose(after.embed(b).vector, e, atol=1e-5) for b, e in zip(images, expected, strict=True))


def test_restart_on_the_same_model_store_gives_the_same_answers(tiny_run, tmp_path):
    images = list(valid_images().values())[:6]
    answers = []
    for _ in range(2):  # the second start reuses tmp_path/store/cars.mar
        with running_torchserve(tiny_run, tmp_path) as server:
            client = EmbeddingClient(server["url"], retries=0)
            answers.append([client.embed(body) for body in images])
    first, second = answers
    versions = {e.model_version for e in first + second}
    assert len(versions) == 1, versions
    assert all(np.allclose(a.vector, b.vector, atol=1e-6) for a, b in zip(first, second, strict=True))
