"""Find and measure TorchServe's Python worker processes (children of the Java frontend)."""

from __future__ import annotations

import threading
import time

import psutil


def worker_processes(frontend_pid: int) -> list[psutil.Process]:
    """The model workers (`ts/model_service_worker.py`) started by the frontend `frontend_pid`."""
    found = []
    for child in psutil.Process(frontend_pid).children(recursive=True):
        try:
            if any("model_service_worker" in part for part in child.cmdline()):
                found.append(child)
        except psutil.NoSuchProcess:
            continue
    return found


def the_worker(frontend_pid: int, timeout: float = 120) -> psutil.Process:
    """The one worker of the cars model, waiting (bounded) for it while it restarts."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        workers = worker_processes(frontend_pid)
        if len(workers) == 1:
            return workers[0]
        time.sleep(0.2)
    raise TimeoutError(f"no single worker under frontend {frontend_pid} within {timeout:.0f} s")


def rss_mib(process: psutil.Process) -> float:
    return process.memory_info().rss / 2**20


class PeakRss:
    """Samples a process's RSS every `interval` seconds in a thread: `with PeakRss(p) as peak: ...`."""

    def __init__(self, process: psutil.Process, interval: float = 0.02):
        self.process, self.interval = process, interval
        self.peak = self.start = rss_mib(process)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, rss_mib(self.process))
            except psutil.NoSuchProcess:
                return
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
