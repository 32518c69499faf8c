"""Pick the re-rank settings (core/rerank.py: k and alpha) on a run's TRAINING classes only.

    .venv/bin/python -m bench.rerank_params --run runs/NAME --data DIR [--json] [--results FILE]

The held-out classes are what train.evaluate reports on, so tuning k and alpha on them would
flatter the re-rank; this never reads them: it takes the classes run.json lists under
classes.train from DIR and embeds their images as train.evaluate does (the frozen encoder's
outputs cached under --cache-dir, keyed by the encoder's files and the exact images, then the
tuned head). Every image then queries all the others (itself left out), and each setting of the
grid (k x alpha, one shortlist) is scored with train.evaluate's metrics on the re-ranked order
(train/metrics.py RerankedGroupSampler, the code train.evaluate --rerank uses). The chosen
setting has the best R-precision among those whose precision@1 is not below the plain search's
(ties: better MAP@R, then smaller k and alpha); when none beats the plain R-precision, it says to
leave re-ranking off. Set what it chooses in core/rerank.py (DEFAULT), then measure it on the
held-out classes: python -m train.evaluate --run RUN --data DIR --rerank.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

from bench.common import machine, parse_list, table, write_json
from core.cli import add_common_flags, parse_args
from core.errors import UsageError, run_cli
from core.rerank import DEFAULT, RerankSettings
from train.data import DATASETS, CarsDataset, load_image_list
from train.evaluate import apply_head, encoder_outputs, load_run
from train.metrics import RerankedGroupSampler, SelfMaskedGroupSampler, retrieval_metrics

KS = (1, 2, 3, 5, 8, 12)
ALPHAS = (0.0, 1.0, 3.0, 5.0)
METRICS = ("r_precision", "precision_at_1", "map_at_r")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.rerank_params", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", required=True, help="a run trained by train.train (its training classes are used)")
    parser.add_argument("--data", required=True, help="the data the run trained on")
    parser.add_argument("--dataset", default="imagefolder", choices=DATASETS, help="layout of --data")
    parser.add_argument("--ks", type=parse_list, default=list(KS), help="k values, e.g. 1,2,3 (default: %(default)s)")
    parser.add_argument(
        "--alphas", type=lambda text: parse_list(text, float), default=list(ALPHAS),
        help="alpha values, comma-separated (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument("--shortlist", type=int, default=DEFAULT.shortlist, help="(default: %(default)s)")
    parser.add_argument("--sample-size", type=int, default=-1, help="queries sampled; -1: every image (default)")
    parser.add_argument("--seed", type=int, default=42, help="seed of the query sample (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=64, help="encoding batch size (default: %(default)s)")
    parser.add_argument("--cache-dir", default=".cache/eval", help="frozen encoder outputs (default: %(default)s)")
    parser.add_argument("--no-cache", action="store_true", help="encode the images again, keep nothing")
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    parser.add_argument("--results", help="also write the results as JSON here")
    return add_common_flags(parser)


def training_embeddings(args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """The tuned model's embeddings of the run's training classes' images and their groups; the
    held-out classes are never listed, let alone read."""
    run, tuned = load_run(Path(args.run))
    train_classes = set(run.info["classes"]["train"])
    images = load_image_list(args.data, args.dataset)
    missing = sorted(train_classes - set(images.class_names))
    if missing:
        raise UsageError(f"{len(missing)} training classes of the run are not in {args.data} (e.g. {missing[0]!r})")
    images = images.only(train_classes)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tuned.to(device)
    tuned.eval()
    dataset = CarsDataset(images, {name: i for i, name in enumerate(images.class_names)})
    (key, encoder), *_ = tuned.encoders.items()
    cache = None if args.no_cache else Path(args.cache_dir)
    features, groups = encoder_outputs(encoder, run.servable_dir / "encoders" / key, dataset, args.batch_size, cache)
    embeddings = apply_head(tuned.head, features, args.batch_size).float().cpu()
    largest = max(images.classes.count(name) for name in images.class_names)
    about = {"run": args.run, "model_version": run.model_version, "classes": len(images.class_names),
             "images": len(images), "largest_class": largest}  # fmt: skip
    return embeddings, groups.cpu(), about


def score(embeddings: torch.Tensor, groups: torch.Tensor, settings: RerankSettings | None, args) -> dict[str, float]:
    """train.evaluate's metrics of the plain (settings None) or re-ranked search."""
    from quaterion.eval.evaluator import Evaluator

    if settings is None:
        sampler = SelfMaskedGroupSampler(args.sample_size, args.batch_size, args.seed)
    else:
        sampler = RerankedGroupSampler(settings, args.sample_size, args.batch_size, args.seed)
    sampler.accumulator.update(embeddings, groups)
    sampler.accumulator.set_filled()
    results = Evaluator(retrieval_metrics(), sampler).evaluate(None, None)  # filled: no dataset or model needed
    return {name: round(float(results[name]), 4) for name in METRICS}


