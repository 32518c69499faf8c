"""Ensembles: several frozen backbones as one encoder, spelled `--backbone a+b` (e.g.
`mobilenet_v2+timm/tf_efficientnet_lite2`).

Two networks pretrained differently see different things in a car; their features side by side,
whitened jointly by the head, rank unseen models better than either alone (docs/quality.md).

Each member keeps its own preprocessing (size, mean, std, interpolation). So that the servable still
takes one tensor per image (the embedder, the handler and the GPU tensor path stay unchanged), the
shared `Preprocessing` only decodes and squash-resizes to a *canvas* as large as the largest member,
with pixel values in [0, 1]; inside the encoder each member resizes the canvas to its own shape and
normalises it with its own mean and std. Each member's features are L2-normalised before they are
concatenated, so that no member dominates the joint whitening by the scale of its features; before
that they may be power-normalised (`feature_power` p < 1: sign(x) * |x| ** p), which damps the few
activations that dominate a pooled CNN feature and helps on makes never seen (docs/quality.md).

A member may name its input height: `mobilenet_v2@224+timm/tf_efficientnet_lite2@260`; without it
a member takes --input-size, else its own default (224 for torchvision, the pretrained config's
for timm). --input-aspect applies to all. --weights is one value for all members or one per member,
comma-separated.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from quaterion_models.encoders import Encoder

from core.encoders import CarsEncoder, member_preprocessing
from core.errors import UsageError
from core.preprocessing import MIN_INPUT_SIZE, Preprocessing

CONFIG_FILE = "ensemble.json"
FORMAT_VERSION = 2  # 2 added feature_power; a version 1 ensemble has none (p = 1)
CANVAS_MEAN, CANVAS_STD = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)  # the canvas holds plain [0, 1] pixels


@dataclass(frozen=True)
class Member:
    name: str
    input_size: int | None = None  # None: --input-size, else the backbone's own


def parse_members(spec: str) -> list[Member]:
    """`a+b@260` -> [Member("a"), Member("b", 260)]; one backbone is a one-member list."""
    members = []
    for part in spec.split("+"):
        name, _, size = part.strip().partition("@")
        if not name:
            raise UsageError(f"--backbone {spec!r} has an empty member: write NAME+NAME (e.g. mobilenet_v2+timm/NAME)")
        if not size:
            members.append(Member(name))
            continue
        if not size.isdigit() or int(size) < MIN_INPUT_SIZE:
            raise UsageError(f"--backbone {spec!r}: {part!r} needs an input height >= {MIN_INPUT_SIZE} after '@'")
        members.append(Member(name, int(size)))
    if len(members) == 1 and members[0].input_size is not None:
        raise UsageError(f"--backbone {spec!r}: give one backbone's input size with --input-size, not '@'")
    return members


def member_weights(weights: str, count: int) -> list[str]:
    """One --weights value for every member, or one per member (comma-separated)."""
    if count == 1 or "," not in weights:
        return [weights] * count
    values = [value.strip() for value in weights.split(",")]
    if len(values) != count:
        raise UsageError(f"--weights has {len(values)} comma-separated values for {count} ensemble members")
    return values


def is_ensemble(backbone: str) -> bool:
    return "+" in backbone


def member_preprocessings(
    backbone: str, weights: str, input_size: int | None, input_aspect: float
) -> list[Preprocessing]:
    members = parse_members(backbone)
    return [
        member_preprocessing(member.name, weight, member.input_size or input_size, input_aspect)
        for member, weight in zip(members, member_weights(weights, len(members)), strict=True)
    ]


def preprocessing_for(backbone: str, weights: str, input_size: int | None, input_aspect: float) -> Preprocessing:
    """What the servable applies to every image: the backbone's own preprocessing, or an ensemble's canvas."""
    members = member_preprocessings(backbone, weights, input_size, input_aspect)
    if len(members) == 1:
        return members[0]
    return Preprocessing(
        input_size=max(p.input_size for p in members), input_aspect=input_aspect, mean=CANVAS_MEAN, std=CANVAS_STD,
        interpolation="bicubic" if any(p.interpolation == "bicubic" for p in members) else "bilinear",
    )  # fmt: skip


def create_encoder(
    backbone: str,
    weights: str,
    preprocessing: Preprocessing,
    flip_average: bool,
    input_size: int | None = None,
    feature_power: float = 1.0,
) -> CarsEncoder | EnsembleEncoder:
    """The frozen encoder `--backbone` names: one backbone, or an ensemble over `preprocessing`'s
    canvas (`feature_power`: its members' power normalisation)."""
    if not is_ensemble(backbone):
        return CarsEncoder.create(backbone, weights, preprocessing, flip_average=flip_average)
    members = parse_members(backbone)
    own = member_preprocessings(backbone, weights, input_size, preprocessing.input_aspect)
    encoders = [
        CarsEncoder.create(member.name, weight, member_pre, flip_average=flip_average)
        for member, weight, member_pre in zip(members, member_weights(weights, len(members)), own, strict=True)
    ]
    return EnsembleEncoder(encoders, preprocessing, feature_power)


class EnsembleEncoder(Encoder):
    """Frozen backbones side by side: each sees the canvas at its own size and normalisation."""

    def __init__(self, members: list[CarsEncoder], preprocessing: Preprocessing, feature_power: float = 1.0):
        super().__init__()
        if any(member.trainable_blocks for member in members):
            raise UsageError("ensemble members are frozen backbones: --trainable-blocks cannot apply")
        if not 0 < feature_power <= 1:
            raise UsageError(f"--feature-power must be in (0, 1], got {feature_power}")
        self.feature_power = float(feature_power)
        self.members = torch.nn.ModuleList(members)
        self.preprocessing = preprocessing  # the canvas: decode + squash-resize, pixels in [0, 1]

    @property
    def backbone_name(self) -> str:
        return "+".join(member.backbone_name for member in self.members)

    @property
    def trainable(self) -> bool:
        return False

    @property
    def embedding_size(self) -> int:
        return sum(member.embedding_size for member in self.members)

    def train(self, mode: bool = True) -> EnsembleEncoder:
        super().train(mode)
        self.members.eval()  # frozen: BatchNorm statistics stay as pretrained
        return self

    def get_collate_fn(self):
        return self.preprocessing.batch

    def forward(self, canvas: torch.Tensor) -> torch.Tensor:
        features = []
        for member in self.members:
            own = member.preprocessing
            images = canvas
            if tuple(canvas.shape[-2:]) != own.shape:
                images = F.interpolate(canvas, size=own.shape, mode=own.interpolation, antialias=True)
                if canvas.is_contiguous(memory_format=torch.channels_last):  # keep the embedder's faster layout
                    images = images.contiguous(memory_format=torch.channels_last)
            mean = torch.tensor(own.mean, device=canvas.device, dtype=images.dtype).view(1, 3, 1, 1)
            std = torch.tensor(own.std, device=canvas.device, dtype=images.dtype).view(1, 3, 1, 1)
            own_features = member((images - mean) / std).float()
            if self.feature_power != 1.0:
                own_features = own_features.sign() * own_features.abs().pow(self.feature_power)
            features.append(F.normalize(own_features, dim=1))
        return torch.cat(features, dim=1)

    def save(self, output_path: str) -> None:
        os.makedirs(output_path, exist_ok=True)
        for index, member in enumerate(self.members):
            member.save(os.path.join(output_path, f"member-{index}"))
        config = {"format_version": FORMAT_VERSION, "members": len(self.members),
                  "preprocessing": self.preprocessing.to_dict(), "feature_power": self.feature_power}  # fmt: skip
        with open(os.path.join(output_path, CONFIG_FILE), "w") as f:
            json.dump(config, f, indent=2)

    @classmethod
    def load(cls, input_path: str) -> EnsembleEncoder:
        with open(os.path.join(input_path, CONFIG_FILE)) as f:
            config = json.load(f)
        if config.get("format_version") not in (1, FORMAT_VERSION):
            raise ValueError(f"unsupported ensemble format {config.get('format_version')!r} in {input_path}")
        members = [CarsEncoder.load(os.path.join(input_path, f"member-{i}")) for i in range(config["members"])]
        return cls(members, Preprocessing.from_dict(config["preprocessing"]), config.get("feature_power", 1.0))
