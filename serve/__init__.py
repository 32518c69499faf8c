"""Serving: the plain `embedder`, the TorchServe `handler` over it, and `archive` to pack a run."""
