"""The one TorchServe launcher: `make serve`, the tests and the benchmarks all start servers here.

A `TorchServe` is a process group this project started, with a working directory of its own:
the generated config (absolute model store, the ports asked for), TorchServe's TMPDIR (its pid
file, so two servers on one machine never see each other's), its key file and the launcher's pid.
Starting checks Java, the archive and the ports, then waits until `/ping` is healthy and a worker
of the model is READY; stopping ends that group only, never another TorchServe on the machine.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from core.errors import UsageError
from core.huge_pages import VARIABLE as HUGE_PAGES

MODEL = "cars"
BASE_MODEL = "cars-base"  # the untuned network, served beside MODEL when its archive is in the store
ROOT = Path(__file__).resolve().parents[1]
APIS = ("inference", "management", "metrics")
PID_FILE = "launcher.pid"


def read_properties(path: str | Path) -> dict[str, str]:
    """The key=value lines of a Java properties file (continuation lines joined)."""
    if not Path(path).is_file():
        raise UsageError(f"TorchServe config not found: {path}")
    return parse_properties(Path(path).read_text())


def parse_properties(text: str) -> dict[str, str]:
    text = re.sub(r"\\\n\s*", "", text)
    pairs = (line.split("=", 1) for line in text.splitlines() if "=" in line and not line.lstrip().startswith("#"))
    return {key.strip(): value.strip() for key, value in pairs}


def addresses(properties: dict[str, str]) -> dict[str, str]:
    found = {api: properties.get(f"{api}_address", "") for api in APIS}
    for api, url in found.items():
        if not re.fullmatch(r"https?://[^:/]+:\d+", url):
            raise UsageError(f"{api}_address must look like http://127.0.0.1:8080, got {url!r}")
    return found


def find_tool(name: str) -> str:
    """A console script next to this interpreter (the project's .venv), else on PATH."""
    search_path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    executable = shutil.which(name, path=search_path)
    if executable is None:
        raise UsageError(f"{name} is not installed: run `make install`")
    return executable


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


def _get_json(url: str, headers: dict[str, str] | None = None) -> object:
    request = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(request, timeout=2) as response:
        return json.loads(response.read())


def _has_ready_worker(model_url: str, headers: dict[str, str]) -> bool:
    return any(worker["status"] == "READY" for worker in _get_json(model_url, headers)[0]["workers"])


def wait_until_ready(
    properties: dict[str, str],
    timeout: float = 180,
    process: subprocess.Popen | None = None,
    key_file: Path = Path("key_file.json"),
) -> None:
    """Polls /ping and every loaded model's workers until each has one READY; fails fast if
    `process` exits. With token authorization on, the keys come from `key_file` (TorchServe's
    working directory)."""
    urls = addresses(properties)
    models = [name.removesuffix(".mar") for name in properties.get("load_models", MODEL).split(",") if name.strip()]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"TorchServe exited with status {process.returncode} before it was ready")
        auth = token_auth_enabled(properties)
        inference, management = (bearer(key_file, api) if auth else {} for api in ("inference", "management"))
        try:
            healthy = _get_json(f"{urls['inference']}/ping", inference).get("status") == "Healthy"
            if healthy and all(_has_ready_worker(f"{urls['management']}/models/{m}", management) for m in models):
                return
        except (urllib.error.URLError, OSError, ValueError, KeyError, IndexError, TypeError, AttributeError):
            pass
        time.sleep(0.5)
    raise TimeoutError(f"TorchServe did not get ready within {timeout:.0f} s; see its logs")


