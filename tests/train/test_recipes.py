"""The fine-tuning options of issue 8: backbone split, balanced batches, losses, XBM, folds."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import run_module
from quaterion_models import SimilarityModel

from serve.embedder import Embedder
from train.data import AugmentedCopies, CarsDataset, ClassBalancedSampler, load_image_list, split_classes
from core.encoders import build_backbone, split_backbone, stage_count
from core.errors import UsageError
from train import recipes
from core.heads import TopStagesHead
from core.preprocessing import load_image, training_augmentation


@pytest.mark.parametrize(
    "backbone, size", [("resnet18", 64), ("mobilenet_v2", 64), ("mobilenet_v3_small", 64), ("vit_b_16", 224)]
)
@pytest.mark.parametrize("blocks", [1, 2, "all"])
def test_split_backbone_computes_what_the_whole_backbone_does(backbone, size, blocks):
    model, _, embedding = build_backbone(backbone, "none")
    model.eval()
    images = torch.randn(2, 3, size, size)
    trunk, top = split_backbone(model, stage_count(backbone) if blocks == "all" else blocks)
    with torch.no_grad():
        whole, split = model(images), top(trunk(images))
    assert split.shape == (2, embedding)
    torch.testing.assert_close(split, whole)
    assert not set(map(id, trunk.parameters())) & set(map(id, top.parameters()))


def test_split_backbone_refuses_what_it_cannot_split():
    model, _, _ = build_backbone("resnet18", "none")
    with pytest.raises(UsageError, match="between 0 and 4"):
        split_backbone(model, 5)
    regnet, _, _ = build_backbone("regnet_x_400mf", "none")
    with pytest.raises(UsageError, match="ResNet-style, `features`-style or ViT"):
        split_backbone(regnet, 1)


def test_top_stages_head_keeps_batchnorm_statistics_frozen():
    head = TopStagesHead(256, backbone="resnet18", trainable_blocks=1, output_size=512)
    head.train()
    batchnorms = [m for m in head.top.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert batchnorms and not any(bn.training for bn in batchnorms)
    before = batchnorms[0].running_mean.clone()
    head(torch.randn(4, 256, 4, 4)).sum().backward()
    torch.testing.assert_close(batchnorms[0].running_mean, before)
    assert head.skip.training  # the skip head's dropout still trains


def test_balanced_sampler_batches_hold_p_classes_of_k_images():
    labels = [c for c in range(10) for _ in range(7)] + [10]  # class 10 has a single image
    sampler = ClassBalancedSampler(labels, batch_size=18, images_per_class=4, seed=0)
    assert sampler.batch_size == 16  # 4 classes x 4 images
    indices = list(sampler)
    assert len(indices) == len(sampler) == (len(labels) // 18) * 16
    for start in range(0, len(indices), 16):
        counts = Counter(labels[i] for i in indices[start : start + 16])
        assert sorted(counts.values()) == [4, 4, 4, 4]
        assert 10 not in counts  # a lone image can have no positive
    assert indices == list(ClassBalancedSampler(labels, 18, 4, seed=0))
    assert indices != list(ClassBalancedSampler(labels, 18, 4, seed=1))


def test_augmented_copies_are_fixed_views_after_the_originals(synthetic_data):
    images = load_image_list(str(synthetic_data), "imagefolder")
    dataset = CarsDataset(images, {name: i for i, name in enumerate(images.class_names)})
    views = training_augmentation((32, 32))
    copies = AugmentedCopies(dataset, 2, views, seed=7)
    n = len(dataset)
    assert len(copies) == 3 * n and copies.labels == [s.group for s in (dataset[i] for i in range(n))] * 3
    pixels = [np.asarray(copies[i].obj) for i in (0, n, 2 * n)]  # image 0 and its two views
    assert np.array_equal(pixels[0], np.asarray(dataset[0].obj))
    assert not np.array_equal(pixels[1], pixels[2]) and pixels[1].shape == (32, 32, 3)
    torch.manual_seed(123)  # a view does not depend on the global RNG, nor changes it
    before = torch.get_rng_state()
    assert np.array_equal(np.asarray(copies[n].obj), pixels[1])
    assert torch.equal(torch.get_rng_state(), before)
    assert not np.array_equal(np.asarray(AugmentedCopies(dataset, 2, views, 8)[n].obj), pixels[1])
    assert {copies[i].group for i in (0, n, 2 * n)} == {dataset[0].group}
    with pytest.raises(IndexError):
        copies[3 * n]


def test_fold_two_swaps_training_and_held_out_classes():
    names = [f"class{i}" for i in range(10)]
    one, two = split_classes(names, 0.5, seed=3), split_classes(names, 0.5, seed=3, fold=2)
    assert set(one.train) == set(two.holdout) and set(one.holdout) == set(two.train)


def train_run(data: Path, out: Path, cache: Path, *extra: str) -> dict:
    result = run_module(
        "train.train", "--data", str(data), "--out", str(out), "--cache-dir", str(cache),
        "--recipe", "seed", "--backbone", "resnet18", "--weights", "none", "--input-size", "32", "--epochs", "2",
        *extra,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((out / "run.json").read_text())


@pytest.mark.slow
def test_fine_tuned_run_serves_and_evaluates_against_the_pretrained_network(synthetic_data, tmp_path):
    frozen = train_run(synthetic_data, tmp_path / "frozen", tmp_path / "cache")
    tuned = train_run(
        synthetic_data, tmp_path / "tuned", tmp_path / "cache",
        "--trainable-blocks", "1", "--sampler", "balanced", "--images-per-class", "4",
    )  # fmt: skip
    assert tuned["encoder"]["trainable_blocks"] == 1
    assert tuned["cache"]["fingerprint"] != frozen["cache"]["fingerprint"]  # the cache holds feature maps now

    model = SimilarityModel.load(str(tmp_path / "tuned" / "servable"))
    assert isinstance(model.head, TopStagesHead) and model.head.output_size == 512
    images = [load_image(p) for p in sorted(synthetic_data.rglob("*.jpg"))[:3]]
    embeddings = model.encode(images)
    assert embeddings.shape == (3, 512) and (embeddings != 0).any()
    served = Embedder.load(tmp_path / "tuned").embed(images)  # what the TorchServe handler runs
    normalised = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    np.testing.assert_allclose(served, normalised, atol=1e-5)

    reports, encoded = {}, {}
    for name in ("frozen", "tuned", "tuned"):
        result = run_module(
            "train.evaluate", "--run", str(tmp_path / name), "--data", str(synthetic_data), "--json",
            "--cache-dir", str(tmp_path / "eval-cache"),
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        assert reports.get(name, json.loads(result.stdout)) == json.loads(result.stdout)
        reports[name] = json.loads(result.stdout)
        encoded[name] = encoded.get(name, 0) + ("Encoding" in result.stderr)
    assert encoded == {"frozen": 1, "tuned": 1}  # the second evaluation reused the encoder's outputs
    # The baseline of a fine-tuned run is the untouched pretrained network, as for a frozen run.
    assert reports["tuned"]["base"] == pytest.approx(reports["frozen"]["base"], abs=1e-3)
    assert reports["tuned"]["tuned"] != reports["tuned"]["base"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "extra",
    [
        ["--loss", "triplet", "--xbm-size", "256", "--sampler", "balanced"],
        ["--loss", "arcface", "--select-by", "r_precision"],
        ["--loss", "softmax"],
        ["--loss", "circle"],
        ["--loss", "online_contrastive"],
        ["--loss", "fast_ap", "--fold", "2"],
        ["--loss", "triplet", "--trainable-blocks", "1", "--sampler", "balanced", "--augment-copies", "2"],
        ["--loss", "multi_similarity", "--trainable-blocks", "1", "--pretrained-branch", "--sampler", "balanced"],
        ["--loss", "proxy_anchor", "--optimizer", "adamw", "--margin", "0.2"],
    ],
    ids=lambda extra: "-".join(a.lstrip("-") for a in extra[:2] + extra[-2:-1]),
)
def test_every_loss_trains_end_to_end(synthetic_data, tmp_path, extra):
    run = train_run(synthetic_data, tmp_path / "run", tmp_path / "cache", *extra)
    assert run["args"]["loss"] == extra[1]
    assert run["metrics"]["selected_by"] == run["args"]["select_by"]
    assert run["images"]["train_items"] == (1 + run["args"]["augment_copies"]) * run["images"]["train"]
    assert run["metrics"]["best_epoch"] is not None
    assert all(torch.isfinite(torch.tensor(v)) for v in run["metrics"]["last"].values())
    assert (tmp_path / "run" / "servable").is_dir()


@pytest.mark.parametrize(
    "backbone, finetune, full",
    [("mobilenet_v2", 6, 19), ("resnet152", 1, 4), ("efficientnet_b0", 3, 9), ("convnext_tiny", 3, 8),
     ("vit_b_16", 4, 12)],
)  # fmt: skip
def test_recipes_scale_to_each_backbone_family(backbone, finetune, full):
    assert recipes.resolve("finetune", backbone, frozenset())["trainable_blocks"] == finetune
    assert recipes.resolve("full", backbone, frozenset())["trainable_blocks"] == full
    assert recipes.resolve("seed", backbone, frozenset()) == {}
    assert recipes.resolve("seed-336", backbone, frozenset()) == {"input_size": 336}


def test_flags_the_user_sets_win_over_the_recipe():
    settings = recipes.resolve("finetune", "mobilenet_v2", frozenset({"trainable_blocks", "epochs"}))
    assert "trainable_blocks" not in settings and "epochs" not in settings
    assert settings["augment_copies"] == 8 and settings["sampler"] == "balanced"
    assert recipes.pick("auto", gpu=True) == "full" and recipes.pick("auto", gpu=False) == recipes.CPU_DEFAULT
    assert recipes.CPU_DEFAULT in recipes.RECIPES
    with pytest.raises(UsageError, match="--recipe finetune fine-tunes part of the backbone"):
        recipes.resolve("finetune", "regnet_x_400mf", frozenset())


def test_a_recipe_conflict_names_the_recipe(capsys, tmp_path, synthetic_data):
    from core.errors import run_cli
    from train import train

    argv = ["--data", str(synthetic_data), "--out", str(tmp_path / "run"), "--backbone", "resnet18",
            "--weights", "none", "--recipe", "finetune", "--no-cache"]  # fmt: skip
    assert run_cli(train.main, argv) == 2
    err = capsys.readouterr().err.strip()
    assert "--augment-copies exists for the cache" in err and "(--augment-copies set by --recipe finetune)" in err


@pytest.mark.slow
def test_the_gpu_recipe_runs_tiny_on_a_cpu(synthetic_data, tmp_path):
    """`--recipe full` (what `auto` picks on a GPU): every stage fine-tuned on fresh views, no cache,
    Proxy-Anchor and AdamW after a warm-up epoch (2 epochs: the warm-up and one that tunes)."""
    result = run_module(
        "train.train", "--data", str(synthetic_data), "--out", str(tmp_path / "run"), "--recipe", "full",
        "--backbone", "resnet18", "--weights", "none", "--input-size", "32", "--epochs", "2",
        "--loader-workers", "0",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["recipe"]["name"] == "full" and run["recipe"]["settings"]["trainable_blocks"] == 4
    assert run["args"]["trainable_blocks"] == 4 and run["args"]["augment"] and run["args"]["no_cache"]
    assert run["args"]["recipe"] == "full" and run["cache"]["fingerprint"] is None
    assert (run["args"]["loss"], run["args"]["optimizer"], run["args"]["warmup_epochs"]) == ("proxy_anchor", "adamw", 1)
    assert run["metrics"]["epochs_run"] == 2
    images = [load_image(p) for p in sorted(synthetic_data.rglob("*.jpg"))[:2]]
    embeddings = Embedder.load(tmp_path / "run").embed(images)
    assert embeddings.shape == (2, 512) and np.isfinite(embeddings).all()
