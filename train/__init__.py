"""Similarity training for car images: Quaterion + a frozen torchvision backbone + a trainable head.

Modules that the servable needs at load time (`encoders`, `preprocessing`) import neither
Quaterion nor anything else from training, so serving can ship them alone.
"""
