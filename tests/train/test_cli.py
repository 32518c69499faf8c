"""Bad arguments: exit status 2 and one readable line, never a traceback."""

import pytest
import torch
import torchvision

from tests.conftest import run_module
from train import evaluate, train
from core.errors import run_cli

FAST = ["--recipe", "seed", "--backbone", "resnet18", "--weights", "none", "--input-size", "32", "--epochs", "1"]


def fails_with(capsys, main, argv, message):
    assert run_cli(main, argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    assert message in err, err


def test_missing_data_dir(capsys, tmp_path):
    fails_with(
        capsys,
        train.main,
        ["--data", str(tmp_path / "nope"), "--out", str(tmp_path / "run"), *FAST],
        "data directory not found",
    )


def test_empty_dataset(capsys, tmp_path):
    (tmp_path / "data" / "only_class").mkdir(parents=True)
    fails_with(
        capsys,
        train.main,
        ["--data", str(tmp_path / "data"), "--out", str(tmp_path / "run"), *FAST],
        "cannot read imagefolder data",
    )


def test_class_with_one_image(capsys, small_data, tmp_path):
    for name in sorted(p for p in small_data.iterdir() if p.is_dir()):
        for extra in sorted(name.iterdir())[1:]:
            extra.unlink()
    argv = ["--data", str(small_data), "--holdout-fraction", "0", "--out", str(tmp_path / "run"), *FAST]
    fails_with(capsys, train.main, argv, "has only 1 image")


def test_unknown_backbone(capsys, small_data, tmp_path):
    argv = ["--data", str(small_data), "--out", str(tmp_path / "run"), *FAST, "--backbone", "resnet15"]
    fails_with(capsys, train.main, argv, "Unknown backbone 'resnet15'. Choose one of:")


def test_wrong_weights_file(capsys, small_data, tmp_path):
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "resnet18.pt")
    argv = ["--data", str(small_data), "--out", str(tmp_path / "run"), *FAST]
    argv += ["--backbone", "mobilenet_v2", "--weights", str(tmp_path / "resnet18.pt")]
    fails_with(capsys, train.main, argv, "does not fit backbone MobileNetV2")


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--augment"], "--augment changes every epoch's images, so it needs --no-cache"),
        (["--mining", "semi_hard", "--batch-size", "1024"], "use --batch-size <= 512 or --mining hard"),
        (["--epochs", "0"], "--epochs must be >= 1"),
        (["--holdout-fraction", "1.5"], "--holdout-fraction must be in [0, 1)"),
        (["--input-size", "8"], "--input-size must be >= 16"),
        (["--input-aspect", "9"], "--input-aspect must be in [0.25, 4], got 9.0"),
        (["--weights", "/nonexistent/weights.pt"], "weights file not found: /nonexistent/weights.pt"),
        (["--weights", "default", "--backbone", "resnet15"], "Unknown backbone 'resnet15'"),
        (["--xbm-size", "100", "--loss", "arcface"], "--xbm-size works with --loss triplet only"),
        (["--trainable-blocks", "5"], "--trainable-blocks must be between 0 and 4 for ResNet"),
        (["--sampler", "balanced", "--images-per-class", "1"], "--images-per-class must be >= 2"),
        (["--fold", "2", "--holdout-fraction", "0"], "--fold 2 swaps training and held-out classes"),
        (["--backbone-lr", "0"], "--lr and --backbone-lr must be > 0"),
        (["--augment-copies", "-1"], "--augment-copies must be >= 0"),
        (["--augment-copies", "2", "--no-cache"], "--augment-copies exists for the cache"),
    ],
)
def test_bad_training_options(capsys, small_data, tmp_path, extra, message):
    fails_with(capsys, train.main, ["--data", str(small_data), "--out", str(tmp_path / "run"), *FAST, *extra], message)


def test_existing_run_is_not_overwritten_silently(capsys, small_data, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "run.json").write_text("{}")
    argv = ["--data", str(small_data), "--out", str(tmp_path / "run"), *FAST]
    fails_with(capsys, train.main, argv, "already holds a run; pass --overwrite")


def test_evaluate_without_a_run(capsys, small_data, tmp_path):
    fails_with(
        capsys, evaluate.main, ["--run", str(tmp_path), "--data", str(small_data)], "is not a finished training run"
    )


