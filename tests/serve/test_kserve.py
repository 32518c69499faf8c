"""KServe serving of the same .mar: the bundle CLI, the handler under TorchServe's own KServe
envelopes, and the client against them.

The servers here are real TorchServes started from the bundle that `python -m serve.kserve` wrote:
its config (ports and model store rewritten by serve/torchserve.py's write_config, on free loopback
ports; its one 0.0.0.0 address, the metrics', moved to loopback) and its model-store/cars.mar, with
the environment KServe gives the container: TS_SERVICE_ENVELOPE from the protocolVersion, and the
manifest's env (deploy/kserve/inferenceservice.yaml). What KServe adds around them (storage
initializer, Knative, the ingress) is not run here: docs/deploy.md.
"""

from __future__ import annotations

import base64
import contextlib
import json
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
import yaml
from ts.torch_handler.request_envelope.kserve import KServeEnvelope
from ts.torch_handler.request_envelope.kservev2 import KServev2Envelope

from clients.api import ClientError, EmbeddingClient, ImageRejected, kserve_answer, protocol_of
from core.errors import run_cli
from serve import kserve
from serve.handler import CarsHandler
from serve.torchserve import TorchServe, addresses, bearer, free_ports, parse_properties, read_properties, write_config
from tests.conftest import ROOT, run_module
from tests.serve.images import bad_images, valid_images
from tests.serve.test_handler import make_context

slow = pytest.mark.slow
GOOD = valid_images()["jpeg"]
TRUNCATED, TRUNCATED_STATUS = bad_images()["truncated-jpeg"]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def v2_input(name: str, data, shape=(1,), datatype: str = "BYTES") -> dict:
    return {"name": name, "shape": list(shape), "datatype": datatype, "data": data}


