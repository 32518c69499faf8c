"""Safe defaults: loopback binds, no model registration, token authorization for the exposed
config (clients take the key from CARS_API_KEY or --api-key), nothing unpickled from weights."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
from pathlib import Path

import pytest
import requests
import torch

from serve.embedder import Embedder
from serve.server import addresses, read_properties
from tests.clients.test_end_to_end import CLIENT_PY
from tests.conftest import ROOT
from tests.serve.images import valid_images
from serve.torchserve import running_torchserve
from train.synthetic import generate

SHIPPED = read_properties(ROOT / "serve" / "config.properties")
PUBLIC = read_properties(ROOT / "serve" / "config.public.properties")


def test_shipped_config_binds_loopback_only_and_registers_nothing():
    assert all(url.startswith("http://127.0.0.1:") for url in addresses(SHIPPED).values())
    assert SHIPPED["enable_model_api"] == "false"
    assert SHIPPED["allowed_urls"] == r"^file://.*/model_store/[A-Za-z0-9_-]+\\.mar$"


def test_public_config_exposes_only_inference_and_turns_token_authorization_on():
    urls = addresses(PUBLIC)
    assert urls["inference"].startswith("http://0.0.0.0:")
    assert urls["management"].startswith("http://127.0.0.1:") and urls["metrics"].startswith("http://127.0.0.1:")
    assert PUBLIC["disable_token_authorization"] == "false"
    assert PUBLIC["enable_model_api"] == "false" and PUBLIC["allowed_urls"] == SHIPPED["allowed_urls"]
    same = ("models", "max_request_size", "max_response_size", "model_store", "load_models")
    assert {key: PUBLIC[key] for key in same} == {key: SHIPPED[key] for key in same}


@pytest.mark.slow
@pytest.mark.parametrize("url", ["https://example.invalid/evil.mar", "file:///etc/passwd", "cars.mar"])
def test_models_cannot_be_registered_through_the_management_api(server, url):
    management = server["urls"]["management"]
    response = requests.post(f"{management}/models", params={"url": url}, timeout=10)
    assert response.status_code == 405, response.text  # the registration API is off
    models = requests.get(f"{management}/models", timeout=10).json()["models"]
    assert [m["modelName"] for m in models] == ["cars"]


def run_client(script: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k != "CARS_API_KEY"} | (env or {})
    return subprocess.run(
        [str(CLIENT_PY), f"clients/{script}.py", *args], cwd=ROOT, env=environment,
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip


@pytest.mark.slow
@pytest.mark.skipif(not CLIENT_PY.exists(), reason="the thin client venv is missing: make client-install")
def test_public_config_requires_the_inference_key_and_the_clients_send_it(tiny_run, tmp_path):
    with running_torchserve(tiny_run, tmp_path / "ts", "config.public.properties") as server:
        keys = {api: entry["key"] for api, entry in json.loads(server["key_file"].read_text()).items()}
        image = valid_images()["jpeg"]

        def post(key: str | None) -> requests.Response:
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            return requests.post(server["url"], data=image, headers=headers, timeout=30)

        # TorchServe 0.12 refuses a missing or wrong key with 400 InvalidKeyException (not 401).
        for refused in (post(None), post("wrong-key"), post(keys["management"])):
            assert refused.status_code == 400 and refused.json()["type"] == "InvalidKeyException", refused.text
        assert post(keys["inference"]).status_code == 200
        management = server["urls"]["management"]
        assert requests.get(f"{management}/models", timeout=10).status_code == 400  # no key
        with_key = {"Authorization": f"Bearer {keys['management']}"}
        assert requests.get(f"{management}/models", headers=with_key, timeout=10).status_code == 200
        registered = requests.post(
            f"{management}/models", params={"url": "https://example.invalid/evil.mar"}, headers=with_key, timeout=10
        )
        assert registered.status_code == 405, registered.text  # even with the management key

        images = generate(tmp_path / "images", colours=1, shapes=2, per_class=3, size=48)
        store = str(tmp_path / "g.npz")
        built = run_client("build_gallery", str(images), "--store", store, "--url", server["url"],
                           env={"CARS_API_KEY": keys["inference"]})  # fmt: skip
        assert built.returncode == 0, built.stderr
        query_image = str(sorted(images.rglob("*.jpg"))[0])
        flagged = run_client("query", query_image, "--gallery", store, "--url", server["url"], "--json",
                             f"--api-key={keys['inference']}")  # fmt: skip  (a key may begin with "-")
        assert flagged.returncode == 0 and json.loads(flagged.stdout)["results"], flagged.stderr
        for refused, sent in (
            (run_client("query", query_image, "--gallery", store, "--url", server["url"]), "no key sent"),
            (run_client("query", query_image, "--gallery", store, "--url", server["url"], "--api-key", "nope"),
             "wrong or expired key"),
        ):  # fmt: skip
            assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
            assert all(part in refused.stderr for part in ("requires its API key", sent, "CARS_API_KEY"))


class Payload:
    """Unpickling this runs code: it creates `marker`. Safe loading must refuse it."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("weights", ["encoders/default/weights.pt", "head/weights.bin"])
def test_servable_weights_are_never_unpickled(tiny_run, tmp_path, weights):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    marker = tmp_path / "pwned"
    torch.save({"state": Payload(marker)}, run / "servable" / weights)
    with pytest.raises(pickle.UnpicklingError, match="[Ww]eights only load failed"):
        Embedder.load(run)
    assert not marker.exists()
    torch.load(run / "servable" / weights, weights_only=False)  # the payload is real: unsafe loading runs it
    assert marker.exists()


@pytest.mark.slow
def test_archive_manifest_names_no_serialized_model(server):
    """The handler loads only the servable unpacked from its own .mar (no serializedFile for
    TorchServe's BaseHandler to torch.load, no model URL)."""
    import zipfile

    manifest = json.loads(zipfile.ZipFile(server["archive"]).read("MAR-INF/MANIFEST.json"))
    assert manifest["model"] == {"modelName": "cars", "handler": "handler.py", "modelVersion": "1.0"}
