"""Frozen-backbone features of every image of a dataset, cached: what bench/backbone_folds.py compares.

A frozen backbone computes the same features for an image whatever the fold, the head or the
recipe, so each backbone x input shape is run once over the whole dataset, plain and mirrored
(the mirror-averaged features of `--flip-average` are the mean of the two). The encoder and its
preprocessing are the project's own (`core.encoders.CarsEncoder`, `member_preprocessing`), so a
feature here is the feature training computes. Also records the backbone's in-process speed.

    python -m bench.backbone_features --data ../shared/data/cars196-dev \
        --member mobilenet_v2@224x392 --member timm/tf_efficientnet_lite2@260x455
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from core.encoders import CarsEncoder, member_preprocessing, weights_identity
from core.preprocessing import load_image
from train.data import load_image_list

CACHE = Path(".cache/bench-features")


def parse_member(text: str) -> tuple[str, int, float]:
    """`NAME@HxW` -> (name, height, aspect)."""
    name, _, shape = text.partition("@")
    height, _, width = shape.partition("x")
    return name, int(height), int(width) / int(height)


def member_key(text: str, data: Path, paths: list[str]) -> str:
    name, height, aspect = parse_member(text)
    identity = {"member": text, "weights": weights_identity("default", name), "data": str(data.resolve()),
                "paths": hashlib.sha256("\n".join(paths).encode()).hexdigest()}  # fmt: skip
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def extract(text: str, data: Path, batch_size: int = 32, mirror: bool = True) -> dict[str, np.ndarray]:
    """{"plain", "mirror": float32 [N, D], "classes": [N], "paths": [N], "img_per_s": plain pass speed}.
    `mirror=False` skips the mirrored pass (half the time; no `mirror` then), unless it is cached."""
    images = load_image_list(data)
    paths = list(images.paths)
    key = member_key(text, data, paths)
    for file in (CACHE / f"{key}.npz", CACHE / f"{key}-plain.npz")[: 2 if not mirror else 1]:
        if file.is_file():
            with np.load(file, allow_pickle=False) as cached:
                return dict(cached)
    file = CACHE / f"{key}{'' if mirror else '-plain'}.npz"
    name, height, aspect = parse_member(text)
    preprocessing = member_preprocessing(name, "default", height, aspect)
    encoder = CarsEncoder.create(name, "default", preprocessing)
    encoder.eval()
    plain, mirrored, seconds = [], [], 0.0
    with torch.inference_mode():
        for start in tqdm(range(0, len(paths), batch_size), desc=text, unit="batch"):
            batch = preprocessing.batch([load_image(p) for p in paths[start : start + batch_size]])
            began = time.perf_counter()
            plain.append(encoder(batch).numpy())
            seconds += time.perf_counter() - began
            if mirror:
                mirrored.append(encoder(torch.flip(batch, dims=[-1])).numpy())
    result = {
        "plain": np.concatenate(plain), "classes": np.array(images.classes),
        "paths": np.array(paths), "img_per_s": np.array(len(paths) / seconds),
    }  # fmt: skip
    if mirror:
        result["mirror"] = np.concatenate(mirrored)
    CACHE.mkdir(parents=True, exist_ok=True)
    partial = file.with_suffix(".partial.npz")
    np.savez(partial, **result)
    partial.replace(file)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument(
        "--member", action="append", required=True, help="NAME@HxW, repeatable; NAME@HxW:plain skips the mirror"
    )
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    for member in args.member:
        text, _, option = member.partition(":")
        features = extract(text, args.data, args.batch_size, mirror=option != "plain")
        print(f"{text}: {features['plain'].shape}, {float(features['img_per_s']):.1f} img/s (plain pass)")


if __name__ == "__main__":
    main()
