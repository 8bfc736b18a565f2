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

Model work runs on the event loop, one request at a time (it takes a millisecond or two);
only the language model (queries, profiles, new items) and loading run in worker threads.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoint annotations at runtime,
# and some name limits from this deployment's settings, which only exist inside create_app.
import asyncio
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import FastAPI, HTTPException, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from tailor.data.livelog import LiveEvent, LiveItem, LiveLogError
from tailor.serving.encoder import NoTextSpaceError
from tailor.serving.recommend import LiveQuery
from tailor.serving.service import Service, UnknownItemsError
from tailor.serving.store import StoreError
from tailor.settings import Settings

log = logging.getLogger(__name__)

ItemId = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
UserId = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


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
    fields = list(s.profile_fields)

    class RecommendRequest(_Strict):
        user_id: UserId | None = Field(None, description="Known user: history is used.")
        session: list[ItemId] = Field(
            default_factory=list,
            max_length=s.max_session_items,
            description="Recent item ids, oldest first, appended to the user's history.",
        )
        query: Text | None = Field(None, description="Free text, blended into the ranking.")
        profile: dict[str, str | int | float] | None = Field(
            None,
            description=f"Profile fields ({', '.join(fields)}) for a user with no history.",
        )
        exclude: list[ItemId] = Field(default_factory=list, max_length=s.max_exclude_items)
        k: int = Field(20, ge=1, le=s.max_k, description="How many items.")
        tail_strength: float | None = Field(
            None, ge=0.0, le=1.0, description="Tail-exposure knob; None = the served default."
        )
        query_weight: float | None = Field(
            None, ge=0.0, le=100.0, description="Weight of the query; None = the default."
        )

        @field_validator("profile")
        @classmethod
        def _known_fields(cls, value: dict | None) -> dict | None:
            if value is None:
                return None
            unknown = sorted(set(value) - set(fields))
            if unknown:
                raise ValueError(f"unknown profile fields {unknown}; this service reads {fields}")
            for name, v in value.items():
                if len(str(v)) > s.max_query_chars:
                    raise ValueError(f"profile field {name!r} is longer than {s.max_query_chars}")
            return value

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

    class Event(_Strict):
        user_id: UserId
        item_id: ItemId
        kind: Literal["view", "click", "rating"]
        value: float | None = Field(
            None, ge=0.0, le=1000.0, description="The rating (required for kind=rating)."
        )
        timestamp: datetime | None = Field(None, description="When; default: received time.")

        @field_validator("timestamp")
        @classmethod
        def _aware(cls, value: datetime | None) -> datetime | None:
            if value is not None and value.tzinfo is None:
                return value.replace(tzinfo=UTC)
            return value

        @model_validator(mode="after")
        def _rating_has_value(self):
            if self.kind == "rating" and self.value is None:
                raise ValueError("a rating event needs a value")
            return self

    class EventsRequest(_Strict):
        events: list[Event] = Field(min_length=1, max_length=s.max_events_per_request)

    return {
        "RecommendRequest": RecommendRequest,
        "ItemsRequest": ItemsRequest,
        "EventsRequest": EventsRequest,
    }


