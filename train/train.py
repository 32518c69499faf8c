"""Train a car-similarity model and save it as a servable.

    python -m train.train --data DIR --run runs/NAME [--backbone resnet152] [--weights default]

Writes RUN_DIR/servable/ (a quaterion-models `SimilarityModel`) and RUN_DIR/run.json (settings,
preprocessing, class split, cache fingerprint, metrics, versions, model version) through
`core.run.Run`. Every setting, its default and its checks live in `train/config.py`. While it
trains, RUN_DIR/checkpoints/ holds the last epoch: `--resume` continues an interrupted run.
"""

from __future__ import annotations

import logging
import platform
import shutil
import sys
import time
import warnings
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, NamedTuple

import pytorch_lightning as pl
import torch
from loguru import logger
from pytorch_lightning.callbacks import EarlyStopping, TQDMProgressBar
from pytorch_lightning.loggers import CSVLogger
from quaterion import Quaterion
from quaterion.train.xbm import XbmConfig
from torch.utils.data import Dataset

from core.cli import progress_shown
from core.encoders import weights_identity
from core.ensemble import is_ensemble, member_preprocessings, preprocessing_for
from core.errors import UsageError, run_cli
from core.preprocessing import Preprocessing, training_augmentation
from core.run import BASE_TOP_FILE, Run
from train.cache import CacheDirectory, PublishCache, cache_fingerprint
from train.callbacks import SELECT_BY_METRIC, KeepBestHead, SeedAtFitStart, WarmUpFrozenBackbone
from train.checkpoints import RunCheckpoints
from train.config import TrainConfig, get_args_parser  # noqa: F401  (get_args_parser: this CLI's parser)
from train.data import (
    AugmentedCopies,
    CarsDataset,
    ClassBalancedSampler,
    ClassSplit,
    ImageList,
    MIN_TRAIN_PER_CLASS,
    MIN_VAL_PER_CLASS,
    check_trainable,
    drop_unreadable,
    load_image_list,
    make_loader,
    split_classes,
    split_validation,
)
from train import recipes
from train.model import CarsModel, cache_config

PACKAGES = ("torch", "torchvision", "quaterion", "quaterion-models", "pytorch-lightning", "torchmetrics")


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    found.update({name: metadata.version(name) for name in PACKAGES})
    return found


class Splits(NamedTuple):
    images: ImageList  # everything under --data
    classes: ClassSplit
    train: ImageList  # images of the training classes used for gradient steps
    val: ImageList  # held-back images of the training classes, for early stopping


def prepare_splits(config: TrainConfig) -> Splits:
    images = drop_unreadable(load_image_list(config.data, config.dataset), config.skip_bad_images)
    classes = split_classes(images.class_names, config.holdout_fraction, config.seed, config.fold, config.split_by)
    train_images = images.only(set(classes.train))
    check_trainable(train_images)
    train, val = split_validation(train_images, config.val_fraction, config.seed)
    if not val and config.val_fraction > 0:
        print(
            f"warning: no validation images (each class needs {MIN_VAL_PER_CLASS + MIN_TRAIN_PER_CLASS}+ photos to "
            "give some): early stopping is off and the last epoch is kept",
            file=sys.stderr,
        )
    return Splits(images, classes, train, val)


def encoder_identity(config: TrainConfig) -> dict[str, Any]:
    identity: dict[str, Any] = {
        "backbone": config.backbone, "weights": weights_identity(config.weights, config.backbone)
    }  # fmt: skip
    if config.weights == "none":
        identity["seed"] = config.seed  # random weights depend on the seed
    if config.trainable_blocks:
        identity["trainable_blocks"] = config.trainable_blocks  # the cache then holds the trunk's feature maps
    if config.flip_average:
        identity["flip_average"] = True  # the cache then holds mirror-averaged features
    if is_ensemble(config.backbone):  # each member's own preprocessing, beyond the shared canvas
        identity["members"] = [
            pre.to_dict()
            for pre in member_preprocessings(config.backbone, config.weights, config.input_size, config.input_aspect)
        ]
    return identity


def encoder_cache(config: TrainConfig, splits: Splits, preprocessing: Preprocessing) -> CacheDirectory | None:
    """The fingerprinted cache directory of this run's frozen encoder outputs (None with --no-cache)."""
    if config.no_cache:
        return None
    transform = repr(training_augmentation(preprocessing.shape))
    copies = {"copies": config.augment_copies, "seed": config.seed, "transform": transform}
    fingerprint = cache_fingerprint(
        encoder=encoder_identity(config), preprocessing=preprocessing.to_dict(), train=splits.train, val=splits.val,
        augmentation=copies if config.augment_copies else None,
    )  # fmt: skip
    return CacheDirectory(config.cache_dir, fingerprint)


