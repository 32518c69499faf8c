"""Compare the frozen base encoder with the tuned model on retrieval of (unseen) classes.

    python -m train.evaluate --run runs/NAME --data DIR [--classes heldout|all] [--plot] [--rerank]

`heldout` evaluates the classes that run held out of this same DIR; `all` every class in DIR (for
a dataset disjoint from training). Writes RUN_DIR/eval.json and, with --plot, RUN_DIR/metrics.png.
`--rerank` also scores the tuned model with its searches re-ranked (DBA + alpha-QE on each
query's shortlist, core/rerank.py: the code the gallery stores serve with), as "tuned_rerank",
with the settings used under "rerank" (core/rerank.py's DEFAULT unless --rerank-k/-alpha/-shortlist).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import torch
from quaterion import Quaterion
from quaterion.eval.evaluator import Evaluator
from quaterion_models import SimilarityModel
from quaterion_models.encoders import Encoder
from quaterion_models.heads import EmptyHead, EncoderHead

from core.cli import add_common_flags, parse_args
from core.errors import UsageError, run_cli
from core.files import directory_sha256, write_file_atomic, write_json_atomic
from core.rerank import DEFAULT as RERANK_DEFAULT
from core.rerank import RerankSettings
from core.servable import base_head
from core.run import Run
from train.cache import images_signature
from train.data import DATASETS, CarsDataset, ImageList, load_image_list
from train.metrics import RerankedGroupSampler, SelfMaskedGroupSampler, retrieval_metrics

WHICH = {"heldout": "held-out", "all": "evaluated"}


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="run directory written by train.train")
    parser.add_argument("--data", required=True, help="dataset root directory")
    parser.add_argument(
        "--dataset", default="imagefolder", choices=DATASETS, help="layout of --data (default: imagefolder)"
    )
    parser.add_argument(
        "--classes",
        default="heldout",
        choices=("heldout", "all"),
        help="which classes of --data to evaluate (default: heldout)",
    )
    parser.add_argument(
        "--sample-size",
        type=int,
        default=-1,
        help="number of query images sampled (gallery = all images); -1 = every image (default: -1)",
    )
    parser.add_argument("--batch-size", type=int, default=64, help="encoding batch size (default: 64)")
    parser.add_argument("--seed", type=int, default=42, help="seed of the query sample (default: 42)")
    parser.add_argument(
        "--cache-dir",
        default=".cache/eval",
        help="where the frozen encoder's outputs for the evaluated images are kept (default: .cache/eval)",
    )
    parser.add_argument("--no-cache", action="store_true", help="encode the images again, keep nothing")
    parser.add_argument("--plot", action="store_true", help="also write RUN_DIR/metrics.png, base vs tuned per metric")
    parser.add_argument("--json", action="store_true", help="print eval.json instead of a table")
    parser.add_argument(
        "--rerank", action="store_true", help="also score the tuned model with re-ranked searches (core/rerank.py)"
    )
    parser.add_argument(
        "--rerank-k", type=int, help=f"neighbours in DBA and QE (implies --rerank; default: {RERANK_DEFAULT.k})"
    )
    parser.add_argument(
        "--rerank-alpha", type=float, help=f"weight exponent (implies --rerank; default: {RERANK_DEFAULT.alpha:g})"
    )
    parser.add_argument(
        "--rerank-shortlist",
        type=int,
        help=f"results re-ranked per query (implies --rerank; default: {RERANK_DEFAULT.shortlist})",
    )
    return add_common_flags(parser)


def rerank_settings(args: argparse.Namespace) -> RerankSettings | None:
    """The re-rank settings asked for (core/rerank.py's DEFAULT, overridden), or None."""
    overrides = {"k": args.rerank_k, "alpha": args.rerank_alpha, "shortlist": args.rerank_shortlist}
    overrides = {key: value for key, value in overrides.items() if value is not None}
    if not args.rerank and not overrides:
        return None
    return RerankSettings(**{**RERANK_DEFAULT.as_dict(), **overrides})  # UsageError for bad values


def load_run(run_dir: Path) -> tuple[Run, SimilarityModel]:
    run = Run.open(run_dir)
    run.require_trained("evaluation (it evaluates the classes the run held out)")
    try:
        return run, run.load_model()
    except (OSError, json.JSONDecodeError, KeyError, ValueError, RuntimeError) as error:
        raise UsageError(f"{run_dir} holds an unreadable servable: {type(error).__name__}: {error}") from None


def select_images(images: ImageList, run: Run, which: str) -> ImageList:
    if which == "all":
        return images
    holdout = set(run.info["classes"]["holdout"])
    if not holdout:
        raise UsageError("this run held out no classes (--holdout-fraction 0); use --classes all with other data")
    missing = sorted(holdout - set(images.class_names))
    if missing:
        raise UsageError(
            f"{len(missing)} held-out classes of the run are not in this data (e.g. {missing[0]!r}); "
            "pass the training data, or --classes all"
        )
    return images.only(holdout)


@torch.inference_mode()
def apply_head(head: EncoderHead, features: torch.Tensor, batch_size: int) -> torch.Tensor:
    head.eval()
    device = next(head.parameters(), features).device
    return torch.cat(
        [head(features[i : i + batch_size].to(device), meta=[]) for i in range(0, len(features), batch_size)]
    )


def encoder_outputs(
    encoder: Encoder, encoder_dir: Path, dataset: CarsDataset, batch_size: int, cache_dir: Path | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The frozen encoder's outputs for every image, and their groups.

    Kept in `cache_dir` under a hash of the encoder's saved files (`encoder_dir`) and the exact images: runs
    that share a frozen encoder (every recipe on one fold) then encode the evaluation images
    once. Read back weights-only.
    """
    path = None
    if cache_dir is not None:
        key = {"encoder": directory_sha256(encoder_dir), "images": images_signature(dataset.images)}
        digest = hashlib.sha256(json.dumps([key, sorted(dataset.class_ids.items())]).encode()).hexdigest()
        path = cache_dir / f"{digest[:20]}.pt"
        if path.is_file():
            cached = torch.load(path, map_location="cpu", weights_only=True)
            return cached["features"], cached["groups"]
    print(f"Encoding {len(dataset)} images...", file=sys.stderr)
    sampler = SelfMaskedGroupSampler(encode_batch_size=batch_size)
    sampler.accumulate(SimilarityModel(encoders=encoder, head=EmptyHead(encoder.embedding_size)), dataset)
    features, groups = sampler.accumulator.embeddings.cpu(), sampler.accumulator.groups.cpu()
    if path is not None:
        write_file_atomic(path, lambda f: torch.save({"features": features, "groups": groups}, f))
    return features, groups


def evaluate_base_and_tuned(
    images: ImageList,
    tuned: SimilarityModel,
    base_head: EncoderHead,
    sample_size: int,
    batch_size: int,
    seed: int,
    servable_dir: Path,
    cache_dir: Path | None = None,
    rerank: RerankSettings | None = None,
) -> dict[str, dict[str, float]]:
    """Runs Quaterion's Evaluator on the untuned network (`base_head`) and on the tuned model
    (and, with `rerank`, on the tuned model's re-ranked searches: "tuned_rerank").

    The frozen encoder runs once: both models' embeddings are their heads applied to its
    outputs, exactly what `encode` computes, at half the cost. All use the same seeded sample of
    queries.
    """
    class_ids = {name: i for i, name in enumerate(images.class_names)}
    dataset = CarsDataset(images, class_ids)
    (encoder_key, encoder), *_ = tuned.encoders.items()
    encoder_dir = servable_dir / "encoders" / encoder_key
    features, groups = encoder_outputs(encoder, encoder_dir, dataset, batch_size, cache_dir)
    tuned.eval()  # SimilarityModel.eval() returns None: never chain it
    base_head.to(features.device)
    results = {}
    runs = [("base", base_head, None), ("tuned", tuned.head, None)]
    if rerank is not None:
        runs.append(("tuned_rerank", tuned.head, rerank))
    for name, head, settings in runs:
        if settings is None:
            sampler = SelfMaskedGroupSampler(sample_size, batch_size, seed)
        else:
            sampler = RerankedGroupSampler(settings, sample_size, batch_size, seed)
        sampler.accumulator.update(apply_head(head, features, batch_size), groups)
        sampler.accumulator.set_filled()
        model = SimilarityModel(encoders=encoder, head=head)
        scores = Quaterion.evaluate(Evaluator(retrieval_metrics(), sampler), dataset, model)
        results[name] = {metric: round(float(value), 4) for metric, value in scores.items()}
    return results


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = list(report["base"])
    x = range(len(metrics))
    fig, ax = plt.subplots(figsize=(7, 4))
    names = [name for name in ("base", "tuned", "tuned_rerank") if name in report]
    width = 0.8 / len(names)
    for position, name in enumerate(names):
        offset = (position - (len(names) - 1) / 2) * width
        bars = ax.bar([i + offset for i in x], [report[name][m] for m in metrics], width=width, label=name)
        ax.bar_label(bars, fmt="%.3f")
    ax.set_xticks(list(x), metrics)
    ax.set_ylim(0, 1)
    ax.set_title(f"Retrieval on {report['classes']} {WHICH[report['which']]} classes ({report['images']} images)")
    ax.legend()
    fig.tight_layout()
    try:
        write_file_atomic(path, lambda f: fig.savefig(f, format="png", dpi=120))
    finally:
        plt.close(fig)


def format_table(report: dict[str, Any]) -> str:
    reranked = "tuned_rerank" in report
    header = f"{'metric':<16}{'base':>8}{'tuned':>8}{'change':>9}"
    lines = [
        f"Retrieval on {report['classes']} {WHICH[report['which']]} classes "
        f"({report['images']} images) of {report['data']}",
        header + (f"{'+rerank':>10}{'vs tuned':>10}" if reranked else ""),
    ]
    for metric, base in report["base"].items():
        tuned = report["tuned"][metric]
        line = f"{metric:<16}{base:>8.4f}{tuned:>8.4f}{change(base, tuned):>9}"
        if reranked:
            line += f"{report['tuned_rerank'][metric]:>10.4f}{change(tuned, report['tuned_rerank'][metric]):>10}"
        lines.append(line)
    if reranked:
        settings = report["rerank"]
        lines.append(f"reranked: k={settings['k']}, alpha={settings['alpha']:g}, shortlist={settings['shortlist']}")
    return "\n".join(lines)


def change(before: float, after: float) -> str:
    return f"{(after / before - 1) * 100:+.0f}%" if before else "n/a"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(get_args_parser(), argv)
    if args.batch_size < 1 or args.sample_size == 0 or args.sample_size < -1:
        raise UsageError("--batch-size must be >= 1 and --sample-size -1 or >= 1")
    run_dir = Path(args.run)
    run, tuned = load_run(run_dir)
    images = select_images(load_image_list(args.data, args.dataset), run, args.classes)
    if len(images) == len(images.class_names):
        raise UsageError("every class has a single image: nothing relevant to retrieve")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tuned.to(device)
    base = base_head(tuned, run.base_top_file)
    cache_dir = None if args.no_cache else Path(args.cache_dir)
    rerank = rerank_settings(args)
    largest = max(images.classes.count(name) for name in images.class_names)
    if rerank is not None and largest - 1 > min(rerank.shortlist, len(images) - 1):
        print(f"warning: the largest class has {largest - 1} other images, more than the re-rank shortlist "
              f"({rerank.shortlist}): the metrics' results past it keep their raw order (as a store serves them); "
              f"--rerank-shortlist {largest} re-ranks them all", file=sys.stderr)  # fmt: skip
    results = evaluate_base_and_tuned(
        images, tuned, base, args.sample_size, args.batch_size, args.seed, run.servable_dir, cache_dir, rerank
    )
    seen = set(run.info["classes"]["train"]) & set(images.class_names)
    report = {
        **results,
        "classes": len(images.class_names),
        "images": len(images),
        "data": str(Path(args.data).resolve()),
        "which": args.classes,
        "classes_seen_in_training": len(seen),
        "sample_size": args.sample_size,
        "model_version": run.model_version,
    }
    if rerank is not None:
        report["rerank"] = {**rerank.as_dict(), "largest_class": largest}
    write_json_atomic(run_dir / "eval.json", report)
    if args.plot:
        plot(report, run_dir / "metrics.png")
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_table(report))
        if seen:
            print(f"note: {len(seen)} of these classes were seen in training")
        print(f"Wrote {run_dir / 'eval.json'}" + (f" and {run_dir / 'metrics.png'}" if args.plot else ""))
    return report


def cli() -> int:
    """The console script's entry point (pyproject.toml [project.scripts])."""
    return run_cli(main)


if __name__ == "__main__":
    sys.exit(cli())
