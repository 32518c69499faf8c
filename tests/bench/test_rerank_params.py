"""bench/rerank_params.py picks k and alpha on the training classes of a run, never the held-out ones."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.conftest import run_module

pytestmark = pytest.mark.slow


def test_grid_search_reads_only_the_training_classes(tiny_run, tmp_path):
    run = json.loads((tiny_run / "run.json").read_text())
    data = tmp_path / "data"
    for name in run["classes"]["train"]:  # the held-out classes are not even there
        shutil.copytree(tiny_run.parent / "data" / name, data / name)
    result = run_module(
        "bench.rerank_params", "--run", str(tiny_run), "--data", str(data), "--ks", "1,2", "--alphas", "0,3",
        "--cache-dir", str(tmp_path / "cache"), "--json", "--results", str(tmp_path / "r.json"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.split("\nWrote ")[0])
    assert report == json.loads((tmp_path / "r.json").read_text())
    assert report["classes"] == len(run["classes"]["train"]) and report["images"] == 24
    assert [(row["k"], row["alpha"]) for row in report["grid"]] == [(1, 0.0), (1, 3.0), (2, 0.0), (2, 3.0)]
    assert set(report["plain"]) == {"r_precision", "precision_at_1", "map_at_r"}
    chosen = report["chosen"]
    if chosen is not None:  # the best R-precision that keeps precision@1
        best = next(r for r in report["grid"] if (r["k"], r["alpha"]) == (chosen["k"], chosen["alpha"]))
        assert best["precision_at_1"] >= report["plain"]["precision_at_1"]
        assert best["r_precision"] == max(r["r_precision"] for r in report["grid"]
                                          if r["precision_at_1"] >= report["plain"]["precision_at_1"])  # fmt: skip
    table = run_module("bench.rerank_params", "--run", str(tiny_run), "--data", str(data), "--ks", "1",
                       "--alphas", "3", "--cache-dir", str(tmp_path / "cache"))  # fmt: skip
    assert table.returncode == 0 and "| k | alpha | r_precision |" in table.stdout and "chosen: " in table.stdout
