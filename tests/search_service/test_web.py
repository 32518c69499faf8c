"""The search page and API (search_service/web.py), started as a user starts it, against a real TorchServe
and a real gallery; the page is driven in a real headless Chromium (Debian's, through Playwright)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from clients.gallery import Gallery
from serve.torchserve import free_ports
from tests.clients.test_end_to_end import CLIENT_PY, build
from tests.conftest import ROOT
from train.synthetic import generate

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Stanford Cars style labels, so that make / year filters have something to filter.
LABELS = ("001_Audi_A4_Sedan_2008", "002_Audi_TT_Coupe_2012", "003_BMW_X5_SUV_2011", "004_BMW_M3_Coupe_2012",
          "005_Dodge_Ram_Pickup_2009", "006_Aston_Martin_V8_Vantage_Coupe_2012")  # fmt: skip


@pytest.fixture(scope="module")
def cars(tmp_path_factory) -> Path:
    """Six "models" (synthetic colour x shape classes renamed as car labels), 6 images each; the
    last image of each is held out of the gallery, for queries."""
    source = generate(tmp_path_factory.mktemp("web-src") / "images", colours=3, shapes=2, per_class=6, size=48)
    root = tmp_path_factory.mktemp("web-cars")
    classes = sorted(p for p in source.iterdir() if p.is_dir())
    for label, folder in zip(LABELS, classes, strict=True):
        images = sorted(folder.iterdir())
        shutil.copytree(folder, root / "gallery" / label, ignore=shutil.ignore_patterns(images[-1].name))
        (root / "held-out" / label).mkdir(parents=True)
        shutil.copy2(images[-1], root / "held-out" / label / images[-1].name)
    return root


@pytest.fixture(scope="module")
def gallery(server, cars, tmp_path_factory) -> Path:
    store = tmp_path_factory.mktemp("web-gallery") / "gallery.npz"
    summary = build(server, cars / "gallery", str(store))
    assert summary["total"] == 30
    return store


def start_page(gallery: Path | str, url: str, *extra: str, env: dict | None = None) -> tuple[subprocess.Popen, str]:
    port = free_ports(1)[0]
    environment = {key: value for key, value in os.environ.items() if key != "CARS_WRITE_KEY"} | (env or {})
    process = subprocess.Popen(
        [str(CLIENT_PY), "search_service/web.py", "--gallery", str(gallery), "--url", url, "--port", str(port), *extra],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=environment,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the page exited: {process.stdout.read()}")
        try:
            if requests.get(f"{base}/api/info", timeout=1).ok:
                return process, base
        except requests.ConnectionError:
            time.sleep(0.2)
    process.kill()
    raise AssertionError("the page did not answer within 60 s")


@pytest.fixture(scope="module")
def page(server, gallery) -> Iterator[str]:
    process, base = start_page(gallery, server["url"])
    try:
        yield base
    finally:
        process.terminate()
        process.wait(timeout=30)


def held_out(cars: Path, label: str) -> Path:
    return next((cars / "held-out" / label).iterdir())


def search(base: str, image: bytes, **params) -> requests.Response:
    return requests.post(f"{base}/search", params=params, files={"file": ("car.jpg", image, "image/jpeg")}, timeout=60)


def test_api_answers_results_with_metadata_and_image_urls(page, cars):
    image = held_out(cars, "003_BMW_X5_SUV_2011").read_bytes()
    answer = search(page, image, k=5).json()
    assert len(answer["results"]) == 5 and len(answer["model_version"]) == 64
    first = answer["results"][0]
    assert {"rank", "score", "label", "id", "image_url", "make", "model", "year"} <= first.keys()
    assert "path" not in first  # no server paths leave through the API
    assert [r["rank"] for r in answer["results"]] == [1, 2, 3, 4, 5]
    thumbnail = requests.get(page + first["image_url"], timeout=30)
    assert thumbnail.status_code == 200 and thumbnail.headers["content-type"] == "image/jpeg"
    raw = requests.post(f"{page}/search", params={"k": 5}, data=image, headers={"Content-Type": "image/jpeg"})
    assert [r["id"] for r in raw.json()["results"]] == [r["id"] for r in answer["results"]]  # raw bytes too


def test_filters_narrow_the_results_on_the_engine_side(page, cars):
    image = held_out(cars, "001_Audi_A4_Sedan_2008").read_bytes()
    audi = search(page, image, k=30, where="make=Audi").json()["results"]
    assert len(audi) == 10 and {r["make"] for r in audi} == {"Audi"}
    recent = search(page, image, k=30, where=["make!=Audi", "year>=2012"]).json()["results"]
    assert {r["label"] for r in recent} == {"004_BMW_M3_Coupe_2012", "006_Aston_Martin_V8_Vantage_Coupe_2012"}
    assert {r["make"] for r in recent} == {"BMW", "Aston Martin"}


@pytest.mark.parametrize(
    "request_kwargs, status, message",
    [
        ({"files": {"file": ("notes.txt", b"just text", "text/plain")}}, 415, "not a supported image"),
        ({"data": b""}, 400, "empty upload"),
        ({"files": {"other": ("car.jpg", b"\xff\xd8", "image/jpeg")}}, 400, 'field named "file"'),
        ({"params": {"where": "year>>2010"}, "data": b"x"}, 400, "bad filter"),
        ({"params": {"k": 0}, "data": b"x"}, 400, "bad request"),
        ({"data": b"\0" * (10 * 1024 * 1024 + 1)}, 413, "limit"),
    ],
)
def test_bad_requests_get_a_4xx_json_error(page, request_kwargs, status, message):
    response = requests.post(f"{page}/search", timeout=60, **request_kwargs)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json" and message in response.json()["error"]


@pytest.mark.parametrize("path", ["../../etc/passwd", "%2Fetc%2Fpasswd", "..%2F..%2Fetc%2Fpasswd", "not-a-row"])
def test_thumbnails_are_served_only_for_rows_of_the_gallery(page, path):
    response = requests.get(f"{page}/images/{path}", timeout=30)
    assert response.status_code == 404 and "root:" not in response.text
    assert response.headers["content-type"] == "application/json"


def test_server_down_is_503_and_another_model_is_409(server, gallery, cars, tmp_path):
    image = held_out(cars, "001_Audi_A4_Sedan_2008").read_bytes()
    down = f"http://127.0.0.1:{free_ports(1)[0]}/predictions/cars"
    foreign = Gallery.load(gallery)
    foreign.model_version = "f" * 64
    foreign.save(tmp_path / "foreign.npz")
    for store, url, status, message in (
        (gallery, down, 503, "unavailable"),
        (tmp_path / "foreign.npz", server["url"], 409, "was built with"),
    ):
        process, base = start_page(store, url)
        try:
            response = search(base, image)
            assert response.status_code == status and message in response.json()["error"], response.text
        finally:
            process.terminate()
            process.wait(timeout=30)


def test_the_api_is_described_and_bound_to_loopback(page):
    spec = requests.get(f"{page}/openapi.json", timeout=30).json()
    assert "/search" in spec["paths"] and "post" in spec["paths"]["/search"]
    assert page.startswith("http://127.0.0.1:")


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail(f"no Chromium at {CHROMIUM}: make test installs Debian's chromium (apt-get install chromium)")
        pytest.skip(f"no Chromium at {CHROMIUM} (make test installs it)")
    from playwright.sync_api import sync_playwright

    flags = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync"]  # fmt: skip
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=flags)
        try:
            yield chromium
        finally:
            chromium.close()


def test_a_person_searches_filters_and_sees_errors_in_a_real_browser(browser, page, cars, tmp_path):
    from playwright.sync_api import expect

    tab = browser.new_page(viewport={"width": 390, "height": 844})  # a phone's width
    tab.goto(page)
    tab.wait_for_selector("text=30 gallery cars")
    # Keyboard: the photo picker is reachable by Tab (the file input is visually hidden, not removed).
    tab.keyboard.press("Tab")
    assert tab.evaluate("document.activeElement.id") == "file"
    tab.set_input_files("#file", str(held_out(cars, "005_Dodge_Ram_Pickup_2009")))
    tab.click("#go")
    tab.wait_for_selector("#results .card")
    cards = tab.locator("#results .card")
    labels = [cards.nth(i).get_attribute("data-label") for i in range(cards.count())]
    assert len(labels) == 12 and labels[0] == "005_Dodge_Ram_Pickup_2009"
    assert cards.first.locator(".label").inner_text() == "Dodge Ram Pickup 2009"  # shown as a car name
    assert tab.locator("#results h2").inner_text().startswith("Most similar cars (model ")
    tab.screenshot(path=str(tmp_path / "page.png"), full_page=True)

    tab.select_option("#make", "BMW")
    tab.click("#go")
    expect(tab.locator("#results .card")).to_have_count(10)  # (the page's CSP forbids wait_for_function's eval)
    assert set(tab.locator("#results .card .label").all_inner_texts()) == {"BMW X5 SUV 2011", "BMW M3 Coupe 2012"}

    (tmp_path / "notes.txt").write_text("not a car")
    tab.set_input_files("#file", str(tmp_path / "notes.txt"))
    tab.click("#go")
    tab.wait_for_selector("#error:not(:empty)")
    assert "not a supported image" in tab.inner_text("#error")
    assert tab.evaluate("document.body.scrollWidth") <= 390  # nothing wider than the phone


@pytest.fixture(scope="module")
def two_models(tiny_run, tmp_path_factory) -> Iterator[dict]:
    """A TorchServe serving the tuned model and its untuned base (serve.archive --base) side by side."""
    from serve.archive import build_archive, build_base_archive
    from serve.torchserve import running_torchserve

    root = tmp_path_factory.mktemp("two-models")
    build_archive(tiny_run, root / "store")
    build_base_archive(tiny_run, root / "store")
    with running_torchserve(tiny_run, root) as handle:
        yield {**handle, "base_url": handle["url"].replace("/cars", "/cars-base")}


def test_base_and_tuned_side_by_side_in_the_cli_and_the_api(two_models, cars, tmp_path):
    from tests.clients.test_end_to_end import client

    tuned_store, base_store = str(tmp_path / "tuned.npz"), str(tmp_path / "base.npz")
    build(two_models, cars / "gallery", tuned_store)
    build({"url": two_models["base_url"]}, cars / "gallery", base_store)
    tuned, base = Gallery.load(tuned_store), Gallery.load(base_store)
    assert tuned.model_version != base.model_version and len(base) == 30  # really two models

    image = held_out(cars, "002_Audi_TT_Coupe_2012")
    shown = client("query", str(image), "--gallery", tuned_store, "--url", two_models["url"], "--compare", base_store,
                   "--compare-url", two_models["base_url"], "--json")  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    answer = __import__("json").loads(shown.stdout)
    assert answer["model_version"] == tuned.model_version
    assert answer["compare"]["model_version"] == base.model_version and len(answer["compare"]["results"]) == 5

    process, page_url = start_page(tuned_store, two_models["url"], "--compare", base_store,
                                   "--compare-url", two_models["base_url"])  # fmt: skip
    try:
        found = search(page_url, image.read_bytes(), k=4).json()
        assert found["compare"]["name"] == "base" and found["compare"]["model_version"] == base.model_version
        assert len(found["results"]) == len(found["compare"]["results"]) == 4
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_sidecar_attributes_and_cli_filters(server, cars, tmp_path):
    from tests.clients.test_end_to_end import client

    audi = sorted((cars / "gallery" / "001_Audi_A4_Sedan_2008").iterdir())
    sidecar = tmp_path / "listings.csv"
    # file names repeat across class folders here, so the sidecar names full paths
    lines = "".join(f"{p.resolve()},L{i},{15000 + i * 5000}\n" for i, p in enumerate(audi))
    sidecar.write_text("path,listing,price\n" + lines)
    store = str(tmp_path / "g.npz")
    build(server, cars / "gallery", store, "--metadata", str(sidecar))
    rows = {row["path"]: row for row in Gallery.load(store).rows}
    assert rows[str(audi[0].resolve())]["price"] == 15000 and rows[str(audi[0].resolve())]["listing"] == "L0"

    image = held_out(cars, "003_BMW_X5_SUV_2011")
    cheap = client("query", str(image), "--gallery", store, "--url", server["url"], "--top-k", "30",
                   "--where", "price<25000", "--json")  # fmt: skip
    assert cheap.returncode == 0, cheap.stderr
    found = __import__("json").loads(cheap.stdout)["results"]
    assert sorted(r["price"] for r in found) == [15000, 20000] and {r["make"] for r in found} == {"Audi"}
    bad = client("query", str(image), "--gallery", store, "--url", server["url"], "--where", "price<<1")
    assert bad.returncode == 2 and bad.stderr.startswith("error: bad filter")


def test_searches_reach_the_model_server_together_and_the_page_answers_meanwhile(server, gallery, cars):
    """Eight searches are all waiting on the embedding server at once (it sees them together, so
    it can batch them), and /api/info answers while they wait: the event loop is never blocked."""
    from concurrent.futures import ThreadPoolExecutor

    from tests.search_service.gate_proxy import gate_in_front_of

    image = held_out(cars, "003_BMW_X5_SUV_2011").read_bytes()
    with gate_in_front_of(server["url"], free_ports(1)[0]) as (gate, gated_url):
        process, base = start_page(gallery, gated_url, "--search-threads", "8")
        try:
            with ThreadPoolExecutor(8) as pool:
                searches = [pool.submit(search, base, image, k=5) for _ in range(8)]
                assert gate.wait_for(8, timeout=120), f"only {gate.most_waiting} searches reached the server together"
                info = requests.get(f"{base}/api/info", timeout=30)
                assert info.status_code == 200 and info.json()["gallery"] == 30
                assert not any(s.done() for s in searches)  # all still held at the gate
                gate.opened.set()
                answers = [s.result(timeout=120) for s in searches]
        finally:
            process.terminate()
            process.wait(timeout=30)
    assert [a.status_code for a in answers] == [200] * 8, answers[0].text
    assert len({tuple(r["id"] for r in a.json()["results"]) for a in answers}) == 1  # the same answer, 8 times


def test_group_by_gives_the_best_photo_of_each_car_model(page, cars):
    image = held_out(cars, "002_Audi_TT_Coupe_2012").read_bytes()
    plain = search(page, image, k=30).json()["results"]
    grouped = search(page, image, k=6, group_by="label").json()
    labels = [r["label"] for r in grouped["results"]]
    assert grouped["group_by"] == "label" and sorted(labels) == sorted(LABELS)  # 6 models, once each
    best = {}  # the first (best) photo of each label in the plain ranking of all 30
    for r in plain:
        best.setdefault(r["label"], r["id"])
    assert [r["id"] for r in grouped["results"]] == list(best.values())
    refused = search(page, image, group_by="price")
    assert refused.status_code == 400 and "group_by must be one of" in refused.json()["error"]
