"""`TopStagesHead`: the last stages of the backbone, fine-tuned, followed by a `SkipConnectionHead`.

Used with `--trainable-blocks N`: the encoder is the frozen trunk (cached by Quaterion) and this
head holds everything that learns. Its config names the backbone and N, so quaterion-models
rebuilds the same architecture when it loads a servable (the weights are a plain state dict).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from quaterion_models.heads import EncoderHead, SkipConnectionHead
from torch import nn

from core.encoders import untrained_split


class TopStagesHead(EncoderHead):
    """Trainable top stages of a backbone (BatchNorm statistics frozen) + optional skip head.

    `skip=False` gives the untuned network (pretrained top stages only): evaluation's baseline.
    `pretrained_branch=True` also keeps a frozen copy of the pretrained top stages with a skip head
    of its own, and the embedding is both branches' unit vectors side by side (twice the size):
    the fine-tuned stages rank a class's photos higher, the pretrained ones keep what ImageNet
    features know about cars never seen in training.
    """

    def __init__(
        self,
        input_embedding_size: int,
        backbone: str,
        trainable_blocks: int,
        output_size: int,
        dropout: float = 0.0,
        skip: bool = True,
        pretrained_branch: bool = False,
    ):
        # Dropout belongs after the top stages (in the skip head), not on the trunk's feature map.
        super().__init__(input_embedding_size, dropout=0.0)
        _, self.top = untrained_split(backbone, trainable_blocks)
        self.backbone_name, self.trainable_blocks = backbone, trainable_blocks
        self._output_size, self._head_dropout, self._skip = output_size, dropout, skip
        self.skip = SkipConnectionHead(output_size, dropout=dropout) if skip else nn.Identity()
        self.pretrained_branch = pretrained_branch
        if pretrained_branch:
            self.frozen_top = copy.deepcopy(self.top).requires_grad_(False)
            self.frozen_skip = SkipConnectionHead(output_size, dropout=dropout)

    def load_pretrained_top(self, state: dict[str, torch.Tensor]) -> None:
        """The backbone's pretrained top stages: where fine-tuning starts, and the frozen branch."""
        self.top.load_state_dict(state)
        if self.pretrained_branch:
            self.frozen_top.load_state_dict(state)

    @property
    def output_size(self) -> int:
        return 2 * self._output_size if self.pretrained_branch else self._output_size

    def train(self, mode: bool = True) -> TopStagesHead:
        # Frozen BatchNorm statistics, as usual when fine-tuning for metric learning: batches of
        # a few classes are poor estimates of the statistics the backbone was trained with.
        super().train(mode)
        for module in self.top.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
        if self.pretrained_branch:
            self.frozen_top.eval()
        return self

    def transform(self, input_vectors: torch.Tensor) -> torch.Tensor:
        tuned = self.skip(self.top(input_vectors))
        if not self.pretrained_branch:
            return tuned
        with torch.no_grad():
            kept = self.frozen_top(input_vectors)
        return torch.cat([F.normalize(tuned, dim=-1), F.normalize(self.frozen_skip(kept), dim=-1)], dim=-1)

    def get_config_dict(self) -> dict[str, Any]:
        return {
            "input_embedding_size": self.input_embedding_size,
            "backbone": self.backbone_name,
            "trainable_blocks": self.trainable_blocks,
            "output_size": self._output_size,
            "dropout": self._head_dropout,
            "skip": self._skip,
            "pretrained_branch": self.pretrained_branch,
        }


class WhiteningHead(EncoderHead):
    """Learned whitening (Radenović et al., "Fine-tuning CNN image retrieval with no human
    annotation", PAMI 2018), fitted in closed form on the training classes' embeddings.

    It scales away the directions in which photos of one car model differ (viewpoint, colour,
    background: the within-class scatter) and orders the rest by how far they pull models apart
    (the between-class scatter). Those statistics are what carries over to makes never seen in
    training, and a closed-form fit cannot overfit the way a trained head does on a few dozen
    classes (docs/quality.md). `shrinkage` blends the within-class scatter with a multiple of the
    identity, since 1280 dimensions are estimated from a few thousand photos.
    """

    def __init__(self, input_embedding_size: int, shrinkage: float = 0.3):
        super().__init__(input_embedding_size, dropout=0.0)
        if not 0.0 < shrinkage <= 1.0:
            raise ValueError(f"shrinkage must be in (0, 1], got {shrinkage}")
        self.shrinkage = shrinkage
        self.register_buffer("mean", torch.zeros(input_embedding_size))
        self.register_buffer("projection", torch.eye(input_embedding_size))

    @property
    def output_size(self) -> int:
        return self.input_embedding_size

    @torch.no_grad()
    def fit(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """Sets the whitening from training embeddings and their class ids (float64 maths)."""
        x = features.detach().double().cpu()
        classes, index = torch.unique(labels.cpu(), return_inverse=True)
        if len(classes) < 2 or len(classes) == len(x):
            raise ValueError("whitening needs at least 2 classes, and a class with 2 or more images")
        counts = torch.bincount(index, minlength=len(classes)).double()
        class_means = torch.zeros(len(classes), x.shape[1], dtype=torch.float64).index_add_(0, index, x)
        class_means /= counts[:, None]
        mean = x.mean(0)
        within = x - class_means[index]
        scatter = within.T @ within / len(x)
        identity = torch.eye(len(scatter), dtype=torch.float64)
        scatter = (1 - self.shrinkage) * scatter + self.shrinkage * scatter.trace() / len(scatter) * identity
        values, vectors = torch.linalg.eigh(scatter)
        whiten = vectors @ torch.diag(values.rsqrt()) @ vectors.T
        between = (class_means - mean) @ whiten
        _, directions = torch.linalg.eigh(between.T @ between)
        self.mean.copy_(mean.float())
        self.projection.copy_((whiten @ directions.flip(1)).float())

    def transform(self, input_vectors: torch.Tensor) -> torch.Tensor:
        return (input_vectors - self.mean) @ self.projection

    def get_config_dict(self) -> dict[str, Any]:
        return {"input_embedding_size": self.input_embedding_size, "shrinkage": self.shrinkage}
