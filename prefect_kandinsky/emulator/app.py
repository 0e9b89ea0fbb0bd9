"""The emulator's HTTP layer: two ASGI apps mapping routes onto an :class:`EmulatorState`.

Like moto's ``responses.py``, this module only parses requests and shapes answers; every
decision lives in ``state.py``.

The gateway app (``create_gateway_app``) speaks the documented contract::

    POST /{model_id}/v1/{name}-request       202 {request_id, status, polling_url}
    GET  /v2/requests/status/{request_id}    200 the status JSON (also the webhook body)

and the admin routes under ``/_emulator/`` (see ``ADMIN_ROUTES``), which take the same key
in the ``Ocp-Apim-Subscription-Key`` header (all but ``/_emulator/health``) and refuse
requests from other sites' pages (:func:`check_admin_request`).

The CDN app (``create_cdn_app``) is a separate origin, like the gateway's R2 bucket, and
never looks at the subscription key::

    GET|HEAD /v1/{request_id}/output.mp4     the MP4, with Range support
    GET|HEAD /samples/sample.png             the bundled sample image
    GET|HEAD /uploads/{name}                 images posted to /_emulator/uploads

Both apps log every request into the state, and the gateway counts the submits in flight
(``GET /_emulator/stats``). An endpoint raises :class:`DropConnection` to close the connection
without (finishing) a response; the uvicorn runner closes the socket, the in-process transport
raises ``httpx.RemoteProtocolError``, as a client would see either way. A ``stall`` fault holds
the answer first (polling the state every ``STALL_POLL_SECONDS`` for a release), then drops it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import re
import time
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any, Literal, cast

import anyio
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, Router
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from prefect_kandinsky.gateway.models import JobStatus, status_path, submit_path

from .state import (
    MEDIA_TYPE,
    ORIGINS,
    REQUEST_KINDS,
    BadRequest,
    EmulatorState,
    Fault,
    GatewayError,
    NotFound,
    Origin,
    RequestKind,
    Unauthorized,
)

API_KEY_HEADER = "Ocp-Apim-Subscription-Key"
WEBHOOK_URL_HEADER = "X-Webhook-URL"
WEBHOOK_MODE_HEADER = "X-Webhook-Mode"

ADMIN_ROUTES: tuple[str, ...] = (
    "GET    /_emulator/health",
    "GET    /_emulator/requests?kind=&origin=&request_id=",
    "POST   /_emulator/reset",
    "GET    /_emulator/config",
    "PUT    /_emulator/config",
    "GET    /_emulator/faults",
    "POST   /_emulator/faults",
    "DELETE /_emulator/faults",
    "GET    /_emulator/outcomes",
    "POST   /_emulator/outcomes",
    "DELETE /_emulator/outcomes",
    "GET    /_emulator/jobs",
    "GET    /_emulator/jobs/{request_id}",
    "POST   /_emulator/jobs/{request_id}/advance",
    "GET    /_emulator/wallet",
    "PUT    /_emulator/wallet",
    "GET    /_emulator/webhooks",
    "POST   /_emulator/uploads",
    "GET    /_emulator/stats",
)
"""The out-of-process control routes of the gateway app: each but health needs the key."""

_SUBMIT_RE = re.compile(r"^/[^/]+/v1/[^/]+$")
_STATUS_RE = re.compile(r"^/v2/requests/status/(?P<id>[^/]+)$")
_MEDIA_RE = re.compile(r"^/v1/(?P<id>[^/]+)/output\.mp4$")
_RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")

STALL_POLL_SECONDS = 0.01
"""How often a held (stalled) answer checks whether the state released it."""

_FAULT_KEY = "emulator.fault"
_REQUEST_ID_KEY = "emulator.request_id"
_LOG_KEY = "emulator.log"
_STALL_EPOCH_KEY = "emulator.stall_epoch"

Endpoint = Callable[[Request], Awaitable[Response]]


class DropConnection(Exception):
    """Raised by an endpoint: close the connection, sending nothing more."""


# --------------------------------------------------------------------------------------------
# App factories
# --------------------------------------------------------------------------------------------


def create_gateway_app(state: EmulatorState) -> ASGIApp:
    """The gateway's ASGI app over ``state``: submit, status and the ``/_emulator`` routes."""
    gateway = _Gateway(state)
    admin = _Admin(state)
    router = Router(
        routes=[
            Route("/v2/requests/status/{request_id}", _guarded(gateway.status), methods=["GET"]),
            Route("/_emulator/health", _admin(admin.health, None), methods=["GET"]),
            Route("/_emulator/requests", _admin(admin.requests, state), methods=["GET"]),
            Route("/_emulator/reset", _admin(admin.reset, state), methods=["POST"]),
            Route("/_emulator/config", _admin(admin.config, state), methods=["GET", "PUT"]),
            Route(
                "/_emulator/faults", _admin(admin.faults, state), methods=["GET", "POST", "DELETE"]
            ),
            Route(
                "/_emulator/outcomes",
                _admin(admin.outcomes, state),
                methods=["GET", "POST", "DELETE"],
            ),
            Route("/_emulator/jobs", _admin(admin.jobs, state), methods=["GET"]),
            Route("/_emulator/jobs/{request_id}", _admin(admin.job, state), methods=["GET"]),
            Route(
                "/_emulator/jobs/{request_id}/advance",
                _admin(admin.advance, state),
                methods=["POST"],
            ),
            Route("/_emulator/wallet", _admin(admin.wallet, state), methods=["GET", "PUT"]),
            Route("/_emulator/webhooks", _admin(admin.webhooks, state), methods=["GET"]),
            Route("/_emulator/uploads", _admin(admin.upload, state), methods=["POST"]),
            Route("/_emulator/stats", _admin(admin.stats, state), methods=["GET"]),
            Route("/{model_id}/v1/{endpoint}", _guarded(gateway.submit), methods=["POST"]),
        ],
        default=_not_found,
        redirect_slashes=False,
    )
    return _Recorded(router, state, "gateway", _classify_gateway)


