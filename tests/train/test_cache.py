import os
from pathlib import Path

from train.cache import CacheDirectory, cache_fingerprint
from train.data import load_image_list, split_classes, split_validation

ENCODER = {"backbone": "resnet18", "weights": "sha256:abc"}
PRE = {"input_size": 64, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "interpolation": "bilinear"}


def fingerprint_of(data, encoder=ENCODER, preprocessing=PRE, seed=42, val_fraction=0.2):
    images = load_image_list(data)
    split = split_classes(images.class_names, 0.5, seed)
    train, val = split_validation(images.only(set(split.train)), val_fraction, seed)
    return cache_fingerprint(encoder=encoder, preprocessing=preprocessing, train=train, val=val)


def test_same_inputs_same_fingerprint(small_data):
    assert fingerprint_of(small_data) == fingerprint_of(small_data)


def test_every_input_changes_the_fingerprint(small_data):
    base = fingerprint_of(small_data)
    changed = {
        "backbone": fingerprint_of(small_data, encoder={**ENCODER, "backbone": "resnet50"}),
        "weights": fingerprint_of(small_data, encoder={**ENCODER, "weights": "sha256:def"}),
        "preprocessing": fingerprint_of(small_data, preprocessing={**PRE, "input_size": 96}),
        "class split": fingerprint_of(small_data, seed=3),
        "validation split": fingerprint_of(small_data, val_fraction=0.6),  # 4 of 6 per class, not 2
    }
    for what, fingerprint in changed.items():
        assert fingerprint != base, what
    assert len(set(changed.values())) == len(changed)


def test_editing_or_adding_an_image_changes_the_fingerprint(small_data):
    base = fingerprint_of(small_data)
    images = load_image_list(small_data)
    training_class = split_classes(images.class_names, 0.5, 42).train[0]
    image = sorted((small_data / training_class).glob("*.jpg"))[0]
    with open(image, "ab") as f:
        f.write(b"\0")
    edited = fingerprint_of(small_data)
    assert edited != base
    folder = image.parent
    os.link(image, folder / "zz_copy.jpg")
    assert fingerprint_of(small_data) not in (base, edited)


def test_cache_is_filled_under_a_temporary_name_then_published(tmp_path):
    cache = CacheDirectory(tmp_path, "f" * 64)
    assert not cache.ready and cache.save_dir != cache.final and not cache.final.exists()
    (cache.save_dir / "encoders").mkdir(parents=True)
    cache.publish()
    assert cache.final.is_dir() and not cache.save_dir.exists()
    again = CacheDirectory(tmp_path, "f" * 64)
    assert again.ready and again.save_dir == again.final


def test_a_changed_fingerprint_gets_a_new_directory(tmp_path):
    assert CacheDirectory(tmp_path, "a" * 64).final != CacheDirectory(tmp_path, "b" * 64).final


def test_held_out_images_do_not_touch_the_training_cache(small_data):
    base = fingerprint_of(small_data)
    images = load_image_list(small_data)
    held_out_class = split_classes(images.class_names, 0.5, 42).holdout[0]
    with open(sorted((small_data / held_out_class).glob("*.jpg"))[0], "ab") as f:
        f.write(b"\0")
    assert fingerprint_of(small_data) == base


def test_an_interrupted_directory_swap_is_recovered(tmp_path):
    from core.files import write_dir_atomic

    def writer(content):
        def fill(tmp):
            (Path(tmp) / "file").write_text(content)

        return fill

    target = tmp_path / "servable"
    write_dir_atomic(target, writer("first"))
    os.replace(target, tmp_path / ".servable.old")  # killed between the two renames of a swap
    write_dir_atomic(target, writer("second"))
    assert (target / "file").read_text() == "second"
    assert not (tmp_path / ".servable.old").exists()

    def crash(tmp):
        raise KeyboardInterrupt

    try:
        write_dir_atomic(target, crash, overwrite=True)
    except KeyboardInterrupt:
        pass
    assert (target / "file").read_text() == "second"  # a failed fill keeps the previous directory
    assert sorted(p.name for p in tmp_path.iterdir()) == ["servable"]
