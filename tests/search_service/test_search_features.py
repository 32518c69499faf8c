"""Search the way people search, through the API against a real TorchServe: more like this
(`/similar/{id}`, `positive` / `negative`), a region of the photo (`crop`), calibrated match
levels and score floors, on the file store and Qdrant Edge, which must answer the same."""

from __future__ import annotations

import io
import subprocess
from collections.abc import Iterator

import pytest
import requests
from PIL import Image

from clients.calibration import LEVELS
from tests.clients.test_end_to_end import CLIENT_PY
from tests.conftest import ROOT
from tests.search_service.helpers import held_out, search, start_page, stop

pytestmark = pytest.mark.slow


def client(script: str, *args: str) -> None:
    done = subprocess.run([str(CLIENT_PY), f"clients/{script}.py", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr


@pytest.fixture(scope="module")
def pages(server, gallery, tmp_path_factory) -> Iterator[dict[str, str]]:
    """The same calibrated gallery in the file store and in Qdrant Edge, a page on each."""
    root = tmp_path_factory.mktemp("features")
    stores = {"file": str(root / "gallery.npz"), "edge": f"qdrant://{root / 'edge'}"}
    for store in stores.values():
        client("copy_store", "--from", str(gallery), "--to", store)
        client("calibrate", "--gallery", store)
    started = {kind: start_page(store, server["url"]) for kind, store in stores.items()}
    try:
        yield {kind: base for kind, (_, base) in started.items()}
    finally:
        for process, _ in started.values():
            stop(process)


def ids(answer: requests.Response) -> list[str]:
    assert answer.status_code == 200, answer.text
    return [r["id"] for r in answer.json()["results"]]


def two_cars(cars) -> tuple[bytes, tuple[int, int, int, int], tuple[int, int, int, int]]:
    """A photo of two cars side by side, and the box of each."""
    left = Image.open(held_out(cars, "001_Audi_A4_Sedan_2008")).convert("RGB")
    right = Image.open(held_out(cars, "004_BMW_M3_Coupe_2012")).convert("RGB")
    both = Image.new("RGB", (left.width + right.width, max(left.height, right.height)), "white")
    both.paste(left, (0, 0))
    both.paste(right, (left.width, 0))
    buffer = io.BytesIO()
    both.save(buffer, format="PNG")
    return buffer.getvalue(), (0, 0, left.width, left.height), (left.width, 0, right.width, right.height)


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_more_like_this_leaves_the_example_out_and_every_store_agrees(pages, cars):
    image = held_out(cars, "003_BMW_X5_SUV_2011").read_bytes()
    first = search(pages["file"], image, k=3).json()["results"][0]["id"]
    answers = {}
    for kind, base in pages.items():
        similar = ids(requests.get(f"{base}/similar/{first}", params={"k": 8}, timeout=60))
        assert first not in similar and len(similar) == 8
        as_search = ids(requests.post(f"{base}/search", params={"k": 8, "positive": first}, timeout=60))
        assert as_search == similar  # GET /similar/{id} is POST /search?positive={id} without a photo
        negative = similar[0]
        unlike = ids(requests.get(f"{base}/similar/{first}", params={"k": 8, "negative": negative}, timeout=60))
        assert negative not in unlike and unlike != similar
        filtered = requests.get(f"{base}/similar/{first}", params={"k": 8, "where": "make=Audi"}, timeout=60).json()
        assert {r["make"] for r in filtered["results"]} == {"Audi"} and filtered["positive"] == [first]
        grouped = requests.get(f"{base}/similar/{first}", params={"k": 4, "group_by": "label"}, timeout=60).json()
        assert len({r["label"] for r in grouped["results"]}) == 4
        with_photo = ids(search(base, image, k=8, positive=similar[1], negative=negative))
        answers[kind] = (similar, unlike, with_photo)
    assert answers["file"] == answers["edge"]


def test_a_region_of_the_photo_is_searched_as_if_it_were_the_photo(pages, cars):
    photo, left, right = two_cars(cars)
    whole = Image.open(io.BytesIO(photo))
    for base in pages.values():
        by_crop = {box: search(base, photo, k=6, crop=",".join(map(str, box))) for box in (left, right)}
        for box, answer in by_crop.items():
            cut = png(whole.crop((box[0], box[1], box[0] + box[2], box[1] + box[3])))
            assert ids(answer) == ids(search(base, cut, k=6))  # cropped here == cropped there
            assert answer.json()["crop"] == list(box)
        assert ids(by_crop[left]) != ids(by_crop[right]) != ids(search(base, photo, k=6))


def test_results_carry_a_calibrated_level_and_can_be_cut_off(pages, cars):
    image = held_out(cars, "002_Audi_TT_Coupe_2012").read_bytes()
    for base in pages.values():
        answer = search(base, image, k=30, rerank="false").json()  # in raw-score order
        assert answer["calibrated"] is True
        levels = [r["match"] for r in answer["results"]]
        assert set(levels) <= set(LEVELS) and levels == sorted(levels, key=LEVELS.index)  # best first
        tenth, eleventh = answer["results"][9]["score"], answer["results"][10]["score"]
        assert tenth > eleventh
        above = search(base, image, k=30, min_score=(tenth + eleventh) / 2, rerank="false").json()["results"]
        assert [r["id"] for r in above] == [r["id"] for r in answer["results"][:10]]
        for name in ("likely", "similar"):
            kept = search(base, image, k=30, min_level=name, rerank="false").json()["results"]
            wanted = LEVELS[: LEVELS.index(LEVELS[0] if name == "likely" else name) + 1]
            assert [r["id"] for r in kept] == [r["id"] for r in answer["results"] if r["match"] in wanted]
        # Re-ranked (the default), the floors still apply to the raw score, whatever the order.
        reranked = search(base, image, k=30, min_score=(tenth + eleventh) / 2).json()["results"]
        assert {r["id"] for r in reranked} == {r["id"] for r in above}


def test_an_uncalibrated_gallery_shows_no_level(page, cars):
    answer = search(page, held_out(cars, "002_Audi_TT_Coupe_2012").read_bytes(), k=3)
    assert answer.json()["calibrated"] is False and "match" not in answer.json()["results"][0]
    refused = search(page, held_out(cars, "002_Audi_TT_Coupe_2012").read_bytes(), min_level="likely")
    assert refused.status_code == 400 and "no calibration" in refused.json()["error"]


@pytest.fixture()
def page(server, gallery) -> Iterator[str]:
    process, base = start_page(gallery, server["url"])
    try:
        yield base
    finally:
        stop(process)


@pytest.mark.parametrize(
    "params, with_photo, status, message",
    [
        ({"crop": "1,2,3"}, True, 400, "crop must be x,y,w,h"),
        ({"crop": "0,0,5000,20"}, True, 400, "reaches outside the photo, which is"),
        ({"crop": "0,0,4,4"}, True, 400, "at least 16x16"),
        ({"crop": "0,0,20,20"}, False, 400, "empty upload"),
        ({"positive": "00000000-0000-0000-0000-000000000000"}, False, 404, "no gallery row"),
        ({"positive": "not-an-id"}, False, 404, "no gallery row"),
        ({"positive": "ID", "negative": "ID"}, False, 400, "both a positive and a negative"),
        ({"negative": "ID"}, False, 400, "empty upload"),
        ({"min_level": "great"}, True, 400, "min_level must be one of"),
        ({"min_score": "nan"}, True, 400, "finite"),
        ({"group_by": "price", "positive": "ID"}, False, 400, "group_by must be one of"),
    ],
)  # fmt: skip
def test_bad_searches_get_a_4xx_json_error(pages, cars, params, with_photo, status, message):
    image = held_out(cars, "003_BMW_X5_SUV_2011").read_bytes()
    row = search(pages["file"], image, k=1).json()["results"][0]["id"]
    params = {key: row if value == "ID" else value for key, value in params.items()}
    for base in pages.values():
        kwargs = {"files": {"file": ("car.jpg", image, "image/jpeg")}} if with_photo else {}
        response = requests.post(f"{base}/search", params=params, timeout=60, **kwargs)
        assert response.status_code == status, response.text
        assert response.headers["content-type"] == "application/json" and message in response.json()["error"]
    unknown = requests.get(f"{pages['edge']}/similar/00000000-0000-0000-0000-000000000000", timeout=60)
    assert unknown.status_code == 404
