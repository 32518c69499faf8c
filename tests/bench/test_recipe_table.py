"""bench/recipe_table.py reads what bench/recipe_folds.sh writes: the fold means and the validation
R-precision of the kept epoch are what docs/quality.md's choice of recipe rests on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import recipe_table
from core.errors import UsageError


def write_fold(folder: Path, name: str, fold: int, tuned: dict, kept_epoch: int) -> None:
    run = folder / f"{name}-f{fold}"
    (run / "training_log").mkdir(parents=True)
    metrics = {"selected_by": "r_precision", "best_epoch": kept_epoch, "epochs_run": 5, "train_seconds": 600}
    (run / "run.json").write_text(json.dumps({"metrics": metrics, "embedding_size": 1280}))
    base = {"r_precision": 0.1, "precision_at_1": 0.4, "map_at_r": 0.05}
    (folder / f"{name}-f{fold}.eval.json").write_text(json.dumps({"base": base, "tuned": tuned}))
    rows = ["TrainStage.TRAIN_loss,epoch,step,TrainStage.VALIDATION_loss,rrp_TrainStage.VALIDATION"]
    rows += [f"0.5,{epoch},{epoch},,\n,{epoch},{epoch},0.9,{0.1 * epoch + fold / 100}" for epoch in range(5)]
    (run / "training_log" / "metrics.csv").write_text("\n".join(rows) + "\n")


def test_the_table_averages_both_folds_and_reads_the_kept_epochs_validation(tmp_path):
    write_fold(tmp_path, "r", 1, {"r_precision": 0.2, "precision_at_1": 0.5, "map_at_r": 0.1}, kept_epoch=3)
    write_fold(tmp_path, "r", 2, {"r_precision": 0.3, "precision_at_1": 0.6, "map_at_r": 0.2}, kept_epoch=1)
    one, two, mean = recipe_table.table(tmp_path, ["r"])
    assert (one["validation_r_precision"], two["validation_r_precision"]) == (0.31, 0.12)
    assert mean == {"recipe": "r", "fold": "mean", "r_precision": 0.25, "precision_at_1": 0.55, "map_at_r": 0.15,
                    "base": {"r_precision": 0.1, "precision_at_1": 0.4, "map_at_r": 0.05},
                    "validation_r_precision": 0.215}  # fmt: skip
    assert "| **r** | mean | **0.2500** | **0.5500** | **0.1500** |" in recipe_table.markdown([one, two, mean])
    with pytest.raises(UsageError, match="missing fold 1: no finished run"):
        recipe_table.table(tmp_path, ["missing"])
