"""`CarsModel`: what Quaterion trains — a frozen `CarsEncoder` + a trainable head + a similarity loss.

The seed recipe is Quaterion's Stanford Cars tutorial: frozen backbone, `SkipConnectionHead`,
`TripletLoss`. `trainable_blocks=N` moves the backbone's last N stages into the head
(`TopStagesHead`), trained at `backbone_lr`; other Quaterion losses and its cross-batch memory
are options, and so is Proxy-Anchor (`--loss proxy_anchor`), whose per-class proxies are
parameters of the loss, optimised in a group of their own at `proxy_lr`. `head="whitening"`
replaces the trained head by `WhiteningHead`, fitted in closed form on the one epoch's (cached)
encoder outputs: nothing is optimised (the whitened recipe).
"""

from __future__ import annotations

import torch
from quaterion import TrainableModel
from quaterion.eval.attached_metric import AttachedMetric
from quaterion.eval.group import RetrievalRPrecision
from quaterion.loss import (
    ArcFaceLoss,
    CircleLoss,
    FastAPLoss,
    OnlineContrastiveLoss,
    SimilarityLoss,
    SoftmaxLoss,
    TripletLoss,
)
from quaterion.train.cache import CacheConfig, CacheType
from quaterion.train.xbm import XbmConfig
from quaterion_models.heads import EncoderHead, SkipConnectionHead
from quaterion_models.model import DEFAULT_ENCODER_KEY

from core.encoders import CarsEncoder
from core.ensemble import EnsembleEncoder, create_encoder
from core.errors import UsageError
from core.heads import TopStagesHead, WhiteningHead
from core.preprocessing import Preprocessing
from train.config import LOSSES


