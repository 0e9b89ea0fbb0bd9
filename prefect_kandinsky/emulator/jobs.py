"""A job as the state keeps it, the clock it runs on, the request id it gets, and the check of
the body that creates it. The state machine that moves jobs is :class:`EmulatorState`."""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal

from pydantic import ValidationError

from prefect_kandinsky.gateway.models import JobStatus, VideoRequest

from .config import RenderState, WebhookMode
from .errors import BadRequest
from .faults import Outcome

TERMINAL_STATUSES = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.ERROR})

STATUS_ORDER = {
    JobStatus.QUEUED: 0,
    JobStatus.PROCESSING: 1,
    JobStatus.COMPLETED: 2,
    JobStatus.FAILED: 2,
    JobStatus.ERROR: 2,
}
"""Where each status stands in QUEUED -> PROCESSING -> a terminal status."""

Clock = Callable[[], float]
"""Returns the current time as seconds since the epoch, like :func:`time.time`."""


@dataclass
class Job:
    """One job as the state keeps it (mutable, guarded by the state's lock); tests read
    :class:`JobView` snapshots instead."""

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


def validate_body(body: object) -> VideoRequest:
    """The submit body as a :class:`VideoRequest`; :class:`BadRequest` naming the field."""
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
