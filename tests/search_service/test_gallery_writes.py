"""Apps write to the gallery through the search service (POST / PATCH / DELETE /gallery), against a
real TorchServe and real stores (the .npz file and Qdrant Edge): the key, the bad requests, and a
service killed mid-write that loses no acknowledged write."""

from __future__ import annotations

import shutil
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.search_service.helpers import held_out, search, start_page, stop

pytestmark = pytest.mark.slow
KEY = "test-write-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture()
def writable(server, gallery, tmp_path) -> Iterator[tuple[str, Path]]:
    """A page over a copy of the gallery that takes writes with KEY; its photo folder."""
    store = tmp_path / "gallery.npz"
    shutil.copy2(gallery, store)
    photos = tmp_path / "photos"
    process, base = start_page(store, server["url"], "--photos", str(photos), env={"CARS_WRITE_KEY": KEY})
    try:
        yield base, photos
    finally:
        stop(process)


def add(base: str, image: bytes, headers: dict | None = None, **fields) -> requests.Response:
    files = {"file": ("car.jpg", image, "image/jpeg")}
    return requests.post(f"{base}/gallery", files=files, data=fields, headers=AUTH if headers is None else headers,
                         timeout=60)  # fmt: skip


def test_an_app_adds_updates_and_deletes_a_listing_photo(writable, cars):
    base, photos = writable
    image = held_out(cars, "003_BMW_X5_SUV_2011").read_bytes()
    created = add(base, image, id="photo-1", listing="L-7", make="BMW", year="2011", price="18500")
    assert created.status_code == 201, created.text
    row = created.json()
    assert row["app_id"] == "photo-1" and row["listing"] == "L-7" and row["price"] == 18500 and row["year"] == 2011
    assert "path" not in row and len(list(photos.iterdir())) == 1
    assert requests.get(f"{base}/api/info", timeout=30).json()["gallery"] == 31
    found = search(base, image, k=3, where="listing=L-7").json()["results"]
    assert [r["app_id"] for r in found] == ["photo-1"] and found[0]["score"] > 0.99  # its own photo
    assert requests.get(base + found[0]["image_url"], timeout=30).status_code == 200  # the kept photo
    fields = {"price": 17900, "listing": None}
    changed = requests.patch(f"{base}/gallery/photo-1", json=fields, headers=AUTH, timeout=30)
    assert changed.status_code == 200 and changed.json()["price"] == 17900 and "listing" not in changed.json()
    assert requests.get(f"{base}/gallery/photo-1", timeout=30).json()["price"] == 17900
    assert search(base, image, k=3, where="listing=L-7").json()["results"] == []
    deleted = requests.delete(f"{base}/gallery/photo-1", headers=AUTH, timeout=30)
    assert deleted.json() == {"id": "photo-1", "deleted": True}
    assert requests.get(f"{base}/gallery/photo-1", timeout=30).status_code == 404
    assert requests.get(f"{base}/api/info", timeout=30).json()["gallery"] == 30 and list(photos.iterdir()) == []


def test_a_listing_with_several_photos_comes_back_once_with_group_by(writable, cars):
    base, _ = writable
    photos = sorted((cars / "gallery" / "003_BMW_X5_SUV_2011").iterdir())[:3]
    for i, photo in enumerate(photos):
        assert add(base, photo.read_bytes(), id=f"ad-9-{i}", listing="ad-9", price="9000").status_code == 201
    query = held_out(cars, "003_BMW_X5_SUV_2011").read_bytes()
    plain = search(base, query, k=40).json()["results"]  # the whole gallery, ranked
    grouped = search(base, query, k=3, group_by="listing").json()["results"]
    assert [r.get("listing") for r in plain].count("ad-9") == 3  # the three photos of one car...
    assert [r["listing"] for r in grouped] == ["ad-9"]  # ...are one result; rows of no listing are in no group
    assert grouped[0]["id"] == next(r["id"] for r in plain if r.get("listing") == "ad-9")  # its best photo