def create_cdn_app(state: EmulatorState) -> ASGIApp:
    """The CDN's ASGI app over ``state``: media, the sample image and uploads."""
    cdn = _CDN(state)
    router = Router(
        routes=[
            Route("/v1/{request_id}/output.mp4", _guarded(cdn.media), methods=["GET", "HEAD"]),
            Route("/samples/{name}", _guarded(cdn.asset), methods=["GET", "HEAD"]),
            Route("/uploads/{name}", _guarded(cdn.asset), methods=["GET", "HEAD"]),
        ],
        default=_not_found,
        redirect_slashes=False,
    )
    return _Recorded(router, state, "cdn", _classify_cdn)


def _classify_gateway(method: str, path: str) -> tuple[RequestKind, str | None]:
    if path.startswith("/_emulator/"):
        return "admin", None
    match = _STATUS_RE.match(path)
    if match:
        return "status", match.group("id")
    if method == "POST" and _SUBMIT_RE.match(path):
        return "submit", None
    return "other", None


def _classify_cdn(method: str, path: str) -> tuple[RequestKind, str | None]:
    match = _MEDIA_RE.match(path)
    if match:
        return "media", match.group("id")
    if path.startswith(("/samples/", "/uploads/")):
        return "asset", None
    return "other", None


# --------------------------------------------------------------------------------------------
# Request logging and connection drops
# --------------------------------------------------------------------------------------------


class _Recorded:
    """Logs each request into the state, counts submits in flight, and turns
    :class:`DropConnection` into a closed socket."""

    def __init__(
        self,
        app: ASGIApp,
        state: EmulatorState,
        origin: Origin,
        classify: Callable[[str, str], tuple[RequestKind, str | None]],
    ) -> None:
        self.app = app
        self.state = state
        self.origin: Origin = origin
        self.classify = classify

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        method: str = scope["method"]
        path: str = scope["path"]
        kind, request_id = self.classify(method, path)
        scope[_REQUEST_ID_KEY] = request_id
        scope[_STALL_EPOCH_KEY] = self.state.stall_epoch
        logged = False

        def log(status_code: int | None) -> None:
            # Logged as the answer starts (a stall logs before its hold), so a client holding a
            # response, or waiting for one, finds it in the log.
            nonlocal logged
            if logged:
                return
            logged = True
            headers = scope.get("headers", [])
            ranges = [
                value.decode("latin-1") for name, value in headers if name.lower() == b"range"
            ]
            self.state.record_request(
                origin=self.origin,
                kind=kind,
                method=method,
                path=path,
                status_code=status_code,
                header_names=[name.decode("latin-1") for name, _ in headers],
                request_id=scope.get(_REQUEST_ID_KEY),
                fault=scope.get(_FAULT_KEY),
                range_header=ranges[0] if ranges else None,
            )

        submit_token = self.state.begin_submit() if kind == "submit" else None

        def end_submit() -> None:
            # Before the last byte or the close goes out: a client that has its whole answer
            # (or its broken connection) finds the submit no longer in flight.
            nonlocal submit_token
            if submit_token is not None:
                self.state.end_submit(submit_token)
                submit_token = None

        async def capture(message: Message) -> None:
            if message["type"] == "http.response.start":
                log(int(message["status"]))
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                end_submit()
            await send(message)

        scope[_LOG_KEY] = log
        scope.setdefault("app", self)  # makes Starlette raise HTTPException(405), answered below
        try:
            await self.app(scope, receive, capture)
        except HTTPException as exc:
            response = JSONResponse(
                {
                    "error": HTTPStatus(exc.status_code).phrase,
                    "message": f"{method} is not allowed on {path}",
                },
                status_code=exc.status_code,
                headers=dict(exc.headers or {}),
            )
            await response(scope, receive, capture)
        except DropConnection:
            log(None)
            end_submit()
            close = _connection_closer(send)
            if close is None:
                raise
            await close(receive)
        finally:
            log(None)
            end_submit()


