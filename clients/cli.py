"""CLI plumbing for the clients: a ClientError is one line on stderr and exit status 2."""

from __future__ import annotations

import sys
from collections.abc import Callable

from clients.api import ClientError


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
