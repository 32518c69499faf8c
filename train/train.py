"""Train a car-similarity model and save it as a servable.

    python -m train.train --data DIR --out runs/NAME [--backbone resnet152] [--weights default]

Writes RUN_DIR/servable/ (a quaterion-models `SimilarityModel`) and RUN_DIR/run.json (arguments,
preprocessing, class split, cache fingerprint, metrics, versions, model version).
"""

from __future__ import annotations

import argparse
import copy
import math
import platform
import shutil
import sys
import time
from datetime import datetime, UTC
from importlib import metadata
from pathlib import Path
from typing import Any, NamedTuple

from train import compat  # noqa: F401  (must precede quaterion imports)
import pytorch_lightning as pl
from loguru import logger
import torch
from pytorch_lightning.callbacks import EarlyStopping, TQDMProgressBar
from pytorch_lightning.loggers import CSVLogger
from quaterion import Quaterion
from quaterion.utils.enums import TrainStage

from quaterion.train.xbm import XbmConfig
from torch.utils.data import Dataset

from train.artifacts import directory_sha256, write_dir_atomic, write_file_atomic, write_json_atomic
from train.cache import CacheDirectory, PublishCache, cache_fingerprint
from train.data import (
    AugmentedCopies,
    ClassSplit,
    ImageList,
    DATASETS,
    CarsDataset,
    ClassBalancedSampler,
    check_trainable,
    load_image_list,
    make_loader,
    split_classes,
    split_validation,
)
from train.encoders import check_backbone_and_weights, weights_identity
from train.errors import UsageError, run_cli
from train.model import BASE_TOP_FILE, LOSSES, MINING, CarsModel, cache_config, check_mining
from train.preprocessing import Preprocessing, training_augmentation

VAL_LOSS = f"{TrainStage.VALIDATION}_loss"
VAL_RRP = f"rrp_{TrainStage.VALIDATION}"
# --select-by: (Lightning's metric name, whether larger is better)
SELECT_BY = {"loss": (VAL_LOSS, False), "r_precision": (VAL_RRP, True)}
PACKAGES = ("torch", "torchvision", "quaterion", "quaterion-models", "pytorch-lightning", "torchmetrics")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = parser.add_argument_group("data")
    data.add_argument("--data", required=True, help="dataset root directory")
    data.add_argument(
        "--dataset", default="imagefolder", choices=DATASETS, help="layout of --data (default: imagefolder)"
    )
    data.add_argument(
        "--holdout-fraction",
        type=float,
        default=0.5,
        help="fraction of classes held out of training, to measure retrieval on unseen cars; "
        "0 trains on every class (default: 0.5)",
    )
    data.add_argument(
        "--val-fraction",
        type=float,
        default=0.1,
        help="fraction of each training class's images used for validation and early stopping (default: 0.1)",
    )
    data.add_argument(
        "--fold",
        type=int,
        default=1,
        choices=(1, 2),
        help="2 swaps training and held-out classes of the seeded split (default: 1)",
    )
    data.add_argument(
        "--seed", type=int, default=42, help="seed for the class split, validation split and training (default: 42)"
    )
    model = parser.add_argument_group("model")
    model.add_argument(
        "--backbone", default="resnet152", help="any torchvision classification model (default: resnet152)"
    )
    model.add_argument(
        "--weights",
        default="default",
        help="'default' (torchvision ImageNet weights, downloaded), 'none' (random) "
        "or a local state-dict path (default: default)",
    )
    model.add_argument(
        "--input-size", type=int, default=224, help="images are resized to this square size (default: 224)"
    )
    model.add_argument(
        "--trainable-blocks",
        type=int,
        default=0,
        help="fine-tune the backbone's last N stages (ResNet layers, MobileNet/EfficientNet blocks) "
        "with frozen BatchNorm statistics; the encoder cache then holds the frozen trunk's feature maps "
        "(default: 0, only the head learns)",
    )
    optim = parser.add_argument_group("training")
    optim.add_argument("--epochs", type=int, default=30, help="maximum number of epochs (default: 30)")
    optim.add_argument("--batch-size", type=int, default=128, help="training batch size (default: 128)")
    optim.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate of the head (default: 3e-3)")
    optim.add_argument(
        "--backbone-lr",
        type=float,
        default=1e-4,
        help="Adam learning rate of the --trainable-blocks stages (default: 1e-4)",
    )
    optim.add_argument("--loss", default="triplet", choices=LOSSES, help="Quaterion loss (default: triplet)")
    optim.add_argument(
        "--mining", default="hard", choices=MINING, help="triplet / online_contrastive mining (default: hard)"
    )
    optim.add_argument("--margin", type=float, default=None, help="loss margin (default: the loss's own; triplet 0.5)")
    optim.add_argument(
        "--sampler",
        default="random",
        choices=("random", "balanced"),
        help="batches of random images, or of P classes x K images (--images-per-class) (default: random)",
    )
    optim.add_argument("--images-per-class", type=int, default=4, help="K of the balanced sampler (default: 4)")
    optim.add_argument(
        "--xbm-size",
        type=int,
        default=0,
        help="cross-batch memory of this many embeddings for the triplet loss, used after the "
        "first epoch (default: 0, off)",
    )
    optim.add_argument(
        "--select-by",
        default="loss",
        choices=tuple(SELECT_BY),
        help="validation score that picks the saved epoch and stops training: the loss, or R-precision "
        "on held-back images of the training classes (default: loss)",
    )
    optim.add_argument(
        "--patience", type=int, default=5, help="early-stopping patience in epochs on validation loss (default: 5)"
    )
    optim.add_argument(
        "--augment",
        action="store_true",
        help="random crop/flip/colour jitter while training; needs --no-cache (default: off)",
    )
    optim.add_argument(
        "--augment-copies",
        type=int,
        default=0,
        help="with the cache: add N fixed augmented views of every training image, each encoded "
        "once, so augmentation keeps the cache's speed (default: 0)",
    )
    runtime = parser.add_argument_group("runtime")
    runtime.add_argument("--out", required=True, help="run directory to write servable/ and run.json into")
    runtime.add_argument("--overwrite", action="store_true", help="replace an existing run in --out (default: refuse)")
    runtime.add_argument(
        "--cache-dir",
        default=".cache/encoder",
        help="root of the fingerprinted encoder caches (default: .cache/encoder)",
    )
    runtime.add_argument(
        "--no-cache",
        action="store_true",
        help="run the frozen encoder on every batch instead of caching its embeddings",
    )
    runtime.add_argument(
        "--workers",
        type=int,
        default=2,
        help="data-loading worker processes when training without the cache (default: 2)",
    )
    runtime.add_argument(
        "--cache-batch-size", type=int, default=64, help="batch size while filling the encoder cache (default: 64)"
    )
    return parser