def _connection_closer(send: Send) -> Callable[[Receive], Awaitable[None]] | None:
    """How to drop the connection under uvicorn: close its transport, then wait for the
    disconnect so uvicorn neither answers 500 nor logs an incomplete response.

    ASGI has no message for "close without answering"; uvicorn's ``send`` is a bound method of
    its request cycle, which holds the connection's transport.
    """
    transport = getattr(getattr(send, "__self__", None), "transport", None)
    if not isinstance(transport, asyncio.BaseTransport):
        return None

    async def close(receive: Receive) -> None:
        transport.close()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(_until_disconnect(receive), timeout=2.0)

    return close


async def _until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _not_found(scope: Scope, receive: Receive, send: Send) -> None:
    response = JSONResponse(
        {"error": "Not Found", "message": f"Resource not found: {scope.get('path', '')}"},
        status_code=404,
    )
    await response(scope, receive, send)


# --------------------------------------------------------------------------------------------
# Helpers shared by the endpoints
# --------------------------------------------------------------------------------------------


def _error(exc: GatewayError) -> JSONResponse:
    return JSONResponse(exc.to_json(), status_code=exc.status_code)


def _guarded(endpoint: Endpoint) -> Endpoint:
    async def run(request: Request) -> Response:
        try:
            return await endpoint(request)
        except GatewayError as exc:
            return _error(exc)

    return run


async def _fault_response(request: Request, fault: Fault, state: EmulatorState) -> Response:
    """Answer as ``fault`` says (or drop the connection, at once or after a stall)."""
    request.scope[_FAULT_KEY] = fault.label
    if fault.action in ("drop", "stall"):
        # Read the request to its end first: closing a socket with request bytes unread (or
        # still arriving) resets the connection (httpx.ReadError) instead of closing it.
        await request.body()
        if fault.action == "stall":
            request.scope[_LOG_KEY](None)  # in the log while held, for tests that watch it
            await _hold(request.scope, state, fault.stall_seconds)
        raise DropConnection
    return JSONResponse(
        fault.response_body(), status_code=fault.status_code, headers=fault.response_headers()
    )


async def _hold(scope: Scope, state: EmulatorState, seconds: float) -> None:
    """Wait ``seconds``, or until the state releases its stalls (``reset()``, server stop)
    after the request arrived."""
    epoch = scope.get(_STALL_EPOCH_KEY, state.stall_epoch)
    deadline = time.monotonic() + seconds
    while state.stall_epoch == epoch:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        await anyio.sleep(min(remaining, STALL_POLL_SECONDS))


