"""Webhook receiver: the gateway's https callbacks, confirmed, as Prefect events.

A long render need not hold a worker that polls. Submit with a callback URL, and let the
gateway call back when the job is done:

```
flow run ── submit(request, webhook_url=callback_url(base, secret, flow_run_id=<id>))
   │                     │
   │ suspends, or        ▼
   │ waits on events   gateway ── renders for minutes, then (at least once, unsigned) ──┐
   │                                                                                   ▼
   │          POST https://<base>/kandinsky/callbacks/<flow_run_id>/<nonce>/<token>  {status}
   │                     │
   │                     ▼
   │          receiver: token (HMAC, constant time) → body → URL binding → dedupe → 202 at once
   │                     │  after the answer:
   │                     ▼
   │          terminal status? confirm: GET /v2/requests/status/<id> (the truth)
   │                     │
   │                     ▼
   │          emit_event("kandinsky.video.completed", resource kandinsky.request.<id>,
   │                     │ related prefect.flow-run.<flow_run_id>, id uuid5(<id>:COMPLETED))
   │                     ▼
   └─ resumed ── Prefect API: an automation triggered by the event runs "resume-flow-run"
                 (or a process waiting on kandinsky.video.* events sees it)
```

What the receiver answers to ``POST [/<prefix>]/kandinsky/callbacks/{flow_run}/{nonce}/{token}``:

====  =======================================================  =============================
code  case                                                     effect
====  =======================================================  =============================
401   token missing, wrong, or of another job; no secret set   nothing emitted; one log line
                                                               (never the token)
400   body not a JSON object with ``request_id`` and a valid   nothing emitted; the message
      ``status``                                               says what is wrong
413   body larger than ``MAX_BODY_BYTES``                      nothing emitted
409   the URL is bound to another ``request_id``               nothing emitted
200   (URL, request_id, status) seen before, or older than a   nothing changes
      status already emitted for that URL
202   anything else                                            answered at once, work after
====  =======================================================  =============================

After the answer, each accepted callback becomes an asyncio task. Callbacks of one request run
one after the other in arrival order (a FIFO lock per request id); callbacks of different
requests run concurrently. A terminal callback (COMPLETED, FAILED, ERROR) is a hint: the
gateway does not sign its callbacks, so the receiver reads the status endpoint with the
credentials and emits what the gateway says (a status read that fails is retried with backoff;
if it gives up, nothing is emitted, the delivery is forgotten so a redelivery is processed
again, and an error is logged). When the status endpoint still says the job runs (it may lag
behind the callback), that status is emitted once and the read is repeated with backoff for
up to ``confirm_window`` seconds (2 minutes), until the gateway agrees; then the terminal
event is emitted once. Progress callbacks (``X-Webhook-Mode: sync``) are emitted as they come,
their payload saying ``"confirmed": false``. Every status is emitted once per callback URL and
request, never one that goes back (a late PROCESSING after COMPLETED is dropped). A URL
serves one request: deliveries, progress and event ids are kept per URL (flow run, nonce), so
a body of another job posted on an unused URL names that URL's flow run only, and never
turns the job's own callback into a duplicate. On shutdown the receiver finishes the work it
accepted (for up to ``drain_timeout`` seconds) and logs, at error level and by request id, any
callback it had to abandon.

Every event names the URL's nonce as related resource ``kandinsky.callback.<nonce>`` (the
submitting side finds a job whose submit answer was lost by it: ``adoption``), and carries a
deterministic id, ``uuid5(EVENT_ID_NAMESPACE, f"{request_id}:{STATUS}:{flow run}:{nonce}")``, so
deliveries that reach Prefect twice (e.g. after a restart of the receiver, whose dedupe memory
is in memory) collapse there: the event store keeps one event per id and triggers skip an id
seen recently.

The token, the secret and the API key are never logged nor put in an event, and the receiver
is served without uvicorn's access log (it would log paths, which hold tokens).

Example:
    Serve the receiver (behind https) and submit with callbacks:

    ```python
    # receiver.py, on a host the gateway can reach over https
    from prefect_kandinsky import KandinskyCredentials
    from prefect_kandinsky.events.receiver import serve

    credentials = KandinskyCredentials.load("BLOCK_NAME")  # with a webhook_secret
    serve(credentials, host="0.0.0.0", port=8443, certfile="fullchain.pem", keyfile="key.pem")
    ```

    ```python
    # in a flow
    from prefect.runtime import flow_run
    from prefect_kandinsky.events.receiver import callback_url

    url = callback_url(
        "https://hooks.example.com",
        credentials.webhook_secret,
        flow_run_id=flow_run.id,
    )
    async with credentials.get_client() as client:
        job = await client.submit(request, webhook_url=url)
    # An automation on "kandinsky.video.completed" with the action "resume-flow-run"
    # resumes the flow run named by the event's related prefect.flow-run.<id> resource.
    ```
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import json
import logging
import re
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Generic, TypeVar
from uuid import UUID

import httpx
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from prefect_kandinsky.credentials import KandinskyCredentials
from prefect_kandinsky.events.tokens import (
    CALLBACK_PATH,
    CALLBACK_ROLE,
    NO_FLOW_RUN,
    callback_resource_id,
    event_id,
    event_name,
    flow_run_segment,
    resource_id,
    verify_token,
)
from prefect_kandinsky.gateway.client import KandinskyClient
from prefect_kandinsky.gateway.exceptions import (
    KandinskyAuthenticationError,
    KandinskyBadRequestError,
    KandinskyError,
    KandinskyNotFoundError,
    KandinskyPermissionDeniedError,
)
from prefect_kandinsky.gateway.models import JobStatus, StatusResponse

if TYPE_CHECKING:
    # Imported only where a server starts: every flow imports this module (through waits).
    pass

logger = logging.getLogger("prefect_kandinsky.events.receiver")

MAX_BODY_BYTES = 64 * 1024
"""Largest callback body accepted; a status JSON is well under 2 KiB."""
DEFAULT_DEDUPE_SIZE = 100_000
"""Deliveries, URL bindings and per-request progress remembered (each an LRU of this size)."""
DEFAULT_CONFIRM_ATTEMPTS = 4
"""Status reads tried to confirm a terminal callback (each retried by the client as well)."""
DEFAULT_CONFIRM_BACKOFF_SECONDS = 2.0
"""Wait before the second confirmation attempt; it doubles for each further attempt."""
DEFAULT_CONFIRM_WINDOW_SECONDS = 120.0
"""How long a terminal callback the gateway's status does not agree with yet is read again
(its status endpoint may lag behind its callbacks), before it is let go."""
MAX_CONFIRM_BACKOFF_SECONDS = 15.0
"""Longest wait between two status reads that re-confirm a terminal callback."""
DEFAULT_DRAIN_TIMEOUT_SECONDS = 30.0
"""On shutdown, how long accepted callbacks may take to finish before they are abandoned."""
_CLOSE = {"Connection": "close"}
# Callback answers close their connection: callbacks are rare, and an idle TLS connection
# whose client does not answer the close would hold a shutdown for GRACEFUL_SHUTDOWN_SECONDS.

_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,199}$")
_RANK = {
    JobStatus.QUEUED: 0,
    JobStatus.PROCESSING: 1,
    JobStatus.COMPLETED: 2,
    JobStatus.FAILED: 2,
    JobStatus.ERROR: 2,
}
# Errors after which another status read cannot help: the request or the key is wrong.
_FINAL_READ_ERRORS = (
    KandinskyBadRequestError,
    KandinskyAuthenticationError,
    KandinskyPermissionDeniedError,
    KandinskyNotFoundError,
)

Emit = Callable[..., Any]
"""Called like ``prefect.events.emit_event`` with keyword arguments; may return an awaitable."""


def _emit_outside_runs(emit: Emit, **event: Any) -> Any:
    """Call ``emit`` in a context that holds no flow or task run.

    Prefect's events worker adds the run of the context it was started in to every event
    sent from a context without one. A process that ran a flow before serving callbacks
    would name that unrelated run on each event; setting both run contexts to None where
    the event is sent overrides it, so an event names only the flow run of its callback.
    """
    from prefect.context import FlowRunContext, TaskRunContext

    def call() -> Any:
        for run_context in (FlowRunContext, TaskRunContext):
            var: contextvars.ContextVar[Any] = run_context.__var__
            var.set(None)
        return emit(**event)

    return contextvars.Context().run(call)


K = TypeVar("K")
V = TypeVar("V")
_Delivery = tuple[str, str, str, JobStatus]
_Job = tuple[str, str, str]


# --------------------------------------------------------------------------------------------
# The receiver
# --------------------------------------------------------------------------------------------


class _LRU(Generic[K, V]):
    """A bounded mapping that forgets the least recently used key first."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._data: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        value = self._data.get(key)
        if value is not None:
            self._data.move_to_end(key)
        return value

    def set(self, key: K, value: V) -> None:
        self._data[key] = value
        self._data.move_to_end(key)
        while len(self._data) > self.size:
            self._data.popitem(last=False)

    def pop(self, key: K) -> None:
        self._data.pop(key, None)

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def __len__(self) -> int:
        return len(self._data)


