"""One exception type for bad user input, and the runner that turns it into one readable line."""

from __future__ import annotations

import sys
from collections.abc import Callable


class UsageError(Exception):
    """Bad arguments, data or state the user must fix: the CLI prints the message and exits with 2."""


def run_cli(main: Callable[[list[str] | None], object], argv: list[str] | None = None) -> int:
    """Runs `main(argv)`; a UsageError (or subclass) becomes `error: ...` on stderr and exit status 2."""
    try:
        main(argv)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0
