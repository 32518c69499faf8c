from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from train.data import CarsDataset, check_trainable, load_image_list, split_classes, split_validation
from core.errors import UsageError
from tests.conftest import CARS_DEV, needs_shared


def test_split_is_disjoint_deterministic_and_seeded():
    names = [f"class_{i:03d}" for i in range(98)]
    split = split_classes(names, 0.5, seed=42)
    assert len(split.holdout) == 49 and len(split.train) == 49
    assert not set(split.train) & set(split.holdout)
    assert set(split.train) | set(split.holdout) == set(names)
    assert split_classes(list(reversed(names)), 0.5, seed=42) == split  # order of discovery is irrelevant
    assert split_classes(names, 0.5, seed=7) != split


def test_holdout_zero_trains_on_every_class():
    split = split_classes(["a", "b", "c"], 0.0, seed=42)
    assert split.train == ("a", "b", "c") and split.holdout == ()


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 0.9])
def test_impossible_holdout_fractions_are_usage_errors(fraction):
    with pytest.raises(UsageError):
        split_classes(["a", "b", "c", "d"], fraction, seed=0)


def test_validation_split_is_stratified_and_leaves_two_per_class(small_data):
    images = load_image_list(small_data)
    train, val = split_validation(images, 0.5, seed=1)
    assert not set(train.paths) & set(val.paths)
    assert sorted(train.paths + val.paths) == sorted(images.paths)
    for name in images.class_names:
        assert train.classes.count(name) >= 2
        assert val.classes.count(name) >= 1
    assert split_validation(images, 0.5, seed=1) == (train, val)


def test_imagefolder_errors_name_the_problem(tmp_path):
    with pytest.raises(UsageError, match="data directory not found"):
        load_image_list(tmp_path / "missing")
    (tmp_path / "empty" / "some_class").mkdir(parents=True)
    with pytest.raises(UsageError, match="cannot read imagefolder data"):
        load_image_list(tmp_path / "empty")
    with pytest.raises(UsageError, match="Unknown dataset 'coco'"):
        load_image_list(tmp_path, "coco")


def test_a_class_with_one_image_cannot_train(small_data):
    images = load_image_list(small_data)
    lonely = next(p for p in sorted(Path(small_data).iterdir()) if p.is_dir())
    for extra in sorted(lonely.iterdir())[1:]:
        extra.unlink()
    with pytest.raises(UsageError, match=f"class '{lonely.name}' has only 1 image"):
        check_trainable(load_image_list(small_data))
    check_trainable(images.only(set(images.class_names) - {lonely.name}))


def write_stanford_cars(root: Path, images: dict[str, list[Path]]) -> None:
    """Re-lays an ImageFolder tree in torchvision's StanfordCars layout (.mat annotations)."""
    base = root / "stanford_cars"
    (base / "devkit").mkdir(parents=True)
    names = sorted(images)
    scipy.io.savemat(base / "devkit" / "cars_meta.mat", {"class_names": np.array(names, dtype=object)})
    for split, mat in (
        ("train", base / "devkit" / "cars_train_annos.mat"),
        ("test", base / "cars_test_annos_withlabels.mat"),
    ):
        folder = base / f"cars_{split}"
        folder.mkdir()
        rows = []
        for class_index, name in enumerate(names, start=1):
            half = images[name][::2] if split == "train" else images[name][1::2]
            for path in half:
                fname = f"{name}_{path.name}"
                Image.open(path).save(folder / fname)
                rows.append((fname, class_index))
        annotations = np.array(rows, dtype=[("fname", object), ("class", object)])
        scipy.io.savemat(mat, {"annotations": annotations})


def test_stanford_cars_layout_merges_train_and_test(small_data, tmp_path):
    folder = load_image_list(small_data)
    by_class = {
        name: sorted(Path(p) for p, c in zip(folder.paths, folder.classes, strict=True) if c == name)
        for name in folder.class_names
    }
    write_stanford_cars(tmp_path, by_class)
    cars = load_image_list(tmp_path, "stanford_cars")
    assert len(cars) == len(folder)
    assert cars.class_names == folder.class_names
    assert sorted(cars.classes) == sorted(folder.classes)
    with pytest.raises(UsageError, match="cannot read stanford_cars data"):
        load_image_list(small_data, "stanford_cars")


def test_dataset_yields_pil_images_with_group_ids(small_data):
    images = load_image_list(small_data)
    ids = {name: i for i, name in enumerate(images.class_names)}
    sample = CarsDataset(images, ids)[0]
    assert isinstance(sample.obj, Image.Image) and sample.obj.mode == "RGB"
    assert sample.group == ids[images.classes[0]]


def test_split_by_make_keeps_every_model_of_a_make_on_one_side():
    from core.labels import make_of

    names = [f"{i:03d}_{make}_Model{i}_Sedan_20{10 + i % 3}" for i, make in enumerate(
        ["Audi"] * 5 + ["BMW"] * 4 + ["Dodge"] * 3 + ["Aston_Martin"] * 2 + ["Eagle"] * 2)]  # fmt: skip
    for fold in (1, 2):
        split = split_classes(names, 0.5, seed=3, fold=fold, split_by="make")
        assert not {make_of(n) for n in split.train} & {make_of(n) for n in split.holdout}
        assert len(split.holdout) == 8 and set(split.train) | set(split.holdout) == set(names)
    assert split_classes(names, 0.5, 3, 1, "make") == split_classes(names, 0.5, 3, 1, "make")  # fixed by the seed
    with pytest.raises(UsageError, match="Unknown --split-by 'model'"):
        split_classes(names, 0.5, 3, 1, "model")


@needs_shared
def test_the_dev_classes_split_by_make_into_two_folds_of_49():
    from core.labels import make_of

    names = sorted(p.name for p in CARS_DEV.iterdir() if p.is_dir())
    for fold in (1, 2):
        split = split_classes(names, 0.5, seed=42, fold=fold, split_by="make")
        assert len(split.train) == len(split.holdout) == 49
        assert not {make_of(n) for n in split.train} & {make_of(n) for n in split.holdout}
