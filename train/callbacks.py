"""Lightning callbacks of a training run: keep the best head, seed after the cache fill, and hold
the backbone stages still during a warm-up."""

from __future__ import annotations

import copy
import math
from typing import Any

import pytorch_lightning as pl
import torch
from quaterion.utils.enums import TrainStage

VAL_LOSS = f"{TrainStage.VALIDATION}_loss"
VAL_RRP = f"rrp_{TrainStage.VALIDATION}"
# --select-by: (Lightning's metric name, whether larger is better)
SELECT_BY_METRIC = {"loss": (VAL_LOSS, False), "r_precision": (VAL_RRP, True)}


class KeepBestHead(pl.Callback):
    """Restores the head of the epoch with the best validation score when training ends: the
    lowest loss, or the highest R-precision (`select_by`), on held-back images of the training
    classes.

    Also stops training at the first non-finite training loss (`diverged`). Its state travels in
    Lightning's checkpoints, so a resumed run still knows the best epoch before the interruption.
    """

    def __init__(self, select_by: str = "loss") -> None:
        self.monitor, self.higher_is_better = SELECT_BY_METRIC[select_by]
        self.diverged = False
        self.best_score = -math.inf if self.higher_is_better else math.inf
        self.best_loss = math.inf  # the validation loss of the kept epoch
        self.best_epoch: int | None = None
        self.best_state: dict[str, torch.Tensor] | None = None

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx: int):
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        # No tensor when nothing is optimised (a whitening head is fitted, not trained).
        if isinstance(loss, torch.Tensor) and not torch.isfinite(loss).all():
            self.diverged = trainer.should_stop = True

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
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

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.best_state is not None:
            pl_module.model.head.load_state_dict(self.best_state)

    def state_dict(self) -> dict[str, Any]:
        return {
            "diverged": self.diverged, "best_score": self.best_score, "best_loss": self.best_loss,
            "best_epoch": self.best_epoch, "best_state": self.best_state,
        }  # fmt: skip

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.__dict__.update(state_dict)


class SeedAtFitStart(pl.Callback):
    """Re-seeds after Quaterion's cache step, so a filled and a reused cache train identically."""

    def __init__(self, seed: int):
        self.seed = seed

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pl.seed_everything(self.seed, workers=True)


class WarmUpFrozenBackbone(pl.Callback):
    """Keeps the fine-tuned backbone stages frozen for the first `epochs` epochs (--warmup-epochs):
    the new head and the loss's proxies start random, and their first gradients would otherwise
    flow into, and disturb, the pretrained stages (Proxy-Anchor's recipe warms up the same way).

    Freezing is `requires_grad` off: the stages get no gradient, so Adam/AdamW skip them (no
    update, no weight decay) while the optimiser, built once, still holds them for after the
    warm-up. Their BatchNorm layers stay in eval mode throughout (`TopStagesHead.train`). The
    decision is made from the epoch number at each epoch's start, so a resumed run (whose epoch
    counter comes back from the checkpoint) freezes or not exactly as the interrupted one would.
    """

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        trainable = trainer.current_epoch >= self.epochs
        for parameter in pl_module.backbone_stages():
            parameter.requires_grad_(trainable)
