"""HTTP in front of `tailor.serving.service`: FastAPI app, request validation, champion reloads.

Endpoints (OpenAPI at /openapi.json, interactive docs at /docs):

GET  /health                        the process is up
GET  /ready                         a model is loaded (503 until then)
GET  /users/{user_id}/recommendations   the nightly list (fast path)
POST /recommend                     live: user, session, query, profile, exclude, k, tail knob
POST /items                         add or update items; searchable in the next request
GET  /items/{item_id}               one served item
POST /events                        feedback: logged durably, applied to the session at once
POST /admin/reload                  check the champion alias now
GET  /metrics                       Prometheus' text format: requests, latencies, model, queues

Writes (POST /items, POST /events, /admin/*) need an API key of `serve.write_keys` in the
X-API-Key header (none configured = writes refused); reads need one of `serve.read_keys` when
any is set. A service listening beyond loopback without read keys refuses to start unless
`serve.open_reads` is set. Keys are compared in constant time and never logged.

Model work runs on the event loop, the user encoder batched across the requests of one loop
turn; the language model (queries, profiles, new items, a bounded queue), the events' durable
commit and loading run in worker threads.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoint annotations at runtime,
# and some name limits from this deployment's settings, which only exist inside create_app.
import asyncio
import hmac
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request, Security
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from fastapi.security import APIKeyHeader
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    StringConstraints,
    create_model,
    field_validator,
)

from tailor.data.livelog import LiveEvent, LiveItem, LiveLogError
from tailor.serving.batching import WriteBatcher
from tailor.serving.encoder import EncoderBusyError, NoTextSpaceError
from tailor.serving.metrics import CONTENT_TYPE, RequestMetrics
from tailor.serving.recommend import LiveQuery
from tailor.serving.service import (
    LiveItemsFullError,
    Service,
    StoreBusyError,
    UnknownItemsError,
    collect_if_alive,
    limit_malloc_arenas,
    settle_heap,
)
from tailor.serving.store import StoreError
from tailor.settings import Settings

log = logging.getLogger(__name__)

ItemId = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]


def _no_bool(value: Any) -> Any:
    # JSON true/false is not a number, whatever Python's bool thinks.
    if isinstance(value, bool):
        raise ValueError("a number is required, not a boolean")
    return value


def _number(kind: type = float, **bounds: float) -> Any:
    """A JSON number (or integer) with its bounds in the schema; booleans refused, and strings
    too (strict): a digit string longer than a text field's limit must not pass as a number."""
    return Annotated[kind, Field(strict=True, **bounds), BeforeValidator(_no_bool)]


Number = _number()
UserId = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ItemResponse(BaseModel):
    item_id: str
    label: str
    text: str
    new: bool = Field(description="Added after the model was trained.")
    tail: bool = Field(description="Outside the most popular items.")


class ErrorResponse(BaseModel):
    """Every refusal: a message (or, for unknown items, a message and the ids)."""

    detail: Any = Field(description="Why the request was refused.")


KEY_HEADER = "X-API-Key"
_api_key = APIKeyHeader(
    name=KEY_HEADER,
    auto_error=False,
    description="An API key of serve.write_keys (writes) or serve.read_keys (reads, when set).",
)
# Documented on the endpoints that check a key.
AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "No X-API-Key header."},
    403: {"model": ErrorResponse, "description": "The key is not valid here (or none is set)."},
}
# Every endpoint that needs the model or the stores may answer these.
SERVING_RESPONSES: dict[int | str, dict[str, Any]] = {
    503: {
        "model": ErrorResponse,
        "description": "No model loaded yet, a store is down, or the encoder's queue is full "
        "(with Retry-After).",
    },
}
BODY_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "A Content-Length that is not a size."},
    408: {
        "model": ErrorResponse,
        "description": "The body was not sent within serve.body_timeout_seconds.",
    },
    413: {"model": ErrorResponse, "description": "The body is over serve.max_body_bytes."},
}
TEXT_RESPONSES: dict[int | str, dict[str, Any]] = {
    409: {
        "model": ErrorResponse,
        "description": "This model cannot embed text (file vectors), or (items) holds "
        "serve.max_live_items added items already.",
    },
}


def key_matches(presented: str, keys: list[SecretStr]) -> bool:
    """Constant-time comparison against every key (no early exit on the first match)."""
    found = False
    given = presented.encode()
    for key in keys:
        found |= hmac.compare_digest(given, key.get_secret_value().encode())
    return found