def check_args(args: argparse.Namespace) -> None:
    for flag in ("epochs", "batch_size", "patience", "cache_batch_size"):
        if getattr(args, flag) < 1:
            raise UsageError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    if args.lr <= 0 or args.backbone_lr <= 0:
        raise UsageError(f"--lr and --backbone-lr must be > 0, got {args.lr} and {args.backbone_lr}")
    if args.trainable_blocks < 0 or args.xbm_size < 0:
        raise UsageError("--trainable-blocks and --xbm-size must be >= 0")
    if args.xbm_size and args.loss != "triplet":
        raise UsageError(f"--xbm-size works with --loss triplet only (Quaterion has no XBM for {args.loss})")
    if args.workers < 0:
        raise UsageError(f"--workers must be >= 0, got {args.workers}")
    if args.input_size < 16:
        raise UsageError(f"--input-size must be >= 16, got {args.input_size}")
    check_backbone_and_weights(args.backbone, args.weights)
    if args.augment and not args.no_cache:
        raise UsageError(
            "--augment changes every epoch's images, so it needs --no-cache (or use --augment-copies N with the cache)"
        )
    if args.augment_copies < 0:
        raise UsageError(f"--augment-copies must be >= 0, got {args.augment_copies}")
    if args.augment_copies and args.no_cache:
        raise UsageError("--augment-copies exists for the cache; without it use --augment (fresh views every epoch)")
    check_mining(args.mining, args.batch_size)
    if (Path(args.out) / "run.json").exists() and not args.overwrite:
        raise UsageError(f"{args.out} already holds a run; pass --overwrite to replace it")


