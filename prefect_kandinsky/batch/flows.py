"""The batch flows: ``generate-videos`` (a manifest in, one stored video per row out) and
``generate-videos-chunk`` (one chunk of a batch split over a deployment).

The flow reads and checks the whole manifest, takes the batch's lease (one run at a time),
checks the budget, every image and every named file before the first submit, then hands the
rows to :mod:`prefect_kandinsky.batch.runner` (in this flow run, or as chunks run by other
workers) and publishes the batch's artifacts. Each of those is a named step below
(``open_batch``, ``BatchPlan.read_ledger`` ... ``finish_batch``); ``check_batch`` makes the
same checks without a flow run, for the command line.

The flow's parameters stay flat (as before): saved deployments and calls keep working, and
the UI's form shows each one with its description; they are grouped for the runner in
:class:`~prefect_kandinsky.batch.runner.RowSettings`, which chunk runs receive whole.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from typing import Annotated, Any, Literal

from prefect import flow
from prefect.blocks.core import Block
from prefect.client.schemas.objects import State
from prefect.filesystems import WritableFileSystem
from prefect.logging import get_run_logger
from prefect.runtime import flow_run as runtime_flow_run
from prefect_aws import S3Bucket
from pydantic import Field

from prefect_kandinsky.batch.artifacts import BatchProgress, publish_batch_artifacts
from prefect_kandinsky.batch.lease import DEFAULT_LEASE_SECONDS, BatchLease
from prefect_kandinsky.batch.ledger import Ledger, RowRecord, summarize
from prefect_kandinsky.batch.manifests import (
    BatchRow,
    Manifest,
    default_batch_id,
    load_manifest,
    row_key,
)
from prefect_kandinsky.batch.result import BatchResult
from prefect_kandinsky.batch.runner import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_MAX_CONCURRENCY,
    BatchPhase,
    PreparedRow,
    RowSettings,
    needs_submit,
    new_record,
    prepare_rows,
    resolve_images,
    run_rows,
)
from prefect_kandinsky.batch.targets import target_problems
from prefect_kandinsky.blocks import load_credentials, load_destination
from prefect_kandinsky.credentials import KandinskyCredentials
from prefect_kandinsky.gateway.constants import (
    DEFAULT_MAX_POLL_INTERVAL,
    DEFAULT_POLL_INTERVAL,
    DEFAULT_WAIT_TIMEOUT_SECONDS,
)
from prefect_kandinsky.gateway.exceptions import (
    KandinskyBatchIncompleteError,
)
from prefect_kandinsky.gateway.models import (
    VideoRequest,
    WebhookMode,
)
from prefect_kandinsky.gateway.prices import CostEstimate, check_budget, estimate_batch_cost
from prefect_kandinsky.media.storage import Destination
from prefect_kandinsky.media.uploads import presign_lifetime
from prefect_kandinsky.progress import report

DEFAULT_CHUNK_ATTEMPTS = 3
"""Child runs a chunk of a fanned-out batch may take before its rows are given up."""

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


def chunk_lease_name(label: str) -> str:
    """The file name of one chunk's lease in the batch's ledger folder."""
    return f"chunk-{label}.lease.json"


def stuck_before_running(state: State[Any], now: datetime, lease_seconds: float) -> bool:
    """Whether a child run a worker took up (Pending) has not started its flow-run process
    within twice the chunk's lease time: its worker died in between, and no one else will
    start it (Prefect leaves such a run Pending for ever)."""
    if not state.is_pending() or state.timestamp is None:
        return False
    return (now - state.timestamp).total_seconds() > lease_seconds * 2


@dataclass
class _Chunk:
    """One chunk of a fanned-out batch, run (and re-run once lost) as child flow runs."""

    label: str
    rows: Sequence[PreparedRow]
    lease: BatchLease
    lease_seen: set[str] = field(default_factory=set)
    """The child runs seen holding the chunk's lease."""

    async def outcome(self, client: Any, child_id: Any, lease_seconds: float) -> str | None:
        """How the child run ended: its final state's name, ``lost`` if its process is gone
        (Crashed, or its lease expired while Prefect still says Running), None while it works.
        """
        child = await client.read_flow_run(child_id)
        state = child.state
        now = datetime.now(timezone.utc)
        if state is not None and state.is_final():
            return "lost" if state.is_crashed() else state.name
        if state is not None and stuck_before_running(state, now, lease_seconds):
            return "lost"
        if state is None or not state.is_running():
            return None  # scheduled (no worker has it yet) or starting
        held = await self.lease.read()
        if held is not None and held.run_id == str(child_id):
            self.lease_seen.add(str(child_id))
            return "lost" if held.expired(now) else None
        if str(child_id) in self.lease_seen:
            return None  # it gave its lease back: finishing
        started = child.start_time or now
        # Running without ever taking its lease: its process died before it could.
        return "lost" if (now - started).total_seconds() > lease_seconds * 2 else None