def key_checks(settings: Settings):
    """(read check, write check): FastAPI dependencies raising 401/403."""
    serve = settings.serve

    def write(key: Annotated[str | None, Security(_api_key)] = None) -> None:
        if not serve.write_keys:
            raise HTTPException(403, "writes are disabled: this service has no serve.write_keys")
        if not key:
            raise HTTPException(
                401, f"this endpoint needs an {KEY_HEADER} header", {"WWW-Authenticate": "ApiKey"}
            )
        if not key_matches(key, serve.write_keys):
            raise HTTPException(403, f"the {KEY_HEADER} is not valid for writes")

    def read(key: Annotated[str | None, Security(_api_key)] = None) -> None:
        if not serve.read_keys:
            return
        if not key:
            raise HTTPException(
                401, f"this endpoint needs an {KEY_HEADER} header", {"WWW-Authenticate": "ApiKey"}
            )
        if not key_matches(key, [*serve.read_keys, *serve.write_keys]):
            raise HTTPException(403, f"the {KEY_HEADER} is not valid here")

    return read, write


class ScoredItem(BaseModel):
    item_id: str
    label: str
    score: float = Field(description="Model log-probability plus weighted query similarity.")
    reason: str
    new: bool = Field(description="Added after the model was trained (scored by its text).")


class RecommendResponse(BaseModel):
    model_version: str
    basis: list[str] = Field(
        description="What the ranking used: history, session, profile, query or popularity."
    )
    unknown_items: list[str] = Field(description="Session or exclude ids not in the catalogue.")
    items: list[ScoredItem]


class StoredItem(BaseModel):
    rank: int
    item_id: str
    label: str | None
    score: float
    reason: str | None


class StoredResponse(BaseModel):
    user_id: str
    model_version: str
    items: list[StoredItem]


class ItemsResponse(BaseModel):
    model_version: str
    inserted: list[str]
    updated: list[str]


class EventsResponse(BaseModel):
    accepted: int


class ReadyResponse(BaseModel):
    ready: bool
    model_version: str | None
    reason: str
    items: int
    users: int
    loaded_at: str | None


class ReloadResponse(BaseModel):
    model_version: str | None
    reloaded: bool


def _schemas(settings: Settings) -> dict[str, type[BaseModel]]:
    """Request models with this deployment's limits in them (and so in the OpenAPI file)."""
    s = settings.serve
    Text = Annotated[str, StringConstraints(min_length=1, max_length=s.max_query_chars)]
    floor = datetime.fromisoformat(s.event_floor)
    floor = floor if floor.tzinfo else floor.replace(tzinfo=UTC)
    skew = timedelta(seconds=s.event_future_seconds)
    fields = list(s.profile_fields)

    ProfileValue = Annotated[str, StringConstraints(max_length=s.max_query_chars)] | Number
    Profile = create_model(
        "Profile",
        __base__=_Strict,
        **{name: (ProfileValue | None, Field(None)) for name in fields},
    )

    class RecommendRequest(_Strict):
        user_id: UserId | None = Field(None, description="Known user: history is used.")
        session: list[ItemId] = Field(
            default_factory=list,
            max_length=s.max_session_items,
            description="Recent item ids, oldest first, appended to the user's history.",
        )
        query: Text | None = Field(None, description="Free text, blended into the ranking.")
        profile: Profile | None = Field(  # type: ignore[valid-type]
            None,
            description=f"Profile fields ({', '.join(fields)}) for a user with no history.",
        )
        exclude: list[ItemId] = Field(default_factory=list, max_length=s.max_exclude_items)
        # Bounds inside the type, so the OpenAPI description carries them on the number.
        k: _number(int, ge=1, le=s.max_k) = Field(20, description="How many items.")
        tail_strength: _number(ge=0.0, le=1.0) | None = Field(
            None, description="Tail-exposure knob; None = the served default."
        )
        query_weight: _number(ge=0.0, le=100.0) | None = Field(
            None, description="Weight of the query; None = the default."
        )

    class NewItem(_Strict):
        item_id: ItemId
        text: Annotated[
            str,
            StringConstraints(
                strip_whitespace=True, min_length=1, max_length=s.max_item_text_chars
            ),
        ] = Field(description="What the language model reads: title, description, categories.")
        label: Annotated[str, StringConstraints(strip_whitespace=True, max_length=500)] | None = (
            Field(None, description="Short display name; default: the id.")
        )

    class ItemsRequest(_Strict):
        items: list[NewItem] = Field(min_length=1, max_length=s.max_items_per_request)

    class _Event(_Strict):
        user_id: UserId
        item_id: ItemId
        timestamp: datetime | None = Field(
            None,
            description=f"When; default: received time. Not before {s.event_floor}, not more "
            f"than {s.event_future_seconds:g} s ahead of the service's clock (else 422).",
        )

        @field_validator("timestamp")
        @classmethod
        def _aware_and_bounded(cls, value: datetime | None) -> datetime | None:
            if value is None:
                return None
            if value.tzinfo is None:
                value = value.replace(tzinfo=UTC)
            if value < floor:
                raise ValueError(f"timestamp {value.isoformat()} is before {floor.isoformat()}")
            if value > datetime.now(UTC) + skew:
                raise ValueError(
                    f"timestamp {value.isoformat()} is more than "
                    f"{s.event_future_seconds:g} s in the future"
                )
            return value

    class Seen(_Event):
        kind: Literal["view", "click"]

    class Rating(_Event):
        kind: Literal["rating"]
        value: _number(ge=0.0, le=1000.0) = Field(description="The rating.")

    Event = Annotated[Seen | Rating, Field(discriminator="kind")]

    class EventsRequest(_Strict):
        events: list[Event] = Field(  # type: ignore[valid-type]
            min_length=1, max_length=s.max_events_per_request
        )

    return {
        "RecommendRequest": RecommendRequest,
        "ItemsRequest": ItemsRequest,
        "EventsRequest": EventsRequest,
    }


