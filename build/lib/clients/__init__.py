"""Thin clients (requests + numpy + pillow, no torch): build a gallery through the server, query it."""
