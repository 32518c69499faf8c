"""Frozen backbones, their ensembles and re-ranking, compared on make-disjoint folds in one command.

For each configuration and each outer fold (train.data.split_classes, split by make, as
`train.train --split-by make --fold N` splits), the learned whitening (`core.heads.WhiteningHead`,
the whitened recipe's head) is fitted on the fold's training images (its validation images left
out, as train.train leaves them out) and the held-out makes are scored as `train.evaluate` scores
them (every photo a query, Quaterion's metrics). Inner validation splits each outer fold's
training classes by make once more and scores the same way without reading the held-out makes:
what a choice may be made on. Features come from bench/backbone_features.py (computed once).

A configuration is members joined by `+`, each `NAME@HxW`, with `:flip` for mirror averaging;
`--feature-power` and `--shrinkage` take comma lists, and every combination is scored:

    python -m bench.backbone_folds --data ../shared/data/cars196-dev \
        --config mobilenet_v2@224x392:flip \
        --config mobilenet_v2@224x392+timm/tf_efficientnet_lite2@260x455 --feature-power 1,0.6 --rerank
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.backbone_features import extract
from core.heads import WhiteningHead
from core.rerank import DEFAULT as DEFAULT_RERANK
from core.rerank import RerankSettings
from train.data import ImageList, split_classes, split_validation
from train.metrics import put_first, reranked_shortlists, retrieval_metrics

METRICS = ("r_precision", "precision_at_1", "map_at_r")


def features(config: str, data: Path, power: float = 1.0) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The configuration's embeddings before the head: one member's features as the encoder
    outputs them, or an ensemble's members, each power-normalised (`power`, the ensemble's
    feature_power) and L2-normalised, side by side (core/ensemble.py's EnsembleEncoder.forward)."""
    members = config.split("+")
    parts, classes, paths = [], None, None
    for member in members:
        text, _, option = member.partition(":")
        cached = extract(text, data, mirror=option == "flip")
        vectors = (cached["plain"] + cached["mirror"]) / 2 if option == "flip" else cached["plain"]
        if len(members) > 1:
            vectors = np.sign(vectors) * np.abs(vectors) ** power
            vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        parts.append(vectors.astype(np.float32))
        classes, paths = cached["classes"], [str(p) for p in cached["paths"]]
    return np.concatenate(parts, axis=1), np.asarray(classes), paths


def scores(embeddings: torch.Tensor, groups: torch.Tensor, rerank: RerankSettings | None) -> dict[str, float]:
    """train.evaluate's three metrics, every image a query against all others (self masked)."""
    embeddings = torch.nn.functional.normalize(embeddings, dim=1)
    shortlists = None
    if rerank is not None:  # each query's shortlist in the order a re-ranking store serves it
        shortlists = reranked_shortlists(embeddings.numpy(), np.arange(len(embeddings)), rerank)
    result = {}
    for name, metric in retrieval_metrics().items():
        labels = metric.prepare_labels(groups).float()
        distances = metric.distance.distance_matrix(embeddings, embeddings)
        index = torch.arange(len(embeddings))
        distances[index, index] = distances.max() + 1
        if shortlists is not None:
            distances = put_first(distances, shortlists)
        result[name] = float(metric.raw_compute(distances, labels).float().mean())
    return result


