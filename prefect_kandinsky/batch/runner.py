"""Batches: a manifest of rows, one paid video per row, at about the cost of a plain script.

```
manifest (CSV/JSONL: local, s3://, any filesystem block; or a list of rows)
  -> parse and validate every row, all problems at once       nothing paid yet
  -> upload or presign private images, check every image      nothing paid yet
  -> estimate the cost, refuse over max_cost_usd              nothing paid yet
  -> per row: submit (shared rate limit) -> record the request id in the ledger -> wait
     -> download, hash, store -> record the file               (ledger.py)
  -> progress while rows finish; a table and a summary at the end; a BatchResult
```

Each row is keyed by the batch (the manifest's location, or ``batch_id``) and its ``id``
column, or its content; its record in the ledger says what was paid for. A re-run submits no
row that is stored, submitted or completed: it waits for or downloads those by request id. A
row that ended ERROR (not charged) is submitted again; a FAILED row (charged) only with
``retry_failed=True``; a row whose submit may or may not have reached the gateway (the process
died or the answer was lost) only with ``resubmit_uncertain=True``. A failed row never stops
the others, and whatever fails after a submit (the wait, the download, the store, anything
unexpected) is written onto the row's latest record: its request id, attempts and charge
stay, so a re-run resumes that job instead of paying for another. A row's ``filename`` is
checked for length and for a file already there before anything is paid (``targets.py``).

The rows of one flow run are worked by one event loop with one connection pool and no task
run per row: orchestration costs a flow run, the artifacts and (with ``rate_limit``) one
concurrency-limit call per submit, whatever the number of rows. Larger batches can be split
into child flow runs of a deployment (``chunk_deployment``), picked up by several workers that
share one global rate limit and the ledger (in shared result storage).

The flow run ends Completed only if every row is stored; otherwise it ends Failed with
:class:`~prefect_kandinsky.gateway.exceptions.KandinskyBatchIncompleteError`, whose ``result`` holds
every row's outcome (``allow_failures=True`` returns the result instead).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Literal

from prefect.concurrency.asyncio import rate_limit as acquire_rate_limit
from prefect.logging import get_run_logger
from prefect.runtime import flow_run as runtime_flow_run
from pydantic import BaseModel, Field

from prefect_kandinsky.batch.artifacts import BatchProgress
from prefect_kandinsky.batch.lease import BatchLease
from prefect_kandinsky.batch.ledger import Attempt, Ledger, RowRecord, RowState
from prefect_kandinsky.batch.manifests import BatchRow
from prefect_kandinsky.batch.problems import RowProblem, manifest_error
from prefect_kandinsky.credentials import KandinskyCredentials
from prefect_kandinsky.events.adoption import (
    ADOPTED_NOTE,
    AmbiguousCallbackError,
    CallbackWatch,
)
from prefect_kandinsky.events.tokens import new_nonce, run_callback_url
from prefect_kandinsky.events.waits import (
    DEFAULT_SAFETY_POLL_SECONDS,
    EventSignals,
    wait_with_signals,
)
from prefect_kandinsky.gateway.client import KandinskyClient
from prefect_kandinsky.gateway.constants import (
    DEFAULT_MAX_POLL_INTERVAL,
    DEFAULT_POLL_INTERVAL,
    DEFAULT_WAIT_TIMEOUT_SECONDS,
)
from prefect_kandinsky.gateway.exceptions import (
    KandinskyAPIError,
    KandinskyError,
    KandinskyImageError,
    KandinskyMediaExpiredError,
    KandinskySubmitUncertainError,
)
from prefect_kandinsky.gateway.models import (
    CompletedVideo,
    JobStatus,
    StatusResponse,
    VideoRequest,
    WebhookMode,
)
from prefect_kandinsky.gateway.prices import plural
from prefect_kandinsky.media.images import check_images, redact_url
from prefect_kandinsky.media.storage import Destination, output_filename, persist_media
from prefect_kandinsky.media.uploads import prepare_images
from prefect_kandinsky.progress import StatusRead, report

if TYPE_CHECKING:
    from prefect_aws import S3Bucket

DEFAULT_MAX_CONCURRENCY = 16
"""Renders in flight at once per flow run: submitted and not yet finished."""
DEFAULT_DOWNLOADS = 8
"""Downloads at once per flow run."""
DEFAULT_CHUNK_SIZE = 500
"""Rows per child flow run when a batch is split over a deployment."""
THUMBNAIL_WIDTH = 96
"""Width of the poster frame each stored row keeps for the batch summary, in pixels."""
STOPPING_CODES = frozenset({401, 402, 403})
"""Refusals that every later submit would get too: the batch stops submitting."""

_SUBMITTABLE: frozenset[RowState] = frozenset({"pending", "refused", "error"})


@dataclass(frozen=True)
class BatchPhase:
    """What a batch is doing now, for displays: "checking images", "rendering 3, storing 1"."""

    text: str
    working: bool = False
    """True once rows are being worked (the text then counts them)."""


class PreparedRow(BaseModel):
    """A validated row, keyed, with an image URL the gateway can fetch (when it is submitted)."""

    key: str = Field(description="The row's idempotency key.")
    line: int = Field(description="The row's line in the manifest.")
    row_id: str | None = Field(default=None, description="The row's id in the manifest.")
    prompt: str = Field(description="The row's prompt.")
    request: VideoRequest | None = Field(
        default=None,
        description="The request to submit; None for a row that will not be submitted now.",
    )
    estimated_cost_usd: Decimal | None = Field(
        default=None, description="The documented price of the row."
    )
    filename: str | None = Field(default=None, description="The file name at the destination.")
    folder: str | None = Field(default=None, description="A folder under the destination.")


def needs_submit(record: RowRecord | None, *, retry_failed: bool, resubmit_uncertain: bool) -> bool:
    """Whether a row with this ledger record is to be submitted (again) by this run."""
    if record is None or record.state in _SUBMITTABLE:
        return True
    if record.state == "failed":
        return retry_failed
    if record.state in ("submitting", "uncertain"):
        return resubmit_uncertain
    return False


async def resolve_images(
    rows: Sequence[tuple[str, BatchRow]],
    *,
    bucket: S3Bucket | None,
    check: bool,
    expires_seconds: int,
    source: str,
    problems: Sequence[RowProblem] = (),
    gateway_url: str | None = None,
) -> dict[str, str]:
    """The image URL of each row to submit; every problem at once, before anything is paid.

    ``problems`` found earlier (e.g. files already at the destination) are reported with the
    images' in one :class:`~prefect_kandinsky.gateway.exceptions.KandinskyManifestError`.
    """
    problems = list(problems)
    if bucket is None:
        private = [row for _, row in rows if row.image_kind != "url"]
        if private:
            problems.append(_no_bucket_problem(private))
        rows = [(key, row) for key, row in rows if row.image_kind == "url"]
    sources = [row.image for _, row in rows]
    prepared = await prepare_images(sources, bucket=bucket, expires_seconds=expires_seconds)
    urls: dict[str, str] = {}
    for key, row in rows:
        outcome = prepared[row.image]
        if isinstance(outcome, KandinskyImageError):
            problems.append(_problem(row, outcome))
        else:
            urls[key] = outcome.url
    if check and urls:
        checked = await check_images(urls.values(), gateway_url=gateway_url)
        for key, row in rows:
            verdict = checked.get(urls[key]) if key in urls else None
            if isinstance(verdict, KandinskyImageError):
                problems.append(_problem(row, verdict))
    if problems:
        raise manifest_error(source, problems)
    return urls


def _no_bucket_problem(rows: Sequence[BatchRow]) -> RowProblem:
    """One problem for every row whose image needs a bucket, when the batch has none."""
    lines = ", ".join(str(row.line) for row in rows[:10]) + (", ..." if len(rows) > 10 else "")
    return RowProblem(
        line=None,
        scope="manifest",
        field="image",
        message=f"{plural(len(rows), 'row')} (lines {lines}) name a local file or an s3:// "
        "object as image, which the gateway cannot fetch: pass input_bucket, the name of an "
        "S3Bucket block to upload and presign them through (CLI: --input-bucket BLOCK_NAME), "
        "or give http(s) URLs",
    )


def _problem(row: BatchRow, error: KandinskyError) -> RowProblem:
    return RowProblem(
        line=row.line,
        row_id=row.id,
        field="image",
        value=redact_url(row.image),
        message=error.message,
    )


def prepare_rows(
    rows: Sequence[tuple[str, BatchRow]], urls: Mapping[str, str], folder: str | None
) -> list[PreparedRow]:
    """Every keyed row with the image URL to send and its folder under the destination."""
    return [
        PreparedRow(
            key=key,
            line=row.line,
            row_id=row.id,
            prompt=row.prompt,
            request=row.request(urls[key]) if key in urls else None,
            estimated_cost_usd=row.estimated_cost_usd,
            filename=row.filename,
            folder="/".join(part.strip("/") for part in (folder, row.destination) if part) or None,
        )
        for key, row in rows
    ]


# -- working the rows ---------------------------------------------------------------------------


class RowSettings(BaseModel):
    """How the rows of a flow run are worked (see ``generate_videos`` for each setting)."""

    max_concurrency: int = Field(default=DEFAULT_MAX_CONCURRENCY, ge=1)
    downloads: int = Field(default=DEFAULT_DOWNLOADS, ge=1)
    rate_limit: str | None = None
    wait_timeout_seconds: float = Field(default=DEFAULT_WAIT_TIMEOUT_SECONDS, gt=0)
    poll_interval_seconds: float = Field(default=DEFAULT_POLL_INTERVAL, gt=0)
    max_poll_interval_seconds: float = Field(default=DEFAULT_MAX_POLL_INTERVAL, gt=0)
    retry_failed: bool = False
    resubmit_uncertain: bool = False
    overwrite: bool = False
    webhook_base_url: str | None = None
    webhook_mode: WebhookMode | None = None
    wait: Literal["poll", "events"] = "poll"
    safety_poll_seconds: float = Field(default=DEFAULT_SAFETY_POLL_SECONDS, gt=0)


class RenderSlots:
    """Renders in flight for one run, at most ``limit``, counting those of earlier runs.

    A row submitted by an earlier run (killed, or stopped waiting) is rendering at the
    gateway already: its slot is reserved before any row of this run starts, so new submits
    wait until the renders found in flight plus this run's own are under the limit.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._changed = asyncio.Condition()

    def reserve(self, count: int) -> None:
        """Count ``count`` renders already in flight (they take their slots at once)."""
        self.used += count

    @contextlib.asynccontextmanager
    async def hold(self, *, reserved: bool) -> AsyncIterator[None]:
        """A slot for one render: one reserved earlier, or the next free one."""
        if not reserved:
            async with self._changed:
                await self._changed.wait_for(lambda: self.used < self.limit)
                self.used += 1
        try:
            yield
        finally:
            async with self._changed:
                self.used -= 1
                self._changed.notify()