async def _run_chunk(
    chunk: _Chunk,
    *,
    deployment: str,
    parameters: dict[str, Any],
    attempts: int,
    lease_seconds: float,
    poll_seconds: float,
) -> str:
    """Run one chunk until a child run of it ends; a lost child is marked Crashed and its
    rows run again in a new child (up to ``attempts`` children), which resumes what the lost
    one submitted (the ledger) and never pays for a row twice.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.responses import OrchestrationResult, SetStateStatus
    from prefect.deployments.flow_runs import arun_deployment
    from prefect.states import Crashed

    logger = get_run_logger()
    ended = "lost"
    for attempt in range(1, attempts + 1):
        # A retried parent finds its children instead of starting the chunks again.
        suffix = "" if attempt == 1 else f":attempt-{attempt}"
        child = await arun_deployment(
            deployment,
            parameters={**parameters, "rows": [r.model_dump(mode="json") for r in chunk.rows]},
            timeout=0,
            as_subflow=True,
            idempotency_key=f"{runtime_flow_run.id}:{chunk.label}{suffix}",
        )
        async with get_client() as client:
            while True:
                seen = await chunk.outcome(client, child.id, lease_seconds)
                if seen is not None:
                    break
                await asyncio.sleep(poll_seconds)
            ended = seen
            if ended != "lost":
                return ended
            message = (
                f"Chunk {chunk.label} lost its process (attempt {attempt} of {attempts}, "
                f"flow run {child.id}): its worker or flow-run process died"
            )
            # Not forced: a child that finished in between keeps its final state.
            answer: OrchestrationResult[Any] = await client.set_flow_run_state(
                child.id, Crashed(message=message)
            )
            if answer.status != SetStateStatus.ACCEPT:
                state = (await client.read_flow_run(child.id)).state
                if state is not None and state.is_final() and not state.is_crashed():
                    return str(state.name)
        logger.warning(
            "%s; %s",
            message,
            "running its rows again in a new child run (rows already submitted are resumed, "
            "not paid again)"
            if attempt < attempts
            else "giving up on it: its unfinished rows are reported as not stored",
        )
    return ended


async def _fan_out(
    rows: Sequence[PreparedRow],
    book: Ledger,
    *,
    deployment: str,
    chunk_size: int,
    parameters: dict[str, Any],
    progress: BatchProgress,
    attempts: int,
    lease_seconds: float,
) -> None:
    """Run the rows as child flow runs of ``deployment``, ``chunk_size`` rows each."""
    batches = [rows[i : i + chunk_size] for i in range(0, len(rows), chunk_size)]
    logger = get_run_logger()

    async def one(index: int, chunk_rows: Sequence[PreparedRow]) -> None:
        label = f"{index + 1}-of-{len(batches)}"
        chunk = _Chunk(label, chunk_rows, BatchLease(book, name=chunk_lease_name(label)))
        ended = await _run_chunk(
            chunk,
            deployment=deployment,
            parameters={**parameters, "label": label, "lease_seconds": lease_seconds},
            attempts=attempts,
            lease_seconds=lease_seconds,
            poll_seconds=min(2.0, lease_seconds / 4),
        )
        logger.info("Chunk %s (%d rows) ended %s", label, len(chunk_rows), ended)
        await progress.rows_done(len(chunk_rows))

    await asyncio.gather(*(one(index, chunk) for index, chunk in enumerate(batches)))


@flow(name="generate-videos-chunk", flow_run_name="generate-videos-chunk-{label}")
async def generate_videos_chunk(
    rows: list[PreparedRow],
    batch_id: str,
    credentials: str | None = None,
    destination: str = "output",
    ledger: str | None = None,
    label: str = "1-of-1",
    settings: RowSettings | None = None,
    lease_seconds: Annotated[float, Field(gt=0)] = DEFAULT_LEASE_SECONDS,
) -> dict[str, int]:
    """Work one chunk of a batch that ``generate_videos`` split over a deployment.

    Its rows are validated, keyed and their images checked by the parent flow run; this run
    submits, waits and stores them, writing the shared ledger, and returns the count of rows
    per state. Deploy it (see ``deployments/prefect.yaml``) and name the deployment in
    ``generate_videos(chunk_deployment=...)``.

    It holds the chunk's lease (``chunk-<label>.lease.json`` in the ledger's folder, renewed
    every third of ``lease_seconds``) while it works: the parent run reads it to tell a
    killed chunk from a working one, and a new run of the chunk takes it over once its
    holder is gone, so that two runs never work the same rows at once.
    """
    book = await Ledger.open(await _load_ledger_location(ledger), batch_id)
    lease = BatchLease(
        book,
        name=chunk_lease_name(label),
        seconds=lease_seconds,
        wait_seconds=lease_seconds * 2,
        logger=get_run_logger(),
    )
    async with lease:
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
            lease=lease,
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
    overwrite: bool = False,
    allow_failures: bool = False,
    chunk_size: Annotated[int, Field(ge=1)] = DEFAULT_CHUNK_SIZE,
    chunk_deployment: str | None = None,
    ledger: str | None = None,
    chunk_attempts: Annotated[int, Field(ge=1)] = DEFAULT_CHUNK_ATTEMPTS,
    chunk_lease_seconds: Annotated[float, Field(gt=0)] = DEFAULT_LEASE_SECONDS,
    wait_timeout_seconds: Annotated[float, Field(gt=0)] = DEFAULT_WAIT_TIMEOUT_SECONDS,
    poll_interval_seconds: Annotated[float, Field(gt=0)] = DEFAULT_POLL_INTERVAL,
    max_poll_interval_seconds: Annotated[float, Field(gt=0)] = DEFAULT_MAX_POLL_INTERVAL,
    webhook_base_url: str | None = None,
    webhook_mode: WebhookMode | None = None,
    wait: Literal["poll", "events"] = "poll",
    image_root: str | None = None,
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
        overwrite: Replace a file already at a row's ``filename`` (checked before the first
            submit, and refused as a row problem without it).
        allow_failures: Return the result even if some rows are not stored, instead of
            failing the flow run.
        chunk_size: Rows per child flow run when ``chunk_deployment`` is set.
        chunk_deployment: A deployment of ``generate-videos-chunk``: a batch larger than
            ``chunk_size`` is split into child flow runs of it, run by any worker.
        ledger: Where the rows' records are: a folder or a storage block name; Prefect's
            result storage by default.
        chunk_attempts: Child runs a chunk may take: a chunk whose process died (Crashed,
            or its lease expired while Prefect still shows it Running, as when its worker
            was killed) is marked Crashed and run again in a new child run, which resumes
            the rows the dead one submitted without paying for them again.
        chunk_lease_seconds: How long a chunk's lease lasts after its last renewal: the
            time a chunk on another machine may go silent before its rows are run again.
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

        image_root: The folder a row's local image must lie in (symlinks resolved); by
            default the manifest's folder, or the worker's current directory for rows in
            memory. A row naming a file elsewhere is refused with the other bad rows.

    Returns:
        Every row's record and the batch's spend.

    Raises:
        KandinskyManifestError: rows or images are invalid (all listed); nothing was paid.
        KandinskyBudgetError: the batch is over ``max_cost_usd``; nothing was paid.
        KandinskyBatchBusyError: another run of the batch holds its lease (one run of a
            batch at a time; see :mod:`prefect_kandinsky.batch.lease`); nothing was paid.
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
    creds = await load_credentials(credentials)
    target = await load_destination(destination)
    plan = await open_batch(
        rows,
        batch_id=batch_id,
        input_bucket=input_bucket,
        ledger=ledger,
        folder=folder,
        image_root=image_root,
    )
    settings = RowSettings(
        max_concurrency=max_concurrency,
        rate_limit=rate_limit,
        wait_timeout_seconds=wait_timeout_seconds,
        poll_interval_seconds=poll_interval_seconds,
        max_poll_interval_seconds=max_poll_interval_seconds,
        retry_failed=retry_failed,
        resubmit_uncertain=resubmit_uncertain,
        overwrite=overwrite,
        webhook_base_url=webhook_base_url,
        webhook_mode=webhook_mode,
        wait=wait,
    )
    async with BatchLease(plan.book, logger=get_run_logger()) as lease:
        await plan.read_ledger(settings)
        await plan.remove_partials()
        plan.check_budget(max_cost_usd)
        prepared = await plan.check_rows(
            target,
            check_image=check_image,
            wait_timeout_seconds=wait_timeout_seconds,
            overwrite=overwrite,
            gateway_url=creds.base_url,
        )
        progress = await plan.announce(prepared)
        if chunk_deployment and len(prepared) > chunk_size:
            records = await run_chunks(
                plan,
                prepared,
                deployment=chunk_deployment,
                chunk_size=chunk_size,
                attempts=chunk_attempts,
                lease_seconds=chunk_lease_seconds,
                parameters={
                    "batch_id": plan.batch,
                    "credentials": _block_reference(credentials, "credentials"),
                    "destination": _block_reference(destination, "destination"),
                    "ledger": ledger,
                    "settings": settings.model_dump(mode="json"),
                },
                progress=progress,
            )
        else:
            records = await run_rows(
                prepared,
                plan.known,
                credentials=creds,
                destination=target,
                ledger=plan.book,
                settings=settings,
                progress=progress,
                lease=lease,
            )
        await progress.finish()
    return await finish_batch(plan, records, allow_failures=allow_failures)


async def check_batch(
    rows: str | list[VideoRequest | dict[str, Any]],
    *,
    destination: Destination,
    folder: str | None = None,
    input_bucket: S3Bucket | str | None = None,
    batch_id: str | None = None,
    ledger: str | None = None,
    max_cost_usd: float | None = None,
    check_image: bool = True,
    retry_failed: bool = False,
    resubmit_uncertain: bool = False,
    overwrite: bool = False,
    image_root: str | None = None,
    gateway_url: str | None = None,
) -> BatchPlan:
    """Every check ``generate_videos`` makes before its first submit, without a flow run.

    For a caller that must refuse a batch before starting anything (the command line exits
    2): the manifest, the budget, every image and every named file at the destination.

    Raises:
        KandinskyManifestError: rows, images or targets are invalid (all listed).
        KandinskyBudgetError: the batch is over ``max_cost_usd``.
        KandinskyBatchBusyError: another run of the batch holds its lease now.
        ValueError: a parameter cannot be used (e.g. an s3:// manifest without a bucket).
    """
    plan = await open_batch(
        rows,
        batch_id=batch_id,
        input_bucket=input_bucket,
        ledger=ledger,
        folder=folder,
        image_root=image_root,
    )
    await BatchLease(plan.book).check_free()
    await plan.read_ledger(
        RowSettings(retry_failed=retry_failed, resubmit_uncertain=resubmit_uncertain)
    )
    plan.check_budget(max_cost_usd, logging.getLogger("prefect_kandinsky.batch"))
    await plan.check_rows(
        destination,
        check_image=check_image,
        wait_timeout_seconds=DEFAULT_WAIT_TIMEOUT_SECONDS,
        overwrite=overwrite,
        gateway_url=gateway_url,
    )
    return plan


# -- the steps of generate_videos ---------------------------------------------------------------


@dataclass
class BatchPlan:
    """One run of a batch, step by step: its rows, ledger, what to submit and the estimate."""

    manifest: Manifest
    batch: str
    keyed: list[tuple[str, BatchRow]]
    book: Ledger
    folder: str | None
    bucket: S3Bucket | None
    known: dict[str, RowRecord] = field(default_factory=dict)
    todo: list[tuple[str, BatchRow]] = field(default_factory=list)
    estimate: CostEstimate | None = None

    async def read_ledger(self, settings: RowSettings) -> None:
        """Read every row's record; keep the rows this run submits."""
        self.known = await self.book.read_all(key for key, _ in self.keyed)
        self.todo = [
            (key, row)
            for key, row in self.keyed
            if needs_submit(
                self.known.get(key),
                retry_failed=settings.retry_failed,
                resubmit_uncertain=settings.resubmit_uncertain,
            )
        ]
        self.estimate = estimate_batch_cost(row for _, row in self.todo)

    async def remove_partials(self) -> None:
        """Remove the partial downloads of rows stored since, or no longer downloading."""
        await self.book.remove_partials(
            record.request_id
            for record in self.known.values()
            if record.state == "completed" and record.request_id
        )

    @property
    def charged_before(self) -> Decimal:
        """What earlier runs of this batch were charged, by the documented prices."""
        return sum((record.charged_usd for record in self.known.values()), Decimal(0))

    def check_budget(
        self, max_cost_usd: float | None, logger: logging.Logger | None = None
    ) -> None:
        """Refuse the run over ``max_cost_usd``; log what the estimate cannot price."""
        assert self.estimate is not None, "read the ledger first"
        budget = Decimal(str(max_cost_usd)) if max_cost_usd is not None else None
        for warning in check_budget(self.estimate, budget, already_charged_usd=self.charged_before):
            (logger or get_run_logger()).warning(warning)

    async def check_rows(
        self,
        target: Destination,
        *,
        check_image: bool,
        wait_timeout_seconds: float,
        overwrite: bool,
        gateway_url: str | None = None,
    ) -> list[PreparedRow]:
        """Check every image and target of the rows to submit; every problem at once."""
        report(BatchPhase("checking images"))
        urls = await resolve_images(
            self.todo,
            bucket=self.bucket,
            check=check_image,
            expires_seconds=presign_lifetime(wait_timeout_seconds),
            source=self.manifest.source,
            gateway_url=gateway_url,
            problems=await target_problems(
                [row for _, row in self.todo],
                target,
                self.folder,
                overwrite=overwrite,
            ),
        )
        return prepare_rows(self.keyed, urls, self.folder)

    async def announce(self, prepared: Sequence[PreparedRow]) -> BatchProgress:
        """Log what this run sets out to do; start the progress artifact."""
        assert self.estimate is not None
        stored_before = sum(1 for record in self.known.values() if record.done)
        unknown = self.estimate.unknown_rows
        get_run_logger().info(
            "Batch %s: %d rows, %d to submit (estimated $%.2f%s), %d stored before; ledger %s",
            self.batch,
            len(prepared),
            len(self.todo),
            self.estimate.total_usd,
            f", {unknown} without a documented price" if unknown else "",
            stored_before,
            self.book.where,
        )
        progress = BatchProgress(len(prepared), title=f"Batch {self.batch}")
        await progress.start(stored_before)
        return progress


async def open_batch(
    rows: str | list[VideoRequest | dict[str, Any]],
    *,
    batch_id: str | None,
    input_bucket: S3Bucket | str | None,
    ledger: str | None,
    folder: str | None,
    image_root: str | None = None,
) -> BatchPlan:
    """Read and check the manifest, key its rows and open the batch's ledger."""
    report(BatchPhase("checking rows"))
    bucket = await _load_bucket(input_bucket)
    manifest = await load_manifest(rows, s3_bucket=bucket, image_root=image_root)
    if batch_id is None and not isinstance(rows, str) and any(r.id for r in manifest.rows):
        raise ValueError(
            "rows given as a list with an id need a batch_id, which tells this batch's "
            "rows from another list's rows of the same id: pass batch_id='catalogue-2026-11' "
            "(the same on every run of this batch)"
        )
    batch = batch_id or default_batch_id(manifest)
    book = await Ledger.open(await _load_ledger_location(ledger), batch)
    return BatchPlan(
        manifest=manifest,
        batch=batch,
        keyed=[(row_key(batch, row), row) for row in manifest.rows],
        book=book,
        folder=folder,
        bucket=bucket,
    )


async def run_chunks(
    plan: BatchPlan,
    prepared: Sequence[PreparedRow],
    *,
    deployment: str,
    chunk_size: int,
    parameters: dict[str, Any],
    progress: BatchProgress,
    attempts: int = DEFAULT_CHUNK_ATTEMPTS,
    lease_seconds: float = DEFAULT_LEASE_SECONDS,
) -> list[RowRecord]:
    """Run the rows as child flow runs of ``deployment``; every row's record afterwards."""
    await _fan_out(
        prepared,
        plan.book,
        deployment=deployment,
        chunk_size=chunk_size,
        parameters=parameters,
        progress=progress,
        attempts=attempts,
        lease_seconds=lease_seconds,
    )
    final = await plan.book.read_all(row.key for row in prepared)
    return [
        final.get(row.key) or new_record(row, error="its chunk did not start it")
        for row in prepared
    ]


async def finish_batch(
    plan: BatchPlan, records: list[RowRecord], *, allow_failures: bool
) -> BatchResult:
    """The batch's result and artifacts; raise if rows are not stored (unless allowed)."""
    assert plan.estimate is not None
    result = BatchResult(
        batch_id=plan.batch,
        ledger=plan.book.where,
        rows=records,
        estimated_cost_usd=plan.estimate.total_usd,
        unknown_cost_rows=plan.estimate.unknown_rows,
        charged_before_usd=plan.charged_before,
        unpriced_before=sum(1 for record in plan.known.values() if record.charge_unknown),
    )
    await publish_batch_artifacts(result)
    get_run_logger().info("Batch %s: %s", plan.batch, result.summary())
    if not result.complete and not allow_failures:
        raise KandinskyBatchIncompleteError(
            f"Batch {plan.batch} is incomplete: {result.summary()}; run it again to finish "
            "the rest without paying twice (see the table artifact for each row)",
            result=result,
        )
    return result
