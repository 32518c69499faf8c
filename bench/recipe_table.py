"""docs/quality.md's recipe table, from what bench/recipe_folds.sh left in runs/quality/.

    python -m bench.recipe_table [--dir runs/quality] [--json] NAME [NAME ...]

Per recipe and fold: the held-out scores (every image of the makes training never saw), the
best validation R-precision on the training classes (what recipes are chosen by) and the
training time; then the mean of both folds, and the frozen network's scores as a floor.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from core.cli import add_common_flags, parse_args
from core.errors import UsageError, run_cli

METRICS = ("r_precision", "precision_at_1", "map_at_r")


def validation_r_precision(run_dir: Path, epoch: int | None) -> float | None:
    """Validation R-precision (training classes) at the kept epoch, from Lightning's metrics.csv:
    comparable between recipes whatever score picked their epoch."""
    log = run_dir / "training_log" / "metrics.csv"
    if epoch is None or not log.is_file():
        return None
    with log.open() as f:
        for row in csv.DictReader(f):
            value = row.get("rrp_TrainStage.VALIDATION", "")
            if value and int(row["epoch"]) == epoch:
                return round(float(value), 4)
    return None


def fold_row(folder: Path, name: str, fold: int) -> dict:
    run_json, eval_json = folder / f"{name}-f{fold}" / "run.json", folder / f"{name}-f{fold}.eval.json"
    if not run_json.is_file() or not eval_json.is_file():
        raise UsageError(f"{name} fold {fold}: no finished run and evaluation under {folder}")
    try:
        run, report = json.loads(run_json.read_text()), json.loads(eval_json.read_text())
    except json.JSONDecodeError:  # an evaluation still writing its output
        raise UsageError(f"{name} fold {fold}: its evaluation has not finished ({eval_json})") from None
    metrics = run["metrics"]
    return {
        "recipe": name,
        "fold": fold,
        **{metric: report["tuned"][metric] for metric in METRICS},
        "base": {metric: report["base"][metric] for metric in METRICS},
        "selected_by": metrics["selected_by"],
        "validation_r_precision": validation_r_precision(folder / f"{name}-f{fold}", metrics["best_epoch"]),
        "best_epoch": metrics["best_epoch"],
        "epochs_run": metrics["epochs_run"],
        "train_minutes": round(metrics["train_seconds"] / 60, 1),
        "embedding_size": run["embedding_size"],
    }


def table(folder: Path, names: list[str]) -> list[dict]:
    rows = []
    for name in names:
        folds = [fold_row(folder, name, fold) for fold in (1, 2)]
        mean = {metric: round(sum(f[metric] for f in folds) / 2, 4) for metric in METRICS}
        mean["base"] = {m: round(sum(f["base"][m] for f in folds) / 2, 4) for m in METRICS}
        scores = [f["validation_r_precision"] for f in folds]
        mean["validation_r_precision"] = round(sum(scores) / 2, 4) if None not in scores else None
        rows += [*folds, {"recipe": name, "fold": "mean", **mean}]
    return rows


def markdown(rows: list[dict]) -> str:
    lines = [
        "| recipe | fold | R-precision | P@1 | MAP@R | validation R-precision (epoch picked by) | kept epoch / run "
        "| training min |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        scores = " | ".join(f"{row[m]:.4f}" for m in METRICS)
        if row["fold"] == "mean":
            bold = scores.replace(" | ", "** | **")
            lines.append(f"| **{row['recipe']}** | mean | **{bold}** | {row['validation_r_precision']} | | |")
            continue
        validation = f"{row['validation_r_precision']} ({row['selected_by']})"
        epochs = f"{row['best_epoch']} / {row['epochs_run']}"
        minutes = row["train_minutes"]
        lines.append(f"| {row['recipe']} | {row['fold']} | {scores} | {validation} | {epochs} | {minutes} |")
    base = [r for r in rows if r["fold"] == "mean"][0]["base"]
    frozen = " | ".join(f"{base[m]:.4f}" for m in METRICS)
    lines.append(f"| frozen network (no training) | mean | {frozen} | | | |")
    return "\n".join(lines)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.recipe_table", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("names", nargs="+", metavar="NAME", help="recipe names given to bench/recipe_folds.sh")
    parser.add_argument(
        "--dir", default="runs/quality", help="where bench/recipe_folds.sh wrote (default: %(default)s)"
    )
    parser.add_argument("--json", action="store_true", help="print the rows as JSON instead of a markdown table")
    return add_common_flags(parser, quiet=False)


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(get_args_parser(), argv)
    rows = table(Path(args.dir), args.names)
    print(json.dumps(rows, indent=2) if args.json else markdown(rows))
    return rows


def cli() -> int:
    return run_cli(main)


if __name__ == "__main__":
    sys.exit(cli())
