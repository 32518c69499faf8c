"""What a servable is made of, and what training, serving and the clients all share.

Torch-free (importable by the thin clients): `errors`, `files`, `run`, `dev_data`.
Torch (training and serving): `preprocessing`, `encoders`, `heads`, `servable`.

train/ trains, serve/ serves; both import this package and never each other. The TorchServe
archive ships this package whole, so what a servable needs at load time lives here and only here.
"""