@pytest.mark.parametrize(
    "method, path, kwargs, status, message",
    [
        ("post", "/gallery", {"headers": {}}, 401, "write key"),
        ("post", "/gallery", {"headers": {"Authorization": "Bearer wrong-key-0123456789"}}, 401, "write key"),
        ("patch", "/gallery/photo-0", {"headers": {}, "json": {"price": 1}}, 401, "write key"),
        ("delete", "/gallery/photo-0", {"headers": {"Authorization": KEY}}, 401, "write key"),  # no "Bearer"
        ("post", "/gallery", {"data": {"id": "photo-0"}}, 409, "already"),
        ("post", "/gallery", {"data": {"id": "bad id!"}}, 400, "id must be"),
        ("post", "/gallery", {"data": {}}, 400, "id must be"),
        ("post", "/gallery", {"data": {"id": "x1", "path": "/etc/passwd"}}, 400, "reserved"),
        ("post", "/gallery", {"data": {"id": "x1", "bad name": "1"}}, 400, "not a plain name"),
        ("post", "/gallery", {"data": {"id": "x1"}, "files": {"file": ("a.txt", b"text", "text/plain")}}, 415, "not a"),
        ("post", "/gallery", {"data": {"id": "x1"}, "files": {"file": ("a.jpg", b"\0" * (10 * 1024 * 1024 + 1))}},
         413, "limit"),
        ("post", "/gallery", {"data": {"id": "x1"}, "files": {}}, 400, "multipart"),
        ("patch", "/gallery/photo-0", {"json": {"price": [1, 2]}}, 400, "a value must be"),
        ("patch", "/gallery/photo-0", {"json": {"label": "x"}}, 400, "reserved"),
        ("patch", "/gallery/photo-0", {"json": ["price"]}, 400, "JSON object"),
        ("patch", "/gallery/photo-0", {"data": b"{not json", "headers": {**AUTH, "Content-Type": "application/json"}},
         400, "JSON object"),
        ("patch", "/gallery/nobody", {"json": {"price": 1}}, 404, "no gallery row"),
        ("delete", "/gallery/nobody", {}, 404, "no gallery row"),
        ("get", "/gallery/nobody", {}, 404, "no gallery row"),
    ],
)  # fmt: skip
def test_bad_writes_get_a_4xx_json_error_and_change_nothing(writable, cars, method, path, kwargs, status, message):
    base, photos = writable
    image = held_out(cars, "001_Audi_A4_Sedan_2008").read_bytes()
    assert add(base, image, id="photo-0", price="1000").status_code == 201
    before = requests.get(f"{base}/gallery/photo-0", timeout=30).json()
    if method == "post" and "files" not in kwargs:
        kwargs = {**kwargs, "files": {"file": ("car.jpg", image, "image/jpeg")}}
    response = getattr(requests, method)(f"{base}{path}", **{"headers": AUTH, **kwargs}, timeout=60)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json" and message in response.json()["error"]
    assert requests.get(f"{base}/api/info", timeout=30).json()["gallery"] == 31
    assert requests.get(f"{base}/gallery/photo-0", timeout=30).json() == before and len(list(photos.iterdir())) == 1


def test_writes_are_refused_when_no_key_is_configured(server, gallery, cars, tmp_path):
    store = tmp_path / "gallery.npz"
    shutil.copy2(gallery, store)
    process, base = start_page(store, server["url"], "--photos", str(tmp_path / "photos"))
    try:
        refused = add(base, held_out(cars, "001_Audi_A4_Sedan_2008").read_bytes(), id="photo-0")
        assert refused.status_code == 403 and "takes no writes" in refused.json()["error"]
        deleted = requests.delete(f"{base}/gallery/photo-0", headers=AUTH, timeout=30)
        assert deleted.status_code == 403
    finally:
        stop(process)
    assert not (tmp_path / "photos").exists()


