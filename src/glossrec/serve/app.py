"""The HTTP service: FastAPI over one :class:`Recommender` (the model is loaded once).

Every error is JSON ``{"error": <one-line message>, "detail": <specifics or null>}``, never a
stack trace. The web page (``/``, files in ``static/``) is a client of these same endpoints and
nothing more. Oversized bodies are refused with 413 before they are parsed, and non-JSON bodies
with 415. Write endpoints require the API key when one is configured (401 when it is missing,
403 when it is wrong). Recommendation requests go through a :class:`MicroBatcher`, so
concurrent users share one generate call in LM mode.
"""

# No `from __future__ import annotations`: FastAPI must see the request models' real classes,
# which are built per app (with its limits) and live in create_app's scope.
import hmac
import json
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, Optional, Union

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, SecretStr, StrictBool, StrictInt, StringConstraints, model_validator
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from glossrec.errors import ConfigError, GlossrecError
from glossrec.serve.batching import MicroBatcher
from glossrec.serve.recommender import Recommendation, Recommender, Request as RecRequest
from glossrec.retrieve.live import ItemRecord, UnknownItemsError

API_KEY_ENV = "GLOSSREC_API_KEY"
STATIC_DIR = Path(__file__).with_name("static")
"""The web page: plain HTML, CSS and JavaScript shipped in the package (no build step, no CDN)."""
PAGE_HEADERS = {
    # The page loads only its own files and talks only to this service.
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
                               "img-src 'self'; connect-src 'self'; base-uri 'none'; "
                               "form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
log = logging.getLogger("glossrec.serve")
LM_WINDOW_FRACTION = 0.1
LM_MAX_WINDOW_S = 0.5
"""LM mode's default batch window: LM_WINDOW_FRACTION of a recent batch's time, at least
15 ms and at most LM_MAX_WINDOW_S (ServeSettings.batch_window_ms)."""

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class ServeSettings(BaseModel):
    """Limits and batching of one service; the defaults suit a public-facing instance."""

    model_config = ConfigDict(extra="forbid")

    max_history: int = Field(200, ge=1)
    max_k: int = Field(100, ge=1)
    max_body_bytes: int = Field(1 << 20, ge=256)
    max_title_chars: int = Field(500, ge=1)
    max_items_per_request: int = Field(1000, ge=1)
    batch_window_ms: float | None = Field(None, ge=0)
    """Wait this long after a request for others to batch with it. None: in LM mode 15 ms or
    a tenth of a recent batch's time, whichever is longer, up to 500 ms (a generate call is
    worth waiting for; why a fraction: glossrec.serve.batching); in LIS mode 0 (batch only
    what is already queued)."""
    max_batch: int | None = Field(None, ge=1)
    """Largest batch; 1 turns batching off. None: generate.batch_size in LM mode, 64 in LIS."""
    api_key: SecretStr | None = None

    def window_s(self, mode: str) -> float:
        """The shortest wait for a batch (the whole wait unless window_fraction says more)."""
        ms = self.batch_window_ms if self.batch_window_ms is not None else (15.0 if mode == "lm" else 0.0)
        return ms / 1000.0

    def window_fraction(self, mode: str) -> float:
        """The share of a recent batch's time to wait at most: LM mode's default only."""
        return LM_WINDOW_FRACTION if self.batch_window_ms is None and mode == "lm" else 0.0


def resolve_api_key(api_key_file: Path | None = None) -> SecretStr | None:
    """The key from --api-key-file, else from $GLOSSREC_API_KEY; None leaves writes open."""
    if api_key_file is not None:
        try:
            key = Path(api_key_file).read_text(encoding="utf-8").strip()
        except OSError as e:
            raise ConfigError(f"{api_key_file}: cannot read the API key file ({e.strerror})") from None
        if not key:
            raise ConfigError(f"{api_key_file}: the API key file is empty")
        return SecretStr(key)
    key = os.environ.get(API_KEY_ENV, "").strip()
    return SecretStr(key) if key else None


class ApiError(Exception):
    def __init__(self, status: int, error: str, detail: Any = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(error)
        self.status, self.error, self.detail, self.headers = status, error, detail, headers


def _error_response(status: int, error: str, detail: Any = None,
                    headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail}, status_code=status, headers=headers)


# ---- request limits before parsing -----------------------------------------------------------


class BodyLimitMiddleware:
    """Refuse bodies over the cap (413) and non-JSON bodies (415) before anything parses them.

    A declared Content-Length is checked up front; a chunked body is counted as it arrives and
    refused as soon as it passes the cap, so memory use is bounded either way.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        declared = headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                await _send_error(send, 400, "invalid Content-Length header", declared)
                return
            if int(declared) > self.max_bytes:
                await _send_error(send, 413, f"request body too large: {declared} bytes "
                                  f"(limit {self.max_bytes})", {"limit_bytes": self.max_bytes})
                return
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await _send_error(send, 413, f"request body too large (limit {self.max_bytes} bytes)",
                                  {"limit_bytes": self.max_bytes})
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        ctype = headers.get("content-type", "")
        if body and ctype.split(";")[0].strip().lower() not in ("application/json", ""):
            if not ctype.split(";")[0].strip().lower().endswith("+json"):
                await _send_error(send, 415, f"unsupported Content-Type {ctype!r}: send JSON "
                                  "(Content-Type: application/json)")
                return
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


async def _send_error(send: Send, status: int, error: str, detail: Any = None) -> None:
    payload = json.dumps({"error": error, "detail": detail}).encode("utf-8")
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(payload)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": payload})


# ---- request / response models --------------------------------------------------------------

# The server's own rules, written as patterns every engine reads alike (pydantic's Rust regex,
# Python's re, JSON Schema's ECMA regex): "whitespace" is exactly what Python's str.strip()
# removes, listed literally, since each engine's \s means a different set.
_WS = "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
NOT_BLANK = f"[^{_WS}]"
"""Somewhere a character that is not whitespace."""
CatalogId = Annotated[str, StringConstraints(
    min_length=1, max_length=256, pattern=f"^[^{_WS}\\x00-\\x1f]([^\\x00-\\x1f]*[^{_WS}\\x00-\\x1f])?$")]
"""An id a catalog accepts (glossrec.retrieve.live.ItemRecord): no control characters, no
whitespace at either end."""
HistoryId = Annotated[str, StringConstraints(min_length=1, pattern=NOT_BLANK)]
"""An id to look up: anything not blank (an id the catalog does not hold is a 422 naming it)."""


class ErrorOut(BaseModel):
    """Every error response: a one-line message and its specifics."""

    error: str
    detail: Any = Field(None, description="Specifics: a list of {field, message} for invalid requests, "
                                          "{unknown_ids: [...]} for unknown items, or null.")


def _errors(*codes: int) -> dict[Union[int, str], dict[str, Any]]:
    """OpenAPI responses for these error statuses, each with the ErrorOut body."""
    text = {400: "Malformed JSON or Content-Length", 401: "API key missing", 403: "Wrong API key",
            404: "Unknown item id", 413: "Body too large", 415: "Body is not JSON",
            422: "Invalid request (each invalid field named) or unknown history item ids",
            500: "Internal error (logged on the server)"}
    return {c: {"model": ErrorOut, "description": text[c]} for c in codes}


class RecommendedItemOut(BaseModel):
    rank: int
    item_id: str
    title: str
    score: float
    queries: list[str] = Field(description="Query texts (generated titles, or the last item's text in LIS mode) that found this item.")
    sources: list[str] = Field(default_factory=list, description=(
        "The components whose lists hold this item: 'lis' (the last item's text), 'gloss' (the "
        "model's generated texts), or, in a hybrid, an ID model's kind ('sasrec', 'itemknn', 'pop')."))


class RecommendOut(BaseModel):
    items: list[RecommendedItemOut]
    queries: list[str]
    mode: str
    catalog_version: str


class ItemOut(BaseModel):
    item_id: str
    title: str
    attributes: dict[str, Any]
    text: str = Field(description="The text that is indexed for retrieval.")


class ItemHitOut(BaseModel):
    item_id: str
    title: str


class ItemSearchOut(BaseModel):
    query: str
    items: list[ItemHitOut] = Field(description="Best first: the exact id, then titles starting with the query, then the others.")
    matches: int = Field(description="How many items match in all (items holds at most `limit`).")
    catalog_version: str


class MetricOut(BaseModel):
    name: str
    mean: float
    ci_low: Optional[float] = Field(description="Lower end of the 95% bootstrap interval over users (null without rankings.jsonl).")
    ci_high: Optional[float]


class SegmentOut(BaseModel):
    name: str
    users: int
    metrics: dict[str, float]


class ResultOut(BaseModel):
    name: str
    folder: str = Field(description="Where the result lives, relative to the run directory.")
    users: int
    metrics: list[MetricOut]
    segments: list[SegmentOut]


class ReportOut(BaseModel):
    run: Optional[str] = Field(description="The run directory's name; null when the service does not serve one.")
    results: list[ResultOut] = Field(description="Every scored result in the run; empty for a run never scored.")
    report_png: bool = Field(description="Whether GET /report.png has the run's figure.")


class WriteOut(BaseModel):
    added: list[str] = []
    replaced: list[str] = []
    removed: list[str] = []
    catalog_version: str
    items: int


def _models(s: ServeSettings) -> tuple[type[BaseModel], type[BaseModel], type[BaseModel]]:
    """Request models with this service's limits baked in (so OpenAPI shows them)."""
    # At least one non-space character: a title of spaces is refused (the schema says so).
    Title = Annotated[str, StringConstraints(min_length=1, max_length=s.max_title_chars, pattern=NOT_BLANK)]

    class HistoryItem(BaseModel):
        """A catalog item id, or the title of an item the catalog does not know (or both)."""

        model_config = ConfigDict(extra="forbid", json_schema_extra={"anyOf": [
            {"required": ["item_id"], "properties": {"item_id": {"type": "string"}}},
            {"required": ["title"], "properties": {"title": {"type": "string"}}}]})
        item_id: HistoryId | None = None
        title: Title | None = None

        @model_validator(mode="after")
        def _one(self) -> "HistoryItem":
            if self.item_id is None and self.title is None:
                raise ValueError("a history entry needs an item_id or a title")
            return self

    def _entry(v: Any) -> Any:
        # One clear message instead of one per union member.
        if isinstance(v, str):
            return {"item_id": v}
        if isinstance(v, dict):
            return v
        raise ValueError("each history entry must be an item id (string) or an object with "
                         "item_id and/or title")

    Entry = Annotated[HistoryItem, BeforeValidator(_entry)]

    class RecommendIn(BaseModel):
        model_config = ConfigDict(extra="forbid")
        history: list[Entry] = Field(
            ..., min_length=1, max_length=s.max_history,
            description="Past items, oldest first: item ids, or {item_id} / {title} objects.")
        k: StrictInt = Field(10, ge=1, le=s.max_k)
        exclude_history: StrictBool = True

    class ItemIn(BaseModel):
        model_config = ConfigDict(extra="forbid")
        item_id: CatalogId
        title: Title
        attributes: dict[str, Any] = Field(default_factory=dict,
                                           description="Extra fields (e.g. brand) for item formats that use them.")

        @model_validator(mode="after")
        def _no_clash(self) -> "ItemIn":
            bad = {"item_id", "title"} & set(self.attributes)
            if bad:
                raise ValueError(f"attributes may not be named {sorted(bad)}")
            return self

    class ItemsIn(BaseModel):
        model_config = ConfigDict(extra="forbid")
        items: list[ItemIn] = Field(..., min_length=1, max_length=s.max_items_per_request)

    HistoryItem.model_rebuild()
    RecommendIn.model_rebuild()
    ItemIn.model_rebuild()
    ItemsIn.model_rebuild()
    return RecommendIn, ItemIn, ItemsIn


def _clean_errors(errors: list[Any]) -> list[dict[str, str]]:
    out = []
    for e in errors:
        loc = [str(x) for x in e.get("loc", ()) if x not in ("body",)]
        # Union members add their type name to the location; it means nothing to a client.
        loc = [x for x in loc if not x.startswith(("function-", "constrained-str"))]
        msg = str(e.get("msg", "invalid")).removeprefix("Value error, ")
        out.append({"field": ".".join(loc) or "body", "message": msg})
    return out


# ---- the app --------------------------------------------------------------------------------


def create_app(recommender: Recommender, settings: Optional[ServeSettings] = None) -> FastAPI:
    s = settings or ServeSettings()
    mode = recommender.mode
    max_batch = s.max_batch or (recommender.config.generate.batch_size if mode == "lm" else 64)
    batcher: MicroBatcher[RecRequest, Recommendation] = MicroBatcher(
        recommender.recommend_many, s.window_s(mode), max_batch,
        window_fraction=s.window_fraction(mode), max_window_s=LM_MAX_WINDOW_S)
    RecommendIn, ItemIn, ItemsIn = _models(s)
    api_key = s.api_key.get_secret_value() if s.api_key else None

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await batcher.start()
        try:
            yield
        finally:
            await batcher.close()

    app = FastAPI(title="glossrec", version=_version(), lifespan=lifespan,
                  description="GLoSS recommendations over a live catalog. Errors are "
                              '`{"error": message, "detail": specifics}`.')
    app.state.recommender = recommender
    app.state.batcher = batcher
    app.state.settings = s

    def require_key(request: Request) -> None:
        if api_key is None:
            return
        given = request.headers.get("x-api-key")
        auth = request.headers.get("authorization", "")
        if given is None and auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        if not given:
            raise ApiError(401, "API key required for this endpoint",
                           "send it as 'X-API-Key: <key>' or 'Authorization: Bearer <key>'",
                           {"WWW-Authenticate": "Bearer"})
        if not hmac.compare_digest(given.encode("utf-8"), api_key.encode("utf-8")):
            raise ApiError(403, "wrong API key")

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, e: ApiError) -> JSONResponse:
        return _error_response(e.status, e.error, e.detail, e.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, e: RequestValidationError) -> JSONResponse:
        errors = list(e.errors())
        bad_json = [x for x in errors if x.get("type") == "json_invalid"]
        if bad_json:
            ctx = bad_json[0].get("ctx") or {}
            pos = bad_json[0].get("loc", ("body", "?"))[-1]
            return _error_response(400, "malformed JSON body",
                                   f"{ctx.get('error', 'cannot parse')} at character {pos}")
        clean = _clean_errors(errors)
        first = clean[0] if clean else {"field": "body", "message": "invalid"}
        return _error_response(422, f"invalid request: {first['field']}: {first['message']}", clean)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, e: StarletteHTTPException) -> JSONResponse:
        headers = dict(getattr(e, "headers", None) or {})
        if e.status_code == 405:
            # Starlette names only the first route that matched the path; a path served by
            # several routes (GET and DELETE /items/{id}) allows all of their methods.
            headers["Allow"] = ", ".join(_allowed_methods(app, request.scope))
        return _error_response(e.status_code, str(e.detail), None, headers or None)

    @app.exception_handler(UnknownItemsError)
    async def _unknown(_: Request, e: UnknownItemsError) -> JSONResponse:
        return _error_response(422, str(e), {"unknown_ids": e.ids})

    @app.exception_handler(GlossrecError)
    async def _user_error(_: Request, e: GlossrecError) -> JSONResponse:
        return _error_response(422, str(e))

    @app.exception_handler(Exception)
    async def _crash(_: Request, e: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=e)
        return _error_response(500, "internal server error",
                               "the error was logged on the server; the request can be retried")

    @app.get("/health", summary="Liveness, mode and catalog size", responses=_errors(500))
    async def health() -> dict[str, Any]:
        cat = recommender.catalog
        await run_in_threadpool(cat.refresh)
        return {"status": "ok", "mode": mode, "items": len(cat), "catalog_version": cat.version,
                "components": recommender.components, "writes_need_key": api_key is not None,
                "limits": {"max_k": s.max_k, "max_history": s.max_history,
                           "max_title_chars": s.max_title_chars},
                "retriever": getattr(cat.retriever, "kind", "?"), "ranking": recommender.ranking,
                "batching": {"window_ms": round(batcher.current_window_s() * 1000, 1),
                             "window_fraction": batcher.window_fraction, "max_batch": max_batch,
                             **batcher.stats.to_json()},
                "generate_calls": recommender.generate_calls,
                "compaction": cat.compaction_status()}

    @app.post("/recommend", response_model=RecommendOut, summary="Recommend items for a history",
              responses=_errors(400, 413, 415, 422, 500))
    async def recommend(body: RecommendIn) -> Any:  # type: ignore[valid-type]
        history = [h.model_dump(exclude_none=True) for h in body.history]  # type: ignore[attr-defined]
        result = await batcher.submit(RecRequest(history, body.k, body.exclude_history))  # type: ignore[attr-defined]
        return result.to_json()

    @app.post("/items", response_model=WriteOut, status_code=201, dependencies=[Depends(require_key)],
              summary="Add or replace items (one item, or {\"items\": [...]})",
              responses=_errors(400, 401, 403, 413, 415, 422, 500))
    async def add_items(body: Union[ItemsIn, ItemIn]) -> Any:  # type: ignore[valid-type]
        items = body.items if isinstance(body, ItemsIn) else [body]  # type: ignore[attr-defined]
        recs = [ItemRecord(i.item_id, i.title, dict(i.attributes)) for i in items]
        res = await run_in_threadpool(recommender.add_items, recs)
        return {"added": res.added, "replaced": res.replaced, "catalog_version": res.version,
                "items": len(recommender.catalog)}

    @app.get("/items", response_model=ItemSearchOut, summary="Search the catalog by title (type-ahead)",
             responses=_errors(422, 500))
    async def search_items(
        q: Annotated[str, Query(max_length=s.max_title_chars, description=(
            "Words that must all appear in the title, in any order, each as any part of a "
            "word, case-insensitive; an exact item id also matches. Empty: any item."))] = "",
        limit: Annotated[int, Query(ge=1, le=100, description="Most items to return.")] = 10,
    ) -> Any:
        cat = recommender.catalog
        await run_in_threadpool(cat.refresh)
        found, total = await run_in_threadpool(cat.find, q, limit)
        return {"query": q, "items": [{"item_id": r.item_id, "title": r.title} for r in found],
                "matches": total, "catalog_version": cat.version}

    @app.get("/report", response_model=ReportOut, summary="The run's scores with 95% bootstrap CIs",
             responses=_errors(422, 500))
    async def report() -> Any:
        from glossrec.serve.report import read_report

        if recommender.run_dir is None:
            return {"run": None, "results": [], "report_png": False}
        rep = await run_in_threadpool(read_report, recommender.run_dir)
        return {"run": rep.run, "report_png": rep.has_png, "results": [
            {"name": r.name, "folder": r.folder, "users": r.users,
             "metrics": [{"name": m.name, "mean": m.mean, "ci_low": m.ci[0] if m.ci else None,
                          "ci_high": m.ci[1] if m.ci else None} for m in r.metrics],
             "segments": [{"name": g.name, "users": g.users, "metrics": g.metrics} for g in r.segments]}
            for r in rep.results]}

    @app.get("/report.png", include_in_schema=False)
    async def report_png() -> FileResponse:
        from glossrec.rundir import RunDir

        png = RunDir(recommender.run_dir).report_png if recommender.run_dir is not None else None
        if png is None or not png.is_file():
            raise ApiError(404, "this run has no report.png (a full `glossrec run` writes one)")
        return FileResponse(png, media_type="image/png")

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers=PAGE_HEADERS)

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.delete("/items/{item_id:path}", response_model=WriteOut, dependencies=[Depends(require_key)],
                summary="Remove an item", responses=_errors(401, 403, 404, 422, 500))
    async def remove_item(item_id: str) -> Any:
        try:
            res = await run_in_threadpool(recommender.remove_items, [item_id])
        except UnknownItemsError as e:
            raise ApiError(404, f"unknown item id {item_id!r}", {"unknown_ids": e.ids}) from None
        return {"removed": res.removed, "catalog_version": res.version,
                "items": len(recommender.catalog)}

    @app.get("/items/{item_id:path}", response_model=ItemOut, summary="Show one item",
             responses=_errors(404, 422, 500))
    async def get_item(item_id: str) -> Any:
        try:
            rec = await run_in_threadpool(recommender.get_item, item_id)
        except UnknownItemsError as e:
            raise ApiError(404, f"unknown item id {item_id!r}", {"unknown_ids": e.ids}) from None
        return {"item_id": rec.item_id, "title": rec.title, "attributes": dict(rec.attrs),
                "text": recommender.catalog.text_of(rec)}

    app.add_middleware(BodyLimitMiddleware, max_bytes=s.max_body_bytes)
    return app


def _allowed_methods(app: FastAPI, scope: Scope) -> list[str]:
    """Every method some route serves at this request's path."""
    from starlette.routing import Match

    methods: set[str] = set()
    for route in app.router.routes:
        match, _ = route.matches(scope)  # PARTIAL: the path matches, the method does not
        if match != Match.NONE and getattr(route, "methods", None):
            methods |= set(route.methods)
    return sorted(methods)


def _version() -> str:
    from glossrec import __version__

    return __version__
