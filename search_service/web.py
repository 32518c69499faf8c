"""The search web page and API: drop a car photo, see the most similar gallery cars.

    python search_service/web.py --gallery galleries/gallery.npz [--url http://127.0.0.1:8080/predictions/cars]
                          [--host 127.0.0.1] [--port 8000] [--compare OTHER_GALLERY --compare-url URL]
                          [--rerank | --no-rerank]

A client of TorchServe like the CLIs (no torch): it opens the gallery store once, embeds each
uploaded photo through the server and searches the store, filters included.

    GET  /                  the page (works offline: no external script, font or style)
    POST /search            multipart field `file` (or `image`), or the raw image as the body;
                            query `k` (1..100), `where` (repeatable, e.g. make=Audi, year>=2010),
                            `group_by` (listing, model...: the best photo of each of k groups),
                            `positive` / `negative` (repeatable row ids: more like / not like
                            these; with them the photo is optional), `crop=x,y,w,h` (a region of
                            the photo), `min_score`, `min_level` (likely, similar: calibrated),
                            `rerank` (true/false: DBA + alpha-QE on the top shortlist, core/rerank.py;
                            default --rerank / --no-rerank)
                            -> {"model_version", "calibrated", "rerank", "results": [{"rank", "score",
                            "match", "label", "id", "image_url", "make", "model", "year", ...,
                            "rerank_score" (re-ranked searches only)}]} (+ "compare" with --compare)
    GET  /similar/{id}      more like this gallery car (k, where, group_by, negative, min_*, rerank)
    GET  /images/{id}       a gallery image, by the id of its row only, resized (?size=, cached)
    GET  /api/info          gallery size, model version, the makes and years to filter by
    GET  /docs, /openapi.json   the API description (FastAPI)

Apps write to the gallery (search_service/writes.py; `Authorization: Bearer KEY`, the key from
CARS_WRITE_KEY or --write-key-file; without one configured every write is 403):

    POST   /gallery         multipart: the photo in `file`, the app's `id`, optional `label`, any
                            other field as metadata (listing, make, year, price...) -> 201
    PATCH  /gallery/{id}    a JSON object of fields to set (null removes one)
    DELETE /gallery/{id}    the row and its kept photo
    GET    /gallery/{id}    the row (no key needed)

Each write is embedded through TorchServe (when it has a photo), checked against the gallery's
model version and acknowledged only once the store has it durably; writes and searches take
turns on the store (one lock), so none sees half a write.

Errors are JSON `{"error": ..., "status": N}`: 400 (empty upload, bad k or filter), 413 (over
the byte cap, the server's), 415 (not an image), 409 (the server runs another model than the
gallery's), 503 (TorchServe down or not ready). Binds 127.0.0.1 unless told otherwise.

Searches run concurrently, off the event loop: up to --search-threads at once, each thread with
its own keep-alive connection to TorchServe (whose batching then sees batches); the store is read
under a lock, as the embedded stores are not made for concurrent calls. The page, /api/info and
thumbnails stay responsive while searches wait on the model.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import math
import sys
from collections import OrderedDict
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from threading import Lock
from typing import Annotated, Any

from fastapi import FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from PIL import Image, ImageOps, UnidentifiedImageError
from starlette.exceptions import HTTPException as StarletteHTTPException

from clients.api import DEFAULT_URL, ClientError, EmbeddingClient, ImageRejected, ServerUnavailable
from clients.cli import add_api_key_argument
from clients.calibration import LEVELS, level, level_rank, of_store
from clients.grouping import GROUP_FIELDS
from clients.metadata import Condition, parse_where
from clients.metadata import row_id as path_row_id  # (row_id names a parameter here)
from search_service.reindex import served_version, sync
from clients.store import (
    DEFAULT_GALLERY, GalleryStore, Hit, UnknownRow, VersionMismatch, is_qdrant, open_store,
)  # fmt: skip
from search_service.photos import CropError, crop_photo, parse_box
from search_service.writes import (
    MAX_FIELDS, WriteError, check_app_id, check_write_key, existing_photo, image_extension, keep_photo,
    load_write_key, metadata_fields, row_of,
)  # fmt: skip
from core.cli import add_common_flags, parse_args
from core.errors import run_cli
from core.rerank import DEFAULT as RERANK_SETTINGS

PAGE = Path(__file__).with_name("web_page.html")
DEFAULT_PHOTOS = "galleries/photos"  # where photos that apps add are kept
MAX_BYTES = 10 * 1024 * 1024  # the server's own cap (serve/embedder.py ImageLimits.max_bytes)
MAX_K = 100
SEARCH_THREADS = 32  # searches in flight at once (each waits on TorchServe most of its time)
THUMB_SIZES = (128, 256, 512)
THUMB_CACHE = 512  # thumbnails kept in memory
# Whether a search re-ranks when it does not say (`rerank=`; --rerank / --no-rerank): on, as measured
# on unseen makes (docs/quality.md: R-precision x1.29 and MAP@R x1.51 for the CPU default, P@1 kept).
RERANK = True
# The page loads nothing from elsewhere: everything it needs is inline or from this server.
PAGE_POLICY = "default-src 'self'; img-src 'self' blob:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"


class ApiError(Exception):
    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Backend:
    """A gallery and the server whose model built it: replaced as one (a model upgrade, `switch`)."""

    store: GalleryStore
    client: EmbeddingClient


@dataclass
class Side:
    """One gallery and the server whose model built it (two with --compare: tuned and base).

    A search or write reads `backend` once and uses that gallery and that model from start to end,
    so a switch to a new model never mixes two model versions in one answer."""

    name: str
    backend: Backend
    store_lock: Lock = field(default_factory=Lock)  # one store call at a time; embedding needs none
    retired: list[Backend] = field(default_factory=list)  # switched away from; in-flight searches may use them

    @property
    def store(self) -> GalleryStore:
        return self.backend.store

    @property
    def client(self) -> EmbeddingClient:
        return self.backend.client

    def embed(self, image: bytes, client: EmbeddingClient | None = None):
        try:
            return (client or self.client).embed(image)
        except ImageRejected as error:
            raise ApiError(str(error), error.status) from None
        except ServerUnavailable as error:
            raise ApiError(f"the embedding server is unavailable: {error}", 503) from None
        except ClientError as error:
            raise ApiError(str(error), 502) from None

    def search(self, image: bytes | None, query: SearchQuery) -> dict[str, Any]:
        """Blocking: the embedding waits on TorchServe. Run it off the event loop (`create_app`).
        The photo (its `crop` region) and the `positive` rows are what to find more of, the
        `negative` rows what to avoid; then filters, grouping and the score floor."""
        if image is not None and query.crop is not None:
            try:
                image = crop_photo(image, query.crop)
            except CropError as error:
                raise ApiError(str(error), error.status) from None
        backend = self.backend
        embedding = self.embed(image, backend.client) if image is not None else None
        with self.store_lock:
            store = backend.store
            if embedding is not None:
                try:
                    store.check_version(embedding.model_version, backend.client.url)
                except VersionMismatch as error:
                    raise ApiError(str(error), 409) from None
            calibration = of_store(store)
            floor = score_floor(query, calibration)
            rerank = RERANK_SETTINGS if query.rerank else None
            try:
                if query.positive or query.negative:
                    vectors = None if embedding is None else embedding.vector[None, :]
                    hits = store.recommend(list(query.positive), list(query.negative), vectors, query.k, query.where,
                                           query.group_by, rerank=rerank)  # fmt: skip
                elif query.group_by:
                    hits = store.search_groups(embedding.vector, query.k, query.where, query.group_by, rerank=rerank)
                else:
                    hits = store.search(embedding.vector, query.k, query.where, rerank=rerank)
            except UnknownRow as error:
                raise ApiError(str(error), 404) from None
            except ClientError as error:
                raise ApiError(str(error), 400) from None
        # The floor is on the raw score (what calibration measured), after the re-rank ordered the hits.
        kept = [hit for hit in hits if hit.score >= floor]
        results = [result(rank, hit, calibration, query.rerank) for rank, hit in enumerate(kept, 1)]
        return {"model_version": store.model_version, "calibrated": calibration is not None, "results": results}

    def add_row(self, photos: Path, app_id: str, image: bytes, label: str, fields: dict[str, Any]) -> dict[str, Any]:
        """Embeds, then under the store lock: refuses a duplicate id or another model, keeps the
        photo (atomically), adds the row (durably). Blocking, like `search`."""
        extension = image_extension(image)
        backend = self.backend
        embedding = self.embed(image, backend.client)
        with self.store_lock:
            if self.backend is not backend:  # switched to a new model meanwhile: embed with it
                embedding = self.embed(image)
            row = row_of(photos, app_id)
            if row is not None and self.store.get(row) is not None:
                raise ApiError(f"id {app_id!r} is in the gallery already: PATCH or DELETE it", 409)
            try:
                self.store.check_version(embedding.model_version, self.client.url)
            except VersionMismatch as error:
                raise ApiError(str(error), 409) from None
            stale = existing_photo(photos, app_id)  # a photo left by a write killed before its row
            path = keep_photo(photos, app_id, image, extension)
            if stale is not None and stale != path:
                stale.unlink(missing_ok=True)
            self.store.add(embedding.vector[None, :], [str(path)], [label], [{**fields, "app_id": app_id}])
            return public_row(self.store.get(row_of(photos, app_id)))

    def switch(self, gallery: str, url: str, api_key: str | None) -> dict[str, Any]:
        """Moves to `gallery`, embedded by the model at `url` (search_service/reindex.py made it): checks
        that they agree, catches up on the writes made since the re-embedding (under the store
        lock: no write is lost), then replaces the backend in one assignment."""
        client = EmbeddingClient(url, retries=1, api_key=api_key)
        try:
            version, _ = served_version(client)
        except ClientError as error:
            raise ApiError(f"cannot switch: {error}", 503 if isinstance(error, ServerUnavailable) else 400) from None
        try:
            store = open_store(gallery)
        except ClientError as error:
            raise ApiError(f"cannot switch: {error}", 400) from None
        if store.model_version != version:
            store.close()
            raise ApiError(
                f"cannot switch: {url} serves model {version[:12]}, {gallery} holds model "
                f"{store.model_version[:12]}: run search_service/reindex.py with that --url first",
                409,
            )
        with self.store_lock:
            if self.backend.store.model_version == version:
                store.close()
                raise ApiError(f"the service already searches with model {version[:12]}", 409)
            caught_up = sync(self.backend.store, store, client)
            self.retired.append(self.backend)
            self.backend = Backend(store, client)
        return {"gallery": gallery, "model_version": version, "rows": len(store), "caught_up": caught_up}

    def update_row(self, photos: Path, app_id: str, fields: dict[str, Any]) -> dict[str, Any]:
        with self.store_lock:
            row = row_of(photos, app_id)
            updated = self.store.update(row, fields) if row is not None else None
        if updated is None:
            raise ApiError(f"no gallery row with id {app_id!r}", 404)
        return public_row(updated)

    def delete_row(self, photos: Path, app_id: str) -> dict[str, Any]:
        with self.store_lock:
            photo = existing_photo(photos, app_id)
            if photo is None or self.store.delete([path_row_id(str(photo))]) == 0:
                raise ApiError(f"no gallery row with id {app_id!r}", 404)
            photo.unlink(missing_ok=True)  # after the row: a search never returns a row without its photo
        return {"id": app_id, "deleted": True}

    def get_row(self, photos: Path, app_id: str) -> dict[str, Any]:
        with self.store_lock:
            row = row_of(photos, app_id)
            found = self.store.get(row) if row is not None else None
        if found is None:
            raise ApiError(f"no gallery row with id {app_id!r}", 404)
        return public_row(found)


def public_row(row: dict[str, Any]) -> dict[str, Any]:
    """A row as the API shows it: no server paths; `image_url` for its thumbnail."""
    public = {key: value for key, value in row.items() if key != "path"}
    return {**public, "image_url": f"/images/{row['id']}"}


@dataclass(frozen=True)
class SearchQuery:
    """What a search asks besides the photo (POST /search, GET /similar/{id})."""

    k: int = 12
    where: tuple[Condition, ...] = ()
    group_by: str | None = None
    positive: tuple[str, ...] = ()  # row ids: more like these
    negative: tuple[str, ...] = ()  # row ids: unlike these
    crop: tuple[int, int, int, int] | None = None  # the region of the photo to search with
    min_score: float | None = None
    min_level: str | None = None  # a calibrated level (clients/calibration.py)
    rerank: bool = False  # re-rank the store's shortlist (core/rerank.py)


def score_floor(query: SearchQuery, calibration: dict[str, Any] | None) -> float:
    """The lowest score a result may have: min_score, and the threshold of min_level."""
    floor = -math.inf if query.min_score is None else query.min_score
    if query.min_level is not None and query.min_level != LEVELS[-1]:
        if calibration is None:
            raise ApiError("this gallery has no calibration for its model: run clients/calibrate.py (or use min_score)",
                           400)  # fmt: skip
        bound = calibration["thresholds"].get(query.min_level)
        floor = max(floor, math.inf if bound is None else bound)
    return floor


def result(rank: int, hit: Hit, calibration: dict[str, Any] | None = None, reranked: bool = False) -> dict[str, Any]:
    """One result as the API shows it. `score` is always the raw similarity (what `match` and
    min_score judge); a re-ranked search adds `rerank_score`, what ordered it (null for a result
    past the shortlist, which keeps the store's order)."""
    answer = {**public_row({**hit.metadata, "id": hit.id}), "rank": rank, "score": round(hit.score, 4),
              "label": hit.label}  # fmt: skip
    if calibration is not None:
        answer["match"] = level(hit.score, calibration)
    if reranked:
        answer["rerank_score"] = None if hit.rerank_score is None else round(hit.rerank_score, 4)
    return answer


class Thumbnails:
    """Gallery images by row id, resized and kept (LRU): the path comes from the gallery, never the request."""

    def __init__(self, sides: list[Side]):
        self.sides, self.cache, self.lock = sides, OrderedDict(), Lock()

    def get(self, row_id: str, size: int) -> bytes:
        key = (row_id, size)
        with self.lock:
            if key in self.cache:
                self.cache.move_to_end(key)
                return self.cache[key]
        row = next((r for side in self.sides if (r := side.store.get(row_id)) is not None), None)
        if row is None:
            raise ApiError(f"no gallery image with id {row_id!r}", 404)
        try:
            with Image.open(row["path"]) as image:
                image = ImageOps.exif_transpose(image).convert("RGB")
                image.thumbnail((size, size))
                buffer = io.BytesIO()
                image.save(buffer, format="JPEG", quality=85)
        except (OSError, UnidentifiedImageError):
            raise ApiError(f"the gallery image of {row_id!r} is no longer readable on this machine", 410) from None
        with self.lock:
            self.cache[key] = buffer.getvalue()
            while len(self.cache) > THUMB_CACHE:
                self.cache.popitem(last=False)
        return buffer.getvalue()


def filter_choices(store: GalleryStore) -> dict[str, Any]:
    """Makes and years present in a file gallery (Qdrant stores list none: the page then offers free text)."""
    rows = getattr(store, "rows", None)
    if rows is None:
        return {"makes": [], "years": []}
    makes = sorted({row["make"] for row in rows if row.get("make")})
    years = sorted({row["year"] for row in rows if isinstance(row.get("year"), int)})
    return {"makes": makes, "years": years}


async def read_upload(request: Request, required: bool = True) -> bytes | None:
    """The image of a request: multipart field `file`/`image`, else the raw body; capped before
    reading on. None when there is none and none is `required` (a search by example rows)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > MAX_BYTES + 64 * 1024:
        raise ApiError(f"upload of {declared} bytes; the limit is {MAX_BYTES} bytes", 413)
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        form = await request.form(max_files=1, max_fields=20)
        upload = form.get("file") or form.get("image")
        if (upload is None or isinstance(upload, str)) and not required:
            return None
        if upload is None or isinstance(upload, str):
            raise ApiError('no file in the form: send the image in a field named "file"', 400)
        data = await upload.read(MAX_BYTES + 1)
    else:
        data = b""
        async for chunk in request.stream():
            data += chunk
            if len(data) > MAX_BYTES:
                break
    if len(data) > MAX_BYTES:
        raise ApiError(f"upload over the limit of {MAX_BYTES} bytes", 413)
    if not data and not required:
        return None
    if not data:
        raise ApiError("empty upload: send a car photo", 400)
    return data


def parse_filters(where: list[str]) -> tuple[Condition, ...]:
    try:
        return tuple(parse_where(text) for text in where if text.strip())
    except ClientError as error:
        raise ApiError(str(error), 400) from None


async def read_listing(request: Request) -> tuple[bytes, dict[str, str]]:
    """POST /gallery's form: the photo in `file` and the other fields as text, capped like a search's upload."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > MAX_BYTES + 64 * 1024:
        raise ApiError(f"upload of {declared} bytes; the limit is {MAX_BYTES} bytes", 413)
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise ApiError("send a multipart form: the photo in `file`, the app's `id` and metadata fields", 400)
    form = await request.form(max_files=1, max_fields=MAX_FIELDS + 2)
    upload, fields = form.get("file"), {}
    for name, value in form.multi_items():
        if name == "file":
            continue
        if not isinstance(value, str):
            raise ApiError(f"field {name!r} is a file; only `file` may be one", 400)
        if name in fields:
            raise ApiError(f"field {name!r} is given twice", 400)
        fields[name] = value
    if upload is None or isinstance(upload, str):
        raise ApiError('no photo in the form: send it in a field named "file"', 400)
    data = await upload.read(MAX_BYTES + 1)
    if not data:
        raise ApiError("empty photo", 400)
    if len(data) > MAX_BYTES:
        raise ApiError(f"upload over the limit of {MAX_BYTES} bytes", 413)
    return data, fields


def create_app(
    sides: list[Side],
    search_threads: int = SEARCH_THREADS,
    write_key: str | None = None,
    photos: Path = Path(DEFAULT_PHOTOS),
    rerank_default: bool = RERANK,
) -> FastAPI:
    executor = ThreadPoolExecutor(max_workers=search_threads, thread_name_prefix="search")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        executor.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="Car similarity search", version="1", docs_url="/docs", redoc_url=None, lifespan=lifespan)
    thumbnails = Thumbnails(sides)
    main = sides[0]

    async def off_loop(work, *args) -> dict[str, Any]:
        """Blocking work (embedding, store calls) on the search pool, never on the event loop."""
        return await asyncio.get_running_loop().run_in_executor(executor, work, *args)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        return JSONResponse({"error": str(error), "status": error.status}, status_code=error.status)

    @app.exception_handler(WriteError)
    async def write_error(request: Request, error: WriteError) -> JSONResponse:
        return JSONResponse({"error": str(error), "status": error.status}, status_code=error.status)

    @app.exception_handler(ClientError)
    async def client_error(request: Request, error: ClientError) -> JSONResponse:  # a store's refusal
        return JSONResponse({"error": str(error), "status": 400}, status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:  # 404, 405 ...
        return JSONResponse({"error": str(error.detail), "status": error.status_code}, status_code=error.status_code)

    @app.exception_handler(RequestValidationError)
    async def bad_parameter(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'][1:]))}: {e['msg']}" for e in error.errors())
        return JSONResponse({"error": f"bad request: {problems}", "status": 400}, status_code=400)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:  # never a stack trace to the web
        return JSONResponse({"error": f"internal error: {type(error).__name__}", "status": 500}, status_code=500)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> HTMLResponse:
        return HTMLResponse(PAGE.read_text(), headers={"Content-Security-Policy": PAGE_POLICY})

    @app.get("/api/info")
    def info() -> dict[str, Any]:
        """What the page shows before a search: gallery size, model version, filter choices."""
        return {"gallery": len(main.store), "model_version": main.store.model_version,
                "compare": sides[1].name if len(sides) > 1 else None, "calibrated": of_store(main.store) is not None,
                "rerank": {"default": rerank_default, **RERANK_SETTINGS.as_dict()},
                **filter_choices(main.store)}  # fmt: skip

    def search_query(
        k: int, where: list[str], group_by: str | None, positive: list[str], negative: list[str],
        crop: str | None, min_score: float | None, min_level: str | None, rerank: bool | None,
    ) -> SearchQuery:  # fmt: skip
        if group_by is not None and group_by not in GROUP_FIELDS:
            raise ApiError(f"group_by must be one of {', '.join(GROUP_FIELDS)}, got {group_by!r}", 400)
        try:
            box = parse_box(crop) if crop is not None else None
            wanted = LEVELS[level_rank(min_level)] if min_level is not None else None
        except (CropError, ClientError) as error:
            raise ApiError(str(error), 400) from None
        both = sorted(set(positive) & set(negative))
        if both:
            raise ApiError(f"row {both[0]!r} is both a positive and a negative example", 400)
        if min_score is not None and not math.isfinite(min_score):
            raise ApiError("min_score must be a finite number", 400)
        return SearchQuery(k, parse_filters(where), group_by, tuple(positive), tuple(negative), box, min_score, wanted,
                           rerank_default if rerank is None else rerank)  # fmt: skip

    async def answer_search(image: bytes | None, query: SearchQuery) -> dict[str, Any]:
        searches = (off_loop(side.search, image, query) for side in sides)
        answer, *others = await asyncio.gather(*searches)
        if others:
            answer["compare"] = {"name": sides[1].name, **others[0]}
        echoed = {"where": [str(c) for c in query.where], "group_by": query.group_by, "positive": list(query.positive),
                  "negative": list(query.negative), "crop": list(query.crop) if query.crop else None,
                  "min_score": query.min_score, "min_level": query.min_level}  # fmt: skip
        return {**answer, **{key: value for key, value in echoed.items() if value}, "rerank": query.rerank}

    @app.post("/search")
    async def search(
        request: Request,
        k: Annotated[int, Query(ge=1, le=MAX_K, description="number of results")] = 12,
        where: Annotated[list[str], Query(description="filters: make=Audi, year>=2010 (all must hold)")] = [],  # noqa: B006
        group_by: Annotated[
            str | None, Query(description=f"one result per group, k groups: {', '.join(GROUP_FIELDS)}")
        ] = None,
        positive: Annotated[list[str], Query(description="row ids: more like these (repeatable)")] = [],  # noqa: B006
        negative: Annotated[list[str], Query(description="row ids: not like these (repeatable)")] = [],  # noqa: B006
        crop: Annotated[str | None, Query(description="x,y,w,h: search with this region of the photo")] = None,
        min_score: Annotated[float | None, Query(description="leave out results scoring lower")] = None,
        min_level: Annotated[str | None, Query(description="likely, similar or different (calibrated)")] = None,
        rerank: Annotated[
            bool | None, Query(description="re-rank the top shortlist (DBA + alpha-QE); default: the service's")
        ] = None,
    ) -> dict[str, Any]:
        """The k gallery cars most like the uploaded photo (or its `crop` region) and the
        `positive` rows, unlike the `negative` ones, passing the filters; with group_by, the best
        photo of each of the k most similar listings (or car models). The photo is optional when
        `positive` names a row."""
        query = search_query(k, where, group_by, positive, negative, crop, min_score, min_level, rerank)
        image = await read_upload(request, required=not positive)
        if image is None and crop is not None:
            raise ApiError("crop needs a photo to cut the region from", 400)
        return await answer_search(image, query)

    @app.get("/similar/{row_id}")
    async def similar(
        row_id: str,
        k: Annotated[int, Query(ge=1, le=MAX_K, description="number of results")] = 12,
        where: Annotated[list[str], Query(description="filters: make=Audi, year>=2010 (all must hold)")] = [],  # noqa: B006
        group_by: Annotated[str | None, Query(description="one result per group")] = None,
        negative: Annotated[list[str], Query(description="row ids: not like these (repeatable)")] = [],  # noqa: B006
        min_score: Annotated[float | None, Query()] = None,
        min_level: Annotated[str | None, Query()] = None,
        rerank: Annotated[
            bool | None, Query(description="re-rank the top shortlist (DBA + alpha-QE); default: the service's")
        ] = None,
    ) -> dict[str, Any]:
        """More like this gallery car: the k rows most like row `row_id` (itself left out)."""
        query = search_query(k, where, group_by, [row_id], negative, None, min_score, min_level, rerank)
        return await answer_search(None, query)

    @app.post("/admin/switch")
    async def switch(request: Request, authorization: Annotated[str | None, Header()] = None):
        """A model upgrade (search_service/reindex.py --switch): {"gallery": LOCATION, "url": NEW_MODEL_URL}."""
        check_write_key(write_key, authorization)
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or not all(isinstance(body.get(k), str) for k in ("gallery", "url")):
            raise ApiError('send {"gallery": LOCATION, "url": URL of the new model} as JSON', 400)
        return await off_loop(main.switch, body["gallery"], body["url"], main.client.api_key)

    @app.post("/gallery", status_code=201)
    async def add_to_gallery(request: Request, authorization: Annotated[str | None, Header()] = None):
        """Adds one photo under the app's `id`, every other form field as its metadata."""
        check_write_key(write_key, authorization)
        image, fields = await read_listing(request)
        app_id = check_app_id(fields.pop("id", ""))
        label = fields.pop("label", "")
        metadata = metadata_fields(fields, from_form=True)
        return await off_loop(main.add_row, photos, app_id, image, label, metadata)

    @app.patch("/gallery/{app_id}")
    async def update_in_gallery(app_id: str, request: Request, authorization: Annotated[str | None, Header()] = None):
        """Sets the metadata fields of a JSON object (null removes one)."""
        check_write_key(write_key, authorization)
        try:
            fields = await request.json()
        except ValueError:
            raise ApiError("send the fields to change as a JSON object", 400) from None
        if not isinstance(fields, dict) or not fields:
            raise ApiError("send the fields to change as a non-empty JSON object", 400)
        return await off_loop(main.update_row, photos, check_app_id(app_id), metadata_fields(fields, from_form=False))

    @app.delete("/gallery/{app_id}")
    async def delete_from_gallery(app_id: str, authorization: Annotated[str | None, Header()] = None):
        check_write_key(write_key, authorization)
        return await off_loop(main.delete_row, photos, check_app_id(app_id))

    @app.get("/gallery/{app_id}")
    async def get_from_gallery(app_id: str):
        return await off_loop(main.get_row, photos, check_app_id(app_id))

    @app.get("/images/{row_id}", responses={200: {"content": {"image/jpeg": {}}}})
    def image(row_id: str, size: Annotated[int, Query(description=f"one of {THUMB_SIZES}")] = 256) -> Response:
        if size not in THUMB_SIZES:
            raise ApiError(f"size must be one of {', '.join(map(str, THUMB_SIZES))}", 400)
        return Response(thumbnails.get(row_id, size), media_type="image/jpeg",
                        headers={"Cache-Control": "private, max-age=3600"})  # fmt: skip

    return app


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gallery", default=DEFAULT_GALLERY, help="gallery store (default: %(default)s)")
    parser.add_argument("--url", default=DEFAULT_URL, help="prediction endpoint (default: %(default)s)")
    add_api_key_argument(parser)
    parser.add_argument("--compare", metavar="GALLERY", help="a second gallery (e.g. of the base model) shown beside")
    parser.add_argument("--compare-url", help="the endpoint of the model that built --compare (default: --url)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s, this machine)")
    parser.add_argument("--port", type=int, default=8000, help="(default: %(default)s)")
    parser.add_argument(
        "--write-key-file",
        help="file holding the key that apps' writes must send (default: $CARS_WRITE_KEY; neither: no writes)",
    )
    parser.add_argument(
        "--photos", default=DEFAULT_PHOTOS, help="where photos apps add are kept (default: %(default)s)"
    )
    parser.add_argument(
        "--search-threads",
        type=int,
        default=SEARCH_THREADS,
        help="searches embedded at once, each on its own keep-alive connection to the server; "
        "more wait in line (default: %(default)s)",
    )
    parser.add_argument(
        "--rerank",
        action=argparse.BooleanOptionalAction,
        default=RERANK,
        help="re-rank searches that do not say (rerank=true/false) with DBA + alpha-QE, core/rerank.py "
        f"(k={RERANK_SETTINGS.k}, alpha={RERANK_SETTINGS.alpha:g}, shortlist={RERANK_SETTINGS.shortlist}) "
        "(default: %(default)s)",
    )
    return add_common_flags(parser, quiet=False)


def make_sides(args: argparse.Namespace) -> list[Side]:
    # One retry: a page should say "server down" within a second or two, not after a long backoff.
    client = EmbeddingClient(args.url, retries=1, api_key=args.api_key)
    sides = [Side("tuned", Backend(open_store(args.gallery), client))]
    if args.compare:
        client = EmbeddingClient(args.compare_url or args.url, retries=1, api_key=args.api_key)
        sides.append(Side("base", Backend(open_store(args.compare), client)))
    return sides


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    args = parse_args(get_args_parser(), argv)
    if not 1 <= args.port <= 65535:
        raise ClientError(f"--port must be in 1..65535, got {args.port}")
    if not 1 <= args.search_threads <= 1024:
        raise ClientError(f"--search-threads must be in 1..1024, got {args.search_threads}")
    write_key = load_write_key(args.write_key_file)
    sides = make_sides(args)
    app = create_app(sides, args.search_threads, write_key, Path(args.photos), args.rerank)
    if write_key and not is_qdrant(args.gallery):
        print(f"note: apps write to a .npz gallery, which is rewritten whole at each write ({len(sides[0].store)} "
              "rows; ~0.2 s a write at 10,000 rows: bench/store_writes.py); for a gallery apps write to all day, "
              "use Qdrant Edge: --gallery qdrant://galleries/edge", flush=True)  # fmt: skip
    print(f"Search page: http://{args.host}:{args.port}/  (API: POST /search, docs: /docs)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


def cli() -> int:
    """The console script's entry point (pyproject.toml [project.scripts])."""
    return run_cli(main)


if __name__ == "__main__":
    sys.exit(cli())