class CarsModel(TrainableModel):
    """Quaterion's hooks, configured as in its Stanford Cars tutorial."""

    def __init__(
        self,
        *,
        backbone: str,
        weights: str,
        preprocessing: Preprocessing,
        input_size: int | None = None,
        lr: float = 3e-3,
        mining: str = "hard",
        margin: float | None = None,
        dropout: float = 0.1,
        cache: CacheConfig | None = None,
        trainable_blocks: int = 0,
        backbone_lr: float = 1e-4,
        loss: str = "triplet",
        num_classes: int = 0,
        xbm: XbmConfig | None = None,
        pretrained_branch: bool = False,
        head: str = "skip",
        flip_average: bool = False,
        whitening_shrinkage: float = 0.3,
        feature_power: float = 1.0,
        optimizer: str = "adam",
        weight_decay: float = 0.0,
        proxy_lr: float = 1e-2,
        proxy_alpha: float = 32.0,
    ):
        # Quaterion's __init__ calls the configure_* hooks, so they read these attributes.
        self._backbone, self._weights, self._preprocessing = backbone, weights, preprocessing
        self._input_size = input_size  # an ensemble's members' sizes derive from it (core/ensemble.py)
        self._lr, self._backbone_lr = lr, backbone_lr
        self._mining = mining
        self._margin = margin
        self._dropout = dropout
        self._cache_settings = cache
        self._trainable_blocks = trainable_blocks
        self._loss_name, self._num_classes = loss, num_classes
        self._xbm = xbm
        self._pretrained_branch = pretrained_branch
        self._head_name, self._flip_average, self._shrinkage = head, flip_average, whitening_shrinkage
        self._feature_power = feature_power
        self._optimizer, self._weight_decay = optimizer, weight_decay
        self._proxy_lr, self._proxy_alpha = proxy_lr, proxy_alpha
        # --head whitening: the training embeddings and class ids of the one pass it is fitted on.
        self._seen: list[tuple[torch.Tensor, torch.Tensor]] = []
        # configure_encoders leaves the pretrained top stages here for configure_head (a dict, so
        # that Lightning does not register them as a second copy of the head's parameters).
        self._pretrained: dict[str, torch.nn.Module | int] = {}
        self.base_top_state: dict[str, torch.Tensor] | None = None
        super().__init__()

    def configure_encoders(self) -> CarsEncoder | EnsembleEncoder:
        if not self._trainable_blocks:
            return create_encoder(
                self._backbone, self._weights, self._preprocessing, self._flip_average, self._input_size,
                self._feature_power,
            )  # fmt: skip
        encoder, top, size = CarsEncoder.create_split(
            self._backbone, self._weights, self._preprocessing, self._trainable_blocks
        )
        self._pretrained.update(top=top, size=size)
        return encoder

    @property
    def encoder(self) -> CarsEncoder | EnsembleEncoder:
        return self.model.encoders[DEFAULT_ENCODER_KEY]

    def configure_head(self, input_embedding_size: int) -> EncoderHead:
        if self._head_name == "whitening":
            return WhiteningHead(input_embedding_size, shrinkage=self._shrinkage)
        if not self._trainable_blocks:
            return SkipConnectionHead(input_embedding_size, dropout=self._dropout)
        head = TopStagesHead(
            input_embedding_size,
            backbone=self._backbone,
            trainable_blocks=self._trainable_blocks,
            output_size=self._pretrained["size"],
            dropout=self._dropout,
            pretrained_branch=self._pretrained_branch,
        )
        pretrained = self._pretrained.pop("top").state_dict()
        head.load_pretrained_top(pretrained)
        self.base_top_state = {name: tensor.clone() for name, tensor in pretrained.items()}
        return head

    def configure_loss(self) -> SimilarityLoss:
        return make_loss(
            self._loss_name, self._margin, self._mining, self.model.head.output_size, self._num_classes,
            proxy_alpha=self._proxy_alpha,
        )  # fmt: skip

    def backbone_stages(self) -> list[torch.nn.Parameter]:
        """The fine-tuned backbone stages' parameters (none with a frozen backbone): what trains at
        `backbone_lr` and what `train.callbacks.WarmUpFrozenBackbone` holds still at first."""
        head = self.model.head
        return list(head.top.parameters()) if isinstance(head, TopStagesHead) else []

    def proxies(self) -> list[torch.nn.Parameter]:
        """Proxy-Anchor's per-class proxies. Quaterion's PytorchMetricLearningWrapper keeps the
        pytorch-metric-learning loss as a submodule, so they are the wrapper's parameters; it adds
        no optimiser of its own: this model's configure_optimizers gives them their group."""
        return list(self.loss.parameters()) if self._loss_name == "proxy_anchor" else []

    @property
    def fitted_in_closed_form(self) -> bool:
        return isinstance(self.model.head, WhiteningHead)

    def training_step(self, batch, batch_idx: int, **kwargs):
        """Quaterion's step, except for a whitening head: it collects the (cached) encoder outputs
        of the epoch and is fitted on them after the last batch, before validation runs."""
        if not self.fitted_in_closed_form:
            return super().training_step(batch, batch_idx, **kwargs)
        features, targets = batch
        with torch.no_grad():
            self._seen.append((self.model(features).cpu(), targets["groups"].cpu()))  # unfitted head = identity
        if batch_idx == self.trainer.num_training_batches - 1:
            embeddings, labels = (torch.cat(parts) for parts in zip(*self._seen, strict=True))
            self._seen.clear()
            try:
                self.model.head.fit(embeddings, labels)
            except ValueError as error:
                raise UsageError(f"--head whitening: {error}") from None
        return None  # nothing to optimise

    def configure_optimizers(self) -> torch.optim.Optimizer | None:
        if self.fitted_in_closed_form:
            return None
        backbone_params, proxies = self.backbone_stages(), self.proxies()
        own_group = {id(p) for p in [*backbone_params, *proxies]}
        # The loss may learn too: ArcFace's and Softmax's class centres (at the head's rate).
        rest = [p for p in [*self.model.parameters(), *self.loss.parameters()] if id(p) not in own_group]
        groups = [{"params": [p for p in rest if p.requires_grad], "lr": self._lr}]
        # All backbone stages, even while a warm-up holds them frozen (requires_grad False): the
        # optimiser is built once, so they must be in it to learn once the warm-up ends.
        if backbone_params:
            groups.append({"params": backbone_params, "lr": self._backbone_lr})
        if proxies:
            groups.append({"params": proxies, "lr": self._proxy_lr})
        if self._optimizer == "adamw":
            return torch.optim.AdamW(groups, weight_decay=self._weight_decay)
        return torch.optim.Adam(groups)

    def configure_caches(self) -> CacheConfig | None:
        return self._cache_settings

    def configure_xbm(self) -> XbmConfig | None:
        return self._xbm

    def configure_metrics(self) -> AttachedMetric:
        return AttachedMetric("rrp", RetrievalRPrecision(), prog_bar=True, on_epoch=True, on_step=False)


