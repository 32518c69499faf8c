"""Generate a small SYNTHETIC image dataset (ImageFolder layout) for tests and the offline demo.

    python -m train.synthetic --out data/synthetic

Each class is a (colour, shape) pair drawn at a random position, size and rotation on a noisy
background. Held-out classes are new combinations of colours and shapes seen in training, so a
model that learns the two factors retrieves unseen classes well: learnable, yet not trivial.
These are not car photos; they only exercise the pipeline.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
from pathlib import Path

from PIL import Image, ImageDraw

from core.cli import add_common_flags, parse_args
from core.errors import UsageError, run_cli
from core.files import write_dir_atomic

COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 70, 220),
    "yellow": (230, 210, 40),
    "magenta": (200, 50, 200),
    "cyan": (40, 200, 210),
}
SHAPES = ("circle", "square", "triangle", "cross", "ring", "diamond")


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    corners = {"square": 4, "triangle": 3, "diamond": 4}[shape]
    offset = math.pi / 4 if shape == "diamond" else 0.0
    return [
        (
            cx + r * math.cos(angle + offset + 2 * math.pi * i / corners),
            cy + r * math.sin(angle + offset + 2 * math.pi * i / corners),
        )
        for i in range(corners)
    ]


def draw_sample(colour: str, shape: str, size: int, rng: random.Random) -> Image.Image:
    """One image of the (colour, shape) class with random pose, jitter and background noise."""
    background = tuple(rng.randint(90, 160) for _ in range(3))
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    for _ in range(size // 4):  # clutter: small grey specks
        x, y = rng.randrange(size), rng.randrange(size)
        grey = rng.randint(60, 200)
        draw.rectangle([x, y, x + 2, y + 2], fill=(grey, grey, grey))
    fill = tuple(max(0, min(255, c + rng.randint(-25, 25))) for c in COLOURS[colour])
    r = rng.uniform(0.18, 0.32) * size
    cx, cy = rng.uniform(r, size - r), rng.uniform(r, size - r)
    angle = rng.uniform(0, 2 * math.pi)
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=fill, width=max(2, int(r / 3)))
    elif shape == "cross":
        w = r / 3
        draw.rectangle([cx - r, cy - w, cx + r, cy + w], fill=fill)
        draw.rectangle([cx - w, cy - r, cx + w, cy + r], fill=fill)
    else:
        draw.polygon(_polygon(shape, cx, cy, r, angle), fill=fill)
    return image


MARKER = ".synthetic-dataset"  # in every generated dataset: what a later run may replace


def generate(
    out: str | Path,
    colours: int = 4,
    shapes: int = 4,
    per_class: int = 20,
    size: int = 96,
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Writes colours x shapes classes of `per_class` JPEGs into `out`, atomically. An existing
    `out` is replaced only if it is empty, an earlier generated dataset, or `overwrite`."""
    if not 1 <= colours <= len(COLOURS) or not 1 <= shapes <= len(SHAPES):
        raise UsageError(f"--colours must be 1..{len(COLOURS)} and --shapes 1..{len(SHAPES)}")
    if per_class < 2 or size < 16:
        raise UsageError("--per-class must be >= 2 and --size >= 16")
    rng = random.Random(seed)

    def fill(tmp: str) -> None:
        for colour in list(COLOURS)[:colours]:
            for shape in SHAPES[:shapes]:
                folder = Path(tmp) / f"synthetic_{colour}_{shape}"
                folder.mkdir()
                for i in range(per_class):
                    draw_sample(colour, shape, size, rng).save(folder / f"{i:04d}.jpg", quality=90)

    out = Path(out)
    write_dir_atomic(out, fill, marker=MARKER, overwrite=overwrite)
    return out


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--out", required=True, help="directory to write; an existing one only if it is empty or generated before"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace --out whatever it holds")
    parser.add_argument("--colours", type=int, default=4, help=f"number of colours, 1..{len(COLOURS)} (default: 4)")
    parser.add_argument("--shapes", type=int, default=4, help=f"number of shapes, 1..{len(SHAPES)} (default: 4)")
    parser.add_argument("--per-class", type=int, default=20, help="images per class (default: 20)")
    parser.add_argument("--size", type=int, default=96, help="image side in pixels (default: 96)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    return add_common_flags(parser, quiet=False)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(get_args_parser(), argv)
    out = generate(args.out, args.colours, args.shapes, args.per_class, args.size, args.seed, args.overwrite)
    print(f"Wrote {args.colours * args.shapes} synthetic classes x {args.per_class} images to {out}")


def cli() -> int:
    """The console script's entry point (pyproject.toml [project.scripts])."""
    return run_cli(main)


if __name__ == "__main__":
    sys.exit(cli())
