"""Loading a saved `SimilarityModel` (servables of the earlier layout too), and a run's base model.

quaterion-models records each part's module and class in the servable's config.json and imports
them on load. Servables saved by the earlier layout name `train.encoders` / `train.heads`; those
modules now live in `core`, and a serving environment has no `train` package at all. Before
loading such a servable, the old names are pointed at the new modules (a load-time alias, nothing
rewritten on disk, so its model version is unchanged).

`base_model` rebuilds the untuned network a run started from: what evaluation compares against,
and what the comparison page serves beside the tuned model.
"""

from __future__ import annotations

import importlib
import json
import pickle
import sys
from pathlib import Path

import torch
from quaterion_models import SimilarityModel
from quaterion_models.heads import EmptyHead, EncoderHead

from core.errors import UsageError
from core.heads import TopStagesHead

# Module names of the previous layout -> where those classes live now.
LEGACY_MODULES = {"train.encoders": "core.encoders", "train.heads": "core.heads"}


def _named_modules(config: object) -> set[str]:
    """Every {"module": ...} value anywhere in a quaterion-models config."""
    if isinstance(config, dict):
        found = {config["module"]} if isinstance(config.get("module"), str) else set()
        for value in config.values():
            found |= _named_modules(value)
        return found
    if isinstance(config, list):
        return set().union(*(_named_modules(value) for value in config)) if config else set()
    return set()


def alias_legacy_modules(servable_dir: str | Path) -> None:
    """Makes the old module names a servable refers to importable as their new homes."""
    config = json.loads((Path(servable_dir) / "config.json").read_text())
    for old in _named_modules(config) & LEGACY_MODULES.keys():
        if old not in sys.modules:
            sys.modules[old] = importlib.import_module(LEGACY_MODULES[old])


def load_servable(servable_dir: str | Path) -> SimilarityModel:
    alias_legacy_modules(servable_dir)
    return SimilarityModel.load(str(servable_dir))


def base_head(tuned: SimilarityModel, base_top_file: Path) -> EncoderHead:
    """The untuned network's head: nothing for a frozen backbone, the pretrained top stages
    (RUN_DIR/base_top.pt, loaded weights-only) when training fine-tuned them."""
    head = tuned.head
    if not isinstance(head, TopStagesHead):
        return EmptyHead(head.input_embedding_size)
    base = TopStagesHead(**{**head.get_config_dict(), "skip": False, "pretrained_branch": False})
    try:
        base.top.load_state_dict(torch.load(base_top_file, map_location="cpu", weights_only=True))
    except (OSError, RuntimeError, pickle.UnpicklingError) as error:
        raise UsageError(f"cannot read the run's baseline {base_top_file}: {error}") from None
    return base


def base_model(tuned: SimilarityModel, base_top_file: Path) -> SimilarityModel:
    """The pretrained network the run started from, with the same encoder and preprocessing."""
    return SimilarityModel(encoders=tuned.encoders, head=base_head(tuned, base_top_file))
