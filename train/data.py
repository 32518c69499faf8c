"""Datasets, the novel-class split and Quaterion data loaders.

Two layouts are read: torchvision's `StanfordCars` (train and test splits merged, as in
Quaterion's tutorial) and any ImageFolder tree (`DIR/<class name>/<image>`), which is how users
bring their own cars. Images stay on disk as paths until a loader reads them.
"""

from __future__ import annotations

import random
import sys
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from quaterion.dataset import GroupSimilarityDataLoader, SimilarityGroupSample
from torch.utils.data import Dataset, Sampler
from torchvision import datasets

from core.errors import UsageError, one_line
from core.labels import make_of
from core.preprocessing import load_image

DATASETS = ("imagefolder", "stanford_cars")
# What torchvision's StanfordCars reads under ROOT (its download URL is dead: bring the files).
STANFORD_CARS_FILES = (
    "stanford_cars/devkit/cars_meta.mat",
    "stanford_cars/devkit/cars_train_annos.mat",
    "stanford_cars/cars_train/",
    "stanford_cars/cars_test_annos_withlabels.mat",
    "stanford_cars/cars_test/",
)


def check_stanford_cars_layout(root: Path) -> None:
    """Names every missing file of the layout, instead of torchvision's "Dataset not found." """
    missing = [name for name in STANFORD_CARS_FILES if not (root / name).exists()]
    if missing:
        whole = ", ".join(STANFORD_CARS_FILES)
        layout = "" if len(missing) == len(STANFORD_CARS_FILES) else f" (the whole layout: {whole})"
        raise UsageError(
            f"cannot read stanford_cars data at {root}: missing {', '.join(missing)}{layout}; "
            "or use an ImageFolder tree (ROOT/<class>/<image>) with --dataset imagefolder"
        )


@dataclass(frozen=True)
class ImageList:
    """Image paths with their class names: a dataset before any image is decoded."""

    paths: tuple[str, ...]
    classes: tuple[str, ...]  # class name of each image

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def class_names(self) -> list[str]:
        return sorted(set(self.classes))

    def only(self, keep: set[str]) -> ImageList:
        pairs = [(p, c) for p, c in zip(self.paths, self.classes, strict=False) if c in keep]
        return ImageList(tuple(p for p, _ in pairs), tuple(c for _, c in pairs))


def load_image_list(root: str | Path, dataset: str = "imagefolder") -> ImageList:
    """Lists the images of `root` in the given layout; errors are one readable line."""
    root = Path(root)
    if dataset not in DATASETS:
        raise UsageError(f"Unknown dataset {dataset!r}. Choose one of: {', '.join(DATASETS)}")
    if not root.is_dir():
        raise UsageError(f"data directory not found: {root}")
    try:
        if dataset == "imagefolder":
            folder = datasets.ImageFolder(str(root))
            samples, names = folder.samples, folder.classes
        else:
            # torchvision's download URL is dead: the data must already be under root.
            check_stanford_cars_layout(root)
            splits = [datasets.StanfordCars(str(root), split=s, download=False) for s in ("train", "test")]
            # `_samples` holds (path, class index) without decoding every image, unlike indexing.
            samples = [sample for split in splits for sample in split._samples]
            names = splits[0].classes
    except (FileNotFoundError, RuntimeError) as error:
        raise UsageError(f"cannot read {dataset} data at {root}: {one_line(error)}") from None
    if not samples:
        raise UsageError(f"no images found in {root}")
    return ImageList(tuple(str(p) for p, _ in samples), tuple(names[i] for _, i in samples))


def find_unreadable(images: ImageList) -> list[tuple[str, str]]:
    """(path, reason) of every image PIL cannot open and verify: all of them, before any work."""
    bad = []
    for path in images.paths:
        try:
            with Image.open(path) as image:
                image.verify()
        except Exception as error:  # PIL raises many types for broken files
            bad.append((path, f"{type(error).__name__}: {error}"))
    return bad


def drop_unreadable(images: ImageList, skip: bool) -> ImageList:
    """Refuses a dataset with unreadable images, naming them all, unless `skip` drops them."""
    bad = find_unreadable(images)
    if not bad:
        return images
    listed = "; ".join(f"{path} ({reason[:80]})" for path, reason in bad[:5])
    more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
    if not skip:
        raise UsageError(
            f"{len(bad)} unreadable images: {listed}{more}; fix or remove them, or pass --skip-bad-images"
        )
    print(f"warning: skipping {len(bad)} unreadable images: {listed}{more}", file=sys.stderr)
    keep = set(images.paths) - {path for path, _ in bad}
    pairs = [(p, c) for p, c in zip(images.paths, images.classes, strict=True) if p in keep]
    return ImageList(tuple(p for p, _ in pairs), tuple(c for _, c in pairs))


