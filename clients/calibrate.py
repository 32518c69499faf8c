"""Calibrate a gallery's match levels on its own labelled rows (clients/calibration.py).

    python clients/calibrate.py --gallery galleries/gallery.npz [--json]

Keeps the calibration in the gallery: the search page then shows each result's level ("likely
the same model", "similar", "different") and takes `min_level`. Rows need labels that name their
car model (the folder names of a built gallery). Rerun after the gallery or its model changes.
"""

from __future__ import annotations

import argparse
import json
import sys

from clients.calibration import calibrate_store
from clients.cli import run_cli
from clients.store import DEFAULT_GALLERY, open_store
from core.cli import add_common_flags, parse_args


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gallery", default=DEFAULT_GALLERY, help="gallery store (default: %(default)s)")
    parser.add_argument("--json", action="store_true", help="print the calibration as JSON")
    return add_common_flags(parser)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(get_args_parser(), argv)
    store = open_store(args.gallery)
    try:
        calibration = calibrate_store(store)
    finally:
        store.close()
    if args.json:
        print(json.dumps(calibration, indent=2))
        return calibration
    print(f"{args.gallery}: calibrated on {calibration['method']} ({calibration['labels']} car models)")
    for level, bound in calibration["thresholds"].items():
        shown = "never reached" if bound is None else f"score >= {bound:.4f}"
        chance = calibration["chance"][level]
        print(f"  {level:<22} {shown}  (a result scoring that is the same car model {chance:.0%} of the time or more)")
    return calibration


def cli() -> int:
    """The console script's entry point (pyproject.toml [project.scripts])."""
    return run_cli(main)


if __name__ == "__main__":
    sys.exit(cli())
