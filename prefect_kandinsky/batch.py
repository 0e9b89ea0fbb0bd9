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
the others.

The rows of one flow run are worked by one event loop with one connection pool and no task
run per row: orchestration costs a flow run, the artifacts and (with ``rate_limit``) one
concurrency-limit call per submit, whatever the number of rows. Larger batches can be split
into child flow runs of a deployment (``chunk_deployment``), picked up by several workers that
share one global rate limit and the ledger (in shared result storage).

The flow run ends Completed only if every row is stored; otherwise it ends Failed with
:class:`~prefect_kandinsky.exceptions.KandinskyBatchIncompleteError`, whose ``result`` holds
every row's outcome (``allow_failures=True`` returns the result instead).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from typing import Annotated, Any, Literal

from prefect import flow
from prefect.blocks.core import Block
from prefect.concurrency.asyncio import rate_limit as acquire_rate_limit
from prefect.filesystems import WritableFileSystem
from prefect.logging import get_run_logger
from prefect.runtime import flow_run as runtime_flow_run
from prefect_aws import S3Bucket
from pydantic import BaseModel, Field

from prefect_kandinsky._constants import (
    DEFAULT_MAX_POLL_INTERVAL,
    DEFAULT_POLL_INTERVAL,
    DEFAULT_WAIT_TIMEOUT_SECONDS,
)
from prefect_kandinsky._watch import StatusRead, report
from prefect_kandinsky.artifacts import BatchProgress, publish_batch_artifacts
from prefect_kandinsky.client import KandinskyClient
from prefect_kandinsky.credentials import KandinskyCredentials
from prefect_kandinsky.exceptions import (
    KandinskyAPIError,
    KandinskyBatchIncompleteError,
    KandinskyError,
    KandinskyImageError,
    KandinskyManifestError,
    KandinskyMediaExpiredError,
    KandinskySubmitUncertainError,
)
from prefect_kandinsky.flows import load_credentials, load_destination
from prefect_kandinsky.inputs import check_images, prepare_images, presign_lifetime
from prefect_kandinsky.ledger import Attempt, Ledger, RowRecord, RowState, summarize
from prefect_kandinsky.manifests import (
    BatchRow,
    RowProblem,
    check_budget,
    default_batch_id,
    estimate_batch_cost,
    load_manifest,
    row_key,
)
from prefect_kandinsky.models import (
    CompletedVideo,
    JobStatus,
    StatusResponse,
    VideoRequest,
    WebhookMode,
)
from prefect_kandinsky.storage import Destination, output_filename, persist_media
from prefect_kandinsky.tasks import _callback_url
from prefect_kandinsky.waits import DEFAULT_SAFETY_POLL_SECONDS, EventSignals, wait_with_signals

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


class BatchResult(BaseModel):
    """Every row's outcome, and what the batch cost."""

    batch_id: str = Field(description="The batch's identity: the manifest or batch_id.")
    ledger: str = Field(description="Where the rows' records are.")
    rows: list[RowRecord] = Field(description="One record per row, in manifest order.")
    estimated_cost_usd: Decimal = Field(
        description="Documented price of what this run set out to submit."
    )
    unknown_cost_rows: int = Field(
        default=0, description="Rows of this run without a documented price (256P)."
    )

    @property
    def counts(self) -> dict[str, int]:
        """Rows per state, e.g. ``{"stored": 198, "failed": 2}``."""
        return summarize(self.rows)

    @property
    def complete(self) -> bool:
        """Whether every row's video is stored."""
        return all(row.done for row in self.rows)

    @property
    def charged_usd(self) -> Decimal:
        """What the gateway charged for the batch so far, by the documented prices."""
        return sum((row.charged_usd for row in self.rows), Decimal(0))

    def summary(self) -> str:
        """One line: counts and spend."""
        counts = ", ".join(f"{n} {state}" for state, n in sorted(self.counts.items()))
        return (
            f"{len(self.rows)} rows: {counts}; ${self.charged_usd:.2f} charged "
            f"(estimated ${self.estimated_cost_usd:.2f} for this run)"
        )