class Loaders(NamedTuple):
    train: Any
    val: Any | None
    train_items: int


def make_loaders(
    config: TrainConfig, splits: Splits, class_ids: dict[str, int], shape: tuple[int, int], cached: bool
) -> Loaders:
    # With the cache on, loaders must have no workers: Quaterion then caches labels too and
    # never decodes an image again after the fill (its "full cache").
    workers = 0 if cached else config.loader_workers
    augment = training_augmentation(shape) if config.augment else None
    train_set: Dataset = CarsDataset(splits.train, class_ids, augment)
    labels = [class_ids[name] for name in splits.train.classes]
    if config.augment_copies:
        views = training_augmentation(shape)
        train_set = AugmentedCopies(train_set, config.augment_copies, views, config.seed)
        labels = train_set.labels
    sampler, batch_size = None, config.batch_size
    if config.sampler == "balanced":
        sampler = ClassBalancedSampler(labels, config.batch_size, config.images_per_class, config.seed)
        batch_size = sampler.batch_size
    train = make_loader(train_set, batch_size, True, workers, sampler)
    val = make_loader(CarsDataset(splits.val, class_ids), config.batch_size, False, workers) if splits.val else None
    return Loaders(train, val, len(train_set))


def make_model(
    config: TrainConfig, preprocessing: Preprocessing, cache: CacheDirectory | None, num_classes: int, steps: int
) -> CarsModel:
    return CarsModel(
        backbone=config.backbone,
        weights=config.weights,
        preprocessing=preprocessing,
        input_size=config.input_size,
        lr=config.lr,
        mining=config.mining,
        margin=config.margin,
        cache=cache_config(str(cache.save_dir), config.cache_batch_size) if cache else None,
        trainable_blocks=config.trainable_blocks,
        backbone_lr=config.backbone_lr,
        loss=config.loss,
        num_classes=num_classes,
        xbm=XbmConfig(buffer_size=config.xbm_size, start_iteration=steps) if config.xbm_size else None,
        pretrained_branch=config.pretrained_branch,
        head=config.head,
        flip_average=config.flip_average,
        whitening_shrinkage=config.whitening_shrinkage,
        feature_power=config.feature_power,
        optimizer=config.optimizer,
        weight_decay=config.weight_decay,
        proxy_lr=config.proxy_lr,
        proxy_alpha=config.proxy_alpha,
    )


class ProgressBar(TQDMProgressBar):
    """Lightning's bar with readable metric names and without the logger's `v_num`."""

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        return {name.replace("TrainStage.VALIDATION", "val").replace("TrainStage.TRAIN", "train"): value
                for name, value in metrics.items()}  # fmt: skip