@pytest.mark.parametrize("kind", ["file", "edge"])
def test_a_killed_service_loses_no_acknowledged_write(server, cars, tmp_path, kind):
    """Writers add photos until the service is killed (SIGKILL) mid-stream; after a restart every
    acknowledged id is there, and the gallery opens and answers."""
    store = str(tmp_path / "gallery.npz") if kind == "file" else f"qdrant://{tmp_path / 'edge'}"
    photos, env = tmp_path / "photos", {"CARS_WRITE_KEY": KEY}
    images = [p.read_bytes() for p in sorted((cars / "gallery").rglob("*.jpg"))]
    from tests.clients.test_end_to_end import build

    build(server, cars / "gallery", store)
    process, base = start_page(store, server["url"], "--photos", str(photos), env=env)
    acknowledged, lock, stop_writing = [], threading.Lock(), threading.Event()

    def writer(offset: int) -> None:
        for i in range(offset, 400, 4):
            if stop_writing.is_set():
                return
            try:
                answer = add(base, images[i % len(images)], id=f"w{i}", listing=f"L{i // 3}")
            except requests.RequestException:
                return
            if answer.status_code == 201:
                with lock:
                    acknowledged.append(f"w{i}")

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    try:
        while len(acknowledged) < 12 and any(t.is_alive() for t in threads):
            threading.Event().wait(0.05)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        stop_writing.set()
        for thread in threads:
            thread.join(timeout=120)
    assert len(acknowledged) >= 12
    process, base = start_page(store, server["url"], "--photos", str(photos), env=env)
    try:
        missing = [i for i in acknowledged if requests.get(f"{base}/gallery/{i}", timeout=30).status_code != 200]
        assert missing == [], f"acknowledged but lost: {missing}"
        assert requests.get(f"{base}/api/info", timeout=30).json()["gallery"] >= 30 + len(acknowledged)
        assert search(base, images[0], k=5).status_code == 200
        again = add(base, images[0], id="after-restart")
        assert again.status_code == 201, again.text
    finally:
        stop(process)


def test_the_listings_cli_does_the_same_writes(writable, cars, tmp_path):
    import json
    import os
    import subprocess

    from tests.clients.test_end_to_end import CLIENT_PY
    from tests.conftest import ROOT

    base, _ = writable
    photo = held_out(cars, "005_Dodge_Ram_Pickup_2009")
    key_file = tmp_path / "write.key"
    key_file.write_text(KEY + "\n")

    def listings(*args: str, key: bool = True) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if k != "CARS_WRITE_KEY"}
        flags = ["--write-key-file", str(key_file)] if key else []
        return subprocess.run([str(CLIENT_PY), "clients/listings.py", "--service", base, *flags, *args], cwd=ROOT,
                              env=env, capture_output=True, text=True, timeout=120)  # fmt: skip

    added = listings("--json", "add", str(photo), "--id", "cli-1", "--set", "listing=0042", "--set", "price=7000")
    assert added.returncode == 0, added.stderr
    row = json.loads(added.stdout)
    assert row["listing"] == "0042" and row["price"] == 7000  # a listing stays text, a price is a number
    assert listings("update", "cli-1", "--set", "price=6500", "--remove", "listing").returncode == 0
    shown = listings("get", "cli-1", key=False)
    assert shown.returncode == 0 and "price=6500" in shown.stdout and "listing" not in shown.stdout
    assert listings("delete", "cli-1").stdout.strip() == "deleted cli-1"
    refusals = [
        (("get", "cli-1"), False, "HTTP 404"),
        (("delete", "cli-1"), True, "HTTP 404"),
        (("delete", "x"), False, "write key"),
        (("update", "x", "--set", "oops"), True, "NAME=VALUE"),
        (("add", str(tmp_path / "missing.jpg"), "--id", "y"), True, "cannot read"),
    ]
    for args, key, message in refusals:
        failed = listings(*args, key=key)
        assert failed.returncode == 2 and message in failed.stderr, failed.stderr
        assert len(failed.stderr.strip().splitlines()) == 1


def test_writers_and_searchers_at_once_all_succeed_and_agree(writable, cars):
    """Four writers (add, then change a field) and four searchers at the same time: every request
    succeeds, and the gallery ends with exactly the rows and values written."""
    from concurrent.futures import ThreadPoolExecutor

    base, _ = writable
    images = [p.read_bytes() for p in sorted((cars / "held-out").rglob("*.jpg"))]

    def write(i: int) -> list[int]:
        created = add(base, images[i % len(images)], id=f"c{i}", listing=f"L{i % 3}")
        changed = requests.patch(f"{base}/gallery/c{i}", json={"price": i}, headers=AUTH, timeout=60)
        return [created.status_code, changed.status_code]

    def read(i: int) -> list[int]:
        return [search(base, images[i % len(images)], k=5, group_by="listing").status_code]

    with ThreadPoolExecutor(8) as pool:
        statuses = sum(pool.map(lambda i: write(i) if i % 2 else read(i), range(24)), [])
    assert statuses.count(201) == 12 and set(statuses) == {200, 201}
    assert requests.get(f"{base}/api/info", timeout=30).json()["gallery"] == 30 + 12
    assert all(requests.get(f"{base}/gallery/c{i}", timeout=30).json()["price"] == i for i in range(1, 24, 2))
