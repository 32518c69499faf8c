"""Benchmarks (issue 6): serving end to end vs in process, training cache, gallery search.

Each module is a CLI (`python -m bench.<name> --help`); `make bench` runs the CPU suite and
docs/benchmarks.md holds the figures with the commands that produced them.
"""

from core.huge_pages import use_huge_pages

use_huge_pages()  # before any tensor exists: PyTorch reads the setting once (core/huge_pages.py)