def choose(plain: dict[str, float], rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The best R-precision with precision@1 no lower than plain search's; None if none beats plain R-precision."""
    allowed = [r for r in rows if r["precision_at_1"] >= plain["precision_at_1"]]
    allowed = [r for r in allowed if r["r_precision"] > plain["r_precision"]]
    if not allowed:
        return None
    return max(allowed, key=lambda r: (r["r_precision"], r["map_at_r"], -r["k"], -r["alpha"]))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(get_args_parser(), argv)
    if args.batch_size < 1 or args.sample_size == 0 or args.sample_size < -1:
        raise UsageError("--batch-size must be >= 1 and --sample-size -1 or >= 1")
    grid = [RerankSettings(k, alpha, args.shortlist) for k in args.ks for alpha in args.alphas]  # checks each
    embeddings, groups, about = training_embeddings(args)
    if about["largest_class"] - 1 > args.shortlist:
        print(f"warning: the largest training class has {about['largest_class'] - 1} other images, more than the "
              f"shortlist ({args.shortlist}): results past it keep their raw order", file=sys.stderr)  # fmt: skip
    plain = score(embeddings, groups, None, args)
    rows = []
    for settings in grid:
        scores = score(embeddings, groups, settings, args)
        changes = {f"{m}_change": round(scores[m] - plain[m], 4) for m in ("r_precision", "precision_at_1")}
        rows.append({"k": settings.k, "alpha": settings.alpha, **scores, **changes})
        print(f"k={settings.k:<3} alpha={settings.alpha:<4g} " + "  ".join(f"{m} {scores[m]:.4f}" for m in METRICS),
              file=sys.stderr, flush=True)  # fmt: skip
    chosen = choose(plain, rows)
    payload = {"machine": machine(), **about, "shortlist": args.shortlist, "sample_size": args.sample_size,
               "plain": plain, "grid": rows,
               "chosen": None if chosen is None else {"k": chosen["k"], "alpha": chosen["alpha"],
                                                      "shortlist": args.shortlist}}  # fmt: skip
    if args.json:
        print(json.dumps(payload, indent=2))
    else:
        print(f"Re-rank settings on the {about['classes']} training classes ({about['images']} images) of {args.run}; "
              f"shortlist {args.shortlist}")  # fmt: skip
        columns = ["k", "alpha", *METRICS, "r_precision_change", "precision_at_1_change"]
        print(table([{"k": "none", "alpha": "", **plain}, *rows], columns))
        if chosen is None:
            print("chosen: none (no setting beats plain search's R-precision without losing precision@1): "
                  "leave re-ranking off")  # fmt: skip
        else:
            print(f"chosen: k={chosen['k']}, alpha={chosen['alpha']:g}, shortlist={args.shortlist} "
                  f"(R-precision {plain['r_precision']:.4f} -> {chosen['r_precision']:.4f}); set it as core/rerank.py "
                  f"DEFAULT, then: python -m train.evaluate --run {args.run} --data {args.data} --rerank")  # fmt: skip
    write_json(args.results, payload)
    return payload


if __name__ == "__main__":
    sys.exit(run_cli(main))
