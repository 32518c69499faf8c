"""CLI plumbing for the clients: a ClientError (a `core.errors.UsageError`) is one line on stderr
and exit status 2, through the project's one runner."""

from __future__ import annotations

import argparse

from clients.api import API_KEY_ENV
from core.errors import run_cli  # noqa: F401  (the clients' CLIs import it from here)


def add_api_key_argument(parser: argparse.ArgumentParser) -> None:
    """--api-key for a server with token authorization (serve/config.public.properties)."""
    parser.add_argument(
        "--api-key",
        help=f"the server's inference key, if it requires one (default: ${API_KEY_ENV}; "
        "prefer the variable: a flag shows in the process list)",
    )
