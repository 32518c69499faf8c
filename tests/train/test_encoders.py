import pytest
import torch
import torchvision
from PIL import Image

from tests.conftest import MOBILENET_WEIGHTS, needs_shared
from quaterion_models import SimilarityModel
from quaterion_models.heads import SkipConnectionHead

from core.encoders import CarsEncoder, build_backbone
from core.errors import UsageError
from core.preprocessing import Preprocessing

PRE = Preprocessing(input_size=64)


def images(n: int = 3) -> list[Image.Image]:
    return [Image.new("RGB", (80, 50), (40 * i, 255 - 60 * i, 90)) for i in range(n)]


@pytest.mark.parametrize(
    "backbone, size",
    [("resnet18", 512), ("resnet50", 2048), ("mobilenet_v2", 1280), ("efficientnet_b0", 1280), ("convnext_tiny", 768)],
)
def test_classifier_is_removed_and_embedding_size_found(backbone, size):
    encoder = CarsEncoder.create(backbone, "none", PRE)
    assert encoder.embedding_size == size
    encoder.eval()
    with torch.inference_mode():
        assert encoder(PRE.batch(images(2))).shape == (2, size)


def test_unknown_backbone_lists_the_choices():
    with pytest.raises(UsageError, match=r"Unknown backbone 'resnet15'\. Choose one of: .*resnet152"):
        build_backbone("resnet15", "none")


def test_servable_save_then_load_gives_identical_embeddings(tmp_path):
    torch.manual_seed(0)
    encoder = CarsEncoder.create("resnet18", "none", PRE)
    model = SimilarityModel(encoders=encoder, head=SkipConnectionHead(encoder.embedding_size, dropout=0.1))
    before = model.encode(images(), to_numpy=False)
    model.save(str(tmp_path / "servable"))
    loaded = SimilarityModel.load(str(tmp_path / "servable"))
    after = loaded.encode(images(), to_numpy=False)
    assert torch.equal(before, after)
    assert loaded.encoders["default"].preprocessing == PRE


def test_frozen_backbone_stays_in_eval_mode():
    encoder = CarsEncoder.create("resnet18", "none", PRE)
    encoder.train()
    assert not encoder.backbone.training
    assert encoder.trainable is False


def test_weights_path_really_loads_the_weights(tmp_path):
    torch.manual_seed(123)
    reference = torchvision.models.resnet18()
    state = {k: v for k, v in reference.state_dict().items() if not k.startswith("fc.")}
    torch.save(state, tmp_path / "resnet18.pt")
    torch.manual_seed(999)
    from_file = CarsEncoder.create("resnet18", str(tmp_path / "resnet18.pt"), PRE)
    random = CarsEncoder.create("resnet18", "none", PRE)
    reference.fc = torch.nn.Identity()
    batch = PRE.batch(images())
    for module in (from_file, random, reference):
        module.eval()
    with torch.inference_mode():
        assert torch.allclose(from_file(batch), reference(batch))
        assert not torch.allclose(from_file(batch), random(batch))


@needs_shared
def test_shared_mobilenet_weights_load_and_differ_from_random():
    pretrained = CarsEncoder.create("mobilenet_v2", str(MOBILENET_WEIGHTS), PRE)
    random = CarsEncoder.create("mobilenet_v2", "none", PRE)
    state = torch.load(MOBILENET_WEIGHTS, weights_only=True)
    key = "features.0.0.weight"
    assert torch.equal(pretrained.backbone.state_dict()[key], state[key])
    with torch.inference_mode():
        batch = PRE.batch(images())
        assert not torch.allclose(pretrained.eval()(batch), random.eval()(batch))


def test_wrong_weights_files_are_usage_errors(tmp_path):
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "resnet18.pt")
    with pytest.raises(UsageError, match=r"does not fit backbone MobileNetV2: .*missing"):
        build_backbone("mobilenet_v2", str(tmp_path / "resnet18.pt"))
    (tmp_path / "notes.txt").write_text("not weights")
    with pytest.raises(UsageError, match="not a plain state dict"):
        build_backbone("resnet18", str(tmp_path / "notes.txt"))
    torch.save(torchvision.models.resnet18(), tmp_path / "pickled_module.pth")  # the seed's unsafe format
    with pytest.raises(UsageError, match="not a plain state dict"):
        build_backbone("resnet18", str(tmp_path / "pickled_module.pth"))
    with pytest.raises(UsageError, match="weights file not found"):
        build_backbone("resnet18", str(tmp_path / "missing.pt"))