def make_trainer(config: TrainConfig, callbacks: list[pl.Callback]) -> pl.Trainer:
    """Lightning on the GPU when there is one; per-epoch metrics to RUN_DIR/training_log/metrics.csv;
    the last epoch checkpointed to RUN_DIR/checkpoints/ (for --resume) by a callback in `callbacks`;
    a progress bar only on a terminal (see core.cli.show_progress)."""
    bar = progress_shown()
    return pl.Trainer(
        accelerator="auto",
        devices=1,
        max_epochs=1 if config.head == "whitening" else config.epochs,  # fitted in one pass
        callbacks=[*callbacks, ProgressBar(refresh_rate=1)] if bar else callbacks,
        enable_progress_bar=bar,
        # A resumed run logs beside the first part's metrics.csv instead of deleting it.
        logger=CSVLogger(config.run, name="training_log", version="resumed" if config.resume else ""),
        enable_checkpointing=False,  # ours (SaveLastEpoch) is the one checkpoint; Lightning's would be a second copy
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


def quiet_library_logs() -> None:
    """Quaterion logs cache internals at DEBUG through loguru; users need INFO and above. Lightning
    announces GPU/TPU/IPU/HPU availability at INFO on every start: warnings only."""
    logger.remove()
    logger.add(sys.stderr, level="INFO")
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    logging.getLogger("lightning_fabric").setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    config = TrainConfig.from_argv(argv)
    return train(config)


def train(config: TrainConfig) -> dict[str, Any]:
    """Trains as `config` says and writes the run; returns its run.json."""
    checkpoints = RunCheckpoints(config)
    resume_from = checkpoints.resume_from()
    if resume_from:
        print(f"Resuming from {resume_from}", file=sys.stderr)
    quiet_library_logs()
    splits = prepare_splits(config)
    class_ids = {name: i for i, name in enumerate(splits.classes.train)}
    pl.seed_everything(config.seed, workers=True)
    preprocessing = preprocessing_for(config.backbone, config.weights, config.input_size, config.input_aspect)
    cache = encoder_cache(config, splits, preprocessing)
    loaders = make_loaders(config, splits, class_ids, preprocessing.shape, cached=cache is not None)
    model = make_model(config, preprocessing, cache, len(class_ids), len(loaders.train))

    best = KeepBestHead(config.select_by)
    callbacks: list[pl.Callback] = [best, SeedAtFitStart(config.seed), checkpoints.callback()]
    if config.warmup_epochs and config.trainable_blocks:
        callbacks.append(WarmUpFrozenBackbone(config.warmup_epochs))
    if loaders.val is not None:
        monitor, higher_is_better = SELECT_BY_METRIC[config.select_by]
        callbacks.append(EarlyStopping(monitor, patience=config.patience, mode="max" if higher_is_better else "min"))
    publish = PublishCache(cache) if cache else None
    if publish:
        callbacks.append(publish)
    trainer = make_trainer(config, callbacks)
    if config.head == "whitening":  # fitted, not optimised: Lightning's no-optimizer warnings are expected
        expected = r".*(configure_optimizers. returned .None|training_step. returned .None)"
        warnings.filterwarnings("ignore", message=expected)
    cache_reused = bool(cache and cache.ready)
    started = time.perf_counter()
    try:
        Quaterion.fit(model, trainer, loaders.train, loaders.val, ckpt_path=resume_from)
    finally:
        if cache and not cache.ready:  # a failed fill leaves nothing half-written behind
            shutil.rmtree(cache.save_dir, ignore_errors=True)
    train_seconds = time.perf_counter() - started
    if best.diverged or (loaders.val is not None and best.best_epoch is None):
        raise UsageError("training diverged (non-finite loss); try a lower --lr, other --weights or another --backbone")

    info = {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "args": config.to_json(),
        "recipe": recipes.describe(config.recipe, config.backbone, config.user_set),
        "data": {"root": str(Path(config.data).resolve()), "dataset": config.dataset, "images": len(splits.images)},
        "classes": {"train": list(splits.classes.train), "holdout": list(splits.classes.holdout)},
        "images": {"train": len(splits.train), "val": len(splits.val), "train_items": loaders.train_items},
        "encoder": {**encoder_identity(config), "embedding_size": model.encoder.embedding_size},
        "embedding_size": model.model.head.output_size,
        "preprocessing": preprocessing.to_dict(),
        "cache": {
            "fingerprint": cache.fingerprint if cache else None,
            "dir": str(cache.final) if cache else None,
            "reused": cache_reused,
        },
        "metrics": {
            "last": plain_metric_names(trainer.callback_metrics),
            "best_epoch": best.best_epoch,
            "best_validation_loss": None if best.best_epoch is None else round(best.best_loss, 6),
            "selected_by": config.select_by,
            "best_validation_score": None if best.best_epoch is None else round(best.best_score, 6),
            "epochs_run": trainer.current_epoch,
            "train_seconds": round(train_seconds, 1),
            # Of which the encoder cache (filled, or read back when reused) before the first epoch:
            "cache_seconds": round(publish.filled_at - started, 1) if publish and publish.filled_at else None,
            "resumed": resume_from is not None,
        },
        "versions": versions(),
        "device": str(next(model.model.parameters()).device),
    }
    extra = {}
    if model.base_top_state is not None:  # evaluation's baseline: the pretrained top stages
        extra[BASE_TOP_FILE] = lambda f: torch.save(model.base_top_state, f)
    run = Run.write(config.run, model.save_servable, info, extra)
    checkpoints.remove()
    print(
        f"Saved {run.servable_dir} (model version {run.model_version[:12]}); trained on "
        f"{len(splits.classes.train)} classes / {len(splits.train)} images"
        f"{f' (+ {config.augment_copies} augmented views each)' if config.augment_copies else ''}, held out "
        f"{len(splits.classes.holdout)} classes; best validation {config.select_by} "
        f"{info['metrics']['best_validation_score']} at epoch {best.best_epoch} of {trainer.current_epoch}"
    )
    return run.info


def cli() -> int:
    """The console script's entry point (pyproject.toml [project.scripts])."""
    return run_cli(main)


if __name__ == "__main__":
    sys.exit(cli())