def threads_per_worker(properties: dict[str, str]) -> int:
    """CPU threads for each worker: the cores shared out between the model's workers. Workers
    inherit OMP_NUM_THREADS; without it each would use every core and they would fight over them."""
    try:
        workers = max(int(v.get("minWorkers", 1)) for v in json.loads(properties.get("models", "{}"))[MODEL].values())
    except (ValueError, KeyError, TypeError, AttributeError):
        workers = 1
    return max(1, (os.cpu_count() or 1) // max(workers, 1))


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def write_config(
    base: Path, workdir: Path, store: Path | None = None, ports: list[int] | None = None, **overrides: str
) -> Path:
    """workdir/config.properties: `base` with an absolute model store, the three API `ports` (free
    loopback ports when None, base's own when []), and `overrides` of the model's settings."""
    text = base.read_text()
    store = Path(store or read_properties(base).get("model_store", "model_store")).resolve()
    if ports != []:
        for api, port in zip(APIS, ports or free_ports(3), strict=True):
            text = re.sub(rf"^{api}_address=(https?://[^:/]+):.*$", rf"{api}_address=\g<1>:{port}", text, flags=re.M)
    text = re.sub(r"^model_store=.*$", f"model_store={store}", text, flags=re.M)
    for key, value in overrides.items():
        text = re.sub(rf'"{key}": [^,\\]+', f'"{key}": {value}', text)
    text += _base_model_settings(text, store)
    # Several servers at once (tests, benchmarks, other checkouts): worker sockets are
    # /tmp/.ts.sock.<port>, and the gRPC APIs bind 127.0.0.1:7070/7071 by default; a second
    # frontend failing to bind them shuts itself down.
    worker, grpc_inference, grpc_management = free_ports(3)
    text += f"\ninitial_worker_port={worker}\ngrpc_inference_port={grpc_inference}\n"
    text += f"grpc_management_port={grpc_management}\n"
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "config.properties"
    path.write_text(text)
    return path


def _base_model_settings(text: str, store: Path) -> str:
    """With cars-base.mar in the store, lines that load it too, with the cars model's settings (later
    keys win in a Java properties file)."""
    if not (store / f"{BASE_MODEL}.mar").is_file():
        return ""
    properties = parse_properties(text)
    models = json.loads(properties.get("models", "{}"))
    if MODEL not in models:
        return ""
    models[BASE_MODEL] = {
        version: {**settings, "marName": f"{BASE_MODEL}.mar"} for version, settings in models[MODEL].items()
    }
    loaded = properties.get("load_models", f"{MODEL}.mar")
    return f"\nload_models={loaded},{BASE_MODEL}.mar\nmodels={json.dumps(models)}\n"


def stop_process_group(pid: int, timeout: float = 30, process: subprocess.Popen | None = None) -> None:
    """SIGTERM the launcher's whole group (Java frontend, Python workers) and wait until every
    member is gone, SIGKILL after `timeout`: a restart on the same store must not find it alive."""
    with suppress(ProcessLookupError):  # it may have exited on its own: keep its error visible
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    with suppress(ProcessLookupError):
        while True:
            if process is not None:
                process.poll()  # reap the launcher: a zombie would keep the group alive
            os.killpg(pid, signal.SIGKILL if time.monotonic() > deadline else 0)
            time.sleep(0.1)
    if process is not None:
        process.wait(timeout=timeout)


class TorchServe:
    """One server: `config` (a generated one, see `write_config`) run from `workdir`."""

    def __init__(self, config: Path, workdir: Path, log_dir: Path, env: dict[str, str] | None = None):
        self.config, self.workdir, self.log_dir = config, workdir, log_dir
        self.properties = read_properties(config)
        self.urls = addresses(self.properties)
        self.key_file = workdir / "key_file.json"
        self.extra_env = env or {}
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"{self.urls['inference']}/predictions/{MODEL}"

    def start(self, output: Path | None = None, timeout: float = 180) -> None:
        """Starts the server in its own process group and waits until the model answers. The
        server outlives this Python process (`make serve`) until `stop` or `stop_started_in`."""
        check_java()
        check_archive(self.properties)
        check_ports_free(self.properties)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **self.extra_env, "LOG_LOCATION": str(self.log_dir), "METRICS_LOCATION": str(self.log_dir)}
        env.setdefault("OMP_NUM_THREADS", str(threads_per_worker(self.properties)))
        env.setdefault(HUGE_PAGES, "1")  # the workers' tensors on huge pages: core/huge_pages.py
        # torchserve refuses to start while the one in $TMPDIR/.model_server.pid runs: a TMPDIR of its own.
        env["TMPDIR"] = str(self.workdir)
        command = [find_tool("torchserve"), "--ts-config", str(self.config), "--ncs", "--foreground"]
        # The server must not hold our stdout/stderr open, or `make serve | tail` would never end.
        with open(output or self.log_dir / "torchserve.out", "ab") as sink:
            self.process = subprocess.Popen(
                command, env=env, cwd=self.workdir, start_new_session=True,
                stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT,
            )  # fmt: skip
        (self.workdir / PID_FILE).write_text(f"{self.process.pid}\n")
        try:
            wait_until_ready(self.properties, timeout=timeout, process=self.process, key_file=self.key_file)
        except BaseException as error:
            self.stop()  # never leave a half-started server behind, Ctrl-C included
            if isinstance(error, (TimeoutError, RuntimeError)):
                raise UsageError(f"{error} ({self.log_dir}/ts_log.log, {self.log_dir}/model_log.log)") from None
            raise

    def stop(self) -> None:
        if self.process is not None:
            stop_process_group(self.process.pid, process=self.process)
        (self.workdir / PID_FILE).unlink(missing_ok=True)


def stop_started_in(workdir: Path) -> bool:
    """Stops the server a previous `TorchServe.start` left running from `workdir` (its pid file),
    and only that one. Returns False when none runs there."""
    pid_file = workdir / PID_FILE
    try:
        pid = int(pid_file.read_text())
    except (OSError, ValueError):
        return False
    try:
        os.killpg(pid, 0)
        alive = _is_torchserve(pid)
    except (ProcessLookupError, PermissionError):
        alive = False
    if alive:
        stop_process_group(pid)
    pid_file.unlink(missing_ok=True)
    return alive


def _is_torchserve(pid: int) -> bool:
    """The pid still belongs to a TorchServe launcher (pids are reused after a reboot)."""
    try:
        return b"torchserve" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # no /proc: trust the pid file we wrote


@contextmanager
def running_torchserve(
    run: Path,
    root: Path,
    base: str = "config.properties",
    *,
    output: Path | None = None,
    env: dict | None = None,
    **overrides: str,
) -> Iterator[dict]:
    """TorchServe serving `run` with serve/`base` on free loopback ports, one worker and a 300 ms
    batching window so batches form; always stopped. An archive already in root/store is reused
    (a restart serves the same model store). `output` receives the server's stdout and stderr (the
    benchmarks read the handler's per-batch metric lines there); `env` adds environment variables."""
    from serve.archive import build_archive  # the archive module uses this one's helpers

    archive = root / "store" / "cars.mar"
    if not archive.is_file():
        check_java()
        archive = build_archive(run, root / "store")
    # One worker (the shipped config has two, for throughput): tests find "the" worker.
    defaults = {"maxBatchDelay": "300", "minWorkers": "1", "maxWorkers": "1"}
    config = write_config(ROOT / "serve" / base, root, root / "store", **{**defaults, **overrides})
    server = TorchServe(config, root, root / "logs", env)
    server.start(output=output)
    try:
        yield {
            "url": server.url, "urls": server.urls, "archive": archive, "run": run,
            "pid": server.process.pid, "key_file": server.key_file,
        }  # fmt: skip
    finally:
        server.stop()
