"""How the emulated gateway behaves: its constants, the names of its routes and modes, and
:class:`EmulatorConfig`, which every setting can change at run time."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Literal, get_args

from prefect_kandinsky.gateway.models import DEFAULT_MODEL_ID

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


def decimal_amount(value: object, name: str) -> Decimal:
    """``value`` as a finite Decimal of USD; ``ValueError`` naming ``name`` otherwise."""
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
        object.__setattr__(self, "balance_usd", decimal_amount(self.balance_usd, "balance_usd"))
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
                changes[name] = decimal_amount(value, name)
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
