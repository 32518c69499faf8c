"""The search API under load: POST /search next to TorchServe alone, same concurrencies, one run.

    python -m bench.search_api [--run runs/cars-mnv2] [--concurrency 1,8,32] [--seconds 20]
                               [--gallery-images 300] [--results runs/bench/search_api.json]

1. Starts TorchServe on the run with the shipped model settings (serve/config.properties: workers,
   batch size, batching delay), builds a gallery of --gallery-images photos through it, and starts
   the search page (search_service/web.py, from .venv-client) on that gallery, as a user does.
2. For every concurrency: closed-loop keep-alive clients against TorchServe alone, then against
   `POST /search` (the raw JPEG as the body): searches/s, p50/p99, errors, and /search's share of
   TorchServe's own throughput at that concurrency (the cost of the page: a second HTTP hop, the
   gallery search, the JSON).
3. While the highest concurrency of searches runs, a prober sends `GET /api/info` 20 times a
   second: its p50/p99 show whether the page stays responsive with every search thread busy.

Photos: ../shared/data/cars196-dev when present, else generated JPEGs. The figures go to
docs/benchmarks.md with this command and the machine.
"""

from __future__ import annotations

import argparse
import http.client
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from bench.common import (
    ROOT,
    add_model_and_photo_arguments,
    generated_photo,
    machine,
    parse_list,
    percentiles,
    run_and_photos,
    table,
    write_json,
)
from bench.loadgen import Sample, closed_loop, summarise
from bench.reliability_soak import shipped_model_settings
from core.dev_data import CARS_DEV
from serve.torchserve import free_ports, running_torchserve

CLIENT_PY = ROOT / ".venv-client" / "bin" / "python"