@dataclass
class _Rows:
    """Works rows through submit, wait and persist, writing the ledger at each step."""

    client: KandinskyClient
    ledger: Ledger
    destination: Destination
    settings: RowSettings
    progress: BatchProgress
    callback: Callable[[str], str] | None = None
    signals: EventSignals | None = None
    lease: BatchLease | None = None
    adoptions: CallbackWatch | None = None
    stopped: str | None = None
    latest: dict[str, RowRecord] = field(default_factory=dict)
    doing: dict[str, int] = field(default_factory=dict)
    in_flight: RenderSlots = field(init=False)
    downloads: asyncio.Semaphore = field(init=False)

    def __post_init__(self) -> None:
        self.in_flight = RenderSlots(self.settings.max_concurrency)
        self.downloads = asyncio.Semaphore(self.settings.downloads)

    async def run(
        self, rows: Sequence[PreparedRow], known: Mapping[str, RowRecord]
    ) -> list[RowRecord]:
        """Every row's final record, in the order of ``rows``.

        Rows an earlier run submitted (still rendering) reserve their slots and start first,
        so no new submit goes out while they hold the run's ``max_concurrency``.
        """
        resumed = {row.key for row in rows if _rendering(known.get(row.key))}
        self.in_flight.reserve(len(resumed))
        order = sorted(range(len(rows)), key=lambda i: rows[i].key not in resumed)
        done = await asyncio.gather(
            *(self._row(rows[i], known.get(rows[i].key), rows[i].key in resumed) for i in order)
        )
        records: list[RowRecord | None] = [None] * len(rows)
        for index, record in zip(order, done, strict=True):
            records[index] = record
        return [record for record in records if record is not None]

    async def _row(self, row: PreparedRow, record: RowRecord | None, reserved: bool) -> RowRecord:
        record = record or new_record(row)
        try:
            record = await self._advance(row, record, reserved)
        except Exception as exc:  # one row's surprise never stops the others
            # From the last record written, not the one this row started with: a row that
            # was submitted keeps its request id, attempts and charge, and a re-run resumes
            # that job instead of paying for another.
            latest = self.latest.get(row.key, record)
            error = f"{type(exc).__name__}: {exc}"
            try:
                record = await self._save(latest, error=error)
            except Exception:  # the ledger itself fails: the last record written stands
                record = latest.model_copy(update={"error": error})
        await self.progress.row_done(record)
        report(record)
        return record

    @contextlib.contextmanager
    def _phase(self, step: str) -> Iterator[None]:
        """Count a row in ``step`` (submitting, rendering, storing) while the block runs."""
        self.doing[step] = self.doing.get(step, 0) + 1
        self._report_phase()
        try:
            yield
        finally:
            self.doing[step] -= 1
            self._report_phase()

    def _report_phase(self) -> None:
        steps = ("submitting", "rendering", "storing")
        text = ", ".join(f"{step} {self.doing[step]}" for step in steps if self.doing.get(step))
        report(BatchPhase(text or "finishing", working=True))

    async def _save(self, record: RowRecord, **changes: Any) -> RowRecord:
        saved = await self.ledger.write(record.model_copy(update=changes))
        self.latest[saved.key] = saved
        return saved

    async def _advance(self, row: PreparedRow, record: RowRecord, reserved: bool) -> RowRecord:
        settings = self.settings
        status: StatusResponse | None = None
        if reserved:  # rendering since an earlier run: its slot is counted already
            async with self.in_flight.hold(reserved=True):
                with self._phase("rendering"):
                    record, status = await self._wait(record)
            if record.state != "completed":
                return record
            async with self.downloads:
                with self._phase("storing"):
                    return await self._persist(row, record, status)
        if record.state == "stored":
            return record
        if record.state == "failed" and not settings.retry_failed:
            return record
        if record.state in ("submitting", "uncertain"):
            record = await self._adopt(record) or record
        if record.state in ("submitting", "uncertain") and not settings.resubmit_uncertain:
            return await self._save(
                record,
                state="uncertain",
                error=record.error
                or "the process stopped while submitting: the job may exist and be billed; "
                "not submitted again (pass resubmit_uncertain=True once you checked the "
                "gateway)",
            )
        if record.state != "completed":
            async with self.in_flight.hold(reserved=False):
                if record.state != "submitted":  # an adopted job is submitted already
                    with self._phase("submitting"):
                        record = await self._submit(row, record)
                    if record.state != "submitted":
                        return record
                with self._phase("rendering"):
                    record, status = await self._wait(record)
            if record.state != "completed":
                return record
        async with self.downloads:
            with self._phase("storing"):
                return await self._persist(row, record, status)

    async def _submit(self, row: PreparedRow, record: RowRecord) -> RowRecord:
        if self.lease is not None and self.lease.lost:
            self.stopped = f"not submitted: {self.lease.lost}"
        if self.stopped is not None:
            return await self._save(record, state="pending", error=self.stopped)
        if row.request is None:
            return await self._save(
                record, state="pending", error="not submitted: its image was not prepared"
            )
        if self.settings.rate_limit:
            await acquire_rate_limit(self.settings.rate_limit, strict=True)
        nonce = new_nonce() if self.callback else None  # recorded before the submit is sent
        attempt = Attempt(submitted_at=datetime.now(timezone.utc), callback_nonce=nonce)
        attempts = [*record.attempts, attempt]
        record = await self._save(
            record, state="submitting", request_id=None, attempts=attempts, error=None
        )
        try:
            answer = await self.client.submit(
                row.request,
                webhook_url=self.callback(nonce) if self.callback and nonce else None,
                webhook_mode=self.settings.webhook_mode if self.callback else None,
            )
        except KandinskySubmitUncertainError as exc:
            return await self._adopt(record) or await self._save(
                record, state="uncertain", error=str(exc)
            )
        except KandinskyAPIError as exc:
            attempts[-1] = attempt.model_copy(update={"charged_usd": Decimal(0)})
            if exc.status_code in STOPPING_CODES:
                self.stopped = f"not submitted: an earlier submit was refused: {exc}"
            return await self._save(record, state="refused", attempts=attempts, error=str(exc))
        except KandinskyError as exc:  # never reached the gateway: nothing to pay
            attempts.pop()
            return await self._save(record, state="pending", attempts=attempts, error=str(exc))
        attempts[-1] = attempt.model_copy(
            update={"request_id": answer.request_id, "status": answer.status.value}
        )
        return await self._save(
            record, state="submitted", request_id=answer.request_id, attempts=attempts
        )

    async def _adopt(self, record: RowRecord) -> RowRecord | None:
        """The row submitted, if its lost submit's job is found by its callback's nonce."""
        nonce = record.attempts[-1].callback_nonce if record.attempts else None
        if nonce is None or self.adoptions is None:
            return None
        try:
            request_id = await self.adoptions.request_id(
                nonce, timeout=self.settings.wait_timeout_seconds
            )
        except AmbiguousCallbackError as exc:
            get_run_logger().error("Row %s: not adopting: %s", record.row_id or record.line, exc)
            return None
        if request_id is None:
            return None
        get_run_logger().warning(
            "Row %s: generation %s was %s (the submit's answer was lost)",
            record.row_id or f"line {record.line}",
            request_id,
            ADOPTED_NOTE,
        )
        attempts = list(record.attempts)
        attempts[-1] = attempts[-1].model_copy(update={"request_id": request_id, "adopted": True})
        return await self._save(
            record, state="submitted", request_id=request_id, attempts=attempts, error=None
        )

    async def _wait(self, record: RowRecord) -> tuple[RowRecord, StatusResponse | None]:
        request_id = record.request_id
        assert request_id is not None
        settings = self.settings

        def seen(status: StatusResponse) -> None:
            report(StatusRead(request_id, status))

        try:
            if self.signals is not None:
                status = await wait_with_signals(
                    self.client,
                    request_id,
                    self.signals,
                    timeout=settings.wait_timeout_seconds,
                    safety_poll_seconds=settings.safety_poll_seconds,
                    on_poll=seen,
                )
            else:
                status = await self.client.wait(
                    request_id,
                    timeout=settings.wait_timeout_seconds,
                    poll_interval=settings.poll_interval_seconds,
                    max_poll_interval=settings.max_poll_interval_seconds,
                    on_poll=seen,
                    raise_on_failure=False,
                )
        except KandinskyError as exc:  # KandinskyWaitTimeoutError among them
            # Still at the gateway (or unreachable for now): a re-run waits for it again.
            return await self._save(record, error=str(exc)), None
        attempts = list(record.attempts)
        charged = record.estimated_cost_usd  # None: charged, at a price not documented
        outcome: dict[JobStatus, tuple[RowState, Decimal | None]] = {
            JobStatus.COMPLETED: ("completed", charged),
            JobStatus.FAILED: ("failed", charged),
            JobStatus.ERROR: ("error", Decimal(0)),
        }
        state, cost = outcome[status.status]
        attempts[-1] = attempts[-1].model_copy(
            update={"status": status.status.value, "charged_usd": cost}
        )
        record = await self._save(
            record,
            state=state,
            attempts=attempts,
            media_url=status.media_urls[0] if status.media_urls else None,
            error=None if state == "completed" else status.error or status.status.value,
        )
        return record, status

    async def _persist(
        self, row: PreparedRow, record: RowRecord, status: StatusResponse | None
    ) -> RowRecord:
        request_id = record.request_id
        assert request_id is not None
        for attempt in (1, 2):
            if status is None or attempt == 2:  # resuming, or the CDN link expired: fresh links
                status = await self.client.get_status(request_id)
            video = CompletedVideo(
                request_id=request_id,
                status=status,
                media_urls=status.media_urls,
                media_type=status.output.media_type if status.output else None,
                request=row.request,
            )
            name = row.filename or output_filename(
                request_id, video.media_type, video.media_urls[0] if video.media_urls else ""
            )
            try:
                stored = await persist_media(
                    self.client,
                    video,
                    self.destination,
                    filename="/".join(part for part in (row.folder, name) if part),
                    overwrite=self.settings.overwrite,
                    partial_path=self.ledger.partial_path(request_id),
                    preview=1,
                    preview_width=THUMBNAIL_WIDTH,
                )
            except KandinskyMediaExpiredError:
                if attempt == 2:
                    raise
                continue
            first = record.attempts[-1].submitted_at if record.attempts else None
            return await self._save(
                record,
                state="stored",
                uri=stored.uri,
                public_url=stored.public_url,
                sha256=stored.sha256,
                size_bytes=stored.size_bytes,
                thumbnail=stored.preview.poster if stored.preview else None,
                seconds=(datetime.now(timezone.utc) - first).total_seconds() if first else None,
                error=None,
            )
        raise AssertionError("unreachable")