class _BodyLimit:
    """413 for a body over the limit: a declared size before anything reads it, a chunked one
    (no Content-Length) as soon as it has sent more than the limit; 408 for a body not sent
    within `timeout` seconds (a slow sender holds no connection for long)."""

    def __init__(self, app, max_bytes: int, timeout: float = 10.0) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout = timeout

    def _refusal(self, what: str, status: int = 413) -> JSONResponse:
        return JSONResponse(
            {"detail": f"request body of {what}; the limit is {self.max_bytes} bytes"},
            status_code=status,
        )

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = None
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared < 0:
                    await self._refusal(f"{value.decode(errors='replace')!r} bytes", 400)(
                        scope, receive, send
                    )
                    return
                if declared > self.max_bytes:
                    await self._refusal(f"{declared} bytes")(scope, receive, send)
                    return
        if scope.get("method") in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        # The body is read here, up to the limit and within the timeout, then handed on.
        deadline = asyncio.get_running_loop().time() + self.timeout
        chunks, size, more = [], 0, True
        while more:
            try:
                message = await asyncio.wait_for(
                    receive(), max(0.0, deadline - asyncio.get_running_loop().time())
                )
            except TimeoutError:
                await JSONResponse(
                    {"detail": f"the request body was not sent within {self.timeout:g} s"},
                    status_code=408,
                )(scope, receive, send)
                return
            if message["type"] != "http.request":
                await self.app(scope, _replay([message]), send)
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.max_bytes:
                await self._refusal(f"more than {self.max_bytes} bytes (chunked)")(
                    scope, receive, send
                )
                return
        body = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        await self.app(scope, _replay([body], receive), send)


def _replay(messages: list[dict], then=None):
    """An ASGI receive that yields `messages`, then defers to `then` (disconnects)."""
    pending = list(messages)

    async def receive() -> dict:
        if pending:
            return pending.pop(0)
        if then is not None:
            return await then()
        return {"type": "http.disconnect"}

    return receive


def _profile_of(profile: BaseModel | None) -> dict[str, str] | None:
    """The fields a request set, as text (what the profile encoder reads)."""
    if profile is None:
        return None
    given = {k: str(v) for k, v in profile.model_dump(exclude_none=True).items()}
    return given or None


# Seconds after a swap to check that the retired model is gone (requests on it have ended).
RETIRED_CHECK_SECONDS = 5.0


