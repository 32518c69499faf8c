"""What every benchmark shares: test images, a trained run, statistics and the machine's name."""

from __future__ import annotations

import argparse
import io
import os
import platform
import statistics
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from core.dev_data import CARS_DEV, MOBILENET_WEIGHTS, ROOT
from core.files import write_json_atomic
from core.huge_pages import huge_pages_requested
from core.run import Run

IMAGE_SUFFIXES = {".jpg", ".jpeg"}


def generated_photo(seed: int, size: tuple[int, int] = (500, 260)) -> bytes:
    """A JPEG the size of a Stanford Cars photo: smooth colour fields plus sensor-like noise
    (JPEG size and decode cost close to a real photo's; not a car)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    width, height = size
    coarse = rng.uniform(0, 255, (height // 20 + 2, width // 20 + 2, 3)).astype(np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), dtype=np.float32)
    pixels = np.clip(smooth + rng.normal(0, 8, smooth.shape), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def load_photos(count: int, data: str | Path | None = None, seed: int = 0) -> tuple[list[bytes], str]:
    """`count` JPEG bodies: real photos from `data` (default ../shared/data/cars196-dev) when it
    exists, generated ones otherwise. Returns them and a description of where they came from."""
    root = Path(data) if data else CARS_DEV
    if root.is_dir():
        paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if paths:
            rng = np.random.default_rng(seed)
            chosen = [paths[i] for i in rng.choice(len(paths), size=min(count, len(paths)), replace=False)]
            return [p.read_bytes() for p in chosen], f"{len(chosen)} real JPEGs from {root}"
    if data:
        raise SystemExit(f"error: no JPEG images under {data}")
    return [generated_photo(seed + i) for i in range(count)], f"{count} generated 500x260 JPEGs (no {root})"


def ensure_run(run: str | Path, backbone: str = "mobilenet_v2", input_size: int = 224) -> Path:
    """`run` if it holds a trained run, else trains a small one there (1 epoch; weights from
    ../shared for mobilenet_v2 when present, else random: speed does not depend on the weights)."""
    run = Path(run)
    if Run.exists(run):
        return run
    data = CARS_DEV
    if not data.is_dir():
        data = run.parent / f"{run.name}-data"
        subprocess.run([sys.executable, "-m", "train.synthetic", "--out", str(data)], cwd=ROOT, check=True)
    weights = str(MOBILENET_WEIGHTS) if backbone == "mobilenet_v2" and MOBILENET_WEIGHTS.is_file() else "none"
    print(f"Training a 1-epoch {backbone} run into {run} (weights: {weights}) ...", flush=True)
    command = [
        sys.executable, "-m", "train.train", "--data", str(data), "--run", str(run), "--overwrite",
        "--backbone", backbone, "--weights", weights, "--input-size", str(input_size), "--epochs", "1",
        "--recipe", "seed",  # a servable to time: only its architecture matters
    ]  # fmt: skip
    subprocess.run(command, cwd=ROOT, check=True)
    return run


def percentiles(values_ms: list[float]) -> dict[str, float]:
    if not values_ms:
        return {"p50_ms": float("nan"), "p95_ms": float("nan"), "p99_ms": float("nan")}
    p50, p95, p99 = np.percentile(values_ms, [50, 95, 99])
    return {"p50_ms": round(float(p50), 2), "p95_ms": round(float(p95), 2), "p99_ms": round(float(p99), 2)}


def median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def machine() -> dict[str, object]:
    """Where a figure was measured: the docs print it next to every table."""
    info: dict[str, object] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
        "cpus": os.cpu_count(),
        "cpu": _cpu_model(),
        "huge_pages": huge_pages_requested(),  # PyTorch's THP_MEM_ALLOC_ENABLE: 1.5-2x on CPUs
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:  # the gallery benchmark runs from the torch-free client venv
        pass
    info["numpy"] = np.__version__
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def write_json(path: str | Path | None, payload: dict) -> None:
    """Writes results atomically (temp + rename) when a path is given."""
    if not path:
        return
    write_json_atomic(path, payload)
    print(f"Wrote {path}")


def table(rows: list[dict], columns: list[str]) -> str:
    """A Markdown table of `columns` (what the docs paste)."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(c, "")) for c in columns) + " |")
    return "\n".join(lines)


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def parse_list(text: str, kind: type = int) -> list:
    """ "1,8,16" -> [1, 8, 16] (argparse type for sweeps)."""
    return [kind(part) for part in text.split(",") if part.strip()]


def add_model_and_photo_arguments(parser: argparse.ArgumentParser, images: int, devices: str) -> None:
    """The run, device and photo options every serving benchmark shares (same names, same defaults)."""
    parser.add_argument(
        "--run", default="runs/cars-mnv2", help="trained run, trained if missing (default: %(default)s)"
    )
    parser.add_argument("--backbone", default="mobilenet_v2", help="backbone of a run to train (default: %(default)s)")
    parser.add_argument("--device", default="cpu", help=f"{devices} (default: %(default)s)")
    parser.add_argument("--data", help="JPEG folder (default: ../shared/data/cars196-dev, else generated photos)")
    parser.add_argument("--images", type=int, default=images, help="distinct images per pass (default: %(default)s)")


def run_and_photos(args: argparse.Namespace) -> tuple[Path, list[bytes], str]:
    """The run (trained first if missing), the JPEG bodies named by those shared options, and
    where the bodies came from."""
    run = ensure_run(args.run, args.backbone)
    bodies, source = load_photos(args.images, args.data)
    print(f"{source}; run {run}; device {args.device}", flush=True)
    return run, bodies, source