# -- deciding what each row needs --------------------------------------------------------------


def _needs_submit(
    record: RowRecord | None, *, retry_failed: bool, resubmit_uncertain: bool
) -> bool:
    if record is None or record.state in _SUBMITTABLE:
        return True
    if record.state == "failed":
        return retry_failed
    if record.state in ("submitting", "uncertain"):
        return resubmit_uncertain
    return False


async def _resolve_images(
    rows: Sequence[tuple[str, BatchRow]],
    *,
    bucket: S3Bucket | None,
    check: bool,
    expires_seconds: int,
    source: str,
) -> dict[str, str]:
    """The image URL of each row to submit; every problem at once, before anything is paid."""
    sources = [row.image for _, row in rows]
    prepared = await prepare_images(sources, bucket=bucket, expires_seconds=expires_seconds)
    problems: list[RowProblem] = []
    urls: dict[str, str] = {}
    for key, row in rows:
        outcome = prepared[row.image]
        if isinstance(outcome, KandinskyImageError):
            problems.append(_problem(row, outcome))
        else:
            urls[key] = outcome.url
    if check and urls:
        checked = await check_images(urls.values())
        for key, row in rows:
            verdict = checked.get(urls[key]) if key in urls else None
            if isinstance(verdict, KandinskyImageError):
                problems.append(_problem(row, verdict))
    if problems:
        raise KandinskyManifestError.from_problems(source, problems)
    return urls


def _problem(row: BatchRow, error: KandinskyError) -> RowProblem:
    return RowProblem(
        line=row.line, row_id=row.id, field="image", value=row.image, message=error.message
    )


def _prepare(
    rows: Sequence[tuple[str, BatchRow]], urls: Mapping[str, str], folder: str | None
) -> list[PreparedRow]:
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
    webhook_base_url: str | None = None
    webhook_mode: WebhookMode | None = None
    wait: Literal["poll", "events"] = "poll"
    safety_poll_seconds: float = Field(default=DEFAULT_SAFETY_POLL_SECONDS, gt=0)


