"""The FastAPI application: routes, the one error handler, the web page."""

from __future__ import annotations

import json
import logging
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..blueprint import BlueprintRegistry
from ..exceptions import (
    AdmissionRefused,
    BlueprintError,
    JobNotFound,
    NcaasError,
    PathRefused,
    SpecialFileRefused,
    StorageError,
    SubmissionRejected,
)
from ..private import private_dir
from ..storage import Storage
from .accounts import Accounts, open_engine
from .auth import Authenticator
from .errors import ServerError
from .headers import SECURITY_HEADERS, SecurityHeaders
from .ratelimit import FailureLimiter
from .space import Reserve
from .state import ServerSettings, ServerState, default_database_url
from .stored import StoredInputs
from .uploads import Uploads

__all__ = ["create_app"]

log = logging.getLogger("ncaas.server")
STATIC = Path(__file__).parent / "static"
JSON_BODY_LIMIT = 16 << 20

_STATUS = [
    (ServerError, None),
    (PathRefused, 400),
    (SpecialFileRefused, 400),
    (SubmissionRejected, 400),
    (AdmissionRefused, 409),
    (JobNotFound, 404),
    (BlueprintError, 400),
    (StorageError, 500),
    (NcaasError, 400),
]


def _error_response(exc: NcaasError) -> JSONResponse:
    found = next(code for kind, code in _STATUS if isinstance(exc, kind))
    status = found if found is not None else int(getattr(exc, "status", 500))
    body = {"error": getattr(exc, "message", None) or str(exc)}
    body.update(getattr(exc, "extra", {}))
    if isinstance(exc, SubmissionRejected):
        body["problems"] = exc.problems
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    if status == 429:
        headers = {"Retry-After": str(body["retry_after"])}
    return JSONResponse(body, status_code=status, headers=headers)


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "request body"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "malformed request: " + "; ".join(parts)


class JsonBodyLimit:
    """Refuse request bodies over ``limit`` bytes, except upload streams (which check
    their declared size themselves), answering in the API's error format."""

    def __init__(self, app, *, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or (scope["method"] == "PUT" and scope["path"].startswith("/api/uploads/")):
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        if declared.isdigit() and int(declared) > self.limit:
            return await self._refuse(send)
        seen, refused = 0, False

        async def counted():
            nonlocal seen, refused
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit and not refused:
                refused = True  # answer now; the app sees the client go away and its reply is dropped
                await self._refuse(send)
            return {"type": "http.disconnect"} if refused else message

        async def guarded(message):
            if not refused:
                await send(message)

        await self.app(scope, counted, guarded)

    async def _refuse(self, send):
        body = json.dumps(
            {"error": f"the request body is over {self.limit} bytes; upload data through /api/uploads"}
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})


def build_state(settings: ServerSettings) -> ServerState:
    storage = Storage(settings.root)
    engine = open_engine(settings.database_url or default_database_url(settings.root))
    accounts = Accounts(engine)
    if storage.is_local:
        store = None
        scratch = lambda group: storage.local_path(storage.group_dir(group)) / ".uploads"  # noqa: E731
    else:  # object storage: uploads arrive on this machine, then are copied into the group's inputs
        store = StoredInputs(storage)
        scratch = lambda group: private_dir(storage.state_dir() / "uploads") / group  # noqa: E731
    uploads = Uploads(
        engine,
        resolve_input=lambda group, path: storage.local_path(storage.resolve(group, "inputs", path)),
        scratch_dir=scratch,
        store=store,
        max_bytes=settings.max_upload_bytes,
        reserve=Reserve.parse(settings.min_free),
        quota_of=accounts.quota,
    )
    return ServerState(
        settings=settings,
        storage=storage,
        registry=BlueprintRegistry.discover(),
        accounts=accounts,
        uploads=uploads,
        auth=Authenticator(accounts, limiter=FailureLimiter(settings.auth_failures)),
    )


def create_app(settings: ServerSettings) -> FastAPI:
    """The ncaas server for ``settings``; the job manager runs inside it when asked."""
    from . import api_chains, api_cost, api_jobs, api_review, api_storage

    state = build_state(settings)
    jobs = api_jobs.JobService(state)
    state.extras["jobs"] = jobs

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        dropped = state.uploads.purge_stale(settings.stale_upload_days * 86400)
        if dropped:
            log.info("dropped %d unfinished uploads older than %g days", dropped, settings.stale_upload_days)
        jobs.start(run_manager=settings.run_manager)
        try:
            yield
        finally:
            jobs.stop()

    app = FastAPI(
        title="ncaas",
        version=__version__,
        lifespan=lifespan,
        description="Neuroscience analysis as a service. Every /api call needs "
        "`Authorization: Bearer <token>`; tokens come from `ncaas admin issue-token`.",
    )
    app.state.ncaas = state

    @app.exception_handler(NcaasError)
    async def _ncaas_error(_request: Request, exc: NcaasError) -> JSONResponse:
        return _error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _bad_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": _validation_message(exc)}, status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        # answered by the outermost middleware, outside SecurityHeaders: it carries them itself
        return JSONResponse(
            {"error": "internal server error; the administrator can find the details in the server log"},
            status_code=500,
            headers=SECURITY_HEADERS,
        )

    app.add_middleware(JsonBodyLimit, limit=JSON_BODY_LIMIT)
    app.add_middleware(SecurityHeaders)  # added last: outermost, so it also covers JsonBodyLimit's answers
    app.include_router(api_storage.router)
    app.include_router(api_jobs.router)
    app.include_router(api_jobs.rerun_router)
    app.include_router(api_chains.router)
    app.include_router(api_cost.router)
    app.include_router(api_review.router)

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/review", include_in_schema=False)
    def review_page() -> FileResponse:
        return FileResponse(STATIC / "review.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