def check_exposure(settings: Settings) -> str:
    """How reads are guarded, for the start-up log; refuses a service that would answer
    reads (viewing history, lists) to anyone who can reach a non-loopback port."""
    s = settings.serve
    if s.read_keys:
        return f"reads need a key of serve.read_keys ({len(s.read_keys)} set)"
    if s.loopback_only:
        return f"reads are open on loopback ({s.host}) only"
    if s.open_reads:
        return f"reads are OPEN to anyone who reaches {s.host}:{s.port} (serve.open_reads)"
    raise ValueError(
        f"serve.host is {s.host!r} (beyond loopback) and serve.read_keys is empty: anyone who "
        "reaches the port could read users' lists and what they viewed. Set serve.read_keys "
        "(TAILOR_SERVE__READ_KEYS='[\"...\"]'), or serve.open_reads = true when a gateway in "
        "front checks callers."
    )


def app_from_environment() -> FastAPI:
    """The app of one worker of `tailor serve --workers N`: uvicorn starts each worker by
    importing this; the settings are resolved again from what the command was given (paths
    and a preset in `TAILOR_SERVE_ARGS`; keys come from the environment or the config file
    as for any run, never through this variable)."""
    import json
    import os
    from pathlib import Path

    from tailor.settings import load_settings

    given = json.loads(os.environ["TAILOR_SERVE_ARGS"])
    overrides: dict[str, Any] = {}
    if given.get("workdir"):
        overrides["workdir"] = Path(given["workdir"])
    settings = load_settings(
        Path(given["config"]) if given.get("config") else None,
        preset=given.get("preset"),
        **overrides,
    )
    serve = {**settings.serve.model_dump(), **given.get("serve", {})}
    settings = settings.model_copy(update={"serve": settings.serve.model_validate(serve)})
    return create_app(settings)


