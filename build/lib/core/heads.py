"""`TopStagesHead`: the last stages of the backbone, fine-tuned, followed by a `SkipConnectionHead`.

Used with `--trainable-blocks N`: the encoder is the frozen trunk (cached by Quaterion) and this
head holds everything that learns. Its config names the backbone and N, so quaterion-models
rebuilds the same architecture when it loads a servable (the weights are a plain state dict).
"""

from __future__ import annotations

from typing import Any

import torch
from quaterion_models.heads import EncoderHead, SkipConnectionHead
from torch import nn

from core.encoders import untrained_split


class TopStagesHead(EncoderHead):
    """Trainable top stages of a backbone (BatchNorm statistics frozen) + optional skip head.

    `skip=False` gives the untuned network (pretrained top stages only): evaluation's baseline.
    """

    def __init__(
        self,
        input_embedding_size: int,
        backbone: str,
        trainable_blocks: int,
        output_size: int,
        dropout: float = 0.0,
        skip: bool = True,
    ):
        # Dropout belongs after the top stages (in the skip head), not on the trunk's feature map.
        super().__init__(input_embedding_size, dropout=0.0)
        _, self.top = untrained_split(backbone, trainable_blocks)
        self.backbone_name, self.trainable_blocks = backbone, trainable_blocks
        self._output_size, self._head_dropout, self._skip = output_size, dropout, skip
        self.skip = SkipConnectionHead(output_size, dropout=dropout) if skip else nn.Identity()

    @property
    def output_size(self) -> int:
        return self._output_size

    def train(self, mode: bool = True) -> TopStagesHead:
        # Frozen BatchNorm statistics, as usual when fine-tuning for metric learning: batches of
        # a few classes are poor estimates of the statistics the backbone was trained with.
        super().train(mode)
        for module in self.top.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
        return self

    def transform(self, input_vectors: torch.Tensor) -> torch.Tensor:
        return self.skip(self.top(input_vectors))

    def get_config_dict(self) -> dict[str, Any]:
        return {
            "input_embedding_size": self.input_embedding_size,
            "backbone": self.backbone_name,
            "trainable_blocks": self.trainable_blocks,
            "output_size": self._output_size,
            "dropout": self._head_dropout,
            "skip": self._skip,
        }
