"""Loading a saved `SimilarityModel`, including servables saved before `core/` existed.

quaterion-models records each part's module and class in the servable's config.json and imports
them on load. Servables saved by the earlier layout name `train.encoders` / `train.heads`; those
modules now live in `core`, and a serving environment has no `train` package at all. Before
loading such a servable, the old names are pointed at the new modules (a load-time alias, nothing
rewritten on disk, so its model version is unchanged).
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

from quaterion_models import SimilarityModel

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
