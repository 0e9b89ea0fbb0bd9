"""Batch pipelines: the entrypoints ``flows/batch.py:nightly_batch`` and ``flows/batch.py:chunk``.

``nightly_batch`` generates one video per row of a manifest, once per schedule slot: its
batch id is the deployment and the slot (the run's scheduled start), so a retried or
re-triggered run of the same night resumes that night's batch instead of paying again, and
the next night is a batch of its own. It runs the night's batch again (``retries`` times,
after ``retry_delay_seconds``) only when a retry can help: rows that ended ERROR, renders
still going, a download or store that failed, a refused or lost status read. A refusal made
before anything was paid (bad rows or images, over budget, another run of the night holding
the batch's lease) fails the run at once: the same run would be refused again.

``chunk`` is the child flow that a large batch is split into (``chunk_deployment``), so that
several workers share it.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Annotated, Any

from prefect import flow
from prefect.logging import get_run_logger
from prefect.runtime import deployment as runtime_deployment
from prefect.runtime import flow_run as runtime_flow_run
from prefect_aws import S3Bucket
from pydantic import Field

from prefect_kandinsky.batch.flows import generate_videos, generate_videos_chunk
from prefect_kandinsky.batch.ledger import RowRecord
from prefect_kandinsky.batch.result import BatchResult
from prefect_kandinsky.batch.runner import DEFAULT_CHUNK_SIZE, DEFAULT_MAX_CONCURRENCY
from prefect_kandinsky.credentials import KandinskyCredentials
from prefect_kandinsky.gateway.constants import DEFAULT_WAIT_TIMEOUT_SECONDS
from prefect_kandinsky.gateway.exceptions import KandinskyBatchIncompleteError
from prefect_kandinsky.gateway.models import as_utc

FLOW_NAME = "nightly-videos"
DEFAULT_RETRIES = 1
"""Times a night's batch runs again when a retry can help."""
DEFAULT_RETRY_DELAY_SECONDS = 300.0
"""Pause before a night's batch runs again."""
_RETRY_HELPS = frozenset({"error", "submitted", "completed", "submitting"})
chunk = generate_videos_chunk
"""The ``generate-videos-chunk`` flow, re-exported for deployment."""


def night_batch_id(deployment_name: str | None, manifest: str, slot: datetime) -> str:
    """The batch id of one slot: ``nightly-videos/<deployment>@<slot>:<manifest>``."""
    name = deployment_name or "no-deployment"
    return f"{FLOW_NAME}/{name}@{as_utc(slot).isoformat()}:{manifest}"


def _run_name() -> str:
    slot = runtime_flow_run.parameters.get("slot") or runtime_flow_run.scheduled_start_time
    return f"{FLOW_NAME}-{as_utc(slot).strftime('%Y-%m-%dt%H%Mz')}"


def retry_can_help(record: RowRecord) -> bool:
    """Whether running the batch again could store this row without anyone fixing anything.

    ERROR rows are submitted again (unpaid); submitted and completed rows are waited for or
    downloaded again. A row refused or left pending helps only if the cause was transient (a
    429 or a connection error); FAILED and uncertain rows need a person.
    """
    if record.state in _RETRY_HELPS:
        return True
    error = (record.error or "").lower()
    transient = ("429", "rate limit", "could not reach", "timed out", "connection")
    return record.state in ("pending", "refused") and any(word in error for word in transient)


# Retries are made inside the flow, not by Prefect's flow retries: those would also retry a
# refusal (a bad manifest, an image that answers 404, a budget), which cannot pass.
@flow(name=FLOW_NAME, flow_run_name=_run_name)
async def nightly_batch(
    manifest: str,
    credentials: KandinskyCredentials | str | None = None,
    destination: str | S3Bucket = "output",
    max_concurrency: Annotated[int, Field(ge=1)] = DEFAULT_MAX_CONCURRENCY,
    max_cost_usd: Annotated[float, Field(ge=0)] | None = None,
    rate_limit: str | None = None,
    input_bucket: str | None = None,
    chunk_size: Annotated[int, Field(ge=1)] = DEFAULT_CHUNK_SIZE,
    chunk_deployment: str | None = None,
    slot: datetime | None = None,
    wait_timeout_seconds: Annotated[float, Field(gt=0)] = DEFAULT_WAIT_TIMEOUT_SECONDS,
    retries: Annotated[int, Field(ge=0)] = DEFAULT_RETRIES,
    retry_delay_seconds: Annotated[float, Field(ge=0)] = DEFAULT_RETRY_DELAY_SECONDS,
) -> BatchResult:
    """Generate the videos of one night's manifest, each row paid once for the night.

    Args:
        manifest: The manifest (CSV or JSONL): a local path, ``s3://bucket/key`` (read with
            ``input_bucket``) or ``<block-slug>/<block-name>/<path>``.
        credentials: A ``KandinskyCredentials`` block or its name.
        destination: A directory, an ``S3Bucket``, or a block name such as
            ``s3-bucket/videos``; each night's videos go to a folder named after its date.
        max_concurrency: Renders in flight at once.
        max_cost_usd: Refuse the night's batch before paying if it would cost more.
        rate_limit: A Prefect global concurrency limit that every submit takes a slot of.
        input_bucket: The name of an ``S3Bucket`` block for ``s3://`` manifests and images
            and for uploading local images.
        chunk_size: Rows per child flow run when ``chunk_deployment`` is set.
        chunk_deployment: A deployment of ``generate-videos-chunk`` to share the rows with.
        slot: The night to produce; the run's scheduled start when omitted. Set it to re-run
            or backfill a night without paying twice for its rows.
        wait_timeout_seconds: How long one row's render may take in this run.
        retries: Times the night's batch runs again when rows are left that a retry can
            store (see :func:`retry_can_help`); never after a refusal.
        retry_delay_seconds: Pause before each retry.

    Returns:
        Every row's record and the night's spend.
    """
    when = as_utc(slot if slot is not None else runtime_flow_run.scheduled_start_time)
    options: dict[str, Any] = {
        "credentials": credentials,
        "destination": destination,
        "max_concurrency": max_concurrency,
        "max_cost_usd": max_cost_usd,
        "rate_limit": rate_limit,
        "input_bucket": input_bucket,
        "batch_id": night_batch_id(runtime_deployment.name, manifest, when),
        "folder": when.strftime("%Y-%m-%d"),
        "chunk_size": chunk_size,
        "chunk_deployment": chunk_deployment,
        "wait_timeout_seconds": wait_timeout_seconds,
    }
    for attempt in range(retries + 1):
        try:
            result: BatchResult = await generate_videos(manifest, **options)
        except KandinskyBatchIncompleteError as exc:
            left = [row for row in exc.result.rows if not row.done]
            helps = [row for row in left if retry_can_help(row)]
            if attempt == retries or not helps:
                raise
            get_run_logger().warning(
                "%d of %d rows not stored, %d of which a retry can help; running the night's "
                "batch again in %.0fs (retry %d of %d)",
                len(left),
                len(exc.result.rows),
                len(helps),
                retry_delay_seconds,
                attempt + 1,
                retries,
            )
            await asyncio.sleep(retry_delay_seconds)
        else:
            return result
    raise AssertionError("unreachable")
