"""A servable with random weights, for speed measurements where training is impossible or pointless.

    python -m bench.random_servable --backbone resnet152 --run runs/bench-resnet152 [--input-size 224]

Writes OUT/servable (frozen torchvision backbone + SkipConnectionHead, saved exactly as training
saves them) and OUT/run.json with its model_version. Needs torch, torchvision and quaterion-models
only (no Quaterion, no Lightning): e.g. on a GPU machine whose environment lacks the training
stack. Its embeddings are meaningless; its speed is the trained model's (same architecture).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from quaterion_models import SimilarityModel
from quaterion_models.heads import SkipConnectionHead

from core.encoders import CarsEncoder
from core.preprocessing import Preprocessing
from core.run import Run


def make_servable(backbone: str, out: Path, input_size: int = 224) -> Path:
    encoder = CarsEncoder.create(backbone, "none", Preprocessing(input_size=input_size))
    model = SimilarityModel(encoders=encoder, head=SkipConnectionHead(encoder.embedding_size))
    info = {
        "note": "random weights (bench/random_servable.py): for speed measurements only",
        "args": {"backbone": backbone, "weights": "none", "input_size": input_size},
        "embedding_size": encoder.embedding_size,
    }
    run = Run.write(out, model.save, info)  # the same atomic writer as training's
    print(f"Wrote {out}/servable ({backbone}, {input_size} px, random weights), version {run.model_version[:12]}")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="resnet152", help="torchvision model name (default: %(default)s)")
    parser.add_argument("--run", "--out", dest="out", type=Path, required=True, help="run directory to write")
    parser.add_argument("--input-size", type=int, default=224, help="(default: %(default)s)")
    args = parser.parse_args(argv)
    make_servable(args.backbone, args.out, args.input_size)


if __name__ == "__main__":
    main()