class KeepBestHead(pl.Callback):
    """Restores the head of the epoch with the best validation score when training ends: the
    lowest loss, or the highest R-precision (`select_by`), on held-back images of the training
    classes.

    Also stops training at the first non-finite training loss (`diverged`).
    """

    def __init__(self, select_by: str = "loss") -> None:
        self.monitor, self.higher_is_better = SELECT_BY[select_by]
        self.diverged = False
        self.best_score = -math.inf if self.higher_is_better else math.inf
        self.best_loss = math.inf  # the validation loss of the kept epoch
        self.best_epoch: int | None = None
        self.best_state: dict[str, torch.Tensor] | None = None

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: CarsModel, outputs, batch, batch_idx: int) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is not None and not torch.isfinite(loss).all():
            self.diverged = trainer.should_stop = True

    def on_validation_end(self, trainer: pl.Trainer, pl_module: CarsModel) -> None:
        # The hook EarlyStopping uses too, so both judge the same validation score.
        score = trainer.callback_metrics.get(self.monitor)
        if trainer.sanity_checking or score is None or not math.isfinite(score):
            return
        better = float(score) > self.best_score if self.higher_is_better else float(score) < self.best_score
        if not better:
            return
        self.best_score, self.best_epoch = float(score), trainer.current_epoch
        self.best_loss = float(trainer.callback_metrics.get(VAL_LOSS, math.nan))
        self.best_state = copy.deepcopy(pl_module.model.head.state_dict())

    def on_fit_end(self, trainer: pl.Trainer, pl_module: CarsModel) -> None:
        if self.best_state is not None:
            pl_module.model.head.load_state_dict(self.best_state)


class SeedAtFitStart(pl.Callback):
    """Re-seeds after Quaterion's cache step, so a filled and a reused cache train identically."""

    def __init__(self, seed: int):
        self.seed = seed

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pl.seed_everything(self.seed, workers=True)


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    found.update({name: metadata.version(name) for name in PACKAGES})
    return found


class Splits(NamedTuple):
    images: ImageList  # everything under --data
    classes: ClassSplit
    train: ImageList  # images of the training classes used for gradient steps
    val: ImageList  # held-back images of the training classes, for early stopping


def prepare_splits(args: argparse.Namespace) -> Splits:
    images = load_image_list(args.data, args.dataset)
    classes = split_classes(images.class_names, args.holdout_fraction, args.seed, args.fold)
    train_images = images.only(set(classes.train))
    check_trainable(train_images)
    train, val = split_validation(train_images, args.val_fraction, args.seed)
    return Splits(images, classes, train, val)


def encoder_identity(args: argparse.Namespace) -> dict[str, Any]:
    identity: dict[str, Any] = {"backbone": args.backbone, "weights": weights_identity(args.weights, args.backbone)}
    if args.weights == "none":
        identity["seed"] = args.seed  # random weights depend on the seed
    if args.trainable_blocks:
        identity["trainable_blocks"] = args.trainable_blocks  # the cache then holds the trunk's feature maps
    return identity


def make_trainer(args: argparse.Namespace, callbacks: list[pl.Callback]) -> pl.Trainer:
    """Lightning on the GPU when there is one; per-epoch metrics to RUN_DIR/training_log/metrics.csv;
    no checkpoints (the best head is kept in memory, the servable is saved at the end)."""
    return pl.Trainer(
        accelerator="auto",
        devices=1,
        max_epochs=args.epochs,
        callbacks=[*callbacks, TQDMProgressBar(refresh_rate=1)],
        logger=CSVLogger(args.out, name="training_log", version=""),
        enable_checkpointing=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
    )


def plain_metric_names(metrics: dict[str, Any]) -> dict[str, float]:
    """Quaterion names metrics after its TrainStage enum, which Python 3.11 formats as
    "TrainStage.VALIDATION": keep the plain stage names."""
    return {
        k.replace("TrainStage.VALIDATION", "validation").replace("TrainStage.TRAIN", "train"): round(float(v), 6)
        for k, v in metrics.items()
    }


