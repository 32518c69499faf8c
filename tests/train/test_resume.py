"""--resume: a training killed mid-way continues from its last epoch instead of starting over."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, run_module

pytestmark = pytest.mark.slow

SETTINGS = ["--recipe", "seed", "--backbone", "resnet18", "--weights", "none", "--input-size", "32", "--epochs", "40"]
SETTINGS += ["--patience", "40", "--lr", "0.01"]


def test_a_killed_training_resumes_from_its_last_epoch(small_data: Path, tmp_path: Path):
    out, cache = tmp_path / "run", tmp_path / "cache"
    argv = ["--data", str(small_data), "--out", str(out), "--cache-dir", str(cache), *SETTINGS]
    process = subprocess.Popen(
        [sys.executable, "-m", "train.train", *argv], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    checkpoint = out / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 300
    while not checkpoint.is_file() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)  # as a power cut would: no clean-up runs
    process.wait()
    assert checkpoint.is_file() and not (out / "run.json").exists()

    again = run_module("train.train", *argv)  # without --resume: refused, nothing overwritten
    assert again.returncode == 2 and "pass --resume to continue it or --overwrite" in again.stderr

    changed = run_module("train.train", *argv, "--resume", "--lr", "0.02")
    assert changed.returncode == 2 and "--lr was 0.01, now 0.02" in changed.stderr

    resumed = run_module("train.train", *argv, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    run = json.loads((out / "run.json").read_text())
    assert run["metrics"]["resumed"] is True and run["metrics"]["best_epoch"] is not None
    assert not (out / "checkpoints").exists()  # a finished run keeps no checkpoints
    assert f"Resuming from {checkpoint}" in resumed.stderr
    assert (out / "training_log" / "metrics.csv").is_file()  # the first part's log is kept beside the resumed one
    assert (out / "training_log" / "resumed" / "metrics.csv").is_file()
