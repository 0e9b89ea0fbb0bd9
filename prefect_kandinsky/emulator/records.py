"""What happened, for tests and the admin routes: snapshots of jobs, wallet movements, requests
received, renders and callbacks waiting or sent, in-memory assets. Frozen values, no behaviour."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

from prefect_kandinsky.gateway.models import JobStatus

from .config import LedgerKind, Origin, RequestKind, WebhookMode


def utc(timestamp: float) -> datetime:
    """A clock reading (seconds since the epoch) as an aware UTC datetime."""
    return datetime.fromtimestamp(timestamp, tz=timezone.utc)


def format_iso_z(timestamp: float) -> str:
    """``2026-05-22T13:17:32.110Z``: the gateway's form of ``created_at``."""
    moment = utc(timestamp)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def format_plain(timestamp: float) -> str:
    """``2026-05-22 13:19:23``: the gateway's form of ``updated_at`` and ``completed_at``."""
    return utc(timestamp).strftime("%Y-%m-%d %H:%M:%S")


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
