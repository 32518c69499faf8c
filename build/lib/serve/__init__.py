"""Serving: the plain `embedder`, the TorchServe `handler` over it, `archive` to pack a run,
`torchserve` (the one launcher) and `server` (its CLI: make serve / make stop)."""
