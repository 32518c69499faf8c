"""bench/inner_validation.sh: recipes are chosen on makes held out *inside* a fold's training side,
so the fold's held-out classes must never reach those runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from train.data import load_image_list, split_classes

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_inner_runs_see_only_the_outer_folds_training_classes(synthetic_data, tmp_path):
    env = {**os.environ, "DATA": str(synthetic_data), "WEIGHTS": "none", "OUT": str(tmp_path), "PYTHON": sys.executable}
    result = subprocess.run(
        ["bash", "bench/inner_validation.sh", "tiny", "--recipe", "whitened", "--backbone", "resnet18",
         "--input-size", "32", "--cache-dir", str(tmp_path / "cache")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    classes = sorted(set(load_image_list(synthetic_data).classes))
    for outer in (1, 2):
        outer_split = split_classes(classes, 0.5, 42, outer, "make")
        inner_classes: set[str] = set()
        for inner in (1, 2):
            run = json.loads((tmp_path / f"inner-f{outer}" / f"tiny-f{inner}" / "run.json").read_text())
            inner_classes |= set(run["classes"]["train"]) | set(run["classes"]["holdout"])
            report = json.loads((tmp_path / f"inner-f{outer}" / f"tiny-f{inner}.eval.json").read_text())
            assert set(report["tuned"]) >= {"r_precision", "precision_at_1", "map_at_r"}
        assert inner_classes == set(outer_split.train)  # and so nothing of outer_split.holdout
