"""`CarsEncoder`: a frozen torchvision backbone, its classifier removed, plus its preprocessing.

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

import torch
import torchvision
from quaterion_models.encoders import Encoder
from torch import nn

from core.errors import UsageError, one_line
from core.files import file_sha256
from core.preprocessing import Preprocessing

CONFIG_FILE = "encoder.json"
WEIGHTS_FILE = "weights.pt"
FORMAT_VERSION = 1
FORMAT_VERSION_SPLIT = 2  # written only when trainable_blocks > 0, so older servables stay valid

# Where torchvision keeps the classification layer, by model family.
_CLASSIFIER_ATTRIBUTES = ("fc", "classifier", "heads", "head")


def available_backbones() -> list[str]:
    """Every torchvision classification model name (resnet152, mobilenet_v2, ...)."""
    return sorted(torchvision.models.list_models(module=torchvision.models))


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


def _load_state_dict_file(model: nn.Module, path: Path, classifier: str) -> None:
    """Loads a local state dict; only the classifier's parameters may be missing."""
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


def check_backbone_and_weights(name: str, weights: str) -> None:
    """Cheap checks of the two flags, so that a typo fails before any data is read."""
    if name not in available_backbones():
        raise UsageError(f"Unknown backbone {name!r}. Choose one of: {', '.join(available_backbones())}")
    if weights not in ("default", "none") and not Path(weights).is_file():
        raise UsageError(f"weights file not found: {weights} (use 'default', 'none' or a path)")


def build_backbone(name: str, weights: str) -> tuple[nn.Module, str, int]:
    """Builds a torchvision model with `weights` = "default" | "none" | a state-dict path.

    Returns the model (classifier removed), the classifier attribute and the embedding size.
    """
    check_backbone_and_weights(name, weights)
    if weights == "default":
        enum = torchvision.models.get_model_weights(name).DEFAULT
        try:
            model = torchvision.models.get_model(name, weights=enum)
        except OSError as error:  # URLError is an OSError: no internet
            raise UsageError(
                f"cannot download {enum} for {name} ({one_line(error)}); "
                "on an air-gapped machine pass --weights PATH to a local state dict"
            ) from None
        classifier, size = _strip_classifier(model)
        return model, classifier, size
    model = torchvision.models.get_model(name, weights=None)
    if weights != "none":
        path = Path(weights)
        classifier_attribute = next(a for a in _CLASSIFIER_ATTRIBUTES if isinstance(getattr(model, a, None), nn.Module))
        _load_state_dict_file(model, path, classifier_attribute)
    classifier, size = _strip_classifier(model)
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
    raise UsageError(
        "--trainable-blocks needs a ResNet-style, `features`-style or ViT torchvision backbone, "
        f"not {type(model).__name__}"
    )


def stage_count(backbone: str) -> int:
    """How many stages `--trainable-blocks` can fine-tune in `backbone` (what recipes scale by)."""
    model = torchvision.models.get_model(backbone, weights=None)
    _strip_classifier(model)
    return len(_stages(model)[1])


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
    model = torchvision.models.get_model(backbone, weights=None)
    _strip_classifier(model)
    return split_backbone(model, trainable_blocks)


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
    if weights == "default":
        return f"torchvision:{torchvision.models.get_model_weights(backbone).DEFAULT}"
    if weights == "none":
        return "none"
    return f"sha256:{file_sha256(weights)}"


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
            model = torchvision.models.get_model(config["backbone"], weights=None)
            _strip_classifier(model)
        state = torch.load(os.path.join(input_path, WEIGHTS_FILE), map_location="cpu", weights_only=True)
        model.load_state_dict(state)
        preprocessing = Preprocessing.from_dict(config["preprocessing"])
        return cls(
            config["backbone"], model, config["embedding_size"], preprocessing, trainable_blocks,
            flip_average=bool(config.get("flip_average", False)),
        )  # fmt: skip