def test_cli_process_exits_nonzero_with_one_line(tmp_path):
    result = run_module("train.train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "run"))
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: data directory not found: {tmp_path / 'missing'}"


def test_help_lists_every_flag_with_defaults():
    result = run_module("train.train", "--help")
    assert result.returncode == 0
    for flag in (
        "--data",
        "--dataset",
        "--backbone",
        "--weights",
        "--epochs",
        "--batch-size",
        "--lr",
        "--mining",
        "--holdout-fraction",
        "--seed",
        "--out",
    ):
        assert flag in result.stdout


def test_corrupt_training_images_are_all_named_and_can_be_skipped(capsys, small_data, tmp_path):
    folders = sorted(p for p in small_data.iterdir() if p.is_dir())
    broken = [sorted(folder.iterdir())[0] for folder in folders[:2]]
    for path in broken:
        path.write_bytes(b"\xff\xd8\xff not a jpeg")
    argv = ["--data", str(small_data), "--holdout-fraction", "0", "--run", str(tmp_path / "run"), *FAST]
    fails_with(capsys, train.main, argv, "2 unreadable images: ")
    assert run_cli(train.main, argv) == 2
    err = capsys.readouterr().err
    assert all(str(path) in err for path in broken) and "--skip-bad-images" in err  # every one, before any work
    assert run_cli(train.main, [*argv, "--skip-bad-images"]) == 0
    captured = capsys.readouterr()
    assert "warning: skipping 2 unreadable images" in captured.err
    assert "trained on 4 classes / " in captured.out


def test_small_classes_validate_on_two_images_or_none(small_data, tmp_path):
    from train.data import load_image_list, split_validation

    images = load_image_list(small_data)  # 4 classes x 6 images
    train_part, val = split_validation(images, 0.1, seed=0)
    assert len(val) == 8 and all(val.classes.count(c) == 2 for c in set(val.classes))  # never a lone image
    tiny = images.only(set(images.class_names[:2]))
    tiny = type(tiny)(tiny.paths[:3] + tiny.paths[6:9], tiny.classes[:3] + tiny.classes[6:9])  # 3 per class
    assert len(split_validation(tiny, 0.5, seed=0)[1]) == 0
    result = run_module(
        "train.train", "--data", str(small_data), "--run", str(tmp_path / "run"), "--val-fraction", "0", *FAST
    )
    assert result.returncode == 0 and "no validation images" not in result.stderr  # asked for none: no warning


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--loss", "softmax", "--margin", "0.3"], "--margin would do nothing here: --loss softmax has no margin"),
        (["--loss", "fast_ap", "--margin", "0.3"], "--margin would do nothing here"),
        (["--loss", "arcface", "--mining", "all"], "--mining would do nothing here: --loss arcface does not mine"),
        (["--loss", "circle", "--mining", "hard"], "--mining would do nothing here"),
        (["--images-per-class", "8"], "--images-per-class would do nothing here: it is the K of --sampler balanced"),
        (["--backbone-lr", "1e-3"], "--backbone-lr would do nothing here: only --trainable-blocks N > 0"),
        (["--workers", "4"], "--loader-workers would do nothing here"),  # the old spelling still works
        (["--no-cache", "--cache-batch-size", "8"], "--cache-batch-size would do nothing here"),
        (["--overwrite", "--resume"], "pass one of them"),
        (["--feature-power", "0.6"], "--feature-power would do nothing here: it applies to an ensemble's members"),
        (["--feature-power", "0"], "--feature-power must be in (0, 1], got 0.0"),
    ],
)
def test_flags_that_would_do_nothing_are_refused_by_name(capsys, small_data, tmp_path, extra, message):
    fails_with(capsys, train.main, ["--data", str(small_data), "--out", str(tmp_path / "run"), *FAST, *extra], message)


def test_the_same_flags_are_accepted_where_they_act(small_data, tmp_path):
    from train.config import TrainConfig

    base = ["--data", str(small_data), "--out", str(tmp_path / "run"), *FAST]
    for extra in (
        ["--loss", "triplet", "--margin", "0.3", "--mining", "all", "--batch-size", "64"],
        ["--sampler", "balanced", "--images-per-class", "8"],
        ["--trainable-blocks", "1", "--backbone-lr", "1e-3"],
        ["--no-cache", "--workers", "0"],
        ["--backbone", "resnet18+resnet18", "--feature-power", "0.5"],
    ):
        config = TrainConfig.from_argv(base + extra)
        assert {"data", "run", "backbone"} <= config.user_set and "lr" not in config.user_set  # --out: --run's alias
        assert config.to_json()["set_by_user"] == sorted(config.user_set)


def test_out_that_is_a_file_is_one_line(capsys, small_data, tmp_path):
    (tmp_path / "file").write_text("not a directory")
    fails_with(capsys, train.main, ["--data", str(small_data), "--out", str(tmp_path / "file"), *FAST], "is a file")


def test_resume_without_checkpoints_is_one_line(capsys, small_data, tmp_path):
    argv = ["--data", str(small_data), "--out", str(tmp_path / "run"), *FAST, "--resume"]
    fails_with(capsys, train.main, argv, "nothing to resume in")


def test_evaluate_refuses_a_benchmark_servable_in_one_line(capsys, small_data, tmp_path):
    from bench.random_servable import make_servable

    make_servable("resnet18", tmp_path / "bench-run", input_size=32)
    argv = ["--run", str(tmp_path / "bench-run"), "--data", str(small_data)]
    fails_with(capsys, evaluate.main, argv, "not a trained run")


def test_stanford_cars_layout_names_the_missing_files(capsys, tmp_path):
    (tmp_path / "cars" / "stanford_cars" / "devkit").mkdir(parents=True)
    (tmp_path / "cars" / "stanford_cars" / "devkit" / "cars_meta.mat").write_bytes(b"")
    argv = ["--data", str(tmp_path / "cars"), "--dataset", "stanford_cars", "--out", str(tmp_path / "run"), *FAST]
    fails_with(capsys, train.main, argv, "missing stanford_cars/devkit/cars_train_annos.mat, stanford_cars/cars_train/")


def test_training_output_has_results_not_noise(small_data, tmp_path):
    """Off a terminal: no progress bars, no accelerator banners, no `v_num`; the summary line stays."""
    result = run_module("train.train", "--data", str(small_data), "--run", str(tmp_path / "run"), *FAST)
    assert result.returncode == 0, result.stderr[-2000:]
    output = result.stdout + result.stderr
    for noise in ("GPU available", "TPU available", "HPU available", "v_num", "it/s]"):
        assert noise not in output, noise
    assert "Saved " in result.stdout and "model version" in result.stdout


def test_without_validation_images_training_warns_and_keeps_the_last_epoch(tmp_path):
    from train.synthetic import generate

    data = generate(tmp_path / "three", colours=2, shapes=2, per_class=3, size=32)  # too few to validate
    result = run_module("train.train", "--data", str(data), "--run", str(tmp_path / "run"), "--holdout-fraction", "0",
                        *FAST)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "warning: no validation images (each class needs 4+ photos" in result.stderr
    assert "early stopping is off and the last epoch is kept" in result.stderr
