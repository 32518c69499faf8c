"""Start and stop TorchServe for the cars model, with the checks `make serve` promises.

    python -m serve.server start [--config serve/config.properties]   # waits until the model is ready
    python -m serve.server stop

`start` refuses clearly when Java is missing, the archive is missing or a port is taken, then
waits until `/ping` is healthy and a worker of the model is READY.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from train.errors import UsageError, run_cli

MODEL = "cars"


def read_properties(path: str | Path) -> dict[str, str]:
    """The key=value lines of a Java properties file (continuation lines joined)."""
    if not Path(path).is_file():
        raise UsageError(f"TorchServe config not found: {path}")
    text = re.sub(r"\\\n\s*", "", Path(path).read_text())
    pairs = (line.split("=", 1) for line in text.splitlines() if "=" in line and not line.lstrip().startswith("#"))
    return {key.strip(): value.strip() for key, value in pairs}


def addresses(properties: dict[str, str]) -> dict[str, str]:
    found = {api: properties.get(f"{api}_address", "") for api in ("inference", "management", "metrics")}
    for api, url in found.items():
        if not re.fullmatch(r"https?://[^:/]+:\d+", url):
            raise UsageError(f"{api}_address must look like http://127.0.0.1:8080, got {url!r}")
    return found


def check_java() -> None:
    """TorchServe 0.12's frontend needs Java 17 or newer."""
    hint = "apt-get install openjdk-17-jre-headless"
    if shutil.which("java") is None:
        raise UsageError(f"TorchServe needs Java 17+, and no 'java' is on PATH: {hint}")
    banner = subprocess.run(["java", "-version"], capture_output=True, text=True).stderr
    version = re.search(r'version "(\d+)(?:\.(\d+))?', banner)
    major = int(version.group(1)) if version else 0
    if major == 1 and version.group(2):  # "1.8.0" is Java 8
        major = int(version.group(2))
    if major < 17:
        raise UsageError(f"TorchServe needs Java 17+, found {banner.splitlines()[0] if banner else 'unknown'}: {hint}")


def check_ports_free(properties: dict[str, str]) -> None:
    for api, url in addresses(properties).items():
        host, port = re.match(r"https?://([^:/]+):(\d+)", url).groups()
        with socket.socket() as probe:
            if probe.connect_ex((host, int(port))) == 0:
                raise UsageError(f"port {port} ({api} API, {url}) is already in use: `make stop` or free it")


def check_archive(properties: dict[str, str]) -> None:
    store = Path(properties.get("model_store", "model_store"))
    for name in properties.get("load_models", "").split(","):
        if name.endswith(".mar") and not (store / name).is_file():
            raise UsageError(f"no model archive at {store / name}: run `make archive` first")


def _get_json(url: str, headers: dict[str, str] | None = None) -> object:
    request = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(request, timeout=2) as response:
        return json.loads(response.read())


def token_auth_enabled(properties: dict[str, str]) -> bool:
    """TorchServe 0.12 turns token authorization on unless the config disables it."""
    return properties.get("disable_token_authorization", "false").lower() != "true"


def bearer(key_file: Path, api: str) -> dict[str, str]:
    """`Authorization` header with the `api` ("inference" or "management") key TorchServe wrote
    to key_file.json in its working directory at start-up; {} while there is none yet."""
    try:
        return {"Authorization": f"Bearer {json.loads(key_file.read_text())[api]['key']}"}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def wait_until_ready(
    properties: dict[str, str],
    timeout: float = 180,
    process: subprocess.Popen | None = None,
    key_file: Path = Path("key_file.json"),
) -> None:
    """Polls /ping and the model's workers until one is READY; fails fast if `process` exits.
    With token authorization on, the keys come from `key_file` (TorchServe's working directory)."""
    urls = addresses(properties)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"TorchServe exited with status {process.returncode} before it was ready")
        auth = token_auth_enabled(properties)
        inference, management = (bearer(key_file, api) if auth else {} for api in ("inference", "management"))
        try:
            healthy = _get_json(f"{urls['inference']}/ping", inference).get("status") == "Healthy"
            workers = _get_json(f"{urls['management']}/models/{MODEL}", management)[0]["workers"]
            if healthy and any(worker["status"] == "READY" for worker in workers):
                return
        except (urllib.error.URLError, OSError, ValueError, KeyError, IndexError, TypeError, AttributeError):
            pass
        time.sleep(0.5)
    raise TimeoutError(f"TorchServe did not get ready within {timeout:.0f} s; see its logs")


def find_tool(name: str) -> str:
    """A console script next to this interpreter (the project's .venv), else on PATH."""
    search_path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    executable = shutil.which(name, path=search_path)
    if executable is None:
        raise UsageError(f"{name} is not installed: run `make install`")
    return executable


def torchserve_command(config: Path, *extra: str) -> list[str]:
    return [find_tool("torchserve"), "--ts-config", str(config), "--ncs", *extra]


def threads_per_worker(properties: dict[str, str]) -> int:
    """CPU threads for each worker: the cores shared out between the model's workers. Workers
    inherit OMP_NUM_THREADS; without it each would use every core and they would fight over them."""
    try:
        workers = max(int(v.get("minWorkers", 1)) for v in json.loads(properties.get("models", "{}"))[MODEL].values())
    except (ValueError, KeyError, TypeError, AttributeError):
        workers = 1
    return max(1, (os.cpu_count() or 1) // max(workers, 1))


def start(config: Path, log_dir: Path) -> None:
    properties = read_properties(config)
    check_java()
    check_archive(properties)
    check_ports_free(properties)
    log_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "LOG_LOCATION": str(log_dir), "METRICS_LOCATION": str(log_dir)}
    env.setdefault("OMP_NUM_THREADS", str(threads_per_worker(properties)))
    # The daemon must not hold our stdout/stderr open, or `make serve | tail` would never end.
    with open(log_dir / "torchserve.out", "ab") as output:
        started = subprocess.run(
            [*torchserve_command(config), "--start"], env=env,
            stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
        )  # fmt: skip
    if started.returncode != 0:
        raise UsageError(f"torchserve --start failed (status {started.returncode}); see {log_dir}/torchserve.out")
    try:
        wait_until_ready(properties)
    except BaseException as error:
        stop()  # never leave a half-started server behind, Ctrl-C included
        if isinstance(error, (TimeoutError, RuntimeError)):
            raise UsageError(f"{error} ({log_dir}/ts_log.log, {log_dir}/model_log.log)") from None
        raise
    urls = addresses(properties)
    print(f"TorchServe is ready: POST images to {urls['inference']}/predictions/{MODEL}")
    print(f"  management {urls['management']}, metrics {urls['metrics']}/metrics, logs in {log_dir}/")
    if token_auth_enabled(properties):
        key_file = Path.cwd() / "key_file.json"
        print(f"  token authorization is on: clients need CARS_API_KEY=<the inference key in {key_file}>")


def stop() -> None:
    subprocess.run([find_tool("torchserve"), "--stop"], check=False)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=("start", "stop"), help="start (and wait until ready) or stop TorchServe")
    parser.add_argument("--config", default="serve/config.properties", help="TorchServe config (default: %(default)s)")
    parser.add_argument("--log-dir", default="logs", help="TorchServe's log directory (default: %(default)s)")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = get_args_parser().parse_args(argv)
    if args.action == "start":
        start(Path(args.config), Path(args.log_dir))
    else:
        stop()


if __name__ == "__main__":
    sys.exit(run_cli(main))