@dataclass(frozen=True)
class _Callback:
    """An accepted callback, waiting for its work after the answer."""

    flow_run: str
    nonce: str
    body: StatusResponse

    @property
    def request_id(self) -> str:
        return self.body.request_id

    @property
    def status(self) -> JobStatus:
        return self.body.status

    @property
    def delivery(self) -> _Delivery:
        """What deduplicates this callback: its URL (flow run, nonce), request and status."""
        return (self.flow_run, self.nonce, self.request_id, self.status)

    @property
    def job(self) -> _Job:
        """The job as reported on this URL: progress is kept per URL and request."""
        return (self.flow_run, self.nonce, self.request_id)


class _Refused(Exception):
    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message

    def response(self) -> JSONResponse:
        phrases = {
            400: "Bad Request",
            401: "Unauthorized",
            409: "Conflict",
            413: "Payload Too Large",
        }
        return JSONResponse(
            {"error": phrases.get(self.status_code, "Error"), "message": self.message},
            status_code=self.status_code,
            headers=_CLOSE,
        )


def _loggable(segment: str) -> str:
    """A flow run segment of a URL, safe to log (it comes from whoever called)."""
    if segment == NO_FLOW_RUN:
        return "none"
    try:
        return str(UUID(segment))
    except ValueError:
        return repr(segment[:40])


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


