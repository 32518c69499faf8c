"""A real TorchServe for tests: free loopback ports, waits until ready, always stopped."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from serve.archive import build_archive
from serve.server import addresses, check_java, read_properties, torchserve_command, wait_until_ready

ROOT = Path(__file__).resolve().parents[1]


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def server_config(tmp_path: Path, store: Path, base: str = "config.properties", **overrides: str) -> Path:
    """A shipped config (serve/`base`) with free loopback ports, a temp store and `overrides`."""
    text = (ROOT / "serve" / base).read_text()
    for api, port in zip(("inference", "management", "metrics"), free_ports(3), strict=True):
        text = re.sub(rf"^{api}_address=.*$", f"{api}_address=http://127.0.0.1:{port}", text, flags=re.M)
    text = re.sub(r"^model_store=.*$", f"model_store={store}", text, flags=re.M)
    for key, value in overrides.items():
        text = re.sub(rf'"{key}": [^,\\]+', f'"{key}": {value}', text)
    # Several servers at once (session fixture, fault tests, benchmarks, other checkouts): worker
    # sockets are /tmp/.ts.sock.<port>, and the gRPC APIs bind 127.0.0.1:7070/7071 by default; a
    # second frontend failing to bind them shuts itself down.
    worker, grpc_inference, grpc_management = free_ports(3)
    text += f"\ninitial_worker_port={worker}\ngrpc_inference_port={grpc_inference}\n"
    text += f"grpc_management_port={grpc_management}\n"
    path = tmp_path / "config.properties"
    path.write_text(text)
    return path


def stop_process_group(process: subprocess.Popen, timeout: float = 30) -> None:
    """SIGTERM the launcher's whole group (Java frontend, Python workers) and wait until every
    member is gone, SIGKILL after `timeout`: a restart on the same store must not find it alive."""
    with suppress(ProcessLookupError):  # it may have exited on its own: keep its error visible
        os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    with suppress(ProcessLookupError):
        while True:
            process.poll()  # reap the launcher: a zombie would keep the group alive
            os.killpg(process.pid, signal.SIGKILL if time.monotonic() > deadline else 0)
            time.sleep(0.1)
    process.wait(timeout=timeout)


@contextmanager
def running_torchserve(
    run: Path,
    root: Path,
    base: str = "config.properties",
    *,
    output: Path | None = None,
    env: dict | None = None,
    **overrides: str,
) -> Iterator[dict]:
    """TorchServe serving `run` with serve/`base`, one worker and a 300 ms batching window so batches form.
    An archive already in root/store is reused (a restart serves the same model store).
    `output` receives the server's stdout and stderr (the benchmarks read the handler's per-batch
    metric lines there); `env` adds environment variables (e.g. OMP_NUM_THREADS for the workers)."""
    check_java()
    archive = root / "store" / "cars.mar"
    if not archive.is_file():
        archive = build_archive(run, root / "store")
    # One worker in tests (the shipped config has two, for throughput): tests find "the" worker.
    defaults = {"maxBatchDelay": "300", "minWorkers": "1", "maxWorkers": "1"}
    config = server_config(root, root / "store", base, **{**defaults, **overrides})
    env = {**os.environ, **(env or {}), "LOG_LOCATION": str(root / "logs"), "METRICS_LOCATION": str(root / "logs")}
    # torchserve refuses to start while the one in $TMPDIR/.model_server.pid runs: a TMPDIR of its own.
    env["TMPDIR"] = str(root)
    sink = open(output, "ab") if output else subprocess.DEVNULL  # noqa: SIM115 (closed in finally)
    process = subprocess.Popen(
        [*torchserve_command(config), "--foreground"], env=env, cwd=root, start_new_session=True,
        stdout=sink, stderr=subprocess.STDOUT if output else subprocess.DEVNULL,
    )  # fmt: skip
    try:
        properties = read_properties(config)
        wait_until_ready(properties, timeout=180, process=process, key_file=root / "key_file.json")
        urls = addresses(properties)
        yield {
            "url": f"{urls['inference']}/predictions/cars", "urls": urls, "archive": archive, "run": run,
            "pid": process.pid, "key_file": root / "key_file.json",
        }  # fmt: skip
    finally:
        stop_process_group(process)
        if output:
            sink.close()
