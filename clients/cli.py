"""CLI plumbing for the clients: a ClientError is one line on stderr and exit status 2."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from clients.api import API_KEY_ENV, ClientError


def add_api_key_argument(parser: argparse.ArgumentParser) -> None:
    """--api-key for a server with token authorization (serve/config.public.properties)."""
    parser.add_argument(
        "--api-key",
        help=f"the server's inference key, if it requires one (default: ${API_KEY_ENV}; "
        "prefer the variable: a flag shows in the process list)",
    )


def run_cli(main: Callable[[list[str] | None], object], argv: list[str] | None = None) -> int:
    try:
        main(argv)
    except ClientError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0
