"""How well the calibrated match levels separate on car models no one calibrated on.

    python -m bench.calibration --run runs/bench-default --data ../shared/data/cars196-dev [--results FILE]

The run's held-out classes (models, and with --split-by make makes, it never trained on) are
embedded in process (`serve.embedder.Embedder`, the handler's own code) and split in two halves by
class, seeded. The levels are calibrated on half A (clients/calibration.py, as `clients/calibrate.py`
does on a gallery) and applied to half B, whose models the calibration never saw: each B photo
searches the B gallery (itself left out), and its top-20 results are counted per level, same model
or not. A second pass swaps the halves. Printed per level: results, the share that were the same
model (the level's precision on unseen models, the target being the calibrated 80% / 30%), and the
share of all same-model results that level holds; plus the ROC AUC of the raw score, same model
vs other, over those results.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import numpy as np

from bench.common import machine, table, write_json
from clients.calibration import LEVELS, calibrate, leave_one_out_results, level
from core.run import Run
from serve.embedder import Embedder
from train.data import load_image_list


def embed(run: str, paths: list[str], batch_size: int) -> np.ndarray:
    from PIL import Image
    from tqdm import tqdm

    embedder = Embedder.load(run, batch_size=batch_size)
    chunks = []
    for start in tqdm(range(0, len(paths), batch_size), desc="embedding", unit="batch"):
        images = [Image.open(p).convert("RGB") for p in paths[start : start + batch_size]]
        chunks.append(embedder.embed(images))
    return np.concatenate(chunks)


def auc(scores: np.ndarray, same: np.ndarray) -> float:
    """Probability that a same-model result outscores an other-model one (ties half)."""
    order = np.argsort(scores, kind="stable")
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    positives, negatives = same.sum(), (~same).sum()
    return float((ranks[same].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def evaluate(vectors: np.ndarray, labels: list[str], calibration: dict) -> tuple[list[dict], float]:
    scores, same = leave_one_out_results(vectors, labels)
    levels = np.array([level(float(s), calibration) for s in scores])
    rows = []
    for name in LEVELS:
        chosen = levels == name
        rows.append({"level": name, "results": int(chosen.sum()),
                     "same_model": round(float(same[chosen].mean()), 3) if chosen.any() else float("nan"),
                     "of_all_same_model": round(float(same[chosen].sum() / max(same.sum(), 1)), 3)})  # fmt: skip
    return rows, auc(scores, same)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.calibration", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", required=True, help="a trained run (its held-out classes are used)")
    parser.add_argument("--data", required=True, help="the run's training data (ImageFolder)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0, help="seed of the split of the classes in halves")
    parser.add_argument("--results", help="write the results as JSON here")
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = get_args_parser().parse_args(argv)
    run = Run.open(args.run)
    held_out = sorted(run.info["classes"]["holdout"])
    images = load_image_list(args.data).only(set(held_out))
    cache = Path(args.run) / f"calibration-vectors-{run.model_version[:12]}.npy"  # rerunning skips the embedding
    if cache.is_file() and len(np.load(cache)) == len(images.paths):
        vectors = np.load(cache)
    else:
        vectors = embed(args.run, list(images.paths), args.batch_size)
        np.save(cache, vectors)
    labels = list(images.classes)
    classes = held_out[:]
    random.Random(args.seed).shuffle(classes)
    halves = (set(classes[: len(classes) // 2]), set(classes[len(classes) // 2 :]))
    passes = []
    for name, (fit, test) in (("A->B", halves), ("B->A", halves[::-1])):
        fit_rows = [i for i, label in enumerate(labels) if label in fit]
        test_rows = [i for i, label in enumerate(labels) if label in test]
        calibration = calibrate(vectors[fit_rows], [labels[i] for i in fit_rows], run.model_version)
        on_fit, _ = evaluate(vectors[fit_rows], [labels[i] for i in fit_rows], calibration)
        on_test, area = evaluate(vectors[test_rows], [labels[i] for i in test_rows], calibration)
        passes.append({"pass": name, "thresholds": calibration["thresholds"], "calibration_rows": len(fit_rows),
                       "test_rows": len(test_rows), "on_calibration_half": on_fit, "on_unseen_half": on_test,
                       "auc_unseen": round(area, 4)})  # fmt: skip
        print(f"\n{name}: calibrated on {len(fit)} models ({len(fit_rows)} photos), thresholds "
              f"{ {k: None if v is None else round(v, 4) for k, v in calibration['thresholds'].items()} }; "
              f"applied to {len(test)} other models ({len(test_rows)} photos), ROC AUC {area:.3f}")  # fmt: skip
        print(table(on_test, ["level", "results", "same_model", "of_all_same_model"]))
    payload = {"machine": machine(), "run": args.run, "model_version": run.model_version, "held_out_classes":
               len(held_out), "photos": len(labels), "passes": passes}  # fmt: skip
    write_json(args.results, payload)
    return payload


if __name__ == "__main__":
    main()
