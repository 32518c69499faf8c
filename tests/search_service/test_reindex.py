"""Model upgrades (search_service/reindex.py and POST /admin/switch): a running search service moves to a
new model and a re-embedded gallery under load, with no failed search and no answer that mixes two
model versions; writes made meanwhile are not lost. Two real TorchServes serve the old and new model."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time

import pytest
import requests

from serve.torchserve import running_torchserve
from tests.clients.test_end_to_end import CLIENT_PY
from tests.search_service.test_gallery_writes import AUTH, KEY, add
from tests.search_service.helpers import held_out, search, start_page, stop
from tests.conftest import ROOT, train_tiny_run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def new_model(tmp_path_factory):
    """A second TorchServe, serving another model (the same recipe trained for one epoch less)."""
    root = tmp_path_factory.mktemp("new-model")
    run = train_tiny_run(root, epochs=2)
    with running_torchserve(run, root / "torchserve") as handle:
        yield handle


def reindex(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(CLIENT_PY), "search_service/reindex.py", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, env={**os.environ, "CARS_WRITE_KEY": KEY})  # fmt: skip


class Searcher(threading.Thread):
    """Searches back to back until stopped: (started, finished, status, model version) of each."""

    def __init__(self, base: str, image: bytes):
        super().__init__(daemon=True)
        self.base, self.image, self.stop, self.seen = base, image, threading.Event(), []

    def run(self) -> None:
        while not self.stop.is_set():
            started = time.monotonic()
            response = search(self.base, self.image, k=5)
            version = response.json().get("model_version") if response.status_code == 200 else None
            self.seen.append((started, time.monotonic(), response.status_code, version))


def test_a_running_service_moves_to_a_new_model_under_load(server, new_model, gallery, cars, tmp_path):
    old_store, new_store, photos = tmp_path / "v1.npz", tmp_path / "v2.npz", tmp_path / "photos"
    shutil.copy2(gallery, old_store)
    process, base = start_page(old_store, server["url"], "--photos", str(photos), env={"CARS_WRITE_KEY": KEY})
    try:
        image = held_out(cars, "004_BMW_M3_Coupe_2012").read_bytes()
        old_version = search(base, image).json()["model_version"]
        assert add(base, image, id="before", listing="ad-1", price="100").status_code == 201
        first = reindex("--from", str(old_store), "--to", str(new_store), "--url", new_model["url"], "--json")
        assert first.returncode == 0, first.stderr
        summary = json.loads(first.stdout)
        assert summary["added"] == summary["total"] == 31 and summary["model_version"] != old_version
        # Writes after the re-embedding: the switch must catch up on them.
        other = held_out(cars, "001_Audi_A4_Sedan_2008").read_bytes()
        assert add(base, other, id="during", listing="ad-2").status_code == 201
        assert requests.patch(f"{base}/gallery/before", json={"price": 90}, headers=AUTH, timeout=30).ok
        searchers = [Searcher(base, image) for _ in range(4)]
        for searcher in searchers:
            searcher.start()
        time.sleep(2)
        switched = requests.post(f"{base}/admin/switch", json={"gallery": str(new_store), "url": new_model["url"]},
                                 headers=AUTH, timeout=300)  # fmt: skip
        switched_at = time.monotonic()
        time.sleep(2)
        for searcher in searchers:
            searcher.stop.set()
        for searcher in searchers:
            searcher.join(timeout=120)
        assert switched.status_code == 200, switched.text
        answer = switched.json()
        assert answer["model_version"] == summary["model_version"] and answer["rows"] == 32
        assert answer["caught_up"]["added"] == 1 and answer["caught_up"]["updated"] == 1
        seen = [s for searcher in searchers for s in searcher.seen]
        assert [s for s in seen if s[2] != 200] == [] and len(seen) > 8  # no failed search
        assert {s[3] for s in seen} == {old_version, summary["model_version"]}  # both models answered...
        assert all(s[3] == summary["model_version"] for s in seen if s[0] > switched_at)  # ...never old after
        info = requests.get(f"{base}/api/info", timeout=30).json()
        assert info["model_version"] == summary["model_version"] and info["gallery"] == 32
        assert requests.get(f"{base}/gallery/during", timeout=30).status_code == 200
        assert requests.get(f"{base}/gallery/before", timeout=30).json()["price"] == 90
        assert add(base, image, id="after", listing="ad-3").status_code == 201  # writes go to the new gallery
        assert requests.get(f"{base}/api/info", timeout=30).json()["gallery"] == 33
        # The CLI does it in one command (here back to the first model, into a third gallery).
        back = reindex("--from", str(new_store), "--to", str(tmp_path / "v1b.npz"), "--url", server["url"],
                       "--switch", base)  # fmt: skip
        assert back.returncode == 0, back.stderr
        assert "now searches" in back.stdout
        assert search(base, image).json()["model_version"] == old_version
    finally:
        stop(process)


def test_reindex_resumes_and_refuses_what_makes_no_sense(server, new_model, gallery, tmp_path):
    target = tmp_path / "v2.npz"
    first = reindex("--from", str(gallery), "--to", str(target), "--url", new_model["url"], "--json")
    assert first.returncode == 0 and json.loads(first.stdout)["added"] == 30, first.stderr
    again = reindex("--from", str(gallery), "--to", str(target), "--url", new_model["url"], "--json")
    assert json.loads(again.stdout)["added"] == 0  # resumable: only what is missing is embedded
    assert "calibrated" not in json.loads(again.stdout)
    # A calibrated gallery's copy is calibrated anew, for the new model's scores.
    from clients.gallery import Gallery
    from tests.clients.test_end_to_end import client

    calibrated = tmp_path / "calibrated.npz"
    shutil.copy2(gallery, calibrated)
    assert client("calibrate", "--gallery", str(calibrated)).returncode == 0
    copy = reindex("--from", str(calibrated), "--to", str(tmp_path / "v2c.npz"), "--url", new_model["url"], "--json")
    assert set(json.loads(copy.stdout)["calibrated"]) == {"likely the same model", "similar"}
    renewed, old = Gallery.load(tmp_path / "v2c.npz").calibration, Gallery.load(calibrated).calibration
    assert renewed["model_version"] == json.loads(copy.stdout)["model_version"] != old["model_version"]
    for args, message in (
        (("--to", str(tmp_path / "x.npz"), "--url", server["url"]), "the one"),  # the same model
        (("--to", str(gallery), "--url", new_model["url"]), "same gallery"),
        (("--to", str(target), "--url", new_model["url"], "--switch", "http://127.0.0.1:9"), "cannot reach"),
    ):
        failed = reindex("--from", str(gallery), *args)
        assert failed.returncode != 0 and message in failed.stderr and len(failed.stderr.strip().splitlines()) == 1


def test_bad_switches_are_refused_and_change_nothing(server, new_model, gallery, tmp_path):
    store = tmp_path / "v1.npz"
    shutil.copy2(gallery, store)
    process, base = start_page(store, server["url"], env={"CARS_WRITE_KEY": KEY})
    try:
        before = requests.get(f"{base}/api/info", timeout=30).json()
        for body, headers, status, message in (
            ({"gallery": str(store), "url": new_model["url"]}, {}, 401, "write key"),
            ({"gallery": str(store), "url": new_model["url"]}, AUTH, 409, "holds model"),
            ({"gallery": str(tmp_path / "none.npz"), "url": new_model["url"]}, AUTH, 400, "no gallery"),
            ({"gallery": str(store)}, AUTH, 400, "send"),
            ({"gallery": str(store), "url": "http://127.0.0.1:9/predictions/cars"}, AUTH, 503, "cannot switch"),
        ):
            refused = requests.post(f"{base}/admin/switch", json=body, headers=headers, timeout=120)
            assert refused.status_code == status and message in refused.json()["error"], refused.text
        assert requests.get(f"{base}/api/info", timeout=30).json() == before
    finally:
        stop(process)