class _BodyLimit:
    """413 for a declared body over the limit, before anything reads it."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            for name, value in scope.get("headers", []):
                if name == b"content-length":
                    try:
                        size = int(value)
                    except ValueError:
                        size = -1
                    if size < 0 or size > self.max_bytes:
                        response = JSONResponse(
                            {
                                "detail": f"request body of {value.decode()} bytes; the limit is "
                                f"{self.max_bytes}"
                            },
                            status_code=413 if size > 0 else 400,
                        )
                        await response(scope, receive, send)
                        return
        await self.app(scope, receive, send)


def _settle_heap() -> None:
    """Move everything loaded so far out of the garbage collector's sight.

    torch, transformers, MLflow and the data leave millions of long-lived objects; a full
    collection that walks them all stalls the event loop for tens of milliseconds, which is
    what a p99 sees. Frozen objects are never scanned again (they are still freed when
    unreferenced only if the process is restarted, which is fine for a loaded model).
    """
    gc.collect()
    gc.freeze()


def create_app(settings: Settings, model_version: str | None = None) -> FastAPI:
    """The service app; loading starts in the background when the app starts."""
    service = Service(settings, model_version)
    schemas = _schemas(settings)
    RecommendRequest = schemas["RecommendRequest"]
    ItemsRequest = schemas["ItemsRequest"]
    EventsRequest = schemas["EventsRequest"]
    reload_lock = asyncio.Lock()

    async def reload_once() -> bool:
        async with reload_lock:
            if service.model is None:
                try:
                    await run_in_threadpool(service.load)
                    _settle_heap()
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
            _settle_heap()
            return True

    async def poll() -> None:
        await reload_once()
        every = settings.serve.poll_seconds
        while every > 0:
            await asyncio.sleep(every)
            try:
                await reload_once()
            except Exception:
                log.warning("checking for a new champion failed", exc_info=True)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(poll())
        try:
            yield
        finally:
            task.cancel()
            service.close()

    app = FastAPI(
        title="tailor",
        summary="Live long-tail recommendations over the champion model.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.service = service
    app.add_middleware(_BodyLimit, max_bytes=settings.serve.max_body_bytes)

    def serving() -> Service:
        if service.model is None:
            raise HTTPException(503, f"no model loaded yet: {service.error}")
        return service

    @app.exception_handler(LiveLogError)
    @app.exception_handler(StoreError)
    async def _storage_down(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=503)

    @app.exception_handler(NoTextSpaceError)
    async def _no_text(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=422)

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

    @app.get("/users/{user_id}/recommendations", response_model=StoredResponse)
    async def stored(
        user_id: Annotated[str, Path(min_length=1, max_length=200)],
        k: Annotated[int, Query(ge=1, le=settings.serve.max_k)] = 20,
    ):
        """The list the nightly refresh published for this user (the fast path)."""
        frame = service.precomputed(user_id, k)
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

    @app.post("/recommend", response_model=RecommendResponse)
    async def recommend(body: RecommendRequest):  # type: ignore[valid-type]
        """Live recommendations: history + session through the model, blended with query or
        profile text; excluded and already-seen items removed; a reason per item."""
        svc = serving()
        query = LiveQuery(
            user_id=body.user_id,
            session=body.session,
            query=body.query,
            profile={k: str(v) for k, v in body.profile.items()} if body.profile else None,
            exclude=body.exclude,
            k=body.k,
            strength=body.tail_strength,
            query_weight=body.query_weight,
        )
        # Text goes to the encoder's worker thread; the event loop serves others meanwhile.
        vectors = {}
        if query.query:
            found = await asyncio.wrap_future(svc.queries.submit([query.query]))
            vectors[query.query] = found[0]
        profile = svc.profile_string(query)
        if profile:
            vectors[profile] = (await asyncio.wrap_future(svc.texts.submit([profile])))[0]
        result = svc.recommend(query, vectors)
        return RecommendResponse(
            model_version=result.model_version,
            basis=result.basis,
            unknown_items=result.unknown_items,
            items=[ScoredItem(**s.__dict__) for s in result.items],
        )

    @app.post("/items", response_model=ItemsResponse)
    async def upsert_items(body: ItemsRequest):  # type: ignore[valid-type]
        """Add or update items: embedded, logged for the next nightly run, searchable now."""
        svc = serving()
        seen: set[str] = set()
        for item in body.items:
            if item.item_id in seen:
                raise HTTPException(422, f"item {item.item_id!r} appears twice in the request")
            seen.add(item.item_id)
        items = [LiveItem(i.item_id, i.text, i.label or i.item_id) for i in body.items]
        vectors = await asyncio.wrap_future(svc.texts.submit([i.text for i in items]))
        inserted, updated = svc.upsert_items(items, vectors)
        return ItemsResponse(model_version=svc.model.version, inserted=inserted, updated=updated)

    @app.get("/items/{item_id}")
    async def get_item(item_id: Annotated[str, Path(min_length=1, max_length=200)]):
        """One item as served."""
        found = serving().item(item_id)
        if found is None:
            raise HTTPException(404, f"unknown item id {item_id!r}")
        return found

    @app.post("/events", response_model=EventsResponse)
    async def add_events(body: EventsRequest):  # type: ignore[valid-type]
        """Feedback: appended durably to the live log, applied to the user's session now."""
        svc = serving()
        now = datetime.now(UTC)
        events = [
            LiveEvent(
                e.user_id,
                e.item_id,
                e.kind,
                float(e.value) if e.value is not None else 1.0,
                e.timestamp or now,
            )
            for e in body.events
        ]
        try:
            accepted = svc.add_events(events)
        except UnknownItemsError as e:
            raise HTTPException(422, {"message": str(e), "unknown_items": e.items}) from e
        return EventsResponse(accepted=accepted)

    @app.post("/admin/reload", response_model=ReloadResponse)
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
