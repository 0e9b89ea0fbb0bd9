"""The batch flows: ``generate-videos`` (a manifest in, one stored video per row out) and
``generate-videos-chunk`` (one chunk of a batch split over a deployment).

The flow reads and checks the whole manifest, checks every image and the budget before the
first submit, then hands the rows to :mod:`prefect_kandinsky.batch.runner` (in this flow
run, or as chunks run by other workers) and publishes the batch's artifacts.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from decimal import Decimal
from typing import Annotated, Any, Literal

from prefect import flow
from prefect.blocks.core import Block
from prefect.filesystems import WritableFileSystem
from prefect.logging import get_run_logger
from prefect.runtime import flow_run as runtime_flow_run
from prefect_aws import S3Bucket
from pydantic import Field

from prefect_kandinsky.batch.artifacts import BatchProgress, publish_batch_artifacts
from prefect_kandinsky.batch.ledger import Ledger, summarize
from prefect_kandinsky.batch.manifests import default_batch_id, load_manifest, row_key
from prefect_kandinsky.batch.result import BatchResult
from prefect_kandinsky.batch.runner import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_MAX_CONCURRENCY,
    PreparedRow,
    RowSettings,
    needs_submit,
    new_record,
    prepare_rows,
    resolve_images,
    run_rows,
)
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
from prefect_kandinsky.gateway.prices import check_budget, estimate_batch_cost
from prefect_kandinsky.media.uploads import presign_lifetime

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
        image_root: The folder a row's local image must lie in (symlinks resolved); by
            default the manifest's folder, or the worker's current directory for rows in
            memory. A row naming a file elsewhere is refused with the other bad rows.

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
    manifest = await load_manifest(rows, s3_bucket=bucket, image_root=image_root)
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
        if needs_submit(
            known.get(key), retry_failed=retry_failed, resubmit_uncertain=resubmit_uncertain
        )
    ]
    estimate = estimate_batch_cost(row for _, row in todo)
    already = sum((record.charged_usd for record in known.values()), Decimal(0))
    budget = Decimal(str(max_cost_usd)) if max_cost_usd is not None else None
    for warning in check_budget(estimate, budget, already_charged_usd=already):
        logger.warning(warning)
    urls = await resolve_images(
        todo,
        bucket=bucket,
        check=check_image,
        expires_seconds=presign_lifetime(wait_timeout_seconds),
        source=manifest.source,
        gateway_url=creds.base_url,
    )
    prepared = prepare_rows(keyed, urls, folder)
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
            final.get(row.key) or new_record(row, error="its chunk did not start it")
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
