"""`CarsModel`: what Quaterion trains — frozen `CarsEncoder` + `SkipConnectionHead` + `TripletLoss`."""

from __future__ import annotations


from train import compat  # noqa: F401  (must precede quaterion imports)
import torch
from quaterion import TrainableModel
from quaterion.eval.attached_metric import AttachedMetric
from quaterion.eval.group import RetrievalRPrecision
from quaterion.loss import SimilarityLoss, TripletLoss
from quaterion.train.cache import CacheConfig, CacheType
from quaterion_models.heads import EncoderHead, SkipConnectionHead
from quaterion_models.model import DEFAULT_ENCODER_KEY

from train.encoders import CarsEncoder
from train.errors import UsageError
from train.preprocessing import Preprocessing

MINING = ("hard", "semi_hard", "all")
# "all" and "semi_hard" mining build batch x batch x batch tensors: ~47 GB at batch 1024.
MAX_CUBIC_MINING_BATCH = 512


def check_mining(mining: str, batch_size: int) -> None:
    if mining not in MINING:
        raise UsageError(f"Unknown mining {mining!r}. Choose one of: {', '.join(MINING)}")
    if mining != "hard" and batch_size > MAX_CUBIC_MINING_BATCH:
        raise UsageError(
            f"--mining {mining} needs memory cubic in the batch size (~47 GB at 1024); "
            f"use --batch-size <= {MAX_CUBIC_MINING_BATCH} or --mining hard"
        )


class CarsModel(TrainableModel):
    """Quaterion's hooks, configured as in its Stanford Cars tutorial."""

    def __init__(
        self,
        *,
        backbone: str,
        weights: str,
        preprocessing: Preprocessing,
        lr: float = 3e-3,
        mining: str = "hard",
        margin: float = 0.5,
        dropout: float = 0.1,
        cache: CacheConfig | None = None,
    ):
        # Quaterion's __init__ calls the configure_* hooks, so they read these attributes.
        self._backbone, self._weights, self._preprocessing = backbone, weights, preprocessing
        self._lr = lr
        self._mining = mining
        self._margin = margin
        self._dropout = dropout
        self._cache_settings = cache
        super().__init__()

    def configure_encoders(self) -> CarsEncoder:
        return CarsEncoder.create(self._backbone, self._weights, self._preprocessing)

    @property
    def encoder(self) -> CarsEncoder:
        return self.model.encoders[DEFAULT_ENCODER_KEY]

    def configure_head(self, input_embedding_size: int) -> EncoderHead:
        return SkipConnectionHead(input_embedding_size, dropout=self._dropout)

    def configure_loss(self) -> SimilarityLoss:
        return TripletLoss(mining=self._mining, margin=self._margin)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        return torch.optim.Adam(trainable, lr=self._lr)

    def configure_caches(self) -> CacheConfig | None:
        return self._cache_settings

    def configure_metrics(self) -> AttachedMetric:
        return AttachedMetric("rrp", RetrievalRPrecision(), prog_bar=True, on_epoch=True, on_step=False)


def cache_config(save_dir: str, batch_size: int) -> CacheConfig:
    """Embeddings of the frozen encoder computed once (on GPU when there is one), then reused.

    The fill runs in the main process: Quaterion learns the labels of its "full cache" while
    reading the dataset, and labels learnt inside worker processes would be lost.
    """
    return CacheConfig(cache_type=CacheType.AUTO, save_dir=save_dir, batch_size=batch_size, num_workers=0)