def create_app(settings: Settings, model_version: str | None = None) -> FastAPI:
    """The service app; loading starts in the background when the app starts."""
    exposure = check_exposure(settings)
    limit_malloc_arenas()
    service = Service(settings, model_version)
    schemas = _schemas(settings)
    RecommendRequest = schemas["RecommendRequest"]
    ItemsRequest = schemas["ItemsRequest"]
    EventsRequest = schemas["EventsRequest"]
    reload_lock = asyncio.Lock()
    check_read, check_write = key_checks(settings)
    # Reads declare a key (and its 401/403) only when this deployment asks for one.
    reads: dict[str, Any] = {"dependencies": [], "responses": {**SERVING_RESPONSES}}
    if settings.serve.read_keys:
        reads = {
            "dependencies": [Depends(check_read)],
            "responses": {**AUTH_RESPONSES, **SERVING_RESPONSES},
        }
    writes = {
        "dependencies": [Depends(check_write)],
        "responses": {**AUTH_RESPONSES, **SERVING_RESPONSES, **BODY_RESPONSES},
    }

    async def reload_once() -> bool:
        async with reload_lock:
            if service.model is None:
                try:
                    await run_in_threadpool(service.load)
                    settle_heap()
                    return True
                except Exception as e:  # keep serving health; say why not ready
                    service.error = f"{type(e).__name__}: {e}"
                    log.warning("model not loaded: %s", service.error)
                    return False
            version = await run_in_threadpool(service.champion_version)
            if version == service.model.version:
                return False
            assert service.state is not None
            snapshot = service.state.snapshot()
            model, texts, queries = await run_in_threadpool(service.build, version, snapshot)
            service.swap(model, texts, queries)
            del model
            settle_heap()
            # Requests still running on the old model hold it for a moment; once they are
            # done it is gone, or a full collection (one pause, only then) frees it.
            loop = asyncio.get_running_loop()
            for retired in service.retired_models():
                loop.call_later(RETIRED_CHECK_SECONDS, collect_if_alive, retired)
            return True

    async def write_items(batch: list[tuple[list[LiveItem], Any]]) -> list:
        """Many requests' items: one commit to the live log, in a worker thread so reads go on
        meanwhile, then one model update; a request over the live-item cap is refused alone."""
        refused = service.admit_items([items for items, _ in batch])
        admitted = [b for b, no in zip(batch, refused, strict=True) if no is None]
        if admitted:
            rows = [item for items, _ in admitted for item in items]
            with service.metrics.livelog_commit.time():
                await run_in_threadpool(service.live_log.upsert_items, rows, service.origin)
        applied = iter(service.apply_items(admitted))
        return [no if no is not None else next(applied) for no in refused]

    inserts = WriteBatcher(write_items, settings.serve.insert_batch)

    async def poll() -> None:
        await reload_once()
        every = settings.serve.poll_seconds
        while every > 0:
            await asyncio.sleep(every)
            try:
                await reload_once()
            except Exception:
                log.warning("checking for a new champion failed", exc_info=True)

    async def follow() -> None:
        every = settings.serve.follow_seconds
        while every > 0:
            await asyncio.sleep(every)
            if service.model is None:
                continue
            try:
                await service.follow_log()
            except Exception:
                log.warning("following the live log failed", exc_info=True)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Requests search faiss and run the user encoder on this thread (the event loop's), and
        # OpenMP's thread count is per thread: set here, not only where the model loads.
        service.use_serving_threads()
        log.info("tailor serve: %s", exposure)
        tasks = [asyncio.create_task(poll()), asyncio.create_task(follow())]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            service.close()

    app = FastAPI(
        title="tailor",
        summary="Live long-tail recommendations over the champion model.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.service = service
    app.state.inserts = inserts  # its batching figures, for the benchmark
    app.add_middleware(
        _BodyLimit,
        max_bytes=settings.serve.max_body_bytes,
        timeout=settings.serve.body_timeout_seconds,
    )
    app.add_middleware(RequestMetrics, metrics=service.metrics)

    def serving() -> Service:
        if service.model is None:
            raise HTTPException(503, f"no model loaded yet: {service.error}")
        return service

    @app.exception_handler(LiveLogError)
    @app.exception_handler(StoreError)
    async def _storage_down(request: Request, exc: Exception) -> JSONResponse:
        # The cause (paths, hosts) goes to the operator's log, not to whoever asked.
        what = "live log" if isinstance(exc, LiveLogError) else "recommendation store"
        log.warning("%s %s: the %s failed: %s", request.method, request.url.path, what, exc)
        retry = exc.retry_after if isinstance(exc, StoreBusyError) else 1
        return JSONResponse(
            {"detail": f"the {what} is unavailable; retry shortly"},
            status_code=503,
            headers={"Retry-After": str(retry)},
        )

    @app.exception_handler(LiveItemsFullError)
    async def _full(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=409)

    @app.exception_handler(EncoderBusyError)
    async def _busy(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": "1"})

    @app.exception_handler(NoTextSpaceError)
    async def _no_text(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=409)

    @app.get("/health")
    async def health() -> dict[str, str]:
        """The process answers (liveness)."""
        return {"status": "ok"}

    @app.get("/ready", response_model=ReadyResponse, responses={503: {"model": ReadyResponse}})
    async def ready():
        """A model is loaded and requests are served (readiness)."""
        r = service.readiness()
        body = ReadyResponse(**r.__dict__)
        return JSONResponse(body.model_dump(), status_code=200 if r.ready else 503)

    @app.get(
        "/users/{user_id}/recommendations",
        response_model=StoredResponse,
        dependencies=reads["dependencies"],
        responses={**reads["responses"], 404: {"model": ErrorResponse}},
    )
    async def stored(
        user_id: Annotated[str, Path(min_length=1, max_length=200)],
        k: Annotated[int, Query(ge=1, le=settings.serve.max_k)] = 20,
    ):
        """The list the nightly refresh published for this user (the fast path)."""
        frame = await service.stored_list(user_id, k)
        if frame.is_empty():
            raise HTTPException(
                404,
                f"user {user_id!r} has no precomputed recommendations; POST /recommend "
                "computes them live",
            )
        rows = frame.to_dicts()
        return StoredResponse(
            user_id=user_id,
            model_version=rows[0]["model_version"],
            items=[StoredItem(**r) for r in rows],
        )

    @app.post(
        "/recommend",
        response_model=RecommendResponse,
        dependencies=reads["dependencies"],
        responses={**reads["responses"], **BODY_RESPONSES, **TEXT_RESPONSES},
    )
    async def recommend(body: RecommendRequest):  # type: ignore[valid-type]
        """Live recommendations: history + session through the model, blended with query or
        profile text; excluded and already-seen items removed; a reason per item."""
        svc = serving()
        query = LiveQuery(
            user_id=body.user_id,
            session=body.session,
            query=body.query,
            profile=_profile_of(body.profile),
            exclude=body.exclude,
            k=body.k,
            strength=body.tail_strength,
            query_weight=body.query_weight,
        )
        if body.user_id:
            # A live user evicted from memory comes back from the log (read off the loop).
            await svc.bring_back(body.user_id)
        # The language model runs in a worker thread, the user encoder on the loop; each
        # batches the requests that reach it together.
        user = svc.submit_user_vector(query)
        text = svc.queries.submit([query.query]) if query.query else None
        profile = svc.profile_string(query)
        profile_text = svc.texts.submit([profile]) if profile else None
        vectors = {}
        if text is not None:
            vectors[query.query] = (await asyncio.wrap_future(text))[0]
        if profile_text is not None:
            vectors[profile] = (await asyncio.wrap_future(profile_text))[0]
        encoded = None
        if user is not None:
            model, positions, future = user
            encoded = (model, positions, await future)
        result = svc.recommend(query, vectors, encoded)
        return RecommendResponse(
            model_version=result.model_version,
            basis=result.basis,
            unknown_items=result.unknown_items,
            items=[ScoredItem(**s.__dict__) for s in result.items],
        )

    @app.post(
        "/items",
        response_model=ItemsResponse,
        dependencies=writes["dependencies"],
        responses={**writes["responses"], **TEXT_RESPONSES},
    )
    async def upsert_items(body: ItemsRequest):  # type: ignore[valid-type]
        """Add or update items: embedded, logged for the next nightly run, searchable now."""
        svc = serving()
        # An id given twice is updated twice: the last text wins, as in the live log.
        last = {i.item_id: i for i in body.items}
        items = [LiveItem(i.item_id, i.text, i.label or i.item_id) for i in last.values()]
        vectors = await asyncio.wrap_future(svc.texts.submit([i.text for i in items]))
        inserted, updated = await inserts.submit((items, vectors))
        return ItemsResponse(model_version=svc.model.version, inserted=inserted, updated=updated)

    @app.get(
        "/items/{item_id}",
        response_model=ItemResponse,
        dependencies=reads["dependencies"],
        responses={**reads["responses"], 404: {"model": ErrorResponse}},
    )
    async def get_item(item_id: Annotated[str, Path(min_length=1, max_length=200)]):
        """One item as served."""
        found = serving().item(item_id)
        if found is None:
            raise HTTPException(404, f"unknown item id {item_id!r}")
        return ItemResponse(**found)

    @app.post(
        "/events",
        response_model=EventsResponse,
        dependencies=writes["dependencies"],
        responses={
            **writes["responses"],
            404: {"model": ErrorResponse, "description": "Events name items not in the catalogue."},
        },
    )
    async def add_events(body: EventsRequest):  # type: ignore[valid-type]
        """Feedback: appended durably to the live log, applied to the user's session now."""
        svc = serving()
        now = datetime.now(UTC)
        events = [
            LiveEvent(
                e.user_id,
                e.item_id,
                e.kind,
                float(e.value) if e.kind == "rating" else 1.0,
                e.timestamp or now,
            )
            for e in body.events
        ]
        try:
            # The durable commit (an fsync) in a worker thread: other requests run meanwhile;
            # the events reach the in-memory history once they are in the log.
            accepted = await svc.record_events(events)
        except UnknownItemsError as e:
            raise HTTPException(404, {"message": str(e), "unknown_items": e.items}) from e
        return EventsResponse(accepted=accepted)

    @app.get(
        "/metrics",
        dependencies=reads["dependencies"],
        responses={
            **reads["responses"],
            200: {"content": {CONTENT_TYPE: {}}, "description": "Prometheus' text format."},
        },
        response_class=Response,
    )
    async def metrics():
        """Request rates and latencies by route, the model version and swaps, the encoder's
        queue, users and items held, live-log commit and store read latency, process memory
        (Prometheus' text format; behind the read key like other reads)."""
        body = service.metrics.render(service.read_gauges)
        return Response(body, media_type=CONTENT_TYPE)

    @app.post(
        "/admin/reload",
        response_model=ReloadResponse,
        dependencies=writes["dependencies"],
        responses={**AUTH_RESPONSES, 409: {"model": ErrorResponse}},
    )
    async def admin_reload():
        """Check the champion alias now instead of waiting for the next poll."""
        try:
            reloaded = await reload_once()
        except LookupError as e:
            raise HTTPException(409, str(e)) from e
        return ReloadResponse(
            model_version=None if service.model is None else service.model.version,
            reloaded=reloaded,
        )

    return app
