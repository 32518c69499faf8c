"""Epoch checkpoints of an unfinished run, so an interrupted 45-minute fine-tune is not lost.

While training, RUN_DIR/checkpoints/ holds Lightning's `last.ckpt` (head, optimizer, callbacks'
state, loop counters) and `settings.json` (the settings it was trained with). `--resume`
continues from there with the same settings; a finished run deletes the folder. The encoder
cache is keyed by its own fingerprint, so a resumed run reuses it instead of filling it again.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from core.errors import UsageError
from core.files import write_json_atomic
from train.config import TrainConfig, flag

CHECKPOINT_DIR = "checkpoints"
LAST = "last.ckpt"
SETTINGS = "settings.json"
# Settings a resumed run may change: where and how it runs, and how long it goes on.
MAY_CHANGE = {"run", "overwrite", "resume", "epochs", "patience", "loader_workers", "cache_batch_size", "cache_dir"}


class RunCheckpoints:
    def __init__(self, config: TrainConfig):
        self.config = config
        self.dir = Path(config.run) / CHECKPOINT_DIR
        self.last = self.dir / LAST

    def _settings(self, config: TrainConfig) -> dict[str, Any]:
        return {k: v for k, v in config.to_json().items() if k not in MAY_CHANGE and k != "set_by_user"}

    def resume_from(self) -> str | None:
        """The checkpoint to continue from with --resume (checked), else None; refuses to start a
        fresh run over an interrupted one unless --overwrite says so."""
        if not self.config.resume:
            if self.last.is_file() and not self.config.overwrite:
                raise UsageError(
                    f"{self.config.run} holds an interrupted training ({self.last}): pass --resume to continue "
                    "it or --overwrite to start over"
                )
            shutil.rmtree(self.dir, ignore_errors=True)
            return None
        if not self.last.is_file():
            raise UsageError(
                f"nothing to resume in {self.config.run} (no {CHECKPOINT_DIR}/{LAST}); start without --resume"
            )
        try:
            saved = json.loads((self.dir / SETTINGS).read_text())
        except (OSError, ValueError):
            raise UsageError(f"{self.dir / SETTINGS} is missing or unreadable: cannot check the settings") from None
        now = self._settings(self.config)
        changed = sorted(k for k in saved.keys() | now.keys() if saved.get(k) != now.get(k))
        if changed:
            name = changed[0]
            raise UsageError(
                f"--resume needs the interrupted run's settings: --{flag(name)} was {saved.get(name)!r}, "
                f"now {now.get(name)!r}"
            )
        return str(self.last)

    def callback(self) -> pl.Callback:
        """Writes last.ckpt after every epoch (and settings.json once, before training)."""
        write_json_atomic(self.dir / SETTINGS, self._settings(self.config))
        return SaveLastEpoch(self.last)

    def remove(self) -> None:
        """A finished run needs no checkpoints: its servable is the result."""
        shutil.rmtree(self.dir, ignore_errors=True)


class SaveLastEpoch(pl.Callback):
    """Saves the whole training state after every epoch (validation and early stopping included)
    to one file, atomically: Lightning 1.9 writes checkpoints in place, and a run killed mid-write
    would leave a torn file that --resume cannot read."""

    def __init__(self, path: Path):
        self.path = path

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or trainer.should_stop:  # a stopped run is finished, not resumable
            return
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        trainer.save_checkpoint(tmp)
        os.replace(tmp, self.path)