def check_trainable(images: ImageList) -> None:
    """Triplet mining needs a positive for every anchor: at least 2 classes of >= 2 images."""
    counts: dict[str, int] = defaultdict(int)
    for name in images.classes:
        counts[name] += 1
    if len(counts) < 2:
        raise UsageError(f"training needs at least 2 classes, got {len(counts)}")
    lonely = sorted(name for name, count in counts.items() if count < 2)
    if lonely:
        raise UsageError(
            f"class {lonely[0]!r} has only 1 image ({len(lonely)} such classes); each class needs at least 2 images"
        )


@dataclass(frozen=True)
class ClassSplit:
    """Classes used for training and classes held out to measure retrieval on unseen cars."""

    train: tuple[str, ...]
    holdout: tuple[str, ...]


SPLIT_BY = ("class", "make")


def split_classes(
    class_names: list[str], holdout_fraction: float, seed: int, fold: int = 1, split_by: str = "class"
) -> ClassSplit:
    """Picks round(fraction * n) classes at random with a fixed seed: deterministic, disjoint.

    `split_by="make"` keeps every model of a make on the same side (makes are drawn whole, in a
    seeded order, until the held-out side has about round(fraction * n) classes), so held-out
    classes are as unseen as a new make is; with classes of one make family on both sides, a
    "held-out" score flatters the model. Fold 2 swaps the roles: it trains on fold 1's held-out
    classes and holds out its training classes, so two runs measure every class once as unseen.
    """
    if split_by not in SPLIT_BY:
        raise UsageError(f"Unknown --split-by {split_by!r}. Choose one of: {', '.join(SPLIT_BY)}")
    if fold not in (1, 2):
        raise UsageError(f"--fold must be 1 or 2, got {fold}")
    if not 0.0 <= holdout_fraction < 1.0:
        raise UsageError(f"--holdout-fraction must be in [0, 1), got {holdout_fraction}")
    names = sorted(class_names)
    count = round(holdout_fraction * len(names))
    if holdout_fraction > 0 and count == 0:
        raise UsageError(f"--holdout-fraction {holdout_fraction} of {len(names)} classes holds out none")
    if len(names) - count < 2:
        raise UsageError(f"holding out {count} of {len(names)} classes leaves fewer than 2 to train on")
    if split_by == "make":
        holdout = _whole_makes(names, count, seed)
        if len(names) - len(holdout) < 2 or (count and not holdout):
            raise UsageError(f"--split-by make cannot hold out about {count} of {len(names)} classes by whole makes")
    else:
        holdout = set(random.Random(seed).sample(names, count))
    if fold == 2:
        if count == 0:
            raise UsageError("--fold 2 swaps training and held-out classes: it needs --holdout-fraction > 0")
        holdout = set(names) - holdout
    return ClassSplit(
        train=tuple(n for n in names if n not in holdout), holdout=tuple(n for n in names if n in holdout)
    )


MIN_VAL_PER_CLASS = 2  # a validation image needs a relevant partner, or R-precision is undefined (NaN)
MIN_TRAIN_PER_CLASS = 2  # a triplet's anchor needs a positive


def _whole_makes(names: list[str], count: int, seed: int) -> set[str]:
    """The classes of whole makes whose number is closest to `count` (a subset sum over makes,
    visited in a seeded order, so the seed picks among equally good splits)."""
    by_make: dict[str, list[str]] = defaultdict(list)
    for name in names:
        by_make[make_of(name)].append(name)
    makes = sorted(by_make)
    random.Random(seed).shuffle(makes)
    reachable: dict[int, list[str]] = {0: []}  # number of classes -> the first set of makes giving it
    for make in makes:
        for total, chosen in list(reachable.items()):
            reachable.setdefault(total + len(by_make[make]), [*chosen, make])
    best = min(reachable, key=lambda total: (abs(total - count), total))
    return {name for make in reachable[best] for name in by_make[make]}


def split_validation(images: ImageList, fraction: float, seed: int) -> tuple[ImageList, ImageList]:
    """Moves `fraction` of each class's images to validation: never one alone (at least
    MIN_VAL_PER_CLASS, or none for that class), leaving >= MIN_TRAIN_PER_CLASS to train on.
    A class of 4 to 14 photos thus gives 2, and one of fewer than 4 gives none.

    Validation uses unseen *images* of the training classes, never held-out classes: early
    stopping must not look at the classes whose retrieval quality we report.
    """
    if not 0.0 <= fraction < 1.0:
        raise UsageError(f"--val-fraction must be in [0, 1), got {fraction}")
    by_class: dict[str, list[str]] = defaultdict(list)
    for path, name in zip(images.paths, images.classes, strict=False):
        by_class[name].append(path)
    rng = random.Random(seed)
    train, val = [], []
    for name in sorted(by_class):
        paths = sorted(by_class[name])
        rng.shuffle(paths)
        n_val = round(fraction * len(paths))
        if 0 < n_val < MIN_VAL_PER_CLASS:
            n_val = MIN_VAL_PER_CLASS
        n_val = min(n_val, len(paths) - MIN_TRAIN_PER_CLASS)
        if n_val < MIN_VAL_PER_CLASS:
            n_val = 0
        val += [(p, name) for p in paths[:n_val]]
        train += [(p, name) for p in paths[n_val:]]

    def as_list(pairs: list[tuple[str, str]]) -> ImageList:
        return ImageList(tuple(p for p, _ in pairs), tuple(c for _, c in pairs))

    return as_list(train), as_list(val)


