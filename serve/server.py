"""Start and stop TorchServe for the cars model, with the checks `make serve` promises.

    python -m serve.server start [--config serve/config.properties] [--port 8080]   # waits until ready
    python -m serve.server stop
    python -m serve.server start --model-store model_store_v2 --port 8090 --state-dir .torchserve-v2  # a 2nd

`start` refuses clearly when Java is missing, the archive is missing or a port is taken, then
waits until `/ping` is healthy and a worker of the model is READY. The server runs from its own
state directory (--state-dir): `stop` stops that server only, never another TorchServe on the
machine. The launcher itself is `serve/torchserve.py`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from core.cli import add_common_flags, parse_args
from core.errors import UsageError, run_cli
from serve.torchserve import (  # noqa: F401  (read_properties, addresses: re-exported for callers)
    TorchServe,
    addresses,
    check_archive,
    check_java,
    read_properties,
    stop_started_in,
    token_auth_enabled,
    write_config,
)

DEFAULT_STATE_DIR = ".torchserve"
SHIPPED_CONFIG = Path(__file__).with_name("config.properties")  # found from any working directory


def start(
    config: Path, log_dir: Path, state_dir: Path, port: int | None = None, model_store: Path | None = None
) -> TorchServe:
    properties = read_properties(config)
    if model_store is not None:  # a second server beside the first, e.g. a new model before a switch
        properties = {**properties, "model_store": str(model_store)}
    addresses(properties)  # refused before anything is written or started: a malformed address,
    check_java()  # no Java,
    check_archive(properties)  # no archive
    if port is not None and not 1 <= port <= 65533:
        raise UsageError(f"--port must be in 1..65533 (it and the next two are used), got {port}")
    if stop_started_in(state_dir):
        print(f"stopped the server previously started from {state_dir}")
    ports = [port, port + 1, port + 2] if port is not None else []
    server = TorchServe(write_config(config, state_dir, store=model_store, ports=ports), state_dir, log_dir)
    server.start()
    urls = server.urls
    print(f"TorchServe is ready: POST images to {server.url}")
    print(f"  management {urls['management']}, metrics {urls['metrics']}/metrics, logs in {log_dir}/")
    if token_auth_enabled(server.properties):
        print(f"  token authorization is on: clients need CARS_API_KEY=<the inference key in {server.key_file}>")
    return server


def stop(state_dir: Path) -> None:
    if stop_started_in(state_dir):
        print(f"stopped the TorchServe started from {state_dir}")
    else:
        print(f"no TorchServe started from {state_dir} is running")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=("start", "stop"), help="start (and wait until ready) or stop TorchServe")
    parser.add_argument(
        "--config", default=str(SHIPPED_CONFIG), help="TorchServe config (default: serve/config.properties)"
    )
    parser.add_argument(
        "--port", type=int, help="inference port; management and metrics take the next two (default: the config's)"
    )
    parser.add_argument(
        "--model-store", help="serve the archive of this folder instead of the config's (make archive's --model-store)"
    )
    parser.add_argument("--log-dir", default="logs", help="TorchServe's log directory (default: %(default)s)")
    parser.add_argument(
        "--state-dir",
        default=DEFAULT_STATE_DIR,
        help="the server's own directory: generated config, pid, TMPDIR, key file (default: %(default)s)",
    )
    return add_common_flags(parser, quiet=False)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(get_args_parser(), argv)
    if args.action == "start":
        model_store = Path(args.model_store) if args.model_store else None
        start(Path(args.config), Path(args.log_dir), Path(args.state_dir).resolve(), args.port, model_store)
    else:
        stop(Path(args.state_dir).resolve())


def cli() -> int:
    """The console script's entry point (pyproject.toml [project.scripts])."""
    return run_cli(main)


if __name__ == "__main__":
    sys.exit(cli())
