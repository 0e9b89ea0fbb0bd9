"""The emulator's state machine: jobs, wallet, progression, faults, request log, webhook outbox.

There is no HTTP in this module (like moto's ``models.py``): ``app.py`` maps routes onto these
methods, and the engine in ``server.py`` does the background work (fetching input images,
rendering, posting webhooks) through the ``take_*`` / ``finish_*`` / ``record_*`` methods. The
HTTP layer also counts submits in flight here (``begin_submit`` / ``end_submit``) and watches
``stall_epoch`` to end stalled answers early.
Everything is guarded by one lock, and time comes from an injectable clock, so tests can drive
the whole life of a job with a :class:`FakeClock` and :meth:`EmulatorState.tick`.

```
submit ─> QUEUED ─(queue_seconds)─> PROCESSING ─(processing_seconds, MP4 rendered)─> COMPLETED
                                               ├─(planned, or input image unusable)─> FAILED
                                               └─(planned, or render crashed)─> ERROR (refunded)
```

With ``manual=True`` nothing moves on its own: :meth:`EmulatorState.advance` moves a job one
step, or straight to a given status. A job only becomes COMPLETED once its MP4 exists; asking
for COMPLETED earlier leaves it PROCESSING until the render lands.

Example:
    ```python
    state = EmulatorState(config=EmulatorConfig(manual=True), clock=FakeClock())
    job = state.submit(DEFAULT_MODEL_ID, {"prompt": "a slow pan", "image_url": url},
                       api_key=EMULATOR_API_KEY)
    state.advance(job.request_id)                      # QUEUED -> PROCESSING
    (task,) = state.take_render_tasks()                # the engine would render this
    state.finish_render(task.request_id, mp4_bytes)
    state.advance(job.request_id).status               # JobStatus.COMPLETED
    ```
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation
from http import HTTPStatus
from typing import Any, Literal, cast, get_args
from urllib.parse import urlsplit

from pydantic import ValidationError

from prefect_kandinsky.gateway.models import DEFAULT_MODEL_ID, JobStatus, VideoRequest
from prefect_kandinsky.gateway.prices import estimate_cost_usd

EMULATOR_API_KEY = "emulator-key"
"""The subscription key the emulator accepts unless configured otherwise."""

DEFAULT_BALANCE_USD = Decimal("10.00")
"""The wallet's starting balance."""

DEFAULT_CDN_URL = "http://cdn.emulator"
"""The CDN origin used in media URLs until a server or transport sets the real one."""

SAMPLE_IMAGE_CDN_PATH = "/samples/sample.png"
"""Where the CDN serves the bundled sample image."""

MEDIA_TYPE = "video/mp4"
MAX_LOG_RECORDS = 100_000
"""The request log keeps this many most recent records."""
MAX_UPLOAD_BYTES = 20 * 1024 * 1024
"""Largest image accepted by the upload route."""
DEFAULT_STALL_SECONDS = 30.0
"""How long a ``stall`` fault holds its answer unless told otherwise."""

DEFAULT_FAILED_ERROR = "generation failed (emulated failure)"
DEFAULT_SYSTEM_ERROR = "internal error while processing the request (emulated system error)"

Route = Literal["submit", "status", "media"]
"""The routes faults can be injected on."""
FaultAction = Literal["respond", "drop", "truncate", "stall"]
RequestKind = Literal["submit", "status", "media", "asset", "admin", "other"]
Origin = Literal["gateway", "cdn"]
WebhookMode = Literal["terminal", "sync"]
LedgerKind = Literal["debit", "refund", "adjust"]
RenderState = Literal["idle", "queued", "running", "done", "failed"]

ROUTES: tuple[str, ...] = get_args(Route)
REQUEST_KINDS: tuple[str, ...] = get_args(RequestKind)
ORIGINS: tuple[str, ...] = get_args(Origin)
FAULT_ACTIONS: tuple[str, ...] = get_args(FaultAction)
WEBHOOK_MODES: tuple[str, ...] = get_args(WebhookMode)
TERMINAL_STATUSES = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.ERROR})

Clock = Callable[[], float]
"""Returns the current time as seconds since the epoch, like :func:`time.time`."""

_STATUS_ORDER = {
    JobStatus.QUEUED: 0,
    JobStatus.PROCESSING: 1,
    JobStatus.COMPLETED: 2,
    JobStatus.FAILED: 2,
    JobStatus.ERROR: 2,
}
_UPLOAD_EXTENSIONS = {
    "image/png": ".png",
    "image/jpeg": ".jpg",
    "image/webp": ".webp",
    "image/gif": ".gif",
    "image/bmp": ".bmp",
    "image/tiff": ".tiff",
}


# --------------------------------------------------------------------------------------------
# Errors: the gateway's error JSON, raised by the state, rendered by the HTTP layer.
# --------------------------------------------------------------------------------------------


class GatewayError(Exception):
    """An error the gateway answers with ``{"error": ..., "message": ...}``."""

    status_code: int = 500
    error: str = "Internal Server Error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_json(self) -> dict[str, str]:
        """The response body."""
        return {"error": self.error, "message": self.message}


class BadRequest(GatewayError):
    """400: the body or a header is invalid; the message names the field."""

    status_code = 400
    error = "Bad Request"


class ModelNotFound(GatewayError):
    """400: the model in the path is unknown or disabled."""

    status_code = 400
    error = "Model not found"

    def __init__(self, model_id: str) -> None:
        super().__init__(f"Model '{model_id}' not found or is disabled")
        self.model_id = model_id


class Unauthorized(GatewayError):
    """401: the subscription key is missing or unknown."""

    status_code = 401
    error = "Unauthorized"


class InsufficientBalance(GatewayError):
    """402: the wallet cannot pay for the request."""

    status_code = 402
    error = "Insufficient Balance"

    def __init__(self) -> None:
        super().__init__("Your wallet does not have enough balance.")


class MediaExpired(GatewayError):
    """403: the media link is past its ``media_ttl_seconds``."""

    status_code = 403
    error = "Forbidden"


class NotFound(GatewayError):
    """404: no such request, media or asset."""

    status_code = 404
    error = "Not Found"


class InvalidTransition(GatewayError):
    """409: :meth:`EmulatorState.advance` was asked for a move the status flow does not allow."""

    status_code = 409
    error = "Conflict"


# --------------------------------------------------------------------------------------------
# Configuration and the things tests plan ahead: faults and outcomes.
# --------------------------------------------------------------------------------------------


def _decimal(value: object, name: str) -> Decimal:
    try:
        result = Decimal(str(value))
    except (InvalidOperation, ValueError) as exc:
        raise ValueError(f"{name} must be a decimal amount in USD; got {value!r}") from exc
    if not result.is_finite():
        raise ValueError(f"{name} must be a finite amount in USD; got {value!r}")
    return result


