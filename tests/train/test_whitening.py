"""The whitened recipe: mirror-averaged features and a learned whitening fitted in closed form."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import ImageOps

from core.encoders import CarsEncoder
from core.heads import WhiteningHead
from core.preprocessing import Preprocessing, load_image
from core.servable import load_servable
from serve.embedder import Embedder
from tests.conftest import run_module
from tests.train.test_cli import fails_with
from train import recipes


def test_whitening_removes_within_class_spread_and_keeps_class_differences():
    """Two classes that differ along one axis, with a large shared nuisance along another: after the
    fit, the nuisance axis is scaled down and the class axis leads (first output dimension)."""
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(200) % 2
    features = torch.randn(200, 4, generator=generator) * 0.1
    features[:, 0] += labels * 1.0  # what tells the classes apart
    features[:, 1:3] *= 300  # viewpoint-like spread inside every class
    head = WhiteningHead(4, shrinkage=1e-4)  # the scatter is well estimated here: little blending
    head.fit(features, labels)
    out = head.transform(features)
    assert out.shape == (200, 4)
    gap = (out[labels == 1, 0].mean() - out[labels == 0, 0].mean()).abs()
    assert gap > 4 * out[labels == 0, 0].std()  # the class axis comes first and separates the classes
    assert out[:, 1:].std(dim=0).max() < 3  # no direction keeps the 300x nuisance
    assert nearest_neighbour_accuracy(features, labels) < 0.7 < 0.95 < nearest_neighbour_accuracy(out, labels)


def nearest_neighbour_accuracy(vectors: torch.Tensor, labels: torch.Tensor) -> float:
    distances = torch.cdist(vectors, vectors).fill_diagonal_(float("inf"))
    return (labels[distances.argmin(1)] == labels).float().mean().item()


def test_whitening_refuses_what_it_cannot_fit():
    with pytest.raises(ValueError, match="at least 2 classes"):
        WhiteningHead(3).fit(torch.randn(5, 3), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="shrinkage"):
        WhiteningHead(3, shrinkage=0.0)


def test_flip_average_makes_a_photo_and_its_mirror_image_one_embedding(tmp_path, synthetic_data):
    encoder = CarsEncoder.create("resnet18", "none", Preprocessing(input_size=32), flip_average=True)
    encoder.eval()
    image = load_image(next(synthetic_data.rglob("*.jpg")))
    batch = encoder.get_collate_fn()([image, ImageOps.mirror(image)])
    with torch.no_grad():
        features = encoder(batch)
    torch.testing.assert_close(features[0], features[1], atol=1e-5, rtol=1e-4)
    encoder.save(str(tmp_path / "encoder"))
    assert json.loads((tmp_path / "encoder" / "encoder.json").read_text())["flip_average"] is True
    assert CarsEncoder.load(str(tmp_path / "encoder")).flip_average
    plain = CarsEncoder.create("resnet18", "none", Preprocessing(input_size=32))
    plain.save(str(tmp_path / "plain"))
    assert "flip_average" not in json.loads((tmp_path / "plain" / "encoder.json").read_text())  # older layout kept


WHITENED = {"head": "whitening", "flip_average": True, "input_aspect": 1.75}


@pytest.mark.slow
def test_whitened_recipe_trains_in_one_pass_and_serves(synthetic_data, tmp_path):
    result = run_module(
        "train.train", "--data", str(synthetic_data), "--out", str(tmp_path / "run"),
        "--cache-dir", str(tmp_path / "cache"), "--recipe", "whitened", "--backbone", "resnet18",
        "--weights", "none", "--input-size", "32",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "returned `None`" not in result.stderr  # Lightning's no-optimizer warnings are expected, so hidden
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["recipe"]["name"] == "whitened"
    assert run["recipe"]["settings"] == {**WHITENED, "backbone": "mobilenet_v2"}
    assert "backbone" in run["recipe"]["overridden_by_flags"]
    assert run["preprocessing"]["input_aspect"] == 1.75  # 32 px high, 56 wide, in training and serving
    assert run["metrics"]["epochs_run"] == 1 and run["metrics"]["best_epoch"] == 0
    assert run["encoder"]["flip_average"] is True  # part of the cache's fingerprint
    model = load_servable(tmp_path / "run" / "servable")
    assert next(iter(model.encoders.values())).preprocessing.shape == (32, 56)
    assert isinstance(model.head, WhiteningHead)
    assert not torch.allclose(model.head.projection, torch.eye(512))  # fitted, and saved with the servable

    images = [load_image(p) for p in sorted(synthetic_data.rglob("*.jpg"))[:3]]
    served = Embedder.load(tmp_path / "run").embed(images + [ImageOps.mirror(images[0])])
    assert served.shape == (4, 512) and np.isfinite(served).all()
    np.testing.assert_allclose(served[0], served[3], atol=1e-4)  # a mirrored photo finds itself

    evaluation = run_module("train.evaluate", "--run", str(tmp_path / "run"), "--data", str(synthetic_data), "--json")
    assert evaluation.returncode == 0, evaluation.stderr[-3000:]
    report = json.loads(evaluation.stdout)
    assert report["tuned"]["r_precision"] > report["base"]["r_precision"]


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--head", "whitening", "--epochs", "5"], "--epochs would do nothing here: --head whitening is fitted"),
        (["--head", "whitening", "--lr", "0.1"], "--lr would do nothing here"),
        (["--recipe", "seed", "--whitening-shrinkage", "0.5"], "--whitening-shrinkage would do nothing here"),
        (["--head", "whitening", "--whitening-shrinkage", "0"], "--whitening-shrinkage must be in (0, 1]"),
        (["--head", "whitening", "--trainable-blocks", "1"], "cannot follow --trainable-blocks 1"),
        (["--recipe", "whitened", "--trainable-blocks", "1"], "(--head set by --recipe whitened)"),
    ],
)
def test_bad_whitening_flags_are_refused_in_one_line(capsys, tmp_path, small_data, flags, message):
    from train import train

    argv = ["--data", str(small_data), "--out", str(tmp_path / "run"), "--backbone", "resnet18",
            "--weights", "none", *flags]  # fmt: skip
    fails_with(capsys, train.main, argv, message)
    assert not (tmp_path / "run").exists()


def test_the_whitened_recipe_is_frozen_for_every_backbone():
    for backbone in ("mobilenet_v2", "resnet152", "vit_b_16"):
        # its own backbone unless the user names one (or a weights file, which fits the one they mean)
        assert recipes.resolve("whitened", backbone, frozenset()) == {**WHITENED, "backbone": "mobilenet_v2"}
        assert recipes.resolve("whitened", backbone, frozenset({"backbone"})) == WHITENED
        assert recipes.resolve("whitened", backbone, frozenset({"weights"})) == WHITENED
