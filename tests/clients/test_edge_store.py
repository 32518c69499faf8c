"""The Qdrant Edge gallery store (clients/edge_store.py): the checks of tests/clients/edge_checks.py.

qdrant-edge-py lives in the thin client venv (.venv-client), not in the training venv, so the
checks run twice over: in process where it is importable (skipped otherwise), and always as a
script under .venv-client, as the client CLIs are tested in test_end_to_end.py.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess

import pytest

from tests.clients import edge_checks
from tests.clients.test_end_to_end import CLIENT_PY
from tests.conftest import ROOT

HAVE_EDGE = importlib.util.find_spec("qdrant_edge") is not None


@pytest.mark.skipif(not HAVE_EDGE, reason="qdrant-edge-py is not installed here (the client venv test runs them)")
@pytest.mark.parametrize("name", list(edge_checks.CHECKS))
def test_edge_store_in_process(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # restored afterwards: a check may change directory
    edge_checks.CHECKS[name](tmp_path)


@pytest.mark.skipif(not CLIENT_PY.exists(), reason="the thin client venv is missing: make client-install")
def test_edge_store_under_the_client_venv():
    probe = subprocess.run([str(CLIENT_PY), "-c", "import qdrant_edge"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip("the client venv has no qdrant-edge-py: make client-install (requirements/client-qdrant.txt)")
    result = subprocess.run(
        [str(CLIENT_PY), "tests/clients/edge_checks.py"], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert f"{len(edge_checks.CHECKS)} passed, 0 failed" in result.stdout, result.stdout


@pytest.mark.skipif(not CLIENT_PY.exists(), reason="the thin client venv is missing: make client-install")
def test_store_benchmark_runs_small(tmp_path):
    probe = subprocess.run([str(CLIENT_PY), "-c", "import qdrant_edge"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip("the client venv has no qdrant-edge-py: make client-install (requirements/client-qdrant.txt)")
    command = [
        str(CLIENT_PY), "bench/store_search.py", "--sizes", "2000", "--edge", "2000:none,2000:int8:8:32",
        "--dim", "32", "--queries", "5", "--batch", "8", "--batches", "1", "--hnsw-ef", "64",
        "--dir", str(tmp_path / "shards"), "--results", str(tmp_path / "r.json"),
    ]  # fmt: skip
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    rows = json.loads((tmp_path / "r.json").read_text())["results"]
    assert [r["method"] for r in rows] == ["exact numpy", "PCA index", "Edge HNSW m16/128", "Edge HNSW m8/32 + int8"]
    assert all(r["recall@10"] == 1.0 for r in rows)  # 2,000 rows: Edge scans them exactly
    assert not list((tmp_path / "shards").iterdir())  # shards removed unless --keep
