"""What every command line of the project shares: `--version`, and progress bars for people only.

Every CLI parses through `parse_args`, so `--version` answers the same everywhere (the project's
version, plus the model version when a run or gallery is named), even where other flags are
required. Progress bars show only on a terminal and never with `--quiet`, so logs and pipes get
results, not bar redraws.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from importlib import metadata

from core.errors import UsageError
from core.run import Run

PROJECT = "car-similarity"


def project_version() -> str:
    try:
        return metadata.version(PROJECT)
    except metadata.PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed: make install)"


def add_common_flags(parser: argparse.ArgumentParser, quiet: bool = True) -> argparse.ArgumentParser:
    """--version (and --quiet, for CLIs that show progress)."""
    parser.add_argument(
        "--version", action="store_true", help="print the project version (and the model version of --run) and exit"
    )
    if quiet:
        parser.add_argument("--quiet", action="store_true", help="no progress bars (they show only on a terminal)")
    return parser


def _value_after(argv: list[str], names: tuple[str, ...]) -> str | None:
    for i, arg in enumerate(argv):
        for name in names:
            if arg == name and i + 1 < len(argv):
                return argv[i + 1]
            if arg.startswith(f"{name}="):
                return arg.split("=", 1)[1]
    return None


def version_text(argv: list[str]) -> str:
    text = f"{PROJECT} {project_version()}"
    run = _value_after(argv, ("--run", "--out"))
    if run and Run.exists(run):
        try:
            text += f"; model {Run.open(run).model_version[:12]} ({run})"
        except UsageError as error:
            text += f"; {error}"
    return text


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> argparse.Namespace:
    """`parser.parse_args`, but `--version` wins over missing required flags; applies --quiet."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--version" in argv:
        print(version_text(argv))
        raise SystemExit(0)
    args = parser.parse_args(argv)
    show_progress(not getattr(args, "quiet", False))
    return args


def progress_shown() -> bool:
    """Whether progress bars show in this process (what `show_progress` decided)."""
    return os.environ.get("TQDM_DISABLE") != "1"


def show_progress(wanted: bool = True) -> bool:
    """Progress bars on a terminal only, and only if `wanted`. tqdm reads TQDM_DISABLE when it is
    imported (child processes, a tqdm not imported yet); a tqdm already imported, whose bars
    quaterion makes while evaluating, gets `disable=True` as its default instead."""
    enabled = wanted and sys.stderr.isatty()
    if not enabled:
        os.environ["TQDM_DISABLE"] = "1"
        if "tqdm" in sys.modules:
            import tqdm

            tqdm.tqdm.__init__ = functools.partialmethod(tqdm.tqdm.__init__, disable=True)
    return enabled