def make_loss(
    name: str, margin: float | None, mining: str, embedding_size: int, num_classes: int, proxy_alpha: float = 32.0
) -> SimilarityLoss:
    """The loss named by --loss; `margin=None` keeps each loss's own default margin."""
    margin_kw = {} if margin is None else {"margin": margin}
    if name == "triplet":
        return TripletLoss(mining=mining, margin=0.5 if margin is None else margin)  # 0.5: the seed recipe's
    if name == "arcface":
        return ArcFaceLoss(embedding_size, num_classes, **margin_kw)
    if name == "softmax":
        return SoftmaxLoss(embedding_size, num_classes)
    if name == "circle":
        return CircleLoss(**margin_kw)
    if name == "online_contrastive":
        return OnlineContrastiveLoss(mining="all" if mining == "all" else "hard", **margin_kw)
    if name == "fast_ap":
        return FastAPLoss()
    if name == "multi_similarity":
        return multi_similarity_loss()
    if name == "proxy_anchor":
        return proxy_anchor_loss(num_classes, embedding_size, 0.1 if margin is None else margin, proxy_alpha)
    raise UsageError(f"Unknown loss {name!r}. Choose one of: {', '.join(LOSSES)}")


def multi_similarity_loss() -> SimilarityLoss:
    """Wang et al.'s multi-similarity loss and miner (CVPR 2019), from pytorch-metric-learning
    through Quaterion's wrapper, with the paper's settings for Cars196 (alpha 2, beta 50,
    lambda 0.5, epsilon 0.1). Imported here: the package is needed by this loss only."""
    from pytorch_metric_learning import losses, miners
    from quaterion.loss.extras import PytorchMetricLearningWrapper

    return PytorchMetricLearningWrapper(
        losses.MultiSimilarityLoss(alpha=2, beta=50, base=0.5), miners.MultiSimilarityMiner(epsilon=0.1)
    )


def proxy_anchor_loss(num_classes: int, embedding_size: int, margin: float, alpha: float) -> SimilarityLoss:
    """Kim et al.'s Proxy-Anchor loss (CVPR 2020), from pytorch-metric-learning through Quaterion's
    wrapper: one trainable proxy per training class, which pulls its class's embeddings in the
    batch and pushes all others, so each step relates the batch to every class, not only to the
    few pairs a batch holds. No miner: it weighs the pairs itself. Class ids must be
    0..num_classes-1, as train.train numbers them."""
    from pytorch_metric_learning import losses
    from quaterion.loss.extras import PytorchMetricLearningWrapper

    if num_classes < 2:
        raise UsageError(f"--loss proxy_anchor needs at least 2 training classes, got {num_classes}")
    return PytorchMetricLearningWrapper(
        losses.ProxyAnchorLoss(num_classes=num_classes, embedding_size=embedding_size, margin=margin, alpha=alpha)
    )


def cache_config(save_dir: str, batch_size: int) -> CacheConfig:
    """Embeddings of the frozen encoder computed once (on GPU when there is one), then reused.

    The fill runs in the main process: Quaterion learns the labels of its "full cache" while
    reading the dataset, and labels learnt inside worker processes would be lost.
    """
    return CacheConfig(cache_type=CacheType.AUTO, save_dir=save_dir, batch_size=batch_size, num_workers=0)