async def run_rows(
    rows: Sequence[PreparedRow],
    known: Mapping[str, RowRecord],
    *,
    credentials: KandinskyCredentials,
    destination: Destination,
    ledger: Ledger,
    settings: RowSettings,
    progress: BatchProgress,
    lease: BatchLease | None = None,
) -> list[RowRecord]:
    """Work ``rows`` in this event loop with one connection pool; return their records.

    With ``settings.webhook_base_url`` each submit names a callback URL of the receiver for
    this flow run; with ``settings.wait == "events"`` the rows wait on one subscription to
    Prefect's event stream (the receiver's events about this flow run's jobs), reading each
    job's status when its event comes, or every ``safety_poll_seconds``.
    """
    pool = settings.max_concurrency + settings.downloads + 4
    callback = _callback_maker(settings, credentials)
    async with contextlib.AsyncExitStack() as stack:
        client = await stack.enter_async_context(
            credentials.get_client(logger=get_run_logger(), max_connections=pool)
        )
        signals = None
        if settings.wait == "events":
            signals = await stack.enter_async_context(
                EventSignals(flow_run_id=str(runtime_flow_run.id))
            )
        adoptions = None
        if callback is not None or any(_lost_with_nonce(r) for r in known.values()):
            adoptions = await stack.enter_async_context(CallbackWatch())
        worker = _Rows(
            client,
            ledger,
            destination,
            settings,
            progress,
            callback,
            signals,
            lease,
            adoptions=adoptions,
        )
        return await worker.run(rows, known)