def quiet_quaterion_debug_log() -> None:
    """Quaterion logs cache internals at DEBUG through loguru; users need INFO and above."""
    logger.remove()
    logger.add(sys.stderr, level="INFO")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = get_args_parser().parse_args(argv)
    check_args(args)
    quiet_quaterion_debug_log()
    splits = prepare_splits(args)
    class_ids = {name: i for i, name in enumerate(splits.classes.train)}
    pl.seed_everything(args.seed, workers=True)
    preprocessing = Preprocessing(input_size=args.input_size)
    identity = encoder_identity(args)
    cache, fingerprint = None, None
    if not args.no_cache:
        transform = repr(training_augmentation(args.input_size))
        copies = {"copies": args.augment_copies, "seed": args.seed, "transform": transform}
        fingerprint = cache_fingerprint(
            encoder=identity, preprocessing=preprocessing.to_dict(), train=splits.train, val=splits.val,
            augmentation=copies if args.augment_copies else None,
        )  # fmt: skip
        cache = CacheDirectory(args.cache_dir, fingerprint)
    # With the cache on, loaders must have no workers: Quaterion then caches labels too and
    # never decodes an image again after the fill (its "full cache").
    workers = 0 if cache else args.workers
    augment = training_augmentation(args.input_size) if args.augment else None
    train_set: Dataset = CarsDataset(splits.train, class_ids, augment)
    labels = [class_ids[name] for name in splits.train.classes]
    if args.augment_copies:
        train_set = AugmentedCopies(train_set, args.augment_copies, training_augmentation(args.input_size), args.seed)
        labels = train_set.labels
    sampler, batch_size = None, args.batch_size
    if args.sampler == "balanced":
        sampler = ClassBalancedSampler(labels, args.batch_size, args.images_per_class, args.seed)
        batch_size = sampler.batch_size
    train_loader = make_loader(train_set, batch_size, True, workers, sampler)
    model = CarsModel(
        backbone=args.backbone,
        weights=args.weights,
        preprocessing=preprocessing,
        lr=args.lr,
        mining=args.mining,
        margin=args.margin,
        cache=cache_config(str(cache.save_dir), args.cache_batch_size) if cache else None,
        trainable_blocks=args.trainable_blocks,
        backbone_lr=args.backbone_lr,
        loss=args.loss,
        num_classes=len(class_ids),
        xbm=XbmConfig(buffer_size=args.xbm_size, start_iteration=len(train_loader)) if args.xbm_size else None,
    )
    val_loader = (
        make_loader(CarsDataset(splits.val, class_ids), args.batch_size, False, workers) if splits.val else None
    )

    best = KeepBestHead(args.select_by)
    callbacks: list[pl.Callback] = [best, SeedAtFitStart(args.seed)]
    if val_loader is not None:
        monitor, higher_is_better = SELECT_BY[args.select_by]
        callbacks.append(EarlyStopping(monitor, patience=args.patience, mode="max" if higher_is_better else "min"))
    if cache:
        callbacks.append(PublishCache(cache))
    trainer = make_trainer(args, callbacks)
    started = time.perf_counter()
    try:
        Quaterion.fit(model, trainer, train_loader, val_loader)
    finally:
        if cache and not cache.ready:  # a failed fill leaves nothing half-written behind
            shutil.rmtree(cache.save_dir, ignore_errors=True)
    train_seconds = time.perf_counter() - started
    if best.diverged or (val_loader is not None and best.best_epoch is None):
        raise UsageError("training diverged (non-finite loss); try a lower --lr, other --weights or another --backbone")

    servable = Path(args.out) / "servable"
    write_dir_atomic(servable, model.save_servable)
    run = {
        "model_version": directory_sha256(servable),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "args": vars(args),
        "data": {"root": str(Path(args.data).resolve()), "dataset": args.dataset, "images": len(splits.images)},
        "classes": {"train": list(splits.classes.train), "holdout": list(splits.classes.holdout)},
        "images": {"train": len(splits.train), "val": len(splits.val), "train_items": len(train_set)},
        "encoder": {**identity, "embedding_size": model.encoder.embedding_size},
        "embedding_size": model.model.head.output_size,
        "preprocessing": preprocessing.to_dict(),
        "cache": {"fingerprint": fingerprint, "dir": str(cache.final) if cache else None},
        "metrics": {
            "last": plain_metric_names(trainer.callback_metrics),
            "best_epoch": best.best_epoch,
            "best_validation_loss": None if best.best_epoch is None else round(best.best_loss, 6),
            "selected_by": args.select_by,
            "best_validation_score": None if best.best_epoch is None else round(best.best_score, 6),
            "epochs_run": trainer.current_epoch,
            "train_seconds": round(train_seconds, 1),
        },
        "versions": versions(),
        "device": str(next(model.model.parameters()).device),
    }
    if model.base_top_state is not None:  # evaluation's baseline: the pretrained top stages
        write_file_atomic(Path(args.out) / BASE_TOP_FILE, lambda f: torch.save(model.base_top_state, f))
    write_json_atomic(Path(args.out) / "run.json", run)
    print(
        f"Saved {servable} (model version {run['model_version'][:12]}); trained on "
        f"{len(splits.classes.train)} classes / {len(splits.train)} images"
        f"{f' (+ {args.augment_copies} augmented views each)' if args.augment_copies else ''}, held out "
        f"{len(splits.classes.holdout)} classes; best validation {args.select_by} "
        f"{run['metrics']['best_validation_score']} at epoch {best.best_epoch} of {trainer.current_epoch}"
    )
    return run


if __name__ == "__main__":
    sys.exit(run_cli(main))