def fit_and_embed(
    vectors: np.ndarray, classes: np.ndarray, paths: list[str], train: set[str], test: set[str], shrinkage: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Whitening fitted on `train`'s classes (less train.train's validation images); `test`'s classes
    embedded by it, with their class ids."""
    images = ImageList(tuple(paths), tuple(classes))
    fitted, _ = split_validation(images.only(train), 0.1, 42)
    row = {path: i for i, path in enumerate(paths)}
    fit_rows = [row[p] for p in fitted.paths]
    ids = {name: i for i, name in enumerate(sorted(set(classes)))}
    head = WhiteningHead(vectors.shape[1], shrinkage=shrinkage)
    head.fit(torch.from_numpy(vectors[fit_rows]), torch.tensor([ids[c] for c in classes[fit_rows]]))
    test_rows = [i for i, c in enumerate(classes) if c in test]
    with torch.no_grad():
        embedded = head.transform(torch.from_numpy(vectors[test_rows]))
    return embedded, torch.tensor([ids[c] for c in classes[test_rows]])


def evaluate(
    config: str, data: Path, shrinkage: float, settings: list[RerankSettings | None], power: float = 1.0
) -> list[dict[str, Any]]:
    """One result per re-rank setting (None: plain search), each with outer and inner fold scores."""
    vectors, classes, paths = features(config, data, power)
    names = sorted(set(classes))
    results = [
        {"config": config, "feature_power": power, "shrinkage": shrinkage, "dim": int(vectors.shape[1]),
         "outer": {}, "inner": {}}
        for _ in settings
    ]  # fmt: skip
    for fold in (1, 2):
        outer = split_classes(names, 0.5, 42, fold, "make")
        embedded = fit_and_embed(vectors, classes, paths, set(outer.train), set(outer.holdout), shrinkage)
        inner_embedded = []
        for inner_fold in (1, 2):
            inner = split_classes(sorted(outer.train), 0.5, 42, inner_fold, "make")
            inner_embedded.append(
                fit_and_embed(vectors, classes, paths, set(inner.train), set(inner.holdout), shrinkage)
            )
        for result, rerank in zip(results, settings, strict=True):
            result["outer"][fold] = scores(*embedded, rerank)
            inner_scores = [scores(*pair, rerank) for pair in inner_embedded]
            result["inner"][fold] = {m: float(np.mean([s[m] for s in inner_scores])) for m in METRICS}
    for result, rerank in zip(results, settings, strict=True):
        result["outer_mean"] = {m: float(np.mean([result["outer"][f][m] for f in (1, 2)])) for m in METRICS}
        result["inner_mean"] = {m: float(np.mean([result["inner"][f][m] for f in (1, 2)])) for m in METRICS}
        result["rerank"] = None if rerank is None else {"k": rerank.k, "alpha": rerank.alpha,
                                                          "shortlist": rerank.shortlist}  # fmt: skip
    return results


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument("--config", action="append", required=True, help="members joined by '+', repeatable")
    parser.add_argument("--shrinkage", default="0.3", help="the whitening's, comma list (default: 0.3)")
    parser.add_argument(
        "--feature-power", default="1", help="an ensemble's members' power normalisation, comma list (default: 1)"
    )
    parser.add_argument("--rerank", action="store_true", help="also score re-ranked searches (core.rerank)")
    parser.add_argument("--rerank-k", default=str(DEFAULT_RERANK.k), help="comma list: every k x alpha is scored")
    parser.add_argument("--rerank-alpha", default=f"{DEFAULT_RERANK.alpha:g}", help="comma list")
    parser.add_argument("--rerank-shortlist", default=str(DEFAULT_RERANK.shortlist), help="comma list")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    settings: list[RerankSettings | None] = [None]
    if args.rerank:
        settings += [
            RerankSettings(int(k), float(alpha), int(shortlist))
            for shortlist in args.rerank_shortlist.split(",")
            for k in args.rerank_k.split(",")
            for alpha in args.rerank_alpha.split(",")
        ]
    results = []
    header = f"{'configuration':<60} {'power':<5} {'shrink':<6} {'rerank':<12} {'outer R-prec / P@1 / MAP@R':<28}"
    print(f"{header} inner R-prec / P@1 / MAP@R")
    grid = [(float(p), float(s)) for p in args.feature_power.split(",") for s in args.shrinkage.split(",")]
    for config in args.config:
        for power, shrinkage in grid:
            for result in evaluate(config, args.data, shrinkage, settings, power):
                results.append(result)
                outer = " / ".join(f"{result['outer_mean'][m]:.3f}" for m in METRICS)
                inner = " / ".join(f"{result['inner_mean'][m]:.3f}" for m in METRICS)
                rerank = result["rerank"]
                tag = "-" if rerank is None else f"k{rerank['k']}a{rerank['alpha']:g}s{rerank['shortlist']}"
                print(f"{config:<60} {power:<5g} {shrinkage:<6g} {tag:<12} {outer:<28} {inner}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
