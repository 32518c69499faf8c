"""One exception type for bad user input, and the runner that turns it into one readable line."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def one_line(text: object, limit: int = 160) -> str:
    """A library's message as one readable line: terminal colour codes removed, whitespace joined,
    and, when too long, cut after its last whole sentence that fits, else at a word boundary with
    an ellipsis (never mid-word)."""
    line = " ".join(_ANSI.sub("", str(text)).split())
    if len(line) <= limit:
        return line
    head = line[: limit + 1]
    sentence = head.rfind(". ")
    if sentence >= 20:
        return head[: sentence + 1]
    return head.rsplit(" ", 1)[0].rstrip(",;:") + " …"


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
