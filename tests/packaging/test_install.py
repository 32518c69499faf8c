"""The project installs as the Python world expects: a wheel with every package, console scripts,
and a thin client that runs from any directory without torch."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.clients.test_end_to_end import CLIENT_PY
from tests.conftest import ROOT

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(ROOT)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    return next(out.glob("car_similarity-*.whl"))


def test_the_wheel_holds_every_package_and_the_console_scripts(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    for module in ("core/run.py", "train/train.py", "serve/handler.py", "serve/config.properties", "clients/query.py"):
        assert module in names
    assert not any(name.startswith("tests/") for name in names)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    for script in ("cars-train", "cars-serve", "cars-gallery", "cars-query", "cars-web", "cars-reindex"):
        assert f"{script} =" in text


def test_the_thin_client_runs_from_any_directory_without_torch(wheel, tmp_path):
    target = tmp_path / "site"
    install = subprocess.run(
        [str(CLIENT_PY), "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert install.returncode == 0, install.stderr[-2000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target)}
    code = "import sys, clients.query; print(clients.query.__file__); print('torch' in sys.modules)"
    found = subprocess.run([str(CLIENT_PY), "-c", code], cwd=elsewhere, env=env, capture_output=True, text=True)
    assert found.returncode == 0, found.stderr
    where, torch_loaded = found.stdout.split()
    assert where.startswith(str(target)) and torch_loaded == "False"
    script = subprocess.run(
        [str(CLIENT_PY), str(target / "bin" / "cars-query"), "--version"], cwd=elsewhere, env=env,
        capture_output=True, text=True,
    )  # fmt: skip
    assert script.returncode == 0 and script.stdout.startswith("car-similarity 0.1.0"), script.stderr