@dataclass
class _Rows:
    """Works rows through submit, wait and persist, writing the ledger at each step."""

    client: KandinskyClient
    ledger: Ledger
    destination: Destination
    settings: RowSettings
    progress: BatchProgress
    callback: Callable[[], str] | None = None
    signals: EventSignals | None = None
    stopped: str | None = None
    in_flight: asyncio.Semaphore = field(init=False)
    downloads: asyncio.Semaphore = field(init=False)

    def __post_init__(self) -> None:
        self.in_flight = asyncio.Semaphore(self.settings.max_concurrency)
        self.downloads = asyncio.Semaphore(self.settings.downloads)

    async def run(
        self, rows: Sequence[PreparedRow], known: Mapping[str, RowRecord]
    ) -> list[RowRecord]:
        return list(await asyncio.gather(*(self._row(row, known.get(row.key)) for row in rows)))

    async def _row(self, row: PreparedRow, record: RowRecord | None) -> RowRecord:
        record = record or _new_record(row)
        try:
            record = await self._advance(row, record)
        except Exception as exc:  # one row's surprise never stops the others
            record = await self._save(record, error=f"{type(exc).__name__}: {exc}")
        await self.progress.row_done(record)
        report(record)
        return record

    async def _save(self, record: RowRecord, **changes: Any) -> RowRecord:
        return await self.ledger.write(record.model_copy(update=changes))

    async def _advance(self, row: PreparedRow, record: RowRecord) -> RowRecord:
        settings = self.settings
        if record.state == "stored":
            return record
        if record.state == "failed" and not settings.retry_failed:
            return record
        if record.state in ("submitting", "uncertain") and not settings.resubmit_uncertain:
            return await self._save(
                record,
                state="uncertain",
                error=record.error
                or "the process stopped while submitting: the job may exist and be billed; "
                "not submitted again (pass resubmit_uncertain=True once you checked the "
                "gateway)",
            )
        status: StatusResponse | None = None
        async with self.in_flight:
            if record.state not in ("submitted", "completed"):
                record = await self._submit(row, record)
                if record.state != "submitted":
                    return record
            if record.state == "submitted":
                record, status = await self._wait(record)
                if record.state != "completed":
                    return record
        async with self.downloads:
            return await self._persist(row, record, status)

    async def _submit(self, row: PreparedRow, record: RowRecord) -> RowRecord:
        if self.stopped is not None:
            return await self._save(record, state="pending", error=self.stopped)
        if row.request is None:
            return await self._save(
                record, state="pending", error="not submitted: its image was not prepared"
            )
        if self.settings.rate_limit:
            await acquire_rate_limit(self.settings.rate_limit, strict=True)
        attempt = Attempt(submitted_at=datetime.now(timezone.utc))
        attempts = [*record.attempts, attempt]
        record = await self._save(
            record, state="submitting", request_id=None, attempts=attempts, error=None
        )
        try:
            answer = await self.client.submit(
                row.request,
                webhook_url=self.callback() if self.callback else None,
                webhook_mode=self.settings.webhook_mode if self.callback else None,
            )
        except KandinskySubmitUncertainError as exc:
            return await self._save(record, state="uncertain", error=str(exc))
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
        charged = record.estimated_cost_usd or Decimal(0)
        outcome: dict[JobStatus, tuple[RowState, Decimal]] = {
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
        worker = _Rows(client, ledger, destination, settings, progress, callback, signals)
        return await worker.run(rows, known)


def _callback_maker(
    settings: RowSettings, credentials: KandinskyCredentials
) -> Callable[[], str] | None:
    """A maker of callback URLs of this flow run for the submits, or None without webhooks."""
    base = settings.webhook_base_url
    if settings.wait == "events" and base is None:
        raise ValueError(
            "wait='events' waits for the webhook receiver's events: pass webhook_base_url "
            "(the receiver's public https address), or use wait='poll'"
        )
    if base is None:
        return None
    _callback_url(base, None, credentials)  # refuse a missing secret or a bad base now
    return lambda: _callback_url(base, None, credentials)


# -- the flows ----------------------------------------------------------------------------------


async def _load_bucket(bucket: S3Bucket | str | None) -> S3Bucket | None:
    if bucket is None or isinstance(bucket, S3Bucket):
        return bucket
    name = bucket.removeprefix("s3-bucket/")
    return await S3Bucket.aload(name)


async def _load_ledger_location(location: str | None) -> str | WritableFileSystem | None:
    if location is None:
        return None
    slug = location.split("/", 1)[0]
    if "/" in location and slug in {"s3-bucket", "local-file-system", "remote-file-system"}:
        block = await Block.aload(location)
        if isinstance(block, WritableFileSystem):
            return block
    return location


def _slug(text: str, limit: int = 40) -> str:
    tail = text.rstrip("/").rsplit("/", 1)[-1]
    words = re.findall(r"[a-z0-9]+", tail.lower())
    return "-".join(words)[:limit].strip("-") or "rows"


def _batch_run_name() -> str:
    rows = runtime_flow_run.parameters.get("rows")
    name = runtime_flow_run.parameters.get("batch_id") or (
        rows if isinstance(rows, str) else f"{len(rows or [])}-rows"
    )
    return f"generate-videos-{_slug(str(name))}"


def _block_reference(value: object, what: str) -> str | None:
    """A saved block's ``slug/name``, for a child flow run's parameters (never its secrets)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, Block):
        name = value._block_document_name
        if name and not value._is_anonymous:
            return f"{type(value).get_block_type_slug()}/{name}"
    raise ValueError(
        f"{what} must be a saved block's name to split the batch over a deployment (child "
        "flow runs load it by name; a key never becomes a parameter); got an unsaved "
        f"{type(value).__name__}"
    )


async def _fan_out(
    rows: Sequence[PreparedRow],
    *,
    deployment: str,
    chunk_size: int,
    parameters: dict[str, Any],
    progress: BatchProgress,
) -> None:
    """Run the rows as child flow runs of ``deployment``, ``chunk_size`` rows each."""
    from prefect.deployments.flow_runs import arun_deployment

    chunks = [rows[i : i + chunk_size] for i in range(0, len(rows), chunk_size)]
    logger = get_run_logger()

    async def one(index: int, chunk: Sequence[PreparedRow]) -> None:
        label = f"{index + 1}-of-{len(chunks)}"
        child = await arun_deployment(
            deployment,
            parameters={
                **parameters,
                "rows": [row.model_dump(mode="json") for row in chunk],
                "label": label,
            },
            timeout=None,
            poll_interval=2,
            as_subflow=True,
            # A retried parent finds its children instead of starting the chunks again.
            idempotency_key=f"{runtime_flow_run.id}:{label}",
        )
        state = child.state
        logger.info(
            "Chunk %s (%d rows) ended %s", label, len(chunk), state.name if state else "unknown"
        )
        await progress.rows_done(len(chunk))

    await asyncio.gather(*(one(index, chunk) for index, chunk in enumerate(chunks)))


@flow(name="generate-videos-chunk", flow_run_name="generate-videos-chunk-{label}")
async def generate_videos_chunk(
    rows: list[PreparedRow],
    batch_id: str,
    credentials: str | None = None,
    destination: str = "output",
    ledger: str | None = None,
    label: str = "1-of-1",
    settings: RowSettings | None = None,
) -> dict[str, int]:
    """Work one chunk of a batch that ``generate_videos`` split over a deployment.

    Its rows are validated, keyed and their images checked by the parent flow run; this run
    submits, waits and stores them, writing the shared ledger, and returns the count of rows
    per state. Deploy it (see ``deployments/prefect.yaml``) and name the deployment in
    ``generate_videos(chunk_deployment=...)``.
    """
    book = await Ledger.open(await _load_ledger_location(ledger), batch_id)
    known = await book.read_all(row.key for row in rows)
    progress = BatchProgress(len(rows), title=f"Chunk {label} of {batch_id}")
    await progress.start(sum(1 for record in known.values() if record.done))
    records = await run_rows(
        rows,
        known,
        credentials=await load_credentials(credentials),
        destination=await load_destination(destination),
        ledger=book,
        settings=settings or RowSettings(),
        progress=progress,
    )
    await progress.finish()
    return summarize(records)


@flow(name="generate-videos", flow_run_name=_batch_run_name)
async def generate_videos(
    rows: str | list[VideoRequest | dict[str, Any]],
    credentials: KandinskyCredentials | str | None = None,
    destination: str | S3Bucket = "output",
    folder: str | None = None,
    max_concurrency: Annotated[int, Field(ge=1)] = DEFAULT_MAX_CONCURRENCY,
    max_cost_usd: Annotated[float, Field(ge=0)] | None = None,
    rate_limit: str | None = None,
    input_bucket: S3Bucket | str | None = None,
    batch_id: str | None = None,
    check_image: bool = True,
    retry_failed: bool = False,
    resubmit_uncertain: bool = False,
    allow_failures: bool = False,
    chunk_size: Annotated[int, Field(ge=1)] = DEFAULT_CHUNK_SIZE,
    chunk_deployment: str | None = None,
    ledger: str | None = None,
    wait_timeout_seconds: Annotated[float, Field(gt=0)] = DEFAULT_WAIT_TIMEOUT_SECONDS,
    poll_interval_seconds: Annotated[float, Field(gt=0)] = DEFAULT_POLL_INTERVAL,
    max_poll_interval_seconds: Annotated[float, Field(gt=0)] = DEFAULT_MAX_POLL_INTERVAL,
    webhook_base_url: str | None = None,
    webhook_mode: WebhookMode | None = None,
    wait: Literal["poll", "events"] = "poll",
) -> BatchResult:
    """Generate one video per row of a manifest, paying once per row however often it runs.

    Every row is validated, every image checked and the cost estimated before the first
    submit; then the rows are submitted (at most ``max_concurrency`` renders in flight),
    awaited and stored, each step recorded in the batch's ledger. Run it again after a crash
    or a partial failure: stored and in-flight rows are not paid again.

    Args:
        rows: A manifest (CSV or JSONL) as a local path, an ``s3://bucket/key`` URI (read
            with ``input_bucket``) or ``<block-slug>/<block-name>/<path>``; or a list of
            ``VideoRequest`` s or dicts. A row holds a request's fields (``image`` may be an
            http(s) URL, a local file or an ``s3://`` object), and optionally ``id``,
            ``filename`` and ``destination`` (a folder under the batch's destination).
        credentials: A ``KandinskyCredentials`` block or its name; ``KANDINSKY_API_KEY``
            when omitted.
        destination: A directory, an ``S3Bucket``, or a block name such as
            ``s3-bucket/videos``.
        folder: A folder under ``destination`` for every row (a row's own ``destination``
            goes under it).
        max_concurrency: Renders in flight at once (submitted, not yet finished).
        max_cost_usd: Refuse the batch, before paying anything, if its documented price
            plus what earlier runs of it were charged is over this.
        rate_limit: A Prefect global concurrency limit (with slot decay) that every submit
            takes a slot of, shared by every worker.
        input_bucket: An ``S3Bucket`` (or its name) through which ``s3://`` manifests and
            images are read and local images uploaded; the gateway gets presigned links.
        batch_id: The batch's identity in the ledger; the manifest's location by default
            (rows without an ``id`` are keyed by their content).
        check_image: Check every row's image before the first submit.
        retry_failed: Submit rows that ended FAILED again (they were charged).
        resubmit_uncertain: Submit again rows whose earlier submit may have reached the
            gateway (check the gateway first, or pay twice).
        allow_failures: Return the result even if some rows are not stored, instead of
            failing the flow run.
        chunk_size: Rows per child flow run when ``chunk_deployment`` is set.
        chunk_deployment: A deployment of ``generate-videos-chunk``: a batch larger than
            ``chunk_size`` is split into child flow runs of it, run by any worker.
        ledger: Where the rows' records are: a folder or a storage block name; Prefect's
            result storage by default.
        wait_timeout_seconds: How long one row's render may take before the run stops
            waiting for it (a re-run waits again, without paying).
        poll_interval_seconds: First wait between two status reads of a row.
        max_poll_interval_seconds: Cap of the wait between two status reads of a row.
        webhook_base_url: The public https address of the package's webhook receiver: each
            submit names a callback URL of it (see ``submit_video``).
        webhook_mode: "terminal" or "sync" callbacks.
        wait: ``poll`` reads each row's status until it ends; ``events`` waits on one
            subscription to Prefect's event stream for the receiver's events about this
            run's jobs, reading a row's status when its event comes (and every minute
            anyway): a long render costs a handful of status reads instead of one every 8 s.

    Returns:
        Every row's record and the batch's spend.

    Raises:
        KandinskyManifestError: rows or images are invalid (all listed); nothing was paid.
        KandinskyBudgetError: the batch is over ``max_cost_usd``; nothing was paid.
        KandinskyBatchIncompleteError: some rows are not stored; ``.result`` holds them all.

    Example:
        ```python
        from prefect import flow
        from prefect_kandinsky.batch import generate_videos

        @flow
        async def nightly():
            result = await generate_videos(
                "s3://catalogue/manifests/tonight.csv",
                credentials="kandinsky",
                destination="s3-bucket/catalogue-videos",
                input_bucket="catalogue",
                max_concurrency=32,
                max_cost_usd=50,
                rate_limit="kandinsky-submits",
            )
            return result.summary()
        ```
    """
    logger = get_run_logger()
    creds = await load_credentials(credentials)
    target = await load_destination(destination)
    bucket = await _load_bucket(input_bucket)
    manifest = await load_manifest(rows, s3_bucket=bucket)
    if batch_id is None and not isinstance(rows, str) and any(r.id for r in manifest.rows):
        raise ValueError(
            "rows given as a list with an id need a batch_id, which tells this batch's "
            "rows from another list's rows of the same id: pass batch_id='catalogue-2026-11' "
            "(the same on every run of this batch)"
        )
    batch = batch_id or default_batch_id(manifest)
    keyed = [(row_key(batch, row), row) for row in manifest.rows]
    book = await Ledger.open(await _load_ledger_location(ledger), batch)
    known = await book.read_all(key for key, _ in keyed)
    todo = [
        (key, row)
        for key, row in keyed
        if _needs_submit(
            known.get(key), retry_failed=retry_failed, resubmit_uncertain=resubmit_uncertain
        )
    ]
    estimate = estimate_batch_cost(row for _, row in todo)
    already = sum((record.charged_usd for record in known.values()), Decimal(0))
    budget = Decimal(str(max_cost_usd)) if max_cost_usd is not None else None
    for warning in check_budget(estimate, budget, already_charged_usd=already):
        logger.warning(warning)
    urls = await _resolve_images(
        todo,
        bucket=bucket,
        check=check_image,
        expires_seconds=presign_lifetime(wait_timeout_seconds),
        source=manifest.source,
    )
    prepared = _prepare(keyed, urls, folder)
    stored_before = sum(1 for record in known.values() if record.done)
    logger.info(
        "Batch %s: %d rows, %d to submit (estimated $%.2f%s), %d stored before; ledger %s",
        batch,
        len(prepared),
        len(todo),
        estimate.total_usd,
        f", {estimate.unknown_rows} without a documented price" if estimate.unknown_rows else "",
        stored_before,
        book.where,
    )
    progress = BatchProgress(len(prepared), title=f"Batch {batch}")
    await progress.start(stored_before)
    settings = RowSettings(
        max_concurrency=max_concurrency,
        rate_limit=rate_limit,
        wait_timeout_seconds=wait_timeout_seconds,
        poll_interval_seconds=poll_interval_seconds,
        max_poll_interval_seconds=max_poll_interval_seconds,
        retry_failed=retry_failed,
        resubmit_uncertain=resubmit_uncertain,
        webhook_base_url=webhook_base_url,
        webhook_mode=webhook_mode,
        wait=wait,
    )
    if chunk_deployment and len(prepared) > chunk_size:
        await _fan_out(
            prepared,
            deployment=chunk_deployment,
            chunk_size=chunk_size,
            parameters={
                "batch_id": batch,
                "credentials": _block_reference(credentials, "credentials"),
                "destination": _block_reference(destination, "destination"),
                "ledger": ledger,
                "settings": settings.model_dump(mode="json"),
            },
            progress=progress,
        )
        final = await book.read_all(row.key for row in prepared)
        records = [
            final.get(row.key) or _new_record(row, error="its chunk did not start it")
            for row in prepared
        ]
    else:
        records = await run_rows(
            prepared,
            known,
            credentials=creds,
            destination=target,
            ledger=book,
            settings=settings,
            progress=progress,
        )
    await progress.finish()
    result = BatchResult(
        batch_id=batch,
        ledger=book.where,
        rows=records,
        estimated_cost_usd=estimate.total_usd,
        unknown_cost_rows=estimate.unknown_rows,
    )
    await publish_batch_artifacts(result)
    logger.info("Batch %s: %s", batch, result.summary())
    if not result.complete and not allow_failures:
        raise KandinskyBatchIncompleteError(
            f"Batch {batch} is incomplete: {result.summary()}; run it again to finish the "
            "rest without paying twice (see the table artifact for each row)",
            result=result,
        )
    return result


def _new_record(row: PreparedRow, *, error: str | None = None) -> RowRecord:
    """The record of a row not started yet: pending, nothing paid."""
    return RowRecord(
        key=row.key,
        row_id=row.row_id,
        line=row.line,
        prompt=row.prompt,
        estimated_cost_usd=row.estimated_cost_usd,
        error=error,
    )
