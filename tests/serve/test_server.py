"""Against a real TorchServe, started here on free loopback ports and always stopped."""

from __future__ import annotations

import base64
import re
import zipfile
from pathlib import Path
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests

from serve.embedder import Embedder, decode_image
from tests.conftest import ROOT
from tests.serve.images import bad_images, valid_images

pytestmark = pytest.mark.slow


def test_archive_holds_only_what_serving_needs(server):
    names = set(zipfile.ZipFile(server["archive"]).namelist())
    # The core and serve packages whole (no hand-kept list), nothing of train/.
    shipped = [f"{package}/{f.name}" for package in ("core", "serve") for f in (ROOT / package).glob("*.py")]
    code = {"handler.py", *shipped}
    assert {"core/encoders.py", "core/heads.py", "core/preprocessing.py", "serve/embedder.py"} <= code
    servable = {f"servable/{p}" for p in ("config.json", "head/config.json", "head/weights.bin")}
    servable |= {"servable/encoders/default/encoder.json", "servable/encoders/default/weights.pt"}
    assert names == code | servable | {"run.json", "MAR-INF/MANIFEST.json"}
    assert not any(name.startswith("/") or str(ROOT) in name for name in names)


def test_batch_settings_of_the_config_apply(server):
    described = requests.get(f"{server['urls']['management']}/models/cars", timeout=5).json()[0]
    assert (described["batchSize"], described["maxBatchDelay"], described["responseTimeout"]) == (16, 300, 60)
    assert len(described["workers"]) == 1  # running_torchserve's override of the shipped two


def test_server_embedding_equals_in_process_embedder(server):
    body = valid_images()["jpeg"]
    response = requests.post(server["url"], data=body, timeout=30)
    assert response.status_code == 200, response.text
    payload = response.json()
    embedder = Embedder.load(server["run"])
    expected = embedder.embed([decode_image(body)])[0]
    assert payload["dim"] == embedder.dim == len(payload["embedding"])
    assert payload["model_version"] == embedder.model_version
    assert np.allclose(payload["embedding"], expected, atol=1e-5)


def test_binary_answer_carries_the_same_embedding_as_float32_bytes(server):
    body = valid_images()["jpeg"]
    as_json = requests.post(server["url"], data=body, timeout=30)
    accept_binary = {"Accept": "application/octet-stream"}
    binary = requests.post(server["url"], data=body, headers=accept_binary, timeout=30)
    assert as_json.status_code == binary.status_code == 200, binary.text
    assert as_json.headers["Content-Type"].startswith("application/json")
    assert binary.headers["Content-Type"] == "application/octet-stream"
    payload = as_json.json()
    assert int(binary.headers["X-Embedding-Dim"]) == payload["dim"] == len(binary.content) // 4
    assert binary.headers["X-Model-Version"] == payload["model_version"]
    assert np.array_equal(np.frombuffer(binary.content, dtype="<f4"), np.asarray(payload["embedding"], np.float32))
    refused = requests.post(server["url"], data=b"not an image", headers=accept_binary, timeout=10)
    assert refused.status_code == 415 and refused.headers["Content-Type"].startswith("application/json")
    assert refused.json()["error"]


def test_three_request_formats_give_the_same_embedding(server):
    body = valid_images()["png"]
    raw = requests.put(server["url"], data=body, timeout=30)  # curl -T
    multipart = requests.post(server["url"], files={"data": ("car.png", body, "image/png")}, timeout=30)
    as_json = requests.post(server["url"], json={"image": base64.b64encode(body).decode()}, timeout=30)
    for response in (raw, multipart, as_json):
        assert response.status_code == 200, response.text
    assert np.allclose(raw.json()["embedding"], multipart.json()["embedding"])
    assert np.allclose(raw.json()["embedding"], as_json.json()["embedding"])


@pytest.mark.parametrize("name", sorted(valid_images()))
def test_unusual_but_valid_images_return_200(server, name):
    response = requests.post(server["url"], data=valid_images()[name], timeout=30)
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("name", sorted(bad_images()))
def test_bad_input_gets_its_4xx_and_the_server_keeps_answering(server, name):
    body, status = bad_images()[name]
    response = requests.post(server["url"], data=body, timeout=10)
    assert response.status_code == status, response.text
    assert response.json()["error"]
    assert requests.post(server["url"], data=valid_images()["jpeg"], timeout=30).status_code == 200


@pytest.mark.parametrize(
    "kwargs, status",
    [
        ({"json": {"image": "%%%"}}, 400),
        ({"json": [1, 2, 3]}, 400),
        ({"data": b"{oops", "headers": {"Content-Type": "application/json"}}, 400),
        ({"files": {"other": ("x.jpg", b"abc")}}, 400),
        ({"data": b"hello", "headers": {"Content-Type": "text/plain"}}, 415),
    ],
)
def test_malformed_requests_get_4xx_json(server, kwargs, status):
    response = requests.post(server["url"], timeout=10, **kwargs)
    assert response.status_code == status, response.text
    assert "error" in response.json()


def test_oversized_body_is_refused_with_413(server):
    body = valid_images()["bmp"] + b"\0" * (11 * 1024 * 1024)  # over the handler's 10 MiB cap
    response = requests.post(server["url"], data=body, timeout=30)
    assert response.status_code == 413 and "limit" in response.json()["error"]


def test_concurrent_requests_are_batched_and_bad_items_fail_alone(server):
    good = valid_images()["jpeg"]
    bodies = [good if i % 4 else bad_images()["truncated-jpeg"][0] for i in range(16)]
    with ThreadPoolExecutor(max_workers=16) as pool:
        responses = list(pool.map(lambda body: requests.post(server["url"], data=body, timeout=60), bodies))
    assert [r.status_code for r in responses] == [200 if i % 4 else 400 for i in range(16)]
    reference = responses[1].json()["embedding"]
    assert all(np.allclose(r.json()["embedding"], reference) for r in responses if r.status_code == 200)
    metrics = requests.get(f"{server['urls']['metrics']}/metrics", timeout=5).text
    sizes = [float(v) for v in re.findall(r'^BatchSize\{[^}]*ModelName="cars"[^}]*\} ([0-9.]+)$', metrics, re.M)]
    assert sizes and max(sizes) > 1, metrics[-2000:]


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (TorchServe's Java frontend starts the Python workers)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # ended while we looked
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        children = parents.get(todo.pop(), [])
        found += children
        todo += children
    return found


def test_workers_run_with_huge_pages_and_their_share_of_the_cores(server):
    environments = []
    for pid in descendants(server["pid"]):
        try:
            if b"model_service_worker" in Path(f"/proc/{pid}/cmdline").read_bytes():
                entries = Path(f"/proc/{pid}/environ").read_text().split("\0")
                environments.append(dict(entry.split("=", 1) for entry in entries if "=" in entry))
        except OSError:
            continue
    assert environments, "no TorchServe worker process found below the server"
    for environment in environments:
        assert environment.get("THP_MEM_ALLOC_ENABLE") == "1"  # core/huge_pages.py
        assert environment.get("OMP_NUM_THREADS", "").isdigit()