async def _json_object(request: Request, *, required: bool = False) -> dict[str, Any]:
    raw = await request.body()
    if not raw.strip():
        if required:
            raise BadRequest("the request body must be a JSON object")
        return {}
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise BadRequest(f"the request body is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise BadRequest("the request body must be a JSON object")
    return data


# --------------------------------------------------------------------------------------------
# Gateway
# --------------------------------------------------------------------------------------------


class _Gateway:
    def __init__(self, state: EmulatorState) -> None:
        self.state = state

    async def submit(self, request: Request) -> Response:
        self.state.check_key(request.headers.get(API_KEY_HEADER))
        fault = self.state.take_fault("submit")
        if fault is not None and not fault.after_queue:
            return await _fault_response(request, fault, self.state)
        model_id = request.path_params["model_id"]
        if model_id in self.state.config.model_ids and request.url.path != submit_path(model_id):
            raise NotFound(
                f"Resource not found: {request.url.path}; model {model_id} is served at "
                f"{submit_path(model_id)}"
            )
        try:
            body: object = await _json_object(request, required=True)
        except BadRequest:
            body = None  # the state reports it, after checking the model
        job = self.state.submit(
            model_id,
            body,
            webhook_url=request.headers.get(WEBHOOK_URL_HEADER),
            webhook_mode=request.headers.get(WEBHOOK_MODE_HEADER),
        )
        request.scope[_REQUEST_ID_KEY] = job.request_id
        if fault is not None:
            return await _fault_response(request, fault, self.state)
        latency = self.state.config.submit_latency_seconds
        if latency > 0:
            await anyio.sleep(latency)
        base = str(request.base_url).rstrip("/")
        return JSONResponse(
            {
                "request_id": job.request_id,
                "status": job.status.value,
                "polling_url": f"{base}{status_path(job.request_id)}",
            },
            status_code=202,
        )

    async def status(self, request: Request) -> Response:
        self.state.check_key(request.headers.get(API_KEY_HEADER))
        fault = self.state.take_fault("status")
        if fault is not None:
            return await _fault_response(request, fault, self.state)
        return JSONResponse(self.state.status(request.path_params["request_id"]))


# --------------------------------------------------------------------------------------------
# CDN
# --------------------------------------------------------------------------------------------


class _CDN:
    def __init__(self, state: EmulatorState) -> None:
        self.state = state

    async def media(self, request: Request) -> Response:
        request_id = request.path_params["request_id"]
        content: bytes | None = None
        problem: GatewayError | None = None
        try:
            content = self.state.media(request_id)
        except GatewayError as exc:
            problem = exc
        fault = self.state.take_fault(
            "media", allow_truncate=content is not None and request.method == "GET"
        )
        if fault is not None and fault.action not in ("truncate", "stall"):
            return await _fault_response(request, fault, self.state)
        if problem is not None or content is None:
            return _error(problem or NotFound(f"No media for request '{request_id}'"))
        truncate: int | None = None
        hold: Callable[[], Awaitable[None]] | None = None
        if fault is not None:  # truncate or stall: both cut the body, a stall holds it first
            request.scope[_FAULT_KEY] = fault.label
            truncate = fault.truncate_bytes if fault.truncate_bytes is not None else -1
            if fault.action == "stall":
                hold = functools.partial(_hold, request.scope, self.state, fault.stall_seconds)
        return _serve_bytes(request, content, MEDIA_TYPE, truncate=truncate, hold=hold)

    async def asset(self, request: Request) -> Response:
        asset = self.state.asset(request.url.path)
        if asset is None:
            raise NotFound(f"Resource not found: {request.url.path}")
        return _serve_bytes(request, asset.content, asset.content_type)


def _parse_range(header: str | None, size: int) -> tuple[int, int] | Literal["invalid"] | None:
    """``(start, end)`` inclusive for one satisfiable range; None to serve everything."""
    if not header:
        return None
    match = _RANGE_RE.match(header.strip().replace(" ", ""))
    if not match:
        return None  # several ranges or another unit: serve the whole file, as RFC 9110 allows
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:
        length = int(last)
        if length == 0:
            return "invalid"
        return max(0, size - length), size - 1
    start = int(first)
    end = int(last) if last else size - 1
    if start >= size or end < start:
        return "invalid"
    return start, min(end, size - 1)


def _serve_bytes(
    request: Request,
    content: bytes,
    content_type: str,
    *,
    truncate: int | None = None,
    hold: Callable[[], Awaitable[None]] | None = None,
) -> Response:
    """Serve ``content`` with Range support; ``truncate`` sends only that many bytes (-1: half)
    of what the headers declare, then awaits ``hold`` (if any) and drops the connection."""
    size = len(content)
    headers = {
        "Accept-Ranges": "bytes",
        "Content-Type": content_type,
        "ETag": f'"{hashlib.sha256(content).hexdigest()[:32]}"',
        "Cache-Control": "public, max-age=3600",
    }
    wanted = _parse_range(request.headers.get("range"), size)
    if wanted == "invalid":
        headers["Content-Range"] = f"bytes */{size}"
        headers["Content-Length"] = "0"
        return Response(b"", status_code=416, headers=headers)
    if wanted is None:
        status, body = 200, content
    else:
        start, end = wanted
        status, body = 206, content[start : end + 1]
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    headers["Content-Length"] = str(len(body))
    if request.method == "HEAD":
        return Response(b"", status_code=status, headers=headers)
    if truncate is not None:
        keep = len(body) // 2 if truncate < 0 else min(truncate, max(len(body) - 1, 0))
        return _TruncatedResponse(body[:keep], status_code=status, headers=headers, hold=hold)
    return Response(body, status_code=status, headers=headers)


class _TruncatedResponse(Response):
    """Declares the full Content-Length, sends ``part``, awaits ``hold`` and drops the
    connection."""

    def __init__(
        self,
        part: bytes,
        *,
        status_code: int,
        headers: dict[str, str],
        hold: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        super().__init__(b"", status_code=status_code, headers=headers)
        self.part = part
        self.hold = hold

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        await send({"type": "http.response.body", "body": self.part, "more_body": True})
        if self.hold is not None:
            await self.hold()
        raise DropConnection


# --------------------------------------------------------------------------------------------
# Admin routes
# --------------------------------------------------------------------------------------------


class AdminForbidden(GatewayError):
    """403: an admin request sent by a page of another site."""

    status_code = 403
    error = "Forbidden"


class AdminUnsupportedMediaType(GatewayError):
    """415: an admin request body of a type a cross-site form can send without a preflight."""

    status_code = 415
    error = "Unsupported Media Type"


SIMPLE_CONTENT_TYPES = frozenset(
    {"text/plain", "application/x-www-form-urlencoded", "multipart/form-data"}
)
"""Content types a browser sends cross-site without asking first (no CORS preflight)."""


def check_admin_request(request: Request, state: EmulatorState) -> None:
    """Refuse an admin request without the emulator's key, from another site, or with a body
    a cross-site form could send.

    The key goes in the ``Ocp-Apim-Subscription-Key`` header, a header no page can add to a
    cross-site request without a CORS preflight, which the emulator never grants.
    """
    site = request.headers.get("sec-fetch-site", "").lower()
    if site not in ("", "same-origin", "none"):
        raise AdminForbidden(
            f"The emulator's admin routes refuse requests sent by a page of another site "
            f"(Sec-Fetch-Site: {site}); call them from a script or a test"
        )
    key = request.headers.get(API_KEY_HEADER)
    try:
        state.check_key(key)
    except Unauthorized as exc:
        raise Unauthorized(
            "The emulator's admin routes need its key: send the "
            f"{API_KEY_HEADER} header with the key the emulator printed at start "
            "(EmulatorServer.api_key), as for the gateway's routes"
        ) from exc
    declared = request.headers.get("content-type", "")
    media_type = declared.partition(";")[0].strip().lower()
    has_body = request.headers.get("content-length", "0") != "0" or bool(
        request.headers.get("transfer-encoding")
    )
    if (has_body or media_type) and media_type in SIMPLE_CONTENT_TYPES:
        raise AdminUnsupportedMediaType(
            f"The emulator's admin routes refuse a {media_type} body (a cross-site form can "
            "send one): send Content-Type: application/json (or image/* for an upload)"
        )


def _admin(endpoint: Endpoint, state: EmulatorState | None) -> Endpoint:
    """``endpoint`` behind :func:`check_admin_request`; None for an open route (health)."""

    async def run(request: Request) -> Response:
        try:
            if state is not None:
                check_admin_request(request, state)
            return await endpoint(request)
        except GatewayError as exc:
            return _error(exc)
        except (TypeError, ValueError) as exc:
            return _error(BadRequest(str(exc)))

    return run


class _Admin:
    def __init__(self, state: EmulatorState) -> None:
        self.state = state

    async def health(self, request: Request) -> Response:
        cdn = self.state.cdn_url
        return JSONResponse(
            {
                "ok": True,
                "gateway_url": str(request.base_url).rstrip("/"),
                "cdn_url": cdn,
                "sample_image_url": f"{cdn}/samples/sample.png",
                "routes": list(ADMIN_ROUTES),
            }
        )

    async def requests(self, request: Request) -> Response:
        params = request.query_params
        kind = params.get("kind") or None
        origin = params.get("origin") or None
        if kind is not None and kind not in REQUEST_KINDS:
            raise BadRequest(f"kind must be one of {', '.join(REQUEST_KINDS)}; got {kind!r}")
        if origin is not None and origin not in ORIGINS:
            raise BadRequest(f"origin must be one of {', '.join(ORIGINS)}; got {origin!r}")
        records = self.state.requests(
            cast("RequestKind | None", kind),
            origin=cast("Origin | None", origin),
            request_id=params.get("request_id") or None,
        )
        counts: dict[str, int] = {}
        for record in self.state.requests():
            counts[record.kind] = counts.get(record.kind, 0) + 1
        return JSONResponse(
            {"requests": [record.to_json() for record in records], "counts": counts}
        )

    async def reset(self, request: Request) -> Response:
        changes = await _json_object(request)
        self.state.reset()
        config = self.state.apply_config_json(changes) if changes else self.state.config
        return JSONResponse({"ok": True, "config": config.to_json()})

    async def config(self, request: Request) -> Response:
        if request.method == "PUT":
            self.state.apply_config_json(await _json_object(request, required=True))
        return JSONResponse(self.state.config.to_json())

    async def faults(self, request: Request) -> Response:
        if request.method == "POST":
            raw = await request.body()
            try:
                data = json.loads(raw or b"null")
            except ValueError as exc:
                raise BadRequest(f"the request body is not valid JSON: {exc}") from exc
            specs = data.get("faults") if isinstance(data, dict) and "faults" in data else data
            specs = specs if isinstance(specs, list) else [specs]
            if not all(isinstance(spec, dict) for spec in specs):
                raise BadRequest('send a fault object, a list of them, or {"faults": [...]}')
            for fault in [Fault.from_json(spec) for spec in specs]:
                self.state.add_fault(fault)
        elif request.method == "DELETE":
            self.state.clear_faults()
        return JSONResponse({"faults": [fault.to_json() for fault in self.state.faults]})

    async def outcomes(self, request: Request) -> Response:
        if request.method == "POST":
            data = await _json_object(request, required=True)
            if "status" not in data:
                raise BadRequest("an outcome needs a status: COMPLETED, FAILED or ERROR")
            times = data.get("times", 1)
            if isinstance(times, bool) or not isinstance(times, int):
                raise BadRequest(f"times must be an integer; got {times!r}")
            self.state.plan_outcome(
                JobStatus(str(data["status"]).upper()), data.get("error"), times=times
            )
        elif request.method == "DELETE":
            self.state.clear_outcomes()
        return JSONResponse(
            {"outcomes": [outcome.to_json() for outcome in self.state.planned_outcomes]}
        )

    async def jobs(self, request: Request) -> Response:
        return JSONResponse({"jobs": [job.to_json() for job in self.state.jobs()]})

    async def job(self, request: Request) -> Response:
        return JSONResponse(self.state.job(request.path_params["request_id"]).to_json())

    async def advance(self, request: Request) -> Response:
        request_id = request.path_params["request_id"]
        data = await _json_object(request)
        to = data.get("to")
        error = data.get("error")
        if to is not None and not isinstance(to, str):
            raise BadRequest(f"to must be a status name or null; got {to!r}")
        if error is not None and not isinstance(error, str):
            raise BadRequest(f"error must be a string or null; got {error!r}")
        self.state.advance(request_id, JobStatus(to.upper()) if to else None, error=error)
        return JSONResponse(self.state.status(request_id))

    async def wallet(self, request: Request) -> Response:
        if request.method == "PUT":
            data = await _json_object(request, required=True)
            if "balance_usd" in data:
                self.state.set_balance(str(data["balance_usd"]))
            if "deposit_usd" in data:
                self.state.deposit(str(data["deposit_usd"]))
        return JSONResponse(self.state.wallet_json())

    async def webhooks(self, request: Request) -> Response:
        return JSONResponse(
            {"deliveries": [delivery.to_json() for delivery in self.state.webhook_deliveries]}
        )

    async def upload(self, request: Request) -> Response:
        url = self.state.add_upload(await request.body(), request.headers.get("content-type", ""))
        return JSONResponse({"url": url}, status_code=201)

    async def stats(self, request: Request) -> Response:
        return JSONResponse(self.state.stats_json())