# --- the bundle -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bundle(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What `make kserve-bundle` writes, written by the CLI as a user runs it."""
    out = tmp_path_factory.mktemp("kserve") / "bundle"
    result = run_module("serve.kserve", "--run", str(tiny_run), "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Wrote {out}" in result.stdout
    return out


def wrapper_view(config: Path) -> dict[str, str]:
    """config.properties as KServe's TorchServe wrapper reads it: line by line, no continuation lines."""
    pairs = (line.split("=", 1) for line in config.read_text().splitlines() if "=" in line and line[0] != "#")
    return {key.strip(): value.strip() for key, value in pairs}


@slow
def test_bundle_has_the_layout_and_settings_of_kserves_torchserve_runtime(bundle):
    files = sorted(str(p.relative_to(bundle)) for p in bundle.rglob("*") if p.is_file())
    assert files == [kserve.MARKER, "config/config.properties", "model-store/cars.mar"]
    config = wrapper_view(bundle / "config" / "config.properties")
    assert parse_properties((bundle / "config" / "config.properties").read_text()) == config
    assert config["inference_address"] == config["management_address"] == "http://127.0.0.1:8085"
    assert config["metrics_address"] == "http://0.0.0.0:8082"
    assert (config["grpc_inference_port"], config["grpc_management_port"]) == ("7070", "7071")
    assert config["model_store"] == "/mnt/models/model-store"
    assert config["service_envelope"] == "kserve" and config["enable_envvars_config"] == "true"
    # The limits and security settings of serve/config.properties.
    assert config["enable_model_api"] == "false"
    assert config["allowed_urls"] == r"^file:///mnt/models/model-store/[A-Za-z0-9_-]+\\.mar$"
    assert config["disable_token_authorization"] == "true"
    assert config["max_request_size"] == config["max_response_size"] == "16777216"
    snapshot = json.loads(config["model_snapshot"])  # one line of JSON, as the wrapper needs
    assert snapshot["modelCount"] == 1 and list(snapshot["models"]) == ["cars"]
    manifest = json.loads(zipfile.ZipFile(bundle / "model-store" / "cars.mar").read("MAR-INF/MANIFEST.json"))
    settings = snapshot["models"]["cars"][manifest["model"]["modelVersion"]]  # keyed by the archive's version
    assert settings["marName"] == "cars.mar" and settings["defaultVersion"] is True
    assert (settings["minWorkers"], settings["maxWorkers"], settings["responseTimeout"]) == (2, 2, 60)
    assert settings["batchSize"] == 1  # the envelopes answer one request per batch


def test_the_kserve_config_keeps_the_shipped_model_settings_and_limits():
    """serve/config.kserve.properties against serve/config.properties: the same workers, timeout and
    limits; batchSize 1 is the one difference (the envelopes take one request per batch)."""
    kserve_config = read_properties(ROOT / "serve" / "config.kserve.properties")
    shipped = read_properties(ROOT / "serve" / "config.properties")
    [(version, settings)] = json.loads(kserve_config["model_snapshot"])["models"]["cars"].items()
    shipped_settings = json.loads(shipped["models"])["cars"][version]
    assert {**shipped_settings, "batchSize": 1} == settings
    for key in ("enable_model_api", "max_request_size", "max_response_size", "install_py_dep_per_model"):
        assert kserve_config[key] == shipped[key], key


def test_protocol_v2_writes_the_kservev2_envelope():
    assert "\nservice_envelope=kservev2\n" in kserve.bundle_config("v2")
    assert "\nservice_envelope=kserve\n" in kserve.bundle_config("v1")


def one_line_error(capsys, argv: list[str], message: str) -> None:
    assert run_cli(kserve.main, argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and message in err, err


def test_cli_refuses_a_missing_run_and_a_directory_it_did_not_write(capsys, tmp_path):
    one_line_error(capsys, ["--run", str(tmp_path / "nothing"), "--out", str(tmp_path / "b")], "no trained run at")
    assert not (tmp_path / "b").exists()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    one_line_error(capsys, ["--run", str(tmp_path / "nothing"), "--out", str(foreign)], "did not write")
    assert (foreign / "notes.txt").read_text() == "mine"


@slow
def test_cli_replaces_its_own_bundle_and_a_foreign_one_only_with_overwrite(capsys, tiny_run, bundle, tmp_path):
    out = tmp_path / "bundle"
    assert run_cli(kserve.main, ["--run", str(tiny_run), "--out", str(out), "--protocol", "v2"]) == 0
    assert run_cli(kserve.main, ["--run", str(tiny_run), "--out", str(out)]) == 0  # its own: replaced
    assert "\nservice_envelope=kserve\n" in (out / "config" / "config.properties").read_text()
    (out / kserve.MARKER).unlink()
    one_line_error(capsys, ["--run", str(tiny_run), "--out", str(out)], "--overwrite")
    assert run_cli(kserve.main, ["--run", str(tiny_run), "--out", str(out), "--overwrite"]) == 0
    assert (out / kserve.MARKER).is_file() and not list(tmp_path.glob(".bundle.*"))


# --- the handler under the envelopes, in process --------------------------------------------------


@pytest.fixture(scope="module")
def handler(tiny_run):
    handler = CarsHandler()
    handler.initialize(make_context(tiny_run))
    return handler


def through_envelope(envelope_class, handler, tiny_run, body) -> list:
    """What TorchServe's worker does with service_envelope set: the envelope wraps `handle`."""
    context = make_context(tiny_run)
    context.manifest = {"model": {"modelName": "cars", "modelVersion": "1.0"}}
    context.request_ids = {0: "request-0"}
    return envelope_class(handler.handle).handle([{"body": body}], context), context


def test_v1_envelope_gets_one_object_per_instance(handler, tiny_run):
    body = {"instances": [b64(GOOD), {"data": b64(GOOD)}, {"b64": b64(GOOD)}, "%%%", {"data": b64(TRUNCATED)}, 7]}
    [answer], context = through_envelope(KServeEnvelope, handler, tiny_run, body)
    json.dumps(answer)  # what TorchServe does with it
    predictions = answer["predictions"]
    assert [p.get("status") for p in predictions] == [None, None, None, 400, TRUNCATED_STATUS, 400]
    assert all(np.allclose(p["embedding"], predictions[0]["embedding"]) for p in predictions[:3])
    assert predictions[0]["model_version"] == handler.embedder.model_version
    assert context.get_response_status(0)[0] == 200 and context.metrics.recorded == [("BatchSize", 6)]


def test_v1_envelope_without_instances_is_a_400(handler, tiny_run):
    [answer], context = through_envelope(KServeEnvelope, handler, tiny_run, {"image": b64(GOOD)})
    assert context.get_response_status(0)[0] == 400 and "instances" in answer["predictions"][0]["error"]


def test_v2_envelope_gets_one_bytes_output_per_input(handler, tiny_run):
    body = {"inputs": [v2_input("a", [b64(GOOD)]), v2_input("b", [b64(GOOD), b64(GOOD)], shape=[2])]}
    [answer], _ = through_envelope(KServev2Envelope, handler, tiny_run, body)
    assert answer["model_name"] == "cars" and answer["id"] == "request-0"
    a, b = answer["outputs"]
    assert (a["name"], a["datatype"], list(a["shape"])) == ("a", "BYTES", [1])
    assert len(json.loads(a["data"][0])["embedding"]) == handler.embedder.dim
    assert "one image per input" in json.loads(b["data"][0])["error"]


def test_without_an_envelope_the_handler_answers_bytes_as_before(handler, tiny_run):
    """A v1-looking body sent to a server without the envelope is just a JSON body without "image"."""
    context = make_context(tiny_run)
    [answer] = handler.handle([{"body": {"instances": [b64(GOOD)]}}], context)
    assert isinstance(answer, bytes) and context.get_response_status(0)[0] == 400


def test_the_launcher_takes_the_kserve_config(tmp_path):
    """serve/torchserve.py's write_config on serve/config.kserve.properties: free loopback ports, an
    absolute model store, the model settings overridden inside the one-line model_snapshot."""
    config = write_config(ROOT / "serve" / "config.kserve.properties", tmp_path, tmp_path / "store", minWorkers="1")
    properties = read_properties(config)
    urls = addresses(properties)
    assert urls["inference"].startswith("http://127.0.0.1:") and urls["inference"] != "http://127.0.0.1:8085"
    assert properties["model_store"] == str((tmp_path / "store").resolve())
    assert properties["grpc_inference_port"] != "7070"  # the appended free port wins over the runtime's
    settings = json.loads(properties["model_snapshot"])["models"]["cars"]["1.0"]
    assert settings["minWorkers"] == 1 and settings["maxWorkers"] == 2 and settings["defaultVersion"] is True


# --- real TorchServes with the envelope ------------------------------------------------------------


def manifest_env() -> dict[str, str]:
    [service] = [d for d in yaml.safe_load_all((ROOT / "deploy" / "kserve" / "inferenceservice.yaml").read_text())]
    return {item["name"]: item["value"] for item in service["spec"]["predictor"]["model"]["env"]}


@contextlib.contextmanager
def serve_bundle(bundle: Path, root: Path, env: dict[str, str], token_auth: bool = False):
    """TorchServe on the bundle's config and model-store, with the container's environment `env`.
    A TS_INFERENCE_ADDRESS there (enable_envvars_config) moves the inference API: to a free loopback
    port here, where the manifest's 0.0.0.0:8080 would be in a pod."""
    text = (bundle / "config" / "config.properties").read_text().replace("http://0.0.0.0:", "http://127.0.0.1:")
    if token_auth:
        text = text.replace("disable_token_authorization=true", "disable_token_authorization=false")
    root.mkdir(parents=True, exist_ok=True)
    (root / "bundle.properties").write_text(text)
    config = write_config(root / "bundle.properties", root, bundle / "model-store", minWorkers="1", maxWorkers="1")
    env = dict(env)
    if "TS_INFERENCE_ADDRESS" in env:
        env["TS_INFERENCE_ADDRESS"] = f"http://127.0.0.1:{free_ports(1)[0]}"
    server = TorchServe(config, root, root / "logs", env)
    if "TS_INFERENCE_ADDRESS" in env:  # where the launcher must look for /ping
        server.properties["inference_address"] = env["TS_INFERENCE_ADDRESS"]
        server.urls = addresses(server.properties)
    server.start()
    try:
        yield {"urls": server.urls, "key_file": server.key_file, "config": config}
    finally:
        server.stop()


@pytest.fixture(scope="module")
def kserve_v1(bundle, tmp_path_factory):
    """The bundle as written, with the manifest's env (TorchServe answers on TS_INFERENCE_ADDRESS, as in
    the project's image) and KServe's TS_SERVICE_ENVELOPE for protocolVersion v1; token authorization off."""
    env = {**manifest_env(), "TS_SERVICE_ENVELOPE": "kserve"}
    with serve_bundle(bundle, tmp_path_factory.mktemp("kserve-v1"), env) as handle:
        assert read_properties(handle["config"])["inference_address"] != handle["urls"]["inference"]
        handle["predict"] = f"{handle['urls']['inference']}/v1/models/cars:predict"
        yield handle


@pytest.fixture(scope="module")
def kserve_v2(bundle, tmp_path_factory):
    """The same bundle (envelope kserve in its file) with KServe's TS_SERVICE_ENVELOPE=kservev2, what it
    sets for protocolVersion v2, on the config's own inference address; token authorization on, to
    check the bearer token."""
    env = {"TS_SERVICE_ENVELOPE": "kservev2"}
    with serve_bundle(bundle, tmp_path_factory.mktemp("kserve-v2"), env, token_auth=True) as handle:
        handle["infer"] = f"{handle['urls']['inference']}/v2/models/cars/infer"
        handle["key"] = bearer(handle["key_file"], "inference")["Authorization"].removeprefix("Bearer ")
        yield handle


def plain_embedding(server, body: bytes) -> np.ndarray:
    response = requests.post(server["url"], data=body, timeout=60)
    assert response.status_code == 200, response.text
    return np.asarray(response.json()["embedding"])


@slow
def test_served_from_the_bundle_with_the_snapshots_batching(kserve_v1, bundle):
    assert read_properties(kserve_v1["config"])["model_store"] == str((bundle / "model-store").resolve())
    described = requests.get(f"{kserve_v1['urls']['management']}/models/cars", timeout=5).json()[0]
    assert described["batchSize"] == 1 and described["responseTimeout"] == 60
    assert Path(described["modelUrl"]).name == "cars.mar"


@slow
def test_v1_gives_the_plain_paths_embeddings_and_bad_items_fail_alone(kserve_v1, server):
    png = valid_images()["png"]
    instances = [{"data": b64(GOOD)}, b64(png), {"b64": b64(GOOD)}, {"data": b64(TRUNCATED)}, {"data": "%%%"}, 3]
    response = requests.post(kserve_v1["predict"], json={"instances": instances}, timeout=60)
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert [p.get("status") for p in predictions] == [None, None, None, TRUNCATED_STATUS, 400, 400]
    assert all(p["error"] for p in predictions[3:])
    for prediction, body in zip(predictions, (GOOD, png, GOOD), strict=False):
        assert np.allclose(prediction["embedding"], plain_embedding(server, body), atol=1e-5)
        assert prediction["dim"] == len(prediction["embedding"])
    model_version = requests.post(server["url"], data=GOOD, timeout=60).json()["model_version"]
    assert {p["model_version"] for p in predictions[:3]} == {model_version}


@slow
def test_v1_request_errors_and_concurrent_requests(kserve_v1):
    missing = requests.post(kserve_v1["predict"], json={"image": b64(GOOD)}, timeout=30)
    assert missing.status_code == 400 and "instances" in missing.json()["predictions"][0]["error"]
    body = {"instances": [{"data": b64(GOOD)}]}
    with ThreadPoolExecutor(max_workers=8) as pool:  # batchSize 1: every request is answered on its own
        responses = list(pool.map(lambda _: requests.post(kserve_v1["predict"], json=body, timeout=60), range(8)))
    assert [r.status_code for r in responses] == [200] * 8
    first = responses[0].json()["predictions"][0]["embedding"]
    assert all(np.allclose(r.json()["predictions"][0]["embedding"], first) for r in responses)


@slow
def test_v2_gives_the_plain_paths_embedding_and_bad_inputs_fail_alone(kserve_v2, server):
    inputs = [
        v2_input("car", [b64(GOOD)]),
        v2_input("two", [b64(GOOD), b64(GOOD)], shape=[2]),
        v2_input("truncated", [b64(TRUNCATED)]),
        v2_input("not-base64", ["%%%"]),
        v2_input("tensor", [1.0, 2.0], shape=[2], datatype="FP32"),
    ]
    headers = {"Authorization": f"Bearer {kserve_v2['key']}"}
    response = requests.post(kserve_v2["infer"], json={"id": "r1", "inputs": inputs}, headers=headers, timeout=60)
    assert response.status_code == 200, response.text
    payload = response.json()
    assert payload["id"] == "r1" and payload["model_name"] == "cars"
    assert [o["name"] for o in payload["outputs"]] == [i["name"] for i in inputs]
    assert all(o["datatype"] == "BYTES" and o["shape"] == [1] for o in payload["outputs"])
    answers = [json.loads(o["data"][0]) for o in payload["outputs"]]
    assert np.allclose(answers[0]["embedding"], plain_embedding(server, GOOD), atol=1e-5)
    assert [a.get("status") for a in answers] == [None, 400, TRUNCATED_STATUS, 400, 400]
    assert "one image per input" in answers[1]["error"] and "BYTES" in answers[4]["error"]


@slow
def test_v2_needs_the_bearer_token_when_token_authorization_is_on(kserve_v2):
    body = {"inputs": [v2_input("car", [b64(GOOD)])]}
    refused = requests.post(kserve_v2["infer"], json=body, timeout=30)
    wrong = requests.post(kserve_v2["infer"], json=body, headers={"Authorization": "Bearer wrong"}, timeout=30)
    for response in (refused, wrong):  # TorchServe 0.12 answers a missing or wrong key with 400
        assert response.status_code == 400 and response.json()["type"] == "InvalidKeyException", response.text


# --- the client ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url, protocol",
    [
        ("http://127.0.0.1:8080/predictions/cars", "torchserve"),
        ("https://cars.default.example.com/v1/models/cars:predict", "kserve-v1"),
        ("http://cars.ns.svc/v1/models/cars:explain", "torchserve"),
        ("https://cars.default.example.com/v2/models/cars/infer", "kserve-v2"),
        ("http://host/v2/models/cars/versions/1.0/infer/", "kserve-v2"),
        ("http://host/v2/models/cars/ready", "torchserve"),
    ],
)
def test_the_client_knows_a_kserve_predictor_by_its_url(url, protocol):
    assert protocol_of(url) == protocol


def test_the_client_reads_malformed_kserve_answers_as_none():
    assert kserve_answer("kserve-v1", {"predictions": []}) == {}
    assert kserve_answer("kserve-v1", {"predictions": ["text"]}) == {}
    assert kserve_answer("kserve-v2", {"outputs": [{"data": ["not json"]}]}) == {}
    assert kserve_answer("kserve-v2", {"outputs": [{"data": ['{"error": "x", "status": 415}']}]})["status"] == 415


@slow
def test_client_against_the_v1_envelope(kserve_v1, server):
    client = EmbeddingClient(kserve_v1["predict"], retries=0)
    embedding = client.embed(GOOD)
    plain = EmbeddingClient(server["url"], retries=0).embed(GOOD)
    assert embedding.model_version == plain.model_version
    assert embedding.vector.dtype == np.float32 and np.allclose(embedding.vector, plain.vector, atol=1e-5)
    with pytest.raises(ImageRejected) as rejected:
        client.embed(TRUNCATED)
    assert rejected.value.status == TRUNCATED_STATUS


@slow
def test_client_against_the_v2_envelope_sends_the_bearer_token(kserve_v2, server, monkeypatch):
    monkeypatch.setenv("CARS_API_KEY", kserve_v2["key"])  # how the CLIs get it (or --api-key)
    embedding = EmbeddingClient(kserve_v2["infer"], retries=0).embed(GOOD)
    assert np.allclose(embedding.vector, plain_embedding(server, GOOD), atol=1e-5)
    with pytest.raises(ImageRejected, match="not a supported image"):
        EmbeddingClient(kserve_v2["infer"], retries=0).embed(b"not an image")
    monkeypatch.delenv("CARS_API_KEY")
    with pytest.raises(ClientError, match="bearer token"):
        EmbeddingClient(kserve_v2["infer"], retries=0).embed(GOOD)
