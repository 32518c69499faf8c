"""Training with Quaterion's encoder cache vs without: epoch time, same data and frozen backbone.

    python -m bench.training_cache [--data DIR] [--classes 20] [--per-class 10] [--backbone mobilenet_v2]

Runs the train CLI (train/ as a library) three times on the same subset of images, each in a
fresh temporary run directory: without the cache (the frozen backbone runs on every batch), with
an empty cache (one encoder pass fills it, then epochs read it), and again on the filled cache.
An epoch (training + validation) is timed by a Lightning callback, from its first batch to its
end; the first epoch of each run is left out (warm-up), the median of the others is reported.
The subset is symlinked into a temporary ImageFolder (photos are never copied). Defaults: real
photos and MobileNetV2 weights from ../shared when present, else SYNTHETIC images and random weights.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import pytorch_lightning as pl

from bench.common import CARS_DEV, MOBILENET_WEIGHTS, machine, median, table, write_json


class EpochTimer(pl.Callback):
    """Seconds of each training epoch, its validation included."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self._started = 0.0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._started = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.seconds.append(time.perf_counter() - self._started)


def subset(source: Path, into: Path, classes: int, per_class: int) -> Path:
    """Symlinks the first `per_class` images of the first `classes` class folders into `into`."""
    for folder in sorted(p for p in source.iterdir() if p.is_dir())[:classes]:
        (into / folder.name).mkdir(parents=True)
        for image in sorted(p for p in folder.iterdir() if p.is_file())[:per_class]:
            (into / folder.name / image.name).symlink_to(image.resolve())
    return into


def train_once(data: Path, out: Path, cache_dir: Path, args: argparse.Namespace, cache: bool) -> dict:
    import train.train as train_cli

    timer = EpochTimer()
    original = train_cli.make_trainer

    def make_trainer(parsed, callbacks):
        return original(parsed, [*callbacks, timer])

    argv = [
        "--data", str(data), "--out", str(out), "--backbone", args.backbone, "--weights", args.weights,
        "--input-size", str(args.input_size), "--epochs", str(args.epochs), "--patience", str(args.epochs),
        "--cache-dir", str(cache_dir), "--holdout-fraction", "0", "--recipe", "seed",
    ] + ([] if cache else ["--no-cache"])  # fmt: skip
    train_cli.make_trainer = make_trainer
    started = time.perf_counter()
    try:
        train_cli.main(argv)
    finally:
        train_cli.make_trainer = original
    total = time.perf_counter() - started
    steady = timer.seconds[1:] or timer.seconds
    return {"epoch_s": round(median(steady), 3), "epochs": len(timer.seconds), "total_s": round(total, 1),
            "epoch_times": [round(s, 3) for s in timer.seconds]}  # fmt: skip


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, help="ImageFolder root (default: ../shared cars, else synthetic)")
    parser.add_argument("--classes", type=int, default=20, help="classes in the subset (default: %(default)s)")
    parser.add_argument("--per-class", type=int, default=10, help="images per class (default: %(default)s)")
    parser.add_argument("--backbone", default="mobilenet_v2", help="frozen backbone (default: %(default)s)")
    parser.add_argument("--weights", help="state dict, default or none (default: ../shared MobileNetV2, else none)")
    parser.add_argument("--input-size", type=int, default=224, help="(default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per run, the first is warm-up (default: 3)")
    parser.add_argument("--results", "--json", dest="json", help="write the results to this JSON file")
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = get_args_parser().parse_args(argv)
    if args.weights is None:
        args.weights = (
            str(MOBILENET_WEIGHTS) if args.backbone == "mobilenet_v2" and MOBILENET_WEIGHTS.is_file() else "none"
        )
    with tempfile.TemporaryDirectory(prefix="bench-cache-") as tmp:
        root = Path(tmp)
        source = args.data or (CARS_DEV if CARS_DEV.is_dir() else None)
        if source is None:
            from train.synthetic import generate

            source, kind = (
                generate(root / "synthetic", colours=5, shapes=4, per_class=args.per_class, size=128),
                "SYNTHETIC",
            )
        else:
            kind = f"photos from {source}"
        data = subset(Path(source), root / "data", args.classes, args.per_class)
        images = sum(1 for _ in data.rglob("*.*"))
        rows = []
        for name, cache in (("no cache", False), ("cache, empty (fill + epochs)", True), ("cache, filled", True)):
            print(f"== {name}", flush=True)
            result = train_once(data, root / f"run-{len(rows)}", root / "cache", args, cache)
            rows.append({"run": name, **result})
        no_cache, cached = rows[0]["epoch_s"], rows[2]["epoch_s"]
        summary = {"speedup": round(no_cache / cached, 1) if cached else float("inf")}
    print(table(rows, ["run", "epoch_s", "epochs", "total_s", "epoch_times"]))
    print(f"Epoch with the filled cache is {summary['speedup']}x faster than without ({images} images, {kind}, "
          f"{args.backbone} {args.input_size}px, weights {args.weights})")  # fmt: skip
    payload = {"benchmark": "training_cache", "argv": sys.argv[1:] if argv is None else argv, "images": images,
               "data": kind, "backbone": args.backbone, "weights": args.weights, "input_size": args.input_size,
               "machine": machine(), "results": rows, "summary": summary}  # fmt: skip
    write_json(args.json, payload)
    return payload


if __name__ == "__main__":
    main()
