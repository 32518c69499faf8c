"""Serving: the plain `embedder`, the TorchServe `handler` over it, `archive` to pack a run,
`torchserve` (the one launcher) and `server` (its CLI: make serve / make stop)."""

from core.huge_pages import use_huge_pages

use_huge_pages()  # before any tensor exists: PyTorch reads the setting once (core/huge_pages.py)