def gallery_photos(folder: Path, count: int) -> Path:
    """`count` photos in an ImageFolder tree under `folder`: links to real ones, or generated JPEGs."""
    photos = sorted(CARS_DEV.rglob("*.jpg")) if CARS_DEV.is_dir() else []
    photos = photos[:: max(1, len(photos) // count)][:count]  # spread over the classes
    if photos:
        for photo in photos:
            (folder / photo.parent.name).mkdir(parents=True, exist_ok=True)
            (folder / photo.parent.name / photo.name).symlink_to(photo)
    else:
        for i in range(count):
            (folder / f"class_{i % 10}").mkdir(parents=True, exist_ok=True)
            (folder / f"class_{i % 10}" / f"{i}.jpg").write_bytes(generated_photo(10_000 + i))
    return folder


def start_page(gallery: Path, url: str, threads: int, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_ports(1)[0]
    command = [str(CLIENT_PY), "search_service/web.py", "--gallery", str(gallery), "--url", url, "--port", str(port),
               "--search-threads", str(threads)]  # fmt: skip
    with open(log, "ab") as sink:
        process = subprocess.Popen(command, cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT)
    base = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"error: the search page exited; see {log}")
        try:
            if get(base, "/api/info") == 200:
                return process, base
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise SystemExit("error: the search page did not answer within 120 s")


def get(base: str, path: str, connection: http.client.HTTPConnection | None = None) -> int:
    connection = connection or http.client.HTTPConnection(*base.split(":"), timeout=60)
    connection.request("GET", path)
    response = connection.getresponse()
    response.read()
    return response.status


class Prober(threading.Thread):
    """GET `path` every `interval` s on one keep-alive connection until stopped: latencies in ms.
    Paced, not back to back: a busy prober would take the CPU the searches need."""

    def __init__(self, base: str, path: str, interval: float = 0.05):
        super().__init__(daemon=True)
        self.base, self.path, self.interval, self.stop, self.samples = base, path, interval, threading.Event(), []

    def run(self) -> None:
        connection = http.client.HTTPConnection(*self.base.split(":"), timeout=60)
        while not self.stop.is_set():
            started = time.perf_counter()
            status = get(self.base, self.path, connection)
            done = time.perf_counter()
            self.samples.append(Sample(done, done - started, status))
            self.stop.wait(self.interval)


def load_point(url: str, bodies: list[bytes], concurrency: int, args: argparse.Namespace) -> dict:
    started = time.perf_counter()
    samples = closed_loop(url, bodies, concurrency, args.warmup + args.seconds)
    return summarise(samples, started + args.warmup, started + args.warmup + args.seconds)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.search_api", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_model_and_photo_arguments(parser, images=64, devices="cpu or cuda (TorchServe's workers)")
    parser.add_argument("--concurrency", type=parse_list, default=[1, 8, 32], help="clients (default: 1,8,32)")
    parser.add_argument("--seconds", type=float, default=20, help="measured seconds per point (default: 20)")
    parser.add_argument("--warmup", type=float, default=5, help="seconds sent before measuring (default: 5)")
    parser.add_argument("--gallery-images", type=int, default=300, help="photos in the gallery (default: 300)")
    parser.add_argument("--search-threads", type=int, default=32, help="the page's --search-threads (default: 32)")
    parser.add_argument("--results", help="write the results as JSON here")
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = get_args_parser().parse_args(argv)
    if not CLIENT_PY.exists():
        raise SystemExit("error: the search page needs .venv-client: make client-install")
    if min(args.concurrency) < 1 or args.seconds <= 0 or args.warmup < 0 or args.gallery_images < 1:
        raise SystemExit("error: --concurrency, --seconds and --gallery-images must be above 0")
    run, bodies, source = run_and_photos(args)
    settings, threads = shipped_model_settings()
    env = {"OMP_NUM_THREADS": str(threads)}
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    rows, probe = [], {}
    with tempfile.TemporaryDirectory(prefix="bench-search-") as tmp:
        root = Path(tmp)
        with running_torchserve(run, root, env=env, **settings) as server:
            gallery = root / "gallery.npz"
            images = gallery_photos(root / "photos", args.gallery_images)
            print(f"Building a gallery of {args.gallery_images} photos ...", flush=True)
            subprocess.run([str(CLIENT_PY), "clients/build_gallery.py", str(images), "--store", str(gallery),
                            "--url", server["url"], "--quiet"], cwd=ROOT, check=True)  # fmt: skip
            page, base = start_page(gallery, server["url"], args.search_threads, root / "web.log")
            try:
                for concurrency in args.concurrency:
                    alone = load_point(server["url"], bodies, concurrency, args)
                    prober = Prober(base, "/api/info") if concurrency == max(args.concurrency) else None
                    if prober:
                        prober.start()
                    search = load_point(f"http://{base}/search", bodies, concurrency, args)
                    if prober:
                        prober.stop.set()
                        prober.join()
                        ok = [s.latency * 1000 for s in prober.samples if s.status == 200]
                        probe = {"concurrency": concurrency, "requests": len(prober.samples),
                                 "errors": len(prober.samples) - len(ok), **percentiles(ok)}  # fmt: skip
                    for name, point in (("TorchServe alone", alone), ("POST /search", search)):
                        rows.append({"target": name, "concurrency": concurrency, **point})
                    ratio = search["img_s"] / alone["img_s"] if alone["img_s"] else float("nan")
                    rows[-1]["vs_torchserve"] = round(ratio, 3)
                    print(table(rows[-2:], list(rows[-1])), flush=True)
            finally:
                page.terminate()
                page.wait(timeout=30)
    columns = ["target", "concurrency", "img_s", "errors", "p50_ms", "p99_ms", "vs_torchserve"]
    print(f"\n{source}; model settings {settings}, {threads} threads per worker\n")
    print(table(rows, columns))
    if probe:
        print(f"\nGET /api/info during {probe['concurrency']} concurrent searches: {probe}")
    payload = {"machine": machine(), "source": source, "settings": settings, "rows": rows, "api_info": probe,
               "command": "python -m bench.search_api " + " ".join(argv or [])}  # fmt: skip
    write_json(args.results, payload)
    return payload


if __name__ == "__main__":
    main()
