"""Add, change and remove gallery photos through a running search service, as an app does.

    python clients/listings.py add car.jpg --id ad-1042-front --set listing=ad-1042 --set price=18500
    python clients/listings.py update ad-1042-front --set price=17900 --remove colour
    python clients/listings.py get ad-1042-front
    python clients/listings.py delete ad-1042-front

The same requests as `POST / PATCH / DELETE / GET /gallery` (search_service/web.py), so the same rules:
the photo is embedded by the served model and the answer comes once the gallery has it durably.
Writes send the write key from CARS_WRITE_KEY or --write-key-file. Errors: one line, exit 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import requests

from clients.api import ClientError
from clients.cli import run_cli
from clients.metadata import _typed
from search_service.writes import WRITE_KEY_ENV, load_write_key
from core.cli import add_common_flags, parse_args

DEFAULT_SERVICE = "http://127.0.0.1:8000"


def fields_of(pairs: list[str], removed: list[str]) -> dict[str, Any]:
    """--set NAME=VALUE (numbers become numbers, a listing stays text) and --remove NAME (null)."""
    fields: dict[str, Any] = {}
    for pair in pairs:
        name, found, value = pair.partition("=")
        if not found or not name:
            raise ClientError(f"--set {pair!r}: write NAME=VALUE, e.g. --set price=18500")
        fields[name] = value if name == "listing" else _typed(value)
    return {**fields, **{name: None for name in removed}}


def call(method: str, url: str, key: str | None, **kwargs) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        response = requests.request(method, url, headers=headers, timeout=120, **kwargs)
    except requests.RequestException as error:
        raise ClientError(f"cannot reach the search service at {url} ({type(error).__name__})") from None
    try:
        answer = response.json()
    except ValueError:
        answer = {"error": response.text[:200]}
    if not response.ok:
        raise ClientError(f"HTTP {response.status_code}: {answer.get('error', answer)}")
    return answer


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--service", default=DEFAULT_SERVICE, help="the search service (default: %(default)s)")
    parser.add_argument("--write-key-file", help=f"file holding the write key (default: ${WRITE_KEY_ENV})")
    parser.add_argument("--json", action="store_true", help="print the service's answer as JSON")
    commands = parser.add_subparsers(dest="command", required=True)
    add = commands.add_parser("add", help="add a photo under the app's id")
    add.add_argument("photo", help="the image file")
    add.add_argument("--id", required=True, help="the app's id of this photo")
    add.add_argument("--label", default="", help="a Stanford Cars style label (make, model and year are read from it)")
    update = commands.add_parser("update", help="set or remove metadata fields")
    update.add_argument("id")
    for command in (add, update):
        command.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="a metadata field")
    update.add_argument("--remove", action="append", default=[], metavar="NAME", help="a metadata field to remove")
    commands.add_parser("delete", help="remove a photo (row and kept photo)").add_argument("id")
    commands.add_parser("get", help="show a photo's row").add_argument("id")
    return add_common_flags(parser)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(get_args_parser(), argv)
    base = f"{args.service.rstrip('/')}/gallery"
    key = load_write_key(args.write_key_file) if args.command != "get" else None
    if args.command != "get" and key is None:
        raise ClientError(f"writes need the service's write key: set {WRITE_KEY_ENV} or --write-key-file")
    if args.command == "add":
        photo = Path(args.photo)
        try:
            data = photo.read_bytes()
        except OSError as error:
            raise ClientError(f"cannot read {photo}: {error.strerror}") from None
        form = {**{k: str(v) for k, v in fields_of(args.set, []).items()}, "id": args.id, "label": args.label}
        answer = call("POST", base, key, files={"file": (photo.name, data)}, data=form)
    elif args.command == "update":
        answer = call("PATCH", f"{base}/{args.id}", key, json=fields_of(args.set, args.remove))
    else:
        answer = call(args.command.upper(), f"{base}/{args.id}", key)
    if args.json:
        print(json.dumps(answer, indent=2))
    elif args.command == "delete":
        print(f"deleted {args.id}")
    else:
        shown = {k: v for k, v in answer.items() if k not in ("id", "image_url")}
        print(f"{answer.get('app_id', args.id)}: " + ", ".join(f"{k}={v}" for k, v in sorted(shown.items())))
    return answer


def cli() -> int:
    """The console script's entry point (pyproject.toml [project.scripts])."""
    return run_cli(main)


if __name__ == "__main__":
    sys.exit(cli())
