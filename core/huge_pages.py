"""Transparent huge pages for PyTorch's large CPU tensors: the CPU speed switch that is not a flag.

A batch of wide car photos makes activations of several MB each. glibc serves allocations that
large with fresh pages from the kernel (mmap, or heap it has trimmed back) and returns them when
they are freed, so every forward pass faults its activations in again, 4 KB at a time, each page
zeroed: on the 2-core VM the kernel's CPU time came to two thirds of the network's.
With THP_MEM_ALLOC_ENABLE=1, PyTorch aligns allocations of 2 MB and more to huge pages and
madvises them, one fault per 2 MB: MobileNetV2 + EfficientNet-Lite2 served 1.5x the images/s at
batch 8 and 2x at batch 32 (docs/quality.md, "Speed"). Where the kernel has transparent huge pages
off, the variable does nothing and nothing breaks.

PyTorch reads the variable once, at its first CPU allocation, so it must be in the environment
before any tensor exists: the `train`, `serve` and `bench` packages call `use_huge_pages()` first
thing, and the TorchServe launcher and the container image put it in the workers' environment.
A value already set (e.g. THP_MEM_ALLOC_ENABLE=0 to compare) is left alone.
"""

from __future__ import annotations

import os

VARIABLE = "THP_MEM_ALLOC_ENABLE"


def use_huge_pages() -> None:
    """Turns huge pages on for this process and its children, unless the environment says otherwise."""
    os.environ.setdefault(VARIABLE, "1")


def huge_pages_requested() -> bool:
    """Whether this process asked PyTorch for huge pages (what benchmarks print beside their figures)."""
    return os.environ.get(VARIABLE, "0").strip() not in ("", "0")