class CarsDataset(Dataset):
    """Yields `SimilarityGroupSample(obj=PIL image, group=class id)`.

    Images stay PIL: the encoder's collate function applies the servable's preprocessing.
    """

    def __init__(
        self,
        images: ImageList,
        class_ids: dict[str, int],
        augment: Callable[[Image.Image], Image.Image] | None = None,
    ):
        self.images = images
        self.class_ids = class_ids
        self.augment = augment

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> SimilarityGroupSample:
        if index >= len(self.images):
            raise IndexError(index)
        try:
            image = load_image(self.images.paths[index])
        except (OSError, ValueError) as error:  # PIL's UnidentifiedImageError is an OSError
            raise UsageError(f"cannot read image {self.images.paths[index]}: {error}") from None
        if self.augment is not None:
            image = self.augment(image)
        return SimilarityGroupSample(obj=image, group=self.class_ids[self.images.classes[index]])


class AugmentedCopies(Dataset):
    """The images, then `copies` augmented views of each: augmentation the encoder cache can hold.

    Every view is drawn once, from a seed of its own index, so it is the same image in every epoch
    and every run with this seed: Quaterion caches it like any other item, and the trunk runs on
    it once instead of every epoch (what makes `--trainable-blocks` with augmentation affordable
    on a CPU). Index i < len(images) is the plain image i.
    """

    def __init__(
        self, dataset: CarsDataset, copies: int, augment: Callable[[Image.Image], Image.Image], seed: int
    ) -> None:
        self.dataset, self.copies, self.augment, self.seed = dataset, copies, augment, seed

    def __len__(self) -> int:
        return len(self.dataset) * (1 + self.copies)

    @property
    def labels(self) -> list[int]:
        return [self.dataset.class_ids[name] for name in self.dataset.images.classes] * (1 + self.copies)

    def __getitem__(self, index: int) -> SimilarityGroupSample:
        if not 0 <= index < len(self):
            raise IndexError(index)
        copy, original = divmod(index, len(self.dataset))
        sample = self.dataset[original]
        if copy == 0:
            return sample
        with torch.random.fork_rng(devices=[]):  # torchvision's random transforms draw from torch's RNG
            torch.manual_seed(self.seed * 1_000_003 + index)
            return SimilarityGroupSample(obj=self.augment(sample.obj), group=sample.group)


class ClassBalancedSampler(Sampler[int]):
    """Orders indices so that each consecutive `batch_size` chunk holds P classes x K images.

    Triplet mining needs positives in the batch: with 49 classes and batches of 128 drawn at
    random, most anchors have one or two. Each epoch yields len(dataset) // batch_size batches;
    every class's images are used in a reshuffled cycle, so all images are seen about equally.
    A plain `sampler` (not a batch sampler), so Quaterion's cache fill can still replace it.
    """

    def __init__(self, labels: list[int], batch_size: int, images_per_class: int, seed: int):
        if images_per_class < 2:
            raise UsageError(f"--images-per-class must be >= 2 (positives are needed), got {images_per_class}")
        by_class: dict[int, list[int]] = defaultdict(list)
        for index, label in enumerate(labels):
            by_class[label].append(index)
        self.by_class = {label: indices for label, indices in by_class.items() if len(indices) >= 2}
        if batch_size < images_per_class:
            raise UsageError(f"--batch-size {batch_size} is smaller than --images-per-class {images_per_class}")
        self.images_per_class = images_per_class
        self.classes_per_batch = min(batch_size // images_per_class, len(self.by_class))
        self.batch_size = self.classes_per_batch * images_per_class  # what the loader must use
        self.batches = max(len(labels) // batch_size, 1)
        self.rng = random.Random(seed)

    def __len__(self) -> int:
        return self.batches * self.batch_size

    def __iter__(self):
        pools = {label: [] for label in self.by_class}

        def take(label: int) -> int:
            if not pools[label]:
                pools[label] = self.rng.sample(self.by_class[label], len(self.by_class[label]))
            return pools[label].pop()

        for _ in range(self.batches):
            for label in self.rng.sample(sorted(self.by_class), self.classes_per_batch):
                for _ in range(self.images_per_class):
                    yield take(label)


def make_loader(
    dataset: CarsDataset, batch_size: int, shuffle: bool, workers: int, sampler: Sampler[int] | None = None
) -> GroupSimilarityDataLoader:
    return GroupSimilarityDataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle and sampler is None,
        sampler=sampler,
        num_workers=workers,
        persistent_workers=workers > 0,
    )
