"""What the search-service tests share: starting the page as a user does, the queries, the photos."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import requests

from serve.torchserve import free_ports
from tests.clients.test_end_to_end import CLIENT_PY
from tests.conftest import ROOT

# Stanford Cars style labels, so that make / year filters have something to filter.
LABELS = ("001_Audi_A4_Sedan_2008", "002_Audi_TT_Coupe_2012", "003_BMW_X5_SUV_2011", "004_BMW_M3_Coupe_2012",
          "005_Dodge_Ram_Pickup_2009", "006_Aston_Martin_V8_Vantage_Coupe_2012")  # fmt: skip


def start_page(gallery: Path | str, url: str, *extra: str, env: dict | None = None) -> tuple[subprocess.Popen, str]:
    port = free_ports(1)[0]
    environment = {key: value for key, value in os.environ.items() if key != "CARS_WRITE_KEY"} | (env or {})
    process = subprocess.Popen(
        [str(CLIENT_PY), "search_service/web.py", "--gallery", str(gallery), "--url", url, "--port", str(port), *extra],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=environment,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the page exited: {process.stdout.read()}")
        try:
            if requests.get(f"{base}/api/info", timeout=1).ok:
                return process, base
        except requests.ConnectionError:
            time.sleep(0.2)
    process.kill()
    raise AssertionError("the page did not answer within 60 s")


def held_out(cars: Path, label: str) -> Path:
    return next((cars / "held-out" / label).iterdir())


def search(base: str, image: bytes, **params) -> requests.Response:
    return requests.post(f"{base}/search", params=params, files={"file": ("car.jpg", image, "image/jpeg")}, timeout=60)


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    process.wait(timeout=30)
