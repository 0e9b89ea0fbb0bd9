"""What tests plan ahead: a :class:`Fault` (a route misbehaving) and an :class:`Outcome` (how the
next job ends). Both are plain values; the state queues and consumes them."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from prefect_kandinsky.gateway.models import JobStatus

from .config import (
    DEFAULT_FAILED_ERROR,
    DEFAULT_STALL_SECONDS,
    DEFAULT_SYSTEM_ERROR,
    FAULT_ACTIONS,
    ROUTES,
    FaultAction,
    Route,
)


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
                f"Rate limit is exceeded. Try again in {seconds_text(self.retry_seconds)} seconds."
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
            headers["Retry-After"] = seconds_text(self.retry_seconds)
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


def seconds_text(seconds: float | None) -> str:
    """Seconds as the gateway writes them: ``1``, ``0.5``; empty for None."""
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
