"""The emulator's state machine: jobs, wallet, progression, faults, request log, webhook outbox.

:class:`EmulatorState` is the facade over the parts, each in a module of its own:
``config`` (settings and constants), ``errors`` (the gateway's error answers), ``faults``
(faults and outcomes planned by tests), ``wallet`` (balance and ledger), ``jobs`` (a job's
record, the clock, request ids, the body check), ``progression`` (how jobs move, mixed into
the state) and ``records`` (snapshots and logs). Their names are importable from here too, as
before the split.

There is no HTTP in these modules (like moto's ``models.py``): ``app.py`` maps routes onto these
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
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any, cast
from urllib.parse import urlsplit

from prefect_kandinsky.gateway.models import JobStatus
from prefect_kandinsky.gateway.prices import estimate_cost_usd

from .config import (
    DEFAULT_BALANCE_USD,
    DEFAULT_CDN_URL,
    DEFAULT_FAILED_ERROR,
    DEFAULT_STALL_SECONDS,
    DEFAULT_SYSTEM_ERROR,
    EMULATOR_API_KEY,
    FAULT_ACTIONS,
    MAX_LOG_RECORDS,
    MAX_UPLOAD_BYTES,
    MEDIA_TYPE,
    ORIGINS,
    REQUEST_KINDS,
    ROUTES,
    SAMPLE_IMAGE_CDN_PATH,
    WEBHOOK_MODES,
    EmulatorConfig,
    FaultAction,
    LedgerKind,
    Origin,
    RenderState,
    RequestKind,
    Route,
    WebhookMode,
    decimal_amount,
)
from .errors import (
    BadRequest,
    GatewayError,
    InsufficientBalance,
    InvalidTransition,
    MediaExpired,
    ModelNotFound,
    NotFound,
    Unauthorized,
)
from .faults import Fault, Outcome
from .jobs import (
    TERMINAL_STATUSES,
    Clock,
    FakeClock,
    Job,
    new_request_id,
    validate_body,
)
from .progression import JobProgression
from .records import (
    Asset,
    JobView,
    LedgerEntry,
    RenderTask,
    RequestRecord,
    WebhookDelivery,
    WebhookMessage,
    format_iso_z,
    format_plain,
    utc,
)
from .wallet import Wallet

__all__ = [
    "DEFAULT_BALANCE_USD",
    "DEFAULT_CDN_URL",
    "DEFAULT_FAILED_ERROR",
    "DEFAULT_STALL_SECONDS",
    "DEFAULT_SYSTEM_ERROR",
    "EMULATOR_API_KEY",
    "FAULT_ACTIONS",
    "MAX_LOG_RECORDS",
    "MAX_UPLOAD_BYTES",
    "MEDIA_TYPE",
    "ORIGINS",
    "REQUEST_KINDS",
    "ROUTES",
    "SAMPLE_IMAGE_CDN_PATH",
    "TERMINAL_STATUSES",
    "WEBHOOK_MODES",
    "Asset",
    "BadRequest",
    "Clock",
    "EmulatorConfig",
    "EmulatorState",
    "FakeClock",
    "Fault",
    "FaultAction",
    "GatewayError",
    "InsufficientBalance",
    "InvalidTransition",
    "JobView",
    "LedgerEntry",
    "LedgerKind",
    "MediaExpired",
    "ModelNotFound",
    "NotFound",
    "Origin",
    "Outcome",
    "RenderState",
    "RenderTask",
    "RequestKind",
    "RequestRecord",
    "Route",
    "Unauthorized",
    "WebhookDelivery",
    "WebhookMessage",
    "WebhookMode",
    "format_iso_z",
    "format_plain",
    "new_request_id",
]

_UPLOAD_EXTENSIONS = {
    "image/png": ".png",
    "image/jpeg": ".jpg",
    "image/webp": ".webp",
    "image/gif": ".gif",
    "image/bmp": ".bmp",
    "image/tiff": ".tiff",
}


class EmulatorState(JobProgression):
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
        self._jobs: dict[str, Job] = {}
        self._wallet = Wallet(self._baseline.balance_usd)
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
            self._wallet.reset(self._baseline.balance_usd)
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
            return self._wallet.balance_usd

    @property
    def ledger(self) -> list[LedgerEntry]:
        """Every debit, refund and adjustment, oldest first."""
        with self._lock:
            return list(self._wallet.entries)

    def set_balance(self, amount_usd: Decimal | str | float) -> Decimal:
        """Set the balance (recorded in the ledger as an adjustment); returns it."""
        with self._lock:
            return self._set_balance(decimal_amount(amount_usd, "balance_usd"))

    def deposit(self, amount_usd: Decimal | str | float) -> Decimal:
        """Add funds; returns the new balance."""
        with self._lock:
            return self._set_balance(
                self._wallet.balance_usd + decimal_amount(amount_usd, "amount_usd")
            )

    def _set_balance(self, amount: Decimal) -> Decimal:
        return self._wallet.adjust(amount, utc(self._clock()))

    def wallet_json(self) -> dict[str, Any]:
        """Balance and ledger as JSON (``GET /_emulator/wallet``)."""
        with self._lock:
            return self._wallet.to_json()

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
            request = validate_body(body)
            url, mode = self._validate_webhook(webhook_url, webhook_mode)
            cost = estimate_cost_usd(request.resolution, request.duration_seconds) or Decimal(0)
            now = self._clock()
            request_id = new_request_id(model_id, now)
            self._wallet.debit(cost, utc(now), request_id)
            outcome = self._next_outcome()
            job = Job(
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

    def _payload(self, job: Job) -> dict[str, Any]:
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

    def _post_webhook(self, job: Job, *, terminal: bool) -> None:
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
                    at=utc(self._clock()),
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
            at=utc(self._clock()),
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