@dataclass(frozen=True)
class EmulatorConfig:
    """How the emulated gateway behaves. Every field can be changed at run time."""

    api_keys: frozenset[str] = frozenset({EMULATOR_API_KEY})
    """Subscription keys accepted in ``Ocp-Apim-Subscription-Key``."""
    model_ids: frozenset[str] = frozenset({DEFAULT_MODEL_ID})
    """Models that exist; any other model id in a submit path answers 400 Model not found."""
    balance_usd: Decimal = DEFAULT_BALANCE_USD
    """The wallet's balance at start and after :meth:`EmulatorState.reset`."""
    queue_seconds: float = 0.2
    """Time a job stays QUEUED."""
    processing_seconds: float = 0.5
    """Minimum time a job stays PROCESSING (longer if its render is not done yet)."""
    manual: bool = False
    """When true, jobs only move through :meth:`EmulatorState.advance`."""
    sync_interval_seconds: float = 0.25
    """Interval of the progress callbacks of ``X-Webhook-Mode: sync``."""
    media_ttl_seconds: float | None = None
    """Lifetime of media links after completion; afterwards the CDN answers 403. None: forever."""
    allow_http_webhooks: bool = False
    """Accept ``http://`` webhook URLs (the gateway requires https; for loopback tests)."""
    duplicate_webhooks: int = 0
    """Extra deliveries of each terminal callback, as network retries would cause."""
    submit_latency_seconds: float = 0.0
    """Time the gateway takes to answer a submit (after queueing it, before the 202), so that
    several submits can be in flight at once."""
    webhook_ca_file: str | None = None
    """A PEM file of CA certificates trusted, besides the system's, when callbacks are posted
    over https (e.g. a test CA that signed a local receiver's certificate)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "api_keys", frozenset(self.api_keys))
        object.__setattr__(self, "model_ids", frozenset(self.model_ids))
        object.__setattr__(self, "balance_usd", _decimal(self.balance_usd, "balance_usd"))
        for name in ("queue_seconds", "processing_seconds", "submit_latency_seconds"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be zero or more; got {getattr(self, name)!r}")
        if self.sync_interval_seconds <= 0:
            raise ValueError(
                f"sync_interval_seconds must be positive; got {self.sync_interval_seconds!r}"
            )
        if self.media_ttl_seconds is not None and self.media_ttl_seconds < 0:
            raise ValueError(
                f"media_ttl_seconds must be zero or more, or None; got {self.media_ttl_seconds!r}"
            )
        if self.duplicate_webhooks < 0:
            raise ValueError(
                f"duplicate_webhooks must be zero or more; got {self.duplicate_webhooks!r}"
            )
        if self.balance_usd < 0:
            raise ValueError(f"balance_usd must be zero or more; got {self.balance_usd}")
        if self.webhook_ca_file is not None and not os.path.isfile(self.webhook_ca_file):
            raise ValueError(
                f"webhook_ca_file must name a PEM file of CA certificates; got "
                f"{self.webhook_ca_file!r}"
            )

    @classmethod
    def fast(cls, **changes: Any) -> EmulatorConfig:
        """Timings for tests: 0.05 s queued, 0.1 s processing, sync callbacks every 0.05 s."""
        base = cls(queue_seconds=0.05, processing_seconds=0.1, sync_interval_seconds=0.05)
        return base.replace(**changes)

    def replace(self, **changes: Any) -> EmulatorConfig:
        """A copy with ``changes`` applied; unknown names raise ``ValueError``."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise ValueError(
                f"unknown emulator setting(s) {', '.join(unknown)}; "
                f"known: {', '.join(sorted(names))}"
            )
        return dataclasses.replace(self, **changes)

    def updated_from_json(self, data: Mapping[str, Any]) -> EmulatorConfig:
        """A copy updated from JSON (``PUT /_emulator/config``): amounts as strings or numbers."""
        changes: dict[str, Any] = {}
        for name, value in data.items():
            if name in ("api_keys", "model_ids"):
                if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                    raise ValueError(f"{name} must be a list of strings; got {value!r}")
                changes[name] = frozenset(value)
            elif name in ("manual", "allow_http_webhooks"):
                if not isinstance(value, bool):
                    raise ValueError(f"{name} must be true or false; got {value!r}")
                changes[name] = value
            elif name == "duplicate_webhooks":
                if isinstance(value, bool) or not isinstance(value, int):
                    raise ValueError(f"{name} must be an integer; got {value!r}")
                changes[name] = value
            elif name == "balance_usd":
                changes[name] = _decimal(value, name)
            elif name == "webhook_ca_file":
                if value is not None and not isinstance(value, str):
                    raise ValueError(f"{name} must be a file path or null; got {value!r}")
                changes[name] = value
            elif name == "media_ttl_seconds" and value is None:
                changes[name] = None
            elif name in (
                "queue_seconds",
                "processing_seconds",
                "sync_interval_seconds",
                "media_ttl_seconds",
                "submit_latency_seconds",
            ):
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise ValueError(f"{name} must be a number of seconds; got {value!r}")
                changes[name] = float(value)
            else:
                changes[name] = value
        return self.replace(**changes)

    def to_json(self) -> dict[str, Any]:
        """The configuration as JSON (``GET /_emulator/config``)."""
        return {
            "api_keys": sorted(self.api_keys),
            "model_ids": sorted(self.model_ids),
            "balance_usd": str(self.balance_usd),
            "queue_seconds": self.queue_seconds,
            "processing_seconds": self.processing_seconds,
            "manual": self.manual,
            "sync_interval_seconds": self.sync_interval_seconds,
            "media_ttl_seconds": self.media_ttl_seconds,
            "allow_http_webhooks": self.allow_http_webhooks,
            "duplicate_webhooks": self.duplicate_webhooks,
            "submit_latency_seconds": self.submit_latency_seconds,
            "webhook_ca_file": self.webhook_ca_file,
        }