def event_payload(status: StatusResponse, *, confirmed: bool = True) -> dict[str, Any]:
    """The payload of a ``kandinsky.video.*`` event (timestamps as ISO strings).

    ``confirmed`` says whether the status was read from the gateway's status endpoint (always
    so for a terminal status) or only reported by a callback, which the gateway does not sign.
    """
    return {
        "request_id": status.request_id,
        "status": status.status.value,
        "confirmed": confirmed,
        "media_urls": status.media_urls,
        "media_type": status.output.media_type if status.output else None,
        "error": status.error,
        "created_at": _iso(status.created_at),
        "updated_at": _iso(status.updated_at),
        "completed_at": _iso(status.completed_at),
        "model_id": status.model_id,
    }


def _occurred(status: StatusResponse) -> datetime:
    """When the status was entered by the gateway's clock, never later than now."""
    now = datetime.now(timezone.utc)
    moment = status.updated_at
    if status.status.is_terminal:
        moment = status.completed_at or status.updated_at
    return min(moment, now) if moment is not None else now


def _parse_body(raw: bytes) -> StatusResponse:
    try:
        data = json.loads(raw)
    except ValueError:
        raise _Refused(400, "the callback body is not JSON: expected the status object") from None
    if not isinstance(data, dict):
        raise _Refused(
            400,
            f"the callback body must be a JSON object like the status endpoint's answer; got "
            f"{type(data).__name__}",
        )
    request_id = data.get("request_id")
    if not isinstance(request_id, str) or not request_id.strip():
        raise _Refused(400, "the callback body has no request_id")
    if not _REQUEST_ID_RE.match(request_id):
        raise _Refused(400, f"the callback body's request_id is malformed: {request_id[:60]!r}")
    raw_status = data.get("status")
    allowed = ", ".join(status.value for status in JobStatus)
    if not isinstance(raw_status, str):
        raise _Refused(400, f"the callback body has no status (one of {allowed})")
    try:
        JobStatus(raw_status)
    except ValueError:
        raise _Refused(
            400, f"the callback body's status must be one of {allowed}; got {raw_status[:40]!r}"
        ) from None
    try:
        return StatusResponse.model_validate(data)
    except ValidationError as exc:
        # Tolerate drift in the optional fields: the request id and status are what matter,
        # and a terminal status is read again from the gateway anyway.
        fields = sorted({str(error["loc"][0]) for error in exc.errors() if error["loc"]})
        logger.warning(
            "Callback for %s: ignoring unreadable field(s) %s",
            request_id,
            ", ".join(fields) or "?",
        )
        return StatusResponse(
            request_id=request_id, status=JobStatus(raw_status), model_id=None, error=None
        )