def _lost_with_nonce(record: RowRecord) -> bool:
    """Whether a row's submit may have been lost and its callback can still name its job."""
    return record.state in ("submitting", "uncertain") and bool(
        record.attempts and record.attempts[-1].callback_nonce
    )


def _callback_maker(
    settings: RowSettings, credentials: KandinskyCredentials
) -> Callable[[str], str] | None:
    """A maker of callback URLs of this flow run (from a nonce), or None without webhooks."""
    base = settings.webhook_base_url
    if settings.wait == "events" and base is None:
        raise ValueError(
            "wait='events' waits for the webhook receiver's events: pass webhook_base_url "
            "(the receiver's public https address), or use wait='poll'"
        )
    if base is None:
        return None
    secret = credentials.webhook_secret
    run_callback_url(base, secret, flow_run_id=runtime_flow_run.id)  # refuse a bad base now
    return lambda nonce: run_callback_url(
        base, secret, flow_run_id=runtime_flow_run.id, nonce=nonce
    )


def _rendering(record: RowRecord | None) -> bool:
    """Whether an earlier run left this row's job at the gateway, not yet finished."""
    return record is not None and record.state == "submitted" and record.request_id is not None


def new_record(row: PreparedRow, *, error: str | None = None) -> RowRecord:
    """The record of a row not started yet: pending, nothing paid."""
    return RowRecord(
        key=row.key,
        row_id=row.row_id,
        line=row.line,
        prompt=row.prompt,
        estimated_cost_usd=row.estimated_cost_usd,
        error=error,
    )
