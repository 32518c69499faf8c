"""Draws a query image beside its top-k results, with labels and scores (Pillow only)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from PIL import Image, ImageDraw, ImageOps

TILE = 200
CAPTION = 36


def _tile(path: str, caption: str) -> Image.Image:
    tile = Image.new("RGB", (TILE, TILE + CAPTION), "white")
    try:
        with Image.open(path) as image:
            picture = ImageOps.exif_transpose(image).convert("RGB")
        picture.thumbnail((TILE, TILE))
        tile.paste(picture, ((TILE - picture.width) // 2, (TILE - picture.height) // 2))
    except OSError:
        caption = f"(unreadable) {caption}"
    draw = ImageDraw.Draw(tile)
    for line, text in enumerate(caption.split("\n")[:2]):
        draw.text((4, TILE + 4 + 15 * line), text[:34], fill="black")
    return tile


def draw_results(answer: dict, out: Path) -> None:
    tiles = [_tile(answer["query"], f"QUERY\n{Path(answer['query']).name}")]
    tiles += [_tile(r["path"], f"#{r['rank']} {r['score']:.3f}\n{r['label']}") for r in answer["results"]]
    sheet = Image.new("RGB", (len(tiles) * (TILE + 8), TILE + CAPTION), (230, 230, 230))
    for i, tile in enumerate(tiles):
        sheet.paste(tile, (i * (TILE + 8), 0))
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, suffix=".png")
    os.close(fd)
    sheet.save(tmp, format="PNG")
    os.replace(tmp, out)
