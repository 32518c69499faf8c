"""The search page and API (search_service/web.py), started as a user starts it, against a real TorchServe
and a real gallery; the page is driven in a real headless Chromium (Debian's, through Playwright)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from clients.gallery import Gallery
from serve.torchserve import free_ports
from tests.clients.test_end_to_end import build
from tests.search_service.helpers import LABELS, held_out, search, start_page

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="module")
def page(server, gallery) -> Iterator[str]:
    process, base = start_page(gallery, server["url"])
    try:
        yield base
    finally:
        process.terminate()
        process.wait(timeout=30)


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


@pytest.fixture(scope="module")
def calibrated_page(server, gallery, tmp_path_factory) -> Iterator[str]:
    """The page over a copy of the gallery with its match levels calibrated (clients/calibrate.py)."""
    from tests.clients.test_end_to_end import client

    store = tmp_path_factory.mktemp("calibrated") / "gallery.npz"
    shutil.copy2(gallery, store)
    calibrated = client("calibrate", "--gallery", str(store))
    assert calibrated.returncode == 0, calibrated.stderr
    process, base = start_page(store, server["url"])
    try:
        yield base
    finally:
        process.terminate()
        process.wait(timeout=30)


def card_ids(tab) -> list[str]:
    cards = tab.locator("#results .card")
    return [cards.nth(i).get_attribute("data-id") for i in range(cards.count())]


def test_a_person_searches_the_way_people_search_in_a_real_browser(browser, calibrated_page, cars, tmp_path):
    """Search on paste, match levels, more like this, not like this, a shared URL, and a region
    drawn with the mouse and with the keyboard: each checked against the API's own answer."""
    import base64

    from playwright.sync_api import expect

    from tests.search_service.test_search_features import two_cars

    base = calibrated_page
    tab = browser.new_page(viewport={"width": 390, "height": 844})
    tab.goto(base)
    tab.wait_for_selector("text=match levels calibrated")
    # Paste (Ctrl-V) of an image starts the search: no click.
    photo = held_out(cars, "003_BMW_X5_SUV_2011").read_bytes()
    tab.evaluate(
        """(data) => { const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
           const file = new File([bytes], "car.jpg", { type: "image/jpeg" }); const clip = new DataTransfer();
           clip.items.add(file); document.dispatchEvent(new ClipboardEvent("paste", { clipboardData: clip })); }""",
        base64.b64encode(photo).decode(),
    )
    expect(tab.locator("#status")).to_have_text("12 results, re-ranked")  # re-ranked: the default
    api = search(base, photo, k=12).json()["results"]
    assert card_ids(tab) == [r["id"] for r in api]
    level = tab.locator("#results .card .level").first
    assert level.inner_text().lower() == api[0]["match"]
    assert f"score {api[0]['score']:.3f}" in level.get_attribute("title")  # the raw score in a tooltip
    # "Not like this" leaves that car out and searches again.
    dropped = card_ids(tab)[0]
    tab.locator("#results .card").first.get_by_role("button", name="Not like this").click()
    expect(tab.locator(f'#results .card[data-id="{dropped}"]')).to_have_count(0)
    # "More like this" from a card: its URL holds the search, and opening that URL gives it again.
    chosen = card_ids(tab)[1]
    tab.locator("#results .card").nth(1).get_by_role("button", name="More like this").click()
    expect(tab.locator("#results h2")).to_contain_text("More like the chosen car")
    assert f"similar={chosen}" in tab.url
    similar = requests.get(f"{base}/similar/{chosen}", params={"k": 12}, timeout=60).json()["results"]
    expect(tab.locator("#results .card")).to_have_count(len(similar))
    assert card_ids(tab) == [r["id"] for r in similar] and chosen not in card_ids(tab)
    tab.select_option("#make", "Audi")  # a filter re-runs the search, and goes into the URL
    expect(tab.locator("#status")).to_have_text("10 results, re-ranked")
    assert set(tab.locator("#results .card .label").all_inner_texts()) <= {"Audi A4 Sedan 2008", "Audi TT Coupe 2012"}
    shared = browser.new_page()
    shared.goto(tab.url)
    expect(shared.locator("#status")).to_have_text("10 results, re-ranked")
    assert card_ids(shared) == card_ids(tab) and "make=Audi" in tab.url
    shared.close()
    # A region drawn with the mouse: the page sends it as crop=x,y,w,h and shows what the API finds for it.
    both, left, _ = two_cars(cars)
    (tmp_path / "two.png").write_bytes(both)
    tab.select_option("#make", "")
    tab.set_input_files("#file", str(tmp_path / "two.png"))
    expect(tab.locator("#status")).to_have_text("12 results, re-ranked")
    whole = card_ids(tab)
    tab.locator("#photo").scroll_into_view_if_needed()
    area = tab.locator("#photo").bounding_box()
    with tab.expect_request(lambda r: "crop=" in r.url) as sent:
        tab.mouse.move(area["x"] + 2, area["y"] + 2)
        tab.mouse.down()
        tab.mouse.move(area["x"] + area["width"] / 2 - 2, area["y"] + area["height"] - 2, steps=5)
        tab.mouse.up()
    crop = sent.value.url.split("crop=")[1].split("&")[0].replace("%2C", ",")
    expect(tab.locator("#results")).to_have_attribute("aria-busy", "false")
    expect(tab.locator("#results h2")).to_contain_text("Most similar to the region")
    assert card_ids(tab) == ids_of(search(base, both, k=12, crop=crop)) != whole
    # The same with the keyboard: arrows make and move a box, Enter searches it, Escape the whole photo.
    tab.focus("#photo")
    with tab.expect_request(lambda r: "crop=" in r.url) as sent:
        tab.keyboard.press("ArrowRight")
        tab.keyboard.press("Enter")
    crop = sent.value.url.split("crop=")[1].split("&")[0].replace("%2C", ",")
    expect(tab.locator("#results")).to_have_attribute("aria-busy", "false")  # that search is shown
    assert card_ids(tab) == ids_of(search(base, both, k=12, crop=crop))
    tab.keyboard.press("Escape")
    expect(tab.locator("#results")).to_have_attribute("aria-busy", "false")
    expect(tab.locator("#results h2")).to_contain_text("Most similar cars")
    assert card_ids(tab) == whole
    assert tab.evaluate("document.body.scrollWidth") <= 390  # still fits a phone


