"""bench/store_writes.py measures real writes in both embedded stores (small sizes here: a smoke run)."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.clients.test_end_to_end import CLIENT_PY
from tests.conftest import ROOT

pytestmark = pytest.mark.skipif(not CLIENT_PY.exists(), reason="the thin client venv is missing: make client-install")


def test_both_stores_are_timed_for_every_size_and_bad_sizes_are_refused():
    command = [str(CLIENT_PY), "bench/store_writes.py"]
    done = subprocess.run([*command, "--sizes", "30,60", "--dim", "8", "--repeats", "2", "--json"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)["rows"]
    assert [(r["store"], r["rows"]) for r in rows] == [("file", 30), ("edge", 30), ("file", 60), ("edge", 60)]
    assert all(r[key] > 0 for r in rows for key in ("add_ms", "update_ms", "delete_ms"))
    bad = subprocess.run([*command, "--sizes", "3", "--repeats", "2"], cwd=ROOT, capture_output=True, text=True,
                         timeout=60)  # fmt: skip
    assert bad.returncode != 0 and "exceed 2 x --repeats" in bad.stderr
