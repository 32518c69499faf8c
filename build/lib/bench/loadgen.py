"""A small HTTP load generator: keep-alive connections, closed or open loop, per-request latency.

Closed loop: `concurrency` clients, each sends its next image as soon as the last answer arrived
(throughput at that concurrency). Open loop: requests are due at a fixed `rate` whatever the
server does, and latency counts from the due time, so queueing shows (no coordinated omission).
Plain `http.client`, one connection per thread: the generator itself must cost little CPU.
"""

from __future__ import annotations

import argparse
import http.client
import json
import queue
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import numpy as np

from bench.common import percentiles

ACCEPT = {"binary": "application/octet-stream", "json": "application/json"}  # the answer's encoding


@dataclass(frozen=True)
class Sample:
    done: float  # time.perf_counter() when the answer was read
    latency: float  # seconds
    status: int  # HTTP status, 0 for a connection error


class Connection:
    """One keep-alive connection that reconnects after an error."""

    def __init__(self, url: str, timeout: float = 120.0, answer: str = "binary"):
        parts = urlsplit(url)
        self.host, self.port, self.path = parts.hostname, parts.port or 80, parts.path
        self.timeout = timeout
        self.headers = {"Content-Type": "application/octet-stream", "Accept": ACCEPT[answer]}
        self.http: http.client.HTTPConnection | None = None

    def post(self, body: bytes) -> int:
        for attempt in (0, 1):  # a keep-alive connection the server closed: reconnect once
            try:
                if self.http is None:
                    self.http = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
                self.http.request("POST", self.path, body=body, headers=self.headers)
                response = self.http.getresponse()
                response.read()
                return response.status
            except (OSError, http.client.HTTPException):
                if self.http is not None:
                    self.http.close()
                self.http = None
                if attempt:
                    return 0
        return 0


def closed_loop(
    url: str, bodies: list[bytes], concurrency: int, seconds: float, answer: str = "binary"
) -> list[Sample]:
    """`concurrency` clients post images back to back for `seconds`, asking for `answer` (binary or json)."""
    samples: list[Sample] = []
    lock = threading.Lock()
    deadline = time.perf_counter() + seconds

    def client(offset: int) -> None:
        connection, index, mine = Connection(url, answer=answer), offset, []
        while True:
            started = time.perf_counter()
            if started >= deadline:
                break
            status = connection.post(bodies[index % len(bodies)])
            done = time.perf_counter()
            mine.append(Sample(done, done - started, status))
            index += concurrency
        with lock:
            samples.extend(mine)

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sorted(samples, key=lambda s: s.done)


def open_loop(
    url: str, bodies: list[bytes], rate: float, seconds: float, connections: int = 64, answer: str = "binary"
) -> list[Sample]:
    """Requests due every 1/rate s for `seconds`; latency counts from the due time."""
    due_times: queue.Queue = queue.Queue()
    samples: list[Sample] = []
    lock = threading.Lock()

    def sender() -> None:
        connection, mine = Connection(url, answer=answer), []
        while (item := due_times.get()) is not None:
            due, body = item
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            status = connection.post(body)
            done = time.perf_counter()
            mine.append(Sample(done, done - due, status))
        with lock:
            samples.extend(mine)

    threads = [threading.Thread(target=sender, daemon=True) for _ in range(connections)]
    for thread in threads:
        thread.start()
    start = time.perf_counter() + 0.05
    for i in range(int(rate * seconds)):
        due_times.put((start + i / rate, bodies[i % len(bodies)]))
    for _ in threads:
        due_times.put(None)
    for thread in threads:
        thread.join()
    return sorted(samples, key=lambda s: s.done)


def summarise(samples: list[Sample], start: float, end: float) -> dict[str, float]:
    """Images/s, errors and latency percentiles of the answers that arrived in [start, end)."""
    window = [s for s in samples if start <= s.done < end]
    ok = [s.latency * 1000 for s in window if s.status == 200]
    return {"img_s": round(len(ok) / (end - start), 2), "errors": len(window) - len(ok), **percentiles(ok)}


def windows(samples: list[Sample], start: float, end: float, count: int) -> list[dict[str, float]]:
    """Splits [start, end) (a run minus its warm-up) into `count` equal windows: the repeats of one point."""
    edges = np.linspace(start, end, count + 1)
    return [summarise(samples, a, b) for a, b in zip(edges[:-1], edges[1:], strict=True)]


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.loadgen",
        description="Load a running embedding server with JPEGs, closed loop (a rate: open loop), and print "
        "images/s, errors and latency percentiles. Only for servers you run on this machine.",
    )
    parser.add_argument("--url", default="http://127.0.0.1:8080/predictions/cars", help="(default: %(default)s)")
    parser.add_argument("--data", help="JPEG folder (default: ../shared/data/cars196-dev, else generated photos)")
    parser.add_argument("--images", type=int, default=64, help="distinct images sent in turn (default: %(default)s)")
    parser.add_argument("--concurrency", type=int, default=16, help="closed-loop clients (default: %(default)s)")
    parser.add_argument("--rate", type=float, help="open loop at this many requests/s instead of closed loop")
    parser.add_argument("--seconds", type=float, default=10, help="how long to send, at most 300 (default: 10)")
    parser.add_argument("--answer", choices=tuple(ACCEPT), default="binary", help="(default: %(default)s)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    return parser


def main(argv: list[str] | None = None) -> dict[str, float]:
    from bench.common import load_photos

    args = get_args_parser().parse_args(argv)
    if not 0 < args.seconds <= 300 or args.concurrency < 1 or args.images < 1 or (args.rate or 1) <= 0:
        raise SystemExit("error: --seconds must be in (0, 300]; --concurrency, --images and --rate above 0")
    bodies, source = load_photos(args.images, args.data)
    start = time.perf_counter()
    if args.rate:
        samples = open_loop(args.url, bodies, args.rate, args.seconds, answer=args.answer)
    else:
        samples = closed_loop(args.url, bodies, args.concurrency, args.seconds, answer=args.answer)
    summary = summarise(samples, start, max(time.perf_counter(), start + 1e-9))
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"{source}; {len(samples)} requests to {args.url}")
        print(", ".join(f"{key} {value}" for key, value in summary.items()))
    return summary


if __name__ == "__main__":
    main()