def ids_of(answer: requests.Response) -> list[str]:
    assert answer.status_code == 200, answer.text
    return [r["id"] for r in answer.json()["results"]]


def test_the_re_rank_switch_re_runs_the_search_and_stays_in_the_url(browser, page, cars):
    """"Re-rank results" (on by default: the service's measured default) re-runs the search with
    rerank=false when switched off by keyboard, shows what the API answers, and a "more like this"
    URL keeps the choice."""
    from playwright.sync_api import expect

    tab = browser.new_page(viewport={"width": 390, "height": 844})
    tab.goto(page)
    tab.wait_for_selector("text=30 gallery cars")
    switch = tab.get_by_label("Re-rank results")
    expect(switch).to_be_visible()
    expect(switch).to_be_checked()
    photo = held_out(cars, "002_Audi_TT_Coupe_2012")
    tab.set_input_files("#file", str(photo))
    expect(tab.locator("#status")).to_have_text("12 results, re-ranked")
    reranked = search(page, photo.read_bytes(), k=12, rerank="true")
    assert card_ids(tab) == ids_of(reranked) and all("rerank_score" in r for r in reranked.json()["results"])
    switch.focus()
    with tab.expect_request(lambda r: "rerank=false" in r.url):
        tab.keyboard.press("Space")
    expect(tab.locator("#status")).to_have_text("12 results")
    assert card_ids(tab) == ids_of(search(page, photo.read_bytes(), k=12, rerank="false"))
    chosen = card_ids(tab)[0]
    tab.locator("#results .card").first.get_by_role("button", name="More like this").click()
    expect(tab.locator("#results h2")).to_contain_text("More like the chosen car")
    assert f"similar={chosen}" in tab.url and "rerank=0" in tab.url
    shared = browser.new_page()
    shared.goto(tab.url)
    expect(shared.locator("#status")).to_have_text("12 results")
    expect(shared.get_by_label("Re-rank results")).not_to_be_checked()
    similar = requests.get(f"{page}/similar/{chosen}", params={"k": 12, "rerank": "false"}, timeout=60)
    assert card_ids(shared) == ids_of(similar)
    shared.close()
    switch.click()  # on again: the default, and the URL no longer says rerank
    expect(tab.locator("#status")).to_have_text("12 results, re-ranked")
    assert "rerank" not in tab.url
    assert card_ids(tab) == ids_of(requests.get(f"{page}/similar/{chosen}", params={"k": 12}, timeout=60))
    assert tab.evaluate("document.body.scrollWidth") <= 390