@dataclass(frozen=True)
class Fault:
    """A planned misbehaviour of one route, used by the next ``times`` matching requests.

    Faults on a route are consumed in the order they were added.

    Actions:
        ``respond``: answer ``status_code`` with ``body`` (default ``{"error", "message"}``) and
        ``headers``; ``retry_after`` adds a ``Retry-After`` header (429 gets 1 s by default).
        ``drop``: close the connection without any response. On ``submit`` with
        ``after_queue=True`` the job is queued (and charged) first: the ambiguous case.
        ``truncate`` (``media`` only): declare the full ``Content-Length`` but send only
        ``truncate_bytes`` (default half) before closing; later Range requests work normally.
        ``stall``: hold the answer for ``stall_seconds``, then close the connection without
        answering, as ``drop`` does: a client that waits that long sees a broken connection.
        On ``submit`` with ``after_queue=True`` the job is queued (and charged) before the hold:
        a client killed while it waits leaves a paid job behind. On ``media`` the headers (full
        ``Content-Length``) and ``truncate_bytes`` (default half) of the body go out first: a
        download killed midway. The request is in the log from the start of the hold, and
        :meth:`EmulatorState.release_stalls` (also :meth:`EmulatorState.reset` and stopping the
        server) ends every hold early.

    A ``respond`` fault on ``submit`` with ``after_queue=True`` also queues the job before
    answering with the error. ``truncate`` and ``stall`` faults on ``media`` wait for a
    request with a body to cut (see :meth:`EmulatorState.take_fault`).
    """

    route: Route
    action: FaultAction = "respond"
    status_code: int = 500
    body: Mapping[str, Any] | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    retry_after: float | None = None
    times: int = 1
    after_queue: bool = False
    truncate_bytes: int | None = None
    stall_seconds: float = DEFAULT_STALL_SECONDS

    def __post_init__(self) -> None:
        for name in ("status_code", "times"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"fault {name} must be an integer; got {value!r}")
        for name in ("retry_after", "truncate_bytes"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, (int, float))
            ):
                raise ValueError(f"fault {name} must be a number or null; got {value!r}")
        if (
            isinstance(self.stall_seconds, bool)
            or not isinstance(self.stall_seconds, (int, float))
            or not 0 < self.stall_seconds < float("inf")
        ):
            raise ValueError(
                f"fault stall_seconds must be a number of seconds above zero; "
                f"got {self.stall_seconds!r}"
            )
        if self.body is not None and not isinstance(self.body, Mapping):
            raise ValueError(f"fault body must be a JSON object or null; got {self.body!r}")
        if not isinstance(self.headers, Mapping):
            raise ValueError(f"fault headers must be an object of strings; got {self.headers!r}")
        if self.route not in ROUTES:
            raise ValueError(f"fault route must be one of {', '.join(ROUTES)}; got {self.route!r}")
        if self.action not in FAULT_ACTIONS:
            raise ValueError(
                f"fault action must be one of {', '.join(FAULT_ACTIONS)}; got {self.action!r}"
            )
        if not 100 <= self.status_code <= 599:
            raise ValueError(f"fault status_code must be an HTTP status; got {self.status_code}")
        if self.times < 1:
            raise ValueError(f"fault times must be 1 or more; got {self.times}")
        if self.action == "truncate" and self.route != "media":
            raise ValueError(f"truncate faults apply to media only; got route {self.route!r}")
        if self.after_queue and self.route != "submit":
            raise ValueError(f"after_queue applies to submit only; got route {self.route!r}")
        if self.truncate_bytes is not None and self.truncate_bytes < 0:
            raise ValueError(f"truncate_bytes must be zero or more; got {self.truncate_bytes}")
        if self.retry_after is not None and self.retry_after < 0:
            raise ValueError(f"retry_after must be zero or more; got {self.retry_after}")
        object.__setattr__(self, "headers", dict(self.headers))

    @property
    def label(self) -> str:
        """Short name recorded in the request log: ``429``, ``drop``, ``truncate``, ``stall``."""
        return str(self.status_code) if self.action == "respond" else self.action

    def response_body(self) -> dict[str, Any]:
        """The JSON body of a ``respond`` fault."""
        if self.body is not None:
            return dict(self.body)
        try:
            phrase = HTTPStatus(self.status_code).phrase
        except ValueError:
            phrase = f"HTTP {self.status_code}"
        if self.status_code == 429:
            message = (
                f"Rate limit is exceeded. Try again in {_seconds_text(self.retry_seconds)} seconds."
            )
        else:
            message = f"{phrase} (fault injected by the emulator)"
        return {"error": phrase, "message": message}

    @property
    def retry_seconds(self) -> float | None:
        """Seconds sent in ``Retry-After``: as given, or 1 for a 429 without one."""
        if self.retry_after is None and self.action == "respond" and self.status_code == 429:
            return 1.0
        return self.retry_after

    def response_headers(self) -> dict[str, str]:
        """The headers of a ``respond`` fault, with ``Retry-After`` when set."""
        headers = dict(self.headers)
        if self.retry_seconds is not None:
            headers["Retry-After"] = _seconds_text(self.retry_seconds)
        return headers

    def to_json(self) -> dict[str, Any]:
        """The fault as JSON, the same shape ``POST /_emulator/faults`` accepts."""
        return {
            "route": self.route,
            "action": self.action,
            "status_code": self.status_code,
            "body": dict(self.body) if self.body is not None else None,
            "headers": dict(self.headers),
            "retry_after": self.retry_after,
            "times": self.times,
            "after_queue": self.after_queue,
            "truncate_bytes": self.truncate_bytes,
            "stall_seconds": self.stall_seconds,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Fault:
        """Build a fault from JSON; unknown keys raise ``ValueError``."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(
                f"unknown fault field(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}"
            )
        if "route" not in data:
            raise ValueError(f"a fault needs a route, one of {', '.join(ROUTES)}")
        return cls(**dict(data))


def _seconds_text(seconds: float | None) -> str:
    if seconds is None:
        return ""
    return str(int(seconds)) if float(seconds).is_integer() else f"{seconds:g}"


@dataclass(frozen=True)
class Outcome:
    """How the next submitted job(s) will end, instead of COMPLETED."""

    status: JobStatus
    error: str | None = None
    times: int = 1

    def __post_init__(self) -> None:
        status = JobStatus(self.status)
        if not status.is_terminal:
            raise ValueError(f"an outcome must be COMPLETED, FAILED or ERROR; got {status.value}")
        if self.times < 1:
            raise ValueError(f"outcome times must be 1 or more; got {self.times}")
        object.__setattr__(self, "status", status)

    @property
    def error_text(self) -> str | None:
        """The error reported with the outcome (a default one for FAILED and ERROR)."""
        if self.status is JobStatus.COMPLETED:
            return None
        if self.error:
            return self.error
        return DEFAULT_FAILED_ERROR if self.status is JobStatus.FAILED else DEFAULT_SYSTEM_ERROR

    def to_json(self) -> dict[str, Any]:
        """The outcome as JSON (``POST /_emulator/outcomes`` shape)."""
        return {"status": self.status.value, "error": self.error, "times": self.times}


# --------------------------------------------------------------------------------------------
# Records: what happened, for tests and the admin routes.
# --------------------------------------------------------------------------------------------


def _utc(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, tz=timezone.utc)


def format_iso_z(timestamp: float) -> str:
    """``2026-05-22T13:17:32.110Z``: the gateway's form of ``created_at``."""
    moment = _utc(timestamp)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def format_plain(timestamp: float) -> str:
    """``2026-05-22 13:19:23``: the gateway's form of ``updated_at`` and ``completed_at``."""
    return _utc(timestamp).strftime("%Y-%m-%d %H:%M:%S")


@dataclass(frozen=True)
class JobView:
    """A snapshot of one job."""

    request_id: str
    model_id: str
    status: JobStatus
    error: str | None
    prompt: str
    image_url: str
    resolution: str
    duration_seconds: int
    num_inference_steps: int
    acceleration: str
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None
    charged_usd: Decimal
    refunded: bool
    webhook_url: str | None
    webhook_mode: WebhookMode
    media_size: int | None
    history: tuple[JobStatus, ...]

    def to_json(self) -> dict[str, Any]:
        """The job as JSON (``GET /_emulator/jobs``)."""
        return {
            "request_id": self.request_id,
            "model_id": self.model_id,
            "status": self.status.value,
            "error": self.error,
            "prompt": self.prompt,
            "image_url": self.image_url,
            "resolution": self.resolution,
            "duration_seconds": self.duration_seconds,
            "num_inference_steps": self.num_inference_steps,
            "acceleration": self.acceleration,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
            "completed_at": self.completed_at.isoformat() if self.completed_at else None,
            "charged_usd": str(self.charged_usd),
            "refunded": self.refunded,
            "webhook_url": self.webhook_url,
            "webhook_mode": self.webhook_mode,
            "media_size": self.media_size,
            "history": [status.value for status in self.history],
        }


@dataclass(frozen=True)
class LedgerEntry:
    """One movement of the wallet: ``amount_usd`` is negative for a debit."""

    at: datetime
    kind: LedgerKind
    amount_usd: Decimal
    balance_usd: Decimal
    request_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The entry as JSON."""
        return {
            "at": self.at.isoformat(),
            "kind": self.kind,
            "amount_usd": str(self.amount_usd),
            "balance_usd": str(self.balance_usd),
            "request_id": self.request_id,
        }


@dataclass(frozen=True)
class RequestRecord:
    """One HTTP request the emulator received, and how it answered."""

    at: datetime
    origin: Origin
    kind: RequestKind
    method: str
    path: str
    status_code: int | None
    """The response status; None when the connection was dropped before any response."""
    header_names: frozenset[str]
    """Lower-case names of the request headers."""
    key_present: bool
    """Whether ``Ocp-Apim-Subscription-Key`` was sent."""
    request_id: str | None = None
    fault: str | None = None
    """Label of the injected fault that shaped the answer, if any."""
    range_header: str | None = None
    """The value of the ``Range`` request header, if one was sent."""

    def to_json(self) -> dict[str, Any]:
        """The record as JSON (``GET /_emulator/requests``)."""
        return {
            "at": self.at.isoformat(),
            "origin": self.origin,
            "kind": self.kind,
            "method": self.method,
            "path": self.path,
            "status_code": self.status_code,
            "header_names": sorted(self.header_names),
            "key_present": self.key_present,
            "request_id": self.request_id,
            "fault": self.fault,
            "range_header": self.range_header,
        }


@dataclass(frozen=True)
class RenderTask:
    """An MP4 to make: fetch ``image_url``, render, then report back."""

    request_id: str
    image_url: str
    height: int
    seconds: int
    generation: int


@dataclass(frozen=True)
class WebhookMessage:
    """A callback waiting in the outbox."""

    request_id: str
    url: str
    status: JobStatus
    payload: dict[str, Any]
    terminal: bool
    generation: int


@dataclass(frozen=True)
class WebhookDelivery:
    """A callback that went out: the status it carried and how the receiver answered."""

    at: datetime
    request_id: str
    url: str
    status: JobStatus
    terminal: bool
    response_code: int | None
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The delivery as JSON (``GET /_emulator/webhooks``)."""
        return {
            "at": self.at.isoformat(),
            "request_id": self.request_id,
            "url": self.url,
            "status": self.status.value,
            "terminal": self.terminal,
            "response_code": self.response_code,
            "error": self.error,
        }


@dataclass(frozen=True)
class Asset:
    """A file the CDN serves from memory (the sample image, uploads)."""

    content: bytes
    content_type: str


@dataclass
class _Job:
    request_id: str
    model_id: str
    request: VideoRequest
    status: JobStatus
    created_at: float
    updated_at: float
    phase_started_at: float
    charged_usd: Decimal
    outcome: Outcome | None
    webhook_url: str | None
    webhook_mode: WebhookMode
    next_sync_at: float | None
    error: str | None = None
    completed_at: float | None = None
    refunded: bool = False
    render: RenderState = "idle"
    media: bytes | None = None
    render_error: str | None = None
    render_error_status: JobStatus = JobStatus.FAILED
    rendered_at: float | None = None
    target_at: float | None = None
    target: JobStatus | None = None
    history: list[JobStatus] = field(default_factory=list)


class FakeClock:
    """A clock that only moves when told: ``clock.advance(0.5)``."""

    def __init__(self, start: float = 1_780_000_000.0) -> None:
        self._now = start
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> float:
        """Move forward by ``seconds``; return the new time."""
        if seconds < 0:
            raise ValueError(f"a clock cannot go back; got {seconds}")
        with self._lock:
            self._now += seconds
            return self._now


def new_request_id(model_id: str, now: float) -> str:
    """``<model_id>_<uuid7>``: a time-ordered id like the gateway's ``..._019d...``."""
    millis = int(now * 1000) & ((1 << 48) - 1)
    rand = int.from_bytes(os.urandom(10), "big")
    rand_a = rand >> 68
    rand_b = rand & ((1 << 62) - 1)
    value = (millis << 80) | (0x7 << 76) | (rand_a << 64) | (0b10 << 62) | rand_b
    return f"{model_id}_{uuid.UUID(int=value)}"


def _validate_body(body: object) -> VideoRequest:
    if not isinstance(body, Mapping):
        raise BadRequest("the request body must be a JSON object with prompt and image_url")
    known = {k: v for k, v in body.items() if k in VideoRequest.model_fields}
    try:
        return VideoRequest.model_validate(known)
    except ValidationError as exc:
        error = exc.errors()[0]
        name = str(error["loc"][0]) if error["loc"] else "body"
        if error["type"] == "missing":
            raise BadRequest(f"{name} is required") from exc
        message = str(error["msg"]).removeprefix("Value error, ")
        if name not in message:
            message = f"{name}: {message}"
        raise BadRequest(message) from exc


# --------------------------------------------------------------------------------------------
# The state machine.
# --------------------------------------------------------------------------------------------


class EmulatorState:
    """Everything the emulated gateway knows, behind one lock. See the module docstring."""

    def __init__(
        self,
        *,
        config: EmulatorConfig | None = None,
        clock: Clock = time.time,
        cdn_url: str = DEFAULT_CDN_URL,
    ) -> None:
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._clock = clock
        self._baseline = config or EmulatorConfig()
        self._config = self._baseline
        self._cdn_url = cdn_url.rstrip("/")
        self._generation = 0
        self._jobs: dict[str, _Job] = {}
        self._balance = self._baseline.balance_usd
        self._ledger: list[LedgerEntry] = []
        self._faults: list[Fault] = []
        self._outcomes: list[Outcome] = []
        self._log: deque[RequestRecord] = deque(maxlen=MAX_LOG_RECORDS)
        self._render_queue: deque[RenderTask] = deque()
        self._outbox: deque[WebhookMessage] = deque()
        self._deliveries: list[WebhookDelivery] = []
        self._uploads: dict[str, Asset] = {}
        self._sample: Asset | None = None
        self._stall_epoch = 0
        self._submits_in_flight = 0
        self._max_submits_in_flight = 0

    # -- configuration -------------------------------------------------------------------

    @property
    def config(self) -> EmulatorConfig:
        """The current configuration."""
        with self._lock:
            return self._config

    def configure(self, **changes: Any) -> EmulatorConfig:
        """Change settings now, e.g. ``configure(manual=True)``; returns the new configuration.

        Setting ``balance_usd`` also sets the wallet's current balance.
        """
        with self._lock:
            self._config = self._config.replace(**changes)
            if "balance_usd" in changes:
                self._set_balance(self._config.balance_usd)
            self._changed.notify_all()
            return self._config

    def apply_config_json(self, data: Mapping[str, Any]) -> EmulatorConfig:
        """:meth:`configure` from JSON, for ``PUT /_emulator/config``."""
        with self._lock:
            try:
                config = self._config.updated_from_json(data)
            except (TypeError, ValueError) as exc:
                raise BadRequest(str(exc)) from exc
            changes = {name: getattr(config, name) for name in data}
            return self.configure(**changes)

    @property
    def cdn_url(self) -> str:
        """The CDN origin used in media URLs, e.g. ``http://127.0.0.1:54321``."""
        with self._lock:
            return self._cdn_url

    @cdn_url.setter
    def cdn_url(self, value: str) -> None:
        with self._lock:
            self._cdn_url = value.rstrip("/")

    @property
    def clock(self) -> Clock:
        """The clock the state reads."""
        return self._clock

    def now(self) -> float:
        """The clock's current time."""
        return self._clock()

    def reset(self) -> None:
        """Forget jobs, faults, outcomes, the log, webhooks, uploads and the submit counters;
        restore the wallet and the configuration the state was created with; end every held
        (stalled) answer."""
        with self._lock:
            self._generation += 1
            self._stall_epoch += 1
            self._submits_in_flight = 0
            self._max_submits_in_flight = 0
            self._config = self._baseline
            self._jobs.clear()
            self._balance = self._baseline.balance_usd
            self._ledger.clear()
            self._faults.clear()
            self._outcomes.clear()
            self._log.clear()
            self._render_queue.clear()
            self._outbox.clear()
            self._deliveries.clear()
            self._uploads.clear()
            self._changed.notify_all()

    # -- authentication ------------------------------------------------------------------

    def check_key(self, key: str | None) -> None:
        """Raise :class:`Unauthorized` unless ``key`` is an accepted subscription key."""
        with self._lock:
            keys = self._config.api_keys
        if not key:
            raise Unauthorized(
                "Access denied due to missing subscription key. Make sure to include the "
                "Ocp-Apim-Subscription-Key header when making requests to the API."
            )
        if key not in keys:
            raise Unauthorized(
                "Access denied due to invalid subscription key. Make sure to provide a valid "
                "key for an active subscription."
            )

    # -- wallet --------------------------------------------------------------------------

    @property
    def balance(self) -> Decimal:
        """The wallet's balance in USD."""
        with self._lock:
            return self._balance

    @property
    def ledger(self) -> list[LedgerEntry]:
        """Every debit, refund and adjustment, oldest first."""
        with self._lock:
            return list(self._ledger)

    def set_balance(self, amount_usd: Decimal | str | float) -> Decimal:
        """Set the balance (recorded in the ledger as an adjustment); returns it."""
        with self._lock:
            return self._set_balance(_decimal(amount_usd, "balance_usd"))

    def deposit(self, amount_usd: Decimal | str | float) -> Decimal:
        """Add funds; returns the new balance."""
        with self._lock:
            return self._set_balance(self._balance + _decimal(amount_usd, "amount_usd"))

    def _set_balance(self, amount: Decimal) -> Decimal:
        if amount < 0:
            raise ValueError(f"the balance cannot be negative; got {amount}")
        delta = amount - self._balance
        self._balance = amount
        self._ledger.append(LedgerEntry(_utc(self._clock()), "adjust", delta, amount))
        return amount

    def wallet_json(self) -> dict[str, Any]:
        """Balance and ledger as JSON (``GET /_emulator/wallet``)."""
        with self._lock:
            return {
                "balance_usd": str(self._balance),
                "ledger": [entry.to_json() for entry in self._ledger],
            }

    # -- outcomes and faults -------------------------------------------------------------

    def plan_outcome(
        self, status: JobStatus | str, error: str | None = None, *, times: int = 1
    ) -> Outcome:
        """Make the next ``times`` submitted jobs end with ``status`` (FAILED, ERROR, COMPLETED).

        Example: ``plan_outcome(JobStatus.FAILED, "content moderation rejected the prompt")``.
        """
        outcome = Outcome(status=JobStatus(status), error=error, times=times)
        with self._lock:
            self._outcomes.append(outcome)
        return outcome

    @property
    def planned_outcomes(self) -> list[Outcome]:
        """Outcomes not yet used, in order."""
        with self._lock:
            return list(self._outcomes)

    def clear_outcomes(self) -> None:
        """Drop every planned outcome."""
        with self._lock:
            self._outcomes.clear()

    def add_fault(self, fault: Fault) -> Fault:
        """Queue ``fault`` behind the faults already planned for its route."""
        with self._lock:
            self._faults.append(fault)
        return fault

    def inject_fault(
        self,
        route: Route,
        *,
        action: FaultAction = "respond",
        status_code: int = 500,
        body: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        retry_after: float | None = None,
        times: int = 1,
        after_queue: bool = False,
        truncate_bytes: int | None = None,
        stall_seconds: float = DEFAULT_STALL_SECONDS,
    ) -> Fault:
        """Build a :class:`Fault` and queue it, e.g. ``inject_fault("status", status_code=429)``."""
        return self.add_fault(
            Fault(
                route=route,
                action=action,
                status_code=status_code,
                body=body,
                headers=dict(headers or {}),
                retry_after=retry_after,
                times=times,
                after_queue=after_queue,
                truncate_bytes=truncate_bytes,
                stall_seconds=stall_seconds,
            )
        )

    @property
    def faults(self) -> list[Fault]:
        """Faults not yet used up, in order (``times`` is what remains)."""
        with self._lock:
            return list(self._faults)

    def clear_faults(self) -> None:
        """Drop every planned fault."""
        with self._lock:
            self._faults.clear()

    @property
    def stall_epoch(self) -> int:
        """Bumped by :meth:`release_stalls` and :meth:`reset`: a held answer ends when it moves."""
        with self._lock:
            return self._stall_epoch

    def release_stalls(self) -> None:
        """End every answer a ``stall`` fault is holding now: each drops its connection."""
        with self._lock:
            self._stall_epoch += 1

    def take_fault(self, route: Route, *, allow_truncate: bool = True) -> Fault | None:
        """Use one time of the first fault planned for ``route`` and return it (times=1).

        A ``truncate`` fault, and a ``stall`` on ``media``, is skipped (and kept) when
        ``allow_truncate`` is false, e.g. for a HEAD request or missing media.
        """
        with self._lock:
            for index, fault in enumerate(self._faults):
                if fault.route != route:
                    continue
                cuts_a_body = fault.action == "truncate" or (
                    fault.action == "stall" and fault.route == "media"
                )
                if cuts_a_body and not allow_truncate:
                    continue
                if fault.times > 1:
                    self._faults[index] = dataclasses.replace(fault, times=fault.times - 1)
                else:
                    del self._faults[index]
                return dataclasses.replace(fault, times=1)
            return None

    # -- submit and status ---------------------------------------------------------------

    def submit(
        self,
        model_id: str,
        body: object,
        *,
        webhook_url: str | None = None,
        webhook_mode: str | None = None,
    ) -> JobView:
        """Validate and queue a generate request; debit the wallet. The key is checked apart.

        Raises:
            ModelNotFound: ``model_id`` is not one of the configured models.
            BadRequest: the body or a webhook header is invalid (the message names it).
            InsufficientBalance: the wallet cannot pay the documented price.
        """
        with self._lock:
            config = self._config
            if model_id not in config.model_ids:
                raise ModelNotFound(model_id)
            request = _validate_body(body)
            url, mode = self._validate_webhook(webhook_url, webhook_mode)
            cost = estimate_cost_usd(request.resolution, request.duration_seconds) or Decimal(0)
            if cost > self._balance:
                raise InsufficientBalance()
            now = self._clock()
            request_id = new_request_id(model_id, now)
            self._balance -= cost
            self._ledger.append(LedgerEntry(_utc(now), "debit", -cost, self._balance, request_id))
            outcome = self._next_outcome()
            job = _Job(
                request_id=request_id,
                model_id=model_id,
                request=request,
                status=JobStatus.QUEUED,
                created_at=now,
                updated_at=now,
                phase_started_at=now,
                charged_usd=cost,
                outcome=outcome,
                webhook_url=url,
                webhook_mode=mode,
                next_sync_at=now + config.sync_interval_seconds if url and mode == "sync" else None,
                history=[JobStatus.QUEUED],
            )
            self._jobs[request_id] = job
            self._changed.notify_all()
            return self._view(job)

    def _validate_webhook(
        self, webhook_url: str | None, webhook_mode: str | None
    ) -> tuple[str | None, WebhookMode]:
        mode_text = (webhook_mode or "terminal").strip().lower()
        if mode_text not in WEBHOOK_MODES:
            raise BadRequest(f"X-Webhook-Mode must be terminal or sync; got {webhook_mode!r}")
        mode = cast(WebhookMode, mode_text)
        if webhook_url is None:
            return None, mode
        url = webhook_url.strip()
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise BadRequest(f"X-Webhook-URL must be an absolute https URL; got {webhook_url!r}")
        if parts.scheme == "http" and not self._config.allow_http_webhooks:
            raise BadRequest(
                f"X-Webhook-URL must use HTTPS: plain http:// URLs are rejected; got {url!r}"
            )
        return url, mode

    def _next_outcome(self) -> Outcome | None:
        if not self._outcomes:
            return None
        outcome = self._outcomes[0]
        if outcome.times > 1:
            self._outcomes[0] = dataclasses.replace(outcome, times=outcome.times - 1)
        else:
            self._outcomes.pop(0)
        return dataclasses.replace(outcome, times=1)

    def status(self, request_id: str) -> dict[str, Any]:
        """The status endpoint's JSON for ``request_id`` (progressing the job first).

        Raises:
            NotFound: no such request.
        """
        with self._lock:
            job = self._job(request_id)
            self._progress(job, self._clock())
            return self._payload(job)

    def job(self, request_id: str) -> JobView:
        """A snapshot of one job (progressing it first). Raises :class:`NotFound`."""
        with self._lock:
            job = self._job(request_id)
            self._progress(job, self._clock())
            return self._view(job)

    def jobs(self) -> list[JobView]:
        """Snapshots of every job, oldest first."""
        with self._lock:
            self._tick_locked()
            return [self._view(job) for job in self._jobs.values()]

    def media_url(self, request_id: str) -> str:
        """The CDN URL of a job's MP4."""
        with self._lock:
            return f"{self._cdn_url}/v1/{request_id}/output.mp4"

    def _job(self, request_id: str) -> _Job:
        job = self._jobs.get(request_id)
        if job is None:
            raise NotFound(f"Request '{request_id}' not found")
        return job

    def _payload(self, job: _Job) -> dict[str, Any]:
        output = (
            {"media_url": [self.media_url(job.request_id)], "media_type": MEDIA_TYPE}
            if job.status is JobStatus.COMPLETED
            else None
        )
        return {
            "request_id": job.request_id,
            "status": job.status.value,
            "model_id": job.model_id,
            "error": job.error,
            "output": output,
            "created_at": format_iso_z(job.created_at),
            "updated_at": format_plain(job.updated_at),
            "completed_at": format_plain(job.completed_at) if job.completed_at else None,
        }

    def _view(self, job: _Job) -> JobView:
        request = job.request
        return JobView(
            request_id=job.request_id,
            model_id=job.model_id,
            status=job.status,
            error=job.error,
            prompt=request.prompt,
            image_url=request.image_url,
            resolution=request.resolution,
            duration_seconds=request.duration_seconds,
            num_inference_steps=request.num_inference_steps,
            acceleration=request.acceleration,
            created_at=_utc(job.created_at),
            updated_at=_utc(job.updated_at),
            completed_at=_utc(job.completed_at) if job.completed_at is not None else None,
            charged_usd=job.charged_usd,
            refunded=job.refunded,
            webhook_url=job.webhook_url,
            webhook_mode=job.webhook_mode,
            media_size=len(job.media) if job.media is not None else None,
            history=tuple(job.history),
        )

    # -- progression ---------------------------------------------------------------------

    def tick(self) -> None:
        """Move every job along by the clock: status changes, sync callbacks, finished renders."""
        with self._lock:
            self._tick_locked()

    def _tick_locked(self) -> None:
        now = self._clock()
        for job in self._jobs.values():
            if job.status not in TERMINAL_STATUSES:
                self._progress(job, now)

    def advance(
        self, request_id: str, to: JobStatus | str | None = None, *, error: str | None = None
    ) -> JobView:
        """Move a job one step (``to=None``) or straight to ``to``; works in any mode.

        One step is QUEUED -> PROCESSING, then PROCESSING -> its planned outcome (COMPLETED by
        default). COMPLETED needs the MP4: until the render lands the job stays PROCESSING and
        completes as soon as it does. ``error`` is the message of a FAILED or ERROR.

        Raises:
            NotFound: no such request.
            InvalidTransition: the job is already terminal, or ``to`` is not ahead of it.
        """
        with self._lock:
            job = self._job(request_id)
            now = self._clock()
            self._progress(job, now)
            if job.status in TERMINAL_STATUSES:
                raise InvalidTransition(
                    f"Request '{request_id}' is already {job.status.value}; it cannot move"
                )
            target = JobStatus(to) if to is not None else None
            if target is not None and _STATUS_ORDER[target] <= _STATUS_ORDER[job.status]:
                raise InvalidTransition(
                    f"Request '{request_id}' is {job.status.value}; it cannot move to "
                    f"{target.value} (QUEUED -> PROCESSING -> COMPLETED | FAILED | ERROR)"
                )
            if target is None:
                if job.status is JobStatus.QUEUED:
                    target = JobStatus.PROCESSING
                elif job.render == "failed":
                    target = job.render_error_status
                else:
                    target = job.outcome.status if job.outcome else JobStatus.COMPLETED
            if target is JobStatus.PROCESSING:
                self._enter(job, JobStatus.PROCESSING, now)
            elif target is JobStatus.COMPLETED:
                if job.status is JobStatus.QUEUED:
                    self._enter(job, JobStatus.PROCESSING, now)
                self._queue_render(job)
                job.target = JobStatus.COMPLETED
                job.target_at = now
                self._resolve_target(job, now)
            else:
                message = error or (
                    job.render_error
                    if job.render == "failed" and target is job.render_error_status
                    else None
                )
                if message is None and job.outcome and job.outcome.status is target:
                    message = job.outcome.error_text
                if message is None:
                    message = Outcome(status=target).error_text
                self._enter(job, target, now, error=message)
            return self._view(job)

    def wait_for_status(
        self,
        request_id: str,
        statuses: Iterable[JobStatus | str] | None = None,
        *,
        timeout: float = 10.0,
    ) -> JobView:
        """Block until the job reaches one of ``statuses`` (default: any terminal one).

        Call it from a thread, not from an event loop that serves the emulator.

        Raises:
            TimeoutError: ``timeout`` (real seconds) passed first; the message has the status.
        """
        wanted = (
            {JobStatus(s) for s in statuses} if statuses is not None else set(TERMINAL_STATUSES)
        )
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                job = self._job(request_id)
                self._progress(job, self._clock())
                if job.status in wanted:
                    return self._view(job)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    names = ", ".join(sorted(s.value for s in wanted))
                    raise TimeoutError(
                        f"Request '{request_id}' is still {job.status.value} after {timeout}s "
                        f"(waiting for {names})"
                    )
                self._changed.wait(min(remaining, 0.01))

    def _progress(self, job: _Job, now: float) -> None:
        # Status changes are stamped with when they were due, not when a tick noticed them.
        if job.status in TERMINAL_STATUSES:
            return
        config = self._config
        if not config.manual:
            due = job.phase_started_at + config.queue_seconds
            if job.status is JobStatus.QUEUED and now >= due:
                self._enter(job, JobStatus.PROCESSING, due)
            due = job.phase_started_at + config.processing_seconds
            if job.status is JobStatus.PROCESSING:
                if job.render == "failed":
                    self._enter(
                        job, job.render_error_status, self._rendered_at(job), error=job.render_error
                    )
                elif now >= due:
                    outcome = job.outcome
                    if outcome is not None and outcome.status is not JobStatus.COMPLETED:
                        self._enter(job, outcome.status, due, error=outcome.error_text)
                    else:
                        job.target = JobStatus.COMPLETED
                        job.target_at = due
        self._resolve_target(job, now)
        if (
            job.status not in TERMINAL_STATUSES
            and job.next_sync_at is not None
            and now >= job.next_sync_at
        ):
            self._post_webhook(job, terminal=False)
            job.next_sync_at = now + config.sync_interval_seconds

    def _rendered_at(self, job: _Job, after: float | None = None) -> float:
        finished = job.rendered_at if job.rendered_at is not None else self._clock()
        return max(finished, job.phase_started_at, after if after is not None else finished)

    def _resolve_target(self, job: _Job, now: float) -> None:
        if job.target is not JobStatus.COMPLETED or job.status in TERMINAL_STATUSES:
            return
        if job.render == "done":
            self._enter(job, JobStatus.COMPLETED, self._rendered_at(job, job.target_at))
        elif job.render == "failed":
            self._enter(
                job,
                job.render_error_status,
                self._rendered_at(job, job.target_at),
                error=job.render_error,
            )

    def _enter(self, job: _Job, status: JobStatus, now: float, *, error: str | None = None) -> None:
        job.status = status
        job.updated_at = now
        job.phase_started_at = now
        job.history.append(status)
        if status is JobStatus.PROCESSING:
            outcome = job.outcome
            if outcome is None or outcome.status is JobStatus.COMPLETED:
                self._queue_render(job)
        if status in TERMINAL_STATUSES:
            job.completed_at = now
            job.error = error if status is not JobStatus.COMPLETED else None
            job.target = None
            if status is JobStatus.ERROR and job.charged_usd and not job.refunded:
                job.refunded = True
                self._balance += job.charged_usd
                self._ledger.append(
                    LedgerEntry(_utc(now), "refund", job.charged_usd, self._balance, job.request_id)
                )
            if job.webhook_url:
                for _ in range(1 + self._config.duplicate_webhooks):
                    self._post_webhook(job, terminal=True)
        elif job.next_sync_at is not None:
            self._post_webhook(job, terminal=False)
            job.next_sync_at = now + self._config.sync_interval_seconds
        self._changed.notify_all()

    # -- rendering (driven by the engine) ------------------------------------------------

    def _queue_render(self, job: _Job) -> None:
        if job.render != "idle":
            return
        job.render = "queued"
        height = int(job.request.resolution.rstrip("Pp"))
        self._render_queue.append(
            RenderTask(
                request_id=job.request_id,
                image_url=job.request.image_url,
                height=height,
                seconds=job.request.duration_seconds,
                generation=self._generation,
            )
        )

    def take_render_tasks(self) -> list[RenderTask]:
        """Hand out the renders waiting to run (each only once)."""
        with self._lock:
            tasks = list(self._render_queue)
            self._render_queue.clear()
            for task in tasks:
                job = self._jobs.get(task.request_id)
                if job is not None and job.render == "queued":
                    job.render = "running"
            return tasks

    def finish_render(
        self, request_id: str, media: bytes, *, generation: int | None = None
    ) -> None:
        """Store a job's MP4; the job completes as soon as its timing allows."""
        with self._lock:
            job = self._render_job(request_id, generation)
            if job is None:
                return
            job.render = "done"
            job.media = media
            job.rendered_at = self._clock()
            self._progress(job, self._clock())
            self._changed.notify_all()

    def fail_render(
        self,
        request_id: str,
        error: str,
        *,
        status: JobStatus = JobStatus.FAILED,
        generation: int | None = None,
    ) -> None:
        """Record that a job's MP4 cannot be made: the job ends ``status`` with ``error``.

        FAILED is for bad input (an unreachable or undecodable image); ERROR for a crash.
        """
        with self._lock:
            job = self._render_job(request_id, generation)
            if job is None:
                return
            job.render = "failed"
            job.render_error = error
            job.rendered_at = self._clock()
            job.render_error_status = status
            self._progress(job, self._clock())
            self._changed.notify_all()

    def _render_job(self, request_id: str, generation: int | None) -> _Job | None:
        if generation is not None and generation != self._generation:
            return None
        return self._jobs.get(request_id)

    @property
    def generation(self) -> int:
        """Bumped by :meth:`reset`; late results of older generations are ignored."""
        with self._lock:
            return self._generation

    # -- media and assets (served by the CDN) --------------------------------------------

    def media(self, request_id: str) -> bytes:
        """The MP4 of a completed job.

        Raises:
            NotFound: no such job, or it has no media (not completed).
            MediaExpired: the link is older than ``media_ttl_seconds``.
        """
        with self._lock:
            job = self._jobs.get(request_id)
            if job is not None:
                self._progress(job, self._clock())
            if job is None or job.status is not JobStatus.COMPLETED or job.media is None:
                raise NotFound(f"No media for request '{request_id}'")
            ttl = self._config.media_ttl_seconds
            completed_at = job.completed_at
            if ttl is not None and completed_at is not None and self._clock() - completed_at > ttl:
                raise MediaExpired(
                    f"The media link of request '{request_id}' expired {ttl:g}s after completion"
                )
            return job.media

    def add_upload(self, content: bytes, content_type: str) -> str:
        """Keep an image in memory and return its CDN URL (``POST /_emulator/uploads``).

        Raises:
            BadRequest: empty, too large, or not an ``image/*`` content type.
        """
        kind = content_type.split(";", 1)[0].strip().lower()
        if not kind.startswith("image/"):
            raise BadRequest(f"Content-Type must be an image/* type; got {content_type!r}")
        if not content:
            raise BadRequest("the upload body is empty: send the image bytes")
        if len(content) > MAX_UPLOAD_BYTES:
            raise BadRequest(
                f"the upload is {len(content)} bytes; the limit is {MAX_UPLOAD_BYTES} bytes"
            )
        path = f"/uploads/{uuid.uuid4().hex}{_UPLOAD_EXTENSIONS.get(kind, '.img')}"
        with self._lock:
            self._uploads[path] = Asset(content=content, content_type=kind)
            return f"{self._cdn_url}{path}"

    def asset(self, path: str) -> Asset | None:
        """The in-memory file the CDN serves at ``path``, if any."""
        if path == SAMPLE_IMAGE_CDN_PATH:
            return self._sample_asset()
        with self._lock:
            return self._uploads.get(path)

    def cdn_asset(self, url: str) -> Asset | None:
        """The asset behind ``url`` when it is on this emulator's CDN origin, else None.

        Raises:
            NotFound: the URL is on the CDN origin but names no asset.
        """
        with self._lock:
            base = self._cdn_url
        if not url.startswith(base + "/"):
            return None
        path = urlsplit(url).path
        found = self.asset(path)
        if found is None:
            raise NotFound(f"{path} is not on the emulator's CDN")
        return found

    def _sample_asset(self) -> Asset:
        if self._sample is None:
            from prefect_kandinsky.assets import SAMPLE_IMAGE_CONTENT_TYPE, sample_image_bytes

            self._sample = Asset(sample_image_bytes(), SAMPLE_IMAGE_CONTENT_TYPE)
        return self._sample

    # -- webhooks (delivered by the engine) ----------------------------------------------

    def _post_webhook(self, job: _Job, *, terminal: bool) -> None:
        if not job.webhook_url:
            return
        self._outbox.append(
            WebhookMessage(
                request_id=job.request_id,
                url=job.webhook_url,
                status=job.status,
                payload=self._payload(job),
                terminal=terminal,
                generation=self._generation,
            )
        )

    def take_webhooks(self) -> list[WebhookMessage]:
        """Hand out the callbacks waiting to be posted, in order (each only once)."""
        with self._lock:
            messages = list(self._outbox)
            self._outbox.clear()
            return messages

    def record_webhook_delivery(
        self, message: WebhookMessage, *, response_code: int | None, error: str | None = None
    ) -> None:
        """Note how a callback went (ignored if the state was reset since it was queued)."""
        with self._lock:
            if message.generation != self._generation:
                return
            self._deliveries.append(
                WebhookDelivery(
                    at=_utc(self._clock()),
                    request_id=message.request_id,
                    url=message.url,
                    status=message.status,
                    terminal=message.terminal,
                    response_code=response_code,
                    error=error,
                )
            )
            self._changed.notify_all()

    @property
    def webhook_deliveries(self) -> list[WebhookDelivery]:
        """Callbacks posted so far, in order."""
        with self._lock:
            return list(self._deliveries)

    def pending_webhooks(self) -> int:
        """Callbacks queued and not yet handed to the engine."""
        with self._lock:
            return len(self._outbox)

    # -- submits in flight (counted by the HTTP layer) ----------------------------------

    def begin_submit(self) -> int:
        """Count a submit request arriving; pass the returned token to :meth:`end_submit`."""
        with self._lock:
            self._submits_in_flight += 1
            self._max_submits_in_flight = max(self._max_submits_in_flight, self._submits_in_flight)
            return self._generation

    def end_submit(self, token: int) -> None:
        """Count a submit request whose answer ended (sent, dropped or released).

        A request that began before a :meth:`reset` is no longer counted.
        """
        with self._lock:
            if token == self._generation and self._submits_in_flight > 0:
                self._submits_in_flight -= 1

    @property
    def submits_in_flight(self) -> int:
        """Submit requests between arrival and the end of their answer, now."""
        with self._lock:
            return self._submits_in_flight

    @property
    def max_submits_in_flight(self) -> int:
        """The most submit requests in flight at once since the start or the last reset."""
        with self._lock:
            return self._max_submits_in_flight

    def stats_json(self) -> dict[str, int]:
        """The submit counters as JSON (``GET /_emulator/stats``)."""
        with self._lock:
            return {
                "submits_in_flight": self._submits_in_flight,
                "max_submits_in_flight": self._max_submits_in_flight,
            }

    # -- request log ---------------------------------------------------------------------

    def log_request(self, record: RequestRecord) -> None:
        """Append one request to the log."""
        with self._lock:
            self._log.append(record)

    def record_request(
        self,
        *,
        origin: Origin,
        kind: RequestKind,
        method: str,
        path: str,
        status_code: int | None,
        header_names: Iterable[str],
        request_id: str | None = None,
        fault: str | None = None,
        range_header: str | None = None,
    ) -> RequestRecord:
        """Build a :class:`RequestRecord` stamped with the clock and log it."""
        names = frozenset(name.lower() for name in header_names)
        record = RequestRecord(
            at=_utc(self._clock()),
            origin=origin,
            kind=kind,
            method=method,
            path=path,
            status_code=status_code,
            header_names=names,
            key_present="ocp-apim-subscription-key" in names,
            request_id=request_id,
            fault=fault,
            range_header=range_header,
        )
        self.log_request(record)
        return record

    def requests(
        self,
        kind: RequestKind | None = None,
        *,
        origin: Origin | None = None,
        request_id: str | None = None,
    ) -> list[RequestRecord]:
        """Logged requests, oldest first, optionally filtered."""
        with self._lock:
            return [
                record
                for record in self._log
                if (kind is None or record.kind == kind)
                and (origin is None or record.origin == origin)
                and (request_id is None or record.request_id == request_id)
            ]

    def count(
        self,
        kind: RequestKind | None = None,
        *,
        origin: Origin | None = None,
        request_id: str | None = None,
    ) -> int:
        """How many requests were logged: ``count("submit")``, ``count("status", request_id=x)``."""
        return len(self.requests(kind, origin=origin, request_id=request_id))