async def _read_body(request: Request) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise _Refused(413, f"the callback body is larger than {MAX_BODY_BYTES} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise _Refused(413, f"the callback body is larger than {MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


class WebhookReceiver:
    """The state and work behind :func:`create_webhook_app`; reach it as ``app.state.receiver``.

    Everything runs on the serving event loop; :attr:`in_flight` may be read from any thread.
    """

    def __init__(
        self,
        credentials: KandinskyCredentials,
        *,
        emit: Emit | None = None,
        confirm: bool = True,
        dedupe_size: int = DEFAULT_DEDUPE_SIZE,
        client_transport: httpx.AsyncBaseTransport | None = None,
        confirm_attempts: int = DEFAULT_CONFIRM_ATTEMPTS,
        confirm_backoff: float = DEFAULT_CONFIRM_BACKOFF_SECONDS,
        drain_timeout: float = DEFAULT_DRAIN_TIMEOUT_SECONDS,
        confirm_window: float = DEFAULT_CONFIRM_WINDOW_SECONDS,
    ) -> None:
        if dedupe_size < 1:
            raise ValueError(f"dedupe_size must be 1 or more; got {dedupe_size}")
        if confirm_attempts < 1:
            raise ValueError(f"confirm_attempts must be 1 or more; got {confirm_attempts}")
        if confirm_backoff < 0 or drain_timeout < 0 or confirm_window < 0:
            raise ValueError(
                "confirm_backoff, confirm_window and drain_timeout must be zero or more"
            )
        if emit is None:
            from prefect.events import emit_event

            emit = emit_event
        self.credentials = credentials
        self.confirm = confirm
        self.confirm_attempts = confirm_attempts
        self.confirm_backoff = confirm_backoff
        self.drain_timeout = drain_timeout
        self.confirm_window = confirm_window
        self._emit = emit
        self._client_transport = client_transport
        self._client: KandinskyClient | None = None
        self._seen: _LRU[_Delivery, bool] = _LRU(dedupe_size)
        self._bindings: _LRU[tuple[str, str], str] = _LRU(dedupe_size)
        self._emitted: _LRU[_Job, int] = _LRU(dedupe_size)
        self._locks: dict[str, asyncio.Lock] = {}
        self._lock_users: dict[str, int] = {}
        self._tasks: dict[asyncio.Task[None], _Callback] = {}
        self._in_flight = 0
        if credentials.webhook_secret is None:
            logger.warning(
                "The credentials have no webhook_secret: every callback will be refused with "
                "401. Set webhook_secret on the KandinskyCredentials block."
            )

    @property
    def in_flight(self) -> int:
        """Callbacks answered and not yet fully processed."""
        return self._in_flight

    # -- HTTP --------------------------------------------------------------------------------

    async def health(self, request: Request) -> Response:
        """``GET /healthz``."""
        return JSONResponse(
            {
                "status": "ok",
                "accepting": self.credentials.webhook_secret is not None,
                "in_flight": self._in_flight,
            }
        )

    async def callback(self, request: Request) -> Response:
        """``POST {prefix}/kandinsky/callbacks/{flow_run_id}/{nonce}/{token}``."""
        try:
            return self._accept(
                request.path_params["rest"], await self._authenticated_body(request)
            )
        except _Refused as refused:
            return refused.response()

    async def _authenticated_body(self, request: Request) -> bytes:
        parts = request.path_params["rest"].split("/")
        flow_run = parts[0]
        if len(parts) != 3 or not all(parts):
            logger.warning(
                "Refused a callback without a token (or with a malformed URL) for flow run %s",
                _loggable(flow_run),
            )
            raise _Refused(
                401,
                "the callback URL has no token: it must end in "
                f"{CALLBACK_PATH}/<flow_run_id>/<nonce>/<token>",
            )
        if self.credentials.webhook_secret is None:
            logger.warning(
                "Refused a callback for flow run %s: the receiver has no webhook_secret",
                _loggable(flow_run),
            )
            raise _Refused(401, "the receiver accepts no callbacks: it has no webhook secret")
        secrets = self.credentials.webhook_secrets  # the current one, then previous ones
        if not verify_token(secrets, parts[2], flow_run_id=flow_run, nonce=parts[1]):
            logger.warning(
                "Refused a callback with an invalid token for flow run %s", _loggable(flow_run)
            )
            raise _Refused(401, "the callback token is invalid")
        return await _read_body(request)

    def _accept(self, rest: str, raw: bytes) -> Response:
        segment, nonce, _ = rest.split("/")
        flow_run = flow_run_segment(segment)  # canonical: the token verified
        body = _parse_body(raw)
        request_id, status = body.request_id, body.status
        binding = (flow_run, nonce)
        bound = self._bindings.get(binding)
        if bound is not None and bound != request_id:
            logger.warning(
                "Refused a callback for %s on the URL of %s (flow run %s): one URL serves one "
                "request",
                request_id,
                bound,
                _loggable(flow_run),
            )
            raise _Refused(409, "this callback URL belongs to another request")
        self._bindings.set(binding, request_id)
        callback = _Callback(flow_run=flow_run, nonce=nonce, body=body)
        if callback.delivery in self._seen:
            logger.debug("Duplicate %s callback for %s", status.value, request_id)
            return JSONResponse({"status": "duplicate", "request_id": request_id}, headers=_CLOSE)
        emitted = self._emitted.get(callback.job)
        if emitted is not None and _RANK[status] <= emitted:
            logger.info(
                "Ignored a late %s callback for %s: a later status was already emitted",
                status.value,
                request_id,
            )
            return JSONResponse({"status": "stale", "request_id": request_id}, headers=_CLOSE)
        self._seen.set(callback.delivery, True)
        self._schedule(callback)
        return JSONResponse(
            {"status": "accepted", "request_id": request_id}, status_code=202, headers=_CLOSE
        )

    # -- the work after the answer -------------------------------------------------------

    def _schedule(self, callback: _Callback) -> None:
        self._in_flight += 1
        task = asyncio.get_running_loop().create_task(
            self._run(callback), name=f"kandinsky-callback-{callback.request_id}"
        )
        self._tasks[task] = callback
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.pop(task, None)

    async def _run(self, callback: _Callback) -> None:
        request_id = callback.request_id
        lock = self._locks.setdefault(request_id, asyncio.Lock())
        self._lock_users[request_id] = self._lock_users.get(request_id, 0) + 1
        try:
            async with lock:
                await self._process(callback)
        except asyncio.CancelledError:
            self._forget(callback)
            raise
        except Exception:
            logger.exception(
                "The %s callback for %s could not be processed; nothing was emitted",
                callback.status.value,
                request_id,
            )
            self._forget(callback)
        finally:
            users = self._lock_users[request_id] - 1
            if users:
                self._lock_users[request_id] = users
            else:
                del self._lock_users[request_id]
                del self._locks[request_id]
            self._in_flight -= 1

    def _forget(self, callback: _Callback) -> None:
        """Unmark a delivery, so that the gateway's next delivery of it is processed again."""
        self._seen.pop(callback.delivery)

    async def _process(self, callback: _Callback) -> None:
        if not (callback.status.is_terminal and self.confirm):
            await self._emit_status(callback.body, callback, confirmed=False)
            return
        confirmed = await self._agreed(callback)
        if confirmed is None:
            self._forget(callback)
            return
        if confirmed.status is not callback.status:
            logger.warning(
                "Callback for %s said %s but the gateway says %s: emitting %s",
                callback.request_id,
                callback.status.value,
                confirmed.status.value,
                confirmed.status.value,
            )
        await self._emit_status(confirmed, callback, confirmed=True)

    async def _agreed(self, callback: _Callback) -> StatusResponse | None:
        """The gateway's terminal status of a terminal callback's request, read again with
        backoff while the status endpoint still says the job runs (it may lag behind the
        callback), for up to ``confirm_window`` seconds; None if it never agreed.

        The running status read meanwhile is emitted once, as confirmed progress.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.confirm_window
        delay = self.confirm_backoff
        reported = False
        while True:
            status = await self._confirmed(callback)
            if status is None or status.status.is_terminal:
                return status
            if not reported:
                reported = True
                logger.warning(
                    "Callback for %s said %s but the gateway still says %s: reading its "
                    "status again for up to %.0fs before emitting anything terminal",
                    callback.request_id,
                    callback.status.value,
                    status.status.value,
                    self.confirm_window,
                )
                await self._emit_status(status, callback, confirmed=True)
            if loop.time() + delay > deadline:
                logger.error(
                    "The gateway did not confirm the %s callback for %s within %.0fs (it still "
                    "says %s); nothing terminal was emitted: a redelivery will be processed, or "
                    "the waiters' own status reads will see the end",
                    callback.status.value,
                    callback.request_id,
                    self.confirm_window,
                    status.status.value,
                )
                return None
            await asyncio.sleep(delay)
            delay = min(max(delay * 2, 0.01), MAX_CONFIRM_BACKOFF_SECONDS)

    async def _confirmed(self, callback: _Callback) -> StatusResponse | None:
        """The gateway's status of the callback's request, or None when it cannot be read."""
        request_id = callback.request_id
        if self._client is None:
            self._client = self.credentials.get_client(transport=self._client_transport)
        failure: KandinskyError | None = None
        for attempt in range(self.confirm_attempts):
            if attempt:
                await asyncio.sleep(self.confirm_backoff * 2 ** (attempt - 1))
            try:
                status = await self._client.get_status(request_id)
            except _FINAL_READ_ERRORS as exc:
                logger.error(
                    "Could not confirm the %s callback for %s: %s; nothing was emitted",
                    callback.status.value,
                    request_id,
                    exc,
                )
                if isinstance(exc, KandinskyNotFoundError):
                    self._release(callback)
                return None
            except KandinskyError as exc:
                failure = exc
                logger.warning(
                    "Status read to confirm the %s callback for %s failed (attempt %d of %d): %s",
                    callback.status.value,
                    request_id,
                    attempt + 1,
                    self.confirm_attempts,
                    exc,
                )
                continue
            if status.request_id != request_id:
                logger.error(
                    "The gateway answered the status read of %s with %s; nothing was emitted",
                    request_id,
                    status.request_id,
                )
                return None
            return status
        logger.error(
            "Gave up confirming the %s callback for %s after %d status reads (%s); nothing was "
            "emitted: a redelivery will be processed, or read the status to recover",
            callback.status.value,
            request_id,
            self.confirm_attempts,
            type(failure).__name__ if failure else "unknown error",
        )
        return None

    def _release(self, callback: _Callback) -> None:
        """Free the URL bound by a callback whose request the gateway does not know."""
        binding = (callback.flow_run, callback.nonce)
        if self._bindings.get(binding) == callback.request_id:
            self._bindings.pop(binding)

    async def _emit_status(
        self, status: StatusResponse, callback: _Callback, *, confirmed: bool
    ) -> None:
        request_id = status.request_id
        rank = _RANK[status.status]
        emitted = self._emitted.get(callback.job)
        if emitted is not None and rank <= emitted:
            logger.debug(
                "Not emitting %s for %s: a later status was already emitted",
                status.status.value,
                request_id,
            )
            return
        related: list[dict[str, str]] = []
        if callback.flow_run != NO_FLOW_RUN:
            related.append(
                {
                    "prefect.resource.id": f"prefect.flow-run.{UUID(callback.flow_run)}",
                    "prefect.resource.role": "flow-run",
                }
            )
        related.append(
            {
                "prefect.resource.id": callback_resource_id(callback.nonce),
                "prefect.resource.role": CALLBACK_ROLE,
            }
        )
        name = event_name(status.status)
        try:
            result = _emit_outside_runs(
                self._emit,
                event=name,
                resource={
                    "prefect.resource.id": resource_id(request_id),
                    "prefect.resource.name": request_id,
                },
                related=related,
                payload=event_payload(status, confirmed=confirmed),
                id=event_id(
                    request_id, status.status, flow_run_id=callback.flow_run, nonce=callback.nonce
                ),
                occurred=_occurred(status),
            )
            if inspect.isawaitable(result):
                await result
        except Exception:
            logger.exception("Could not emit %s for %s", name, request_id)
            self._forget(callback)
            return
        self._emitted.set(callback.job, rank)
        logger.info(
            "Emitted %s for %s (flow run %s)", name, request_id, _loggable(callback.flow_run)
        )

    # -- lifecycle ------------------------------------------------------------------------

    async def join(self) -> None:
        """Wait until every callback accepted so far is processed."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def aclose(self, timeout: float | None = None) -> None:
        """Finish the accepted work (up to ``timeout``, default ``drain_timeout``), then close.

        Callbacks still unprocessed then are cancelled and logged at error level, each with
        its request id and status: the gateway will not resend them, so read their status
        (or run the sweep) to recover.
        """
        wait = self.drain_timeout if timeout is None else timeout
        pending = dict(self._tasks)
        if pending:
            _, left = await asyncio.wait(list(pending), timeout=wait)
            for task in left:
                callback = pending[task]
                logger.error(
                    "Abandoned the %s callback for %s at shutdown after %.0fs; nothing was "
                    "emitted for it: read its status to recover",
                    callback.status.value,
                    callback.request_id,
                    wait,
                )
                task.cancel()
            if left:
                await asyncio.gather(*left, return_exceptions=True)
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()


def create_webhook_app(
    credentials: KandinskyCredentials,
    *,
    emit: Emit | None = None,
    confirm: bool = True,
    dedupe_size: int = DEFAULT_DEDUPE_SIZE,
    client_transport: httpx.AsyncBaseTransport | None = None,
    confirm_attempts: int = DEFAULT_CONFIRM_ATTEMPTS,
    confirm_backoff: float = DEFAULT_CONFIRM_BACKOFF_SECONDS,
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT_SECONDS,
    confirm_window: float = DEFAULT_CONFIRM_WINDOW_SECONDS,
) -> Starlette:
    """The receiver as an ASGI app: callbacks in, confirmed Prefect events out.

    Routes: ``POST [/<prefix>]/kandinsky/callbacks/{flow_run_id}/{nonce}/{token}`` (any path
    prefix, so a reverse proxy may keep or strip its own) and ``GET /healthz``. The receiver
    itself is ``app.state.receiver`` (a :class:`WebhookReceiver`).

    Args:
        credentials: Its ``webhook_secret`` checks the tokens; its API key and gateway URL
            confirm terminal callbacks by a status read.
        emit: Called like ``prefect.events.emit_event`` (the default) for each event.
        confirm: Read the status endpoint before emitting a terminal status (keep it on: the
            gateway does not sign callbacks).
        dedupe_size: Deliveries, URL bindings and request progress remembered, each.
        client_transport: An httpx transport for the status reads (tests).
        confirm_attempts: Status reads tried before giving up on a terminal callback.
        confirm_backoff: Seconds before the second status read; doubles after each.
        drain_timeout: Seconds the accepted work may take to finish at shutdown.
        confirm_window: Seconds a terminal callback is re-confirmed while the gateway's status
            still says the job runs.
    """
    receiver = WebhookReceiver(
        credentials,
        emit=emit,
        confirm=confirm,
        dedupe_size=dedupe_size,
        client_transport=client_transport,
        confirm_attempts=confirm_attempts,
        confirm_backoff=confirm_backoff,
        drain_timeout=drain_timeout,
        confirm_window=confirm_window,
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await receiver.aclose()

    app = Starlette(
        routes=[
            Route("/healthz", receiver.health, methods=["GET"]),
            Route(f"{CALLBACK_PATH}/{{rest:path}}", receiver.callback, methods=["POST"]),
            Route(
                f"/{{prefix:path}}{CALLBACK_PATH}/{{rest:path}}",
                receiver.callback,
                methods=["POST"],
            ),
        ],
        lifespan=lifespan,
    )
    app.state.receiver = receiver
    return app
