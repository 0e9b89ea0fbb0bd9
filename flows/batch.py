"""Batch pipelines: the entrypoints ``flows/batch.py:nightly_batch`` and ``flows/batch.py:chunk``.

``nightly_batch`` generates one video per row of a manifest, once per schedule slot: its
batch id is the deployment and the slot (the run's scheduled start), so a retried or
re-triggered run of the same night resumes that night's batch instead of paying again, and
the next night is a batch of its own. ``chunk`` is the child flow that a large batch is split
into (``chunk_deployment``), so that several workers share it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from prefect import flow
from prefect.runtime import deployment as runtime_deployment
from prefect.runtime import flow_run as runtime_flow_run
from prefect_aws import S3Bucket
from pydantic import Field

from prefect_kandinsky.batch.flows import generate_videos, generate_videos_chunk
from prefect_kandinsky.batch.result import BatchResult
from prefect_kandinsky.batch.runner import DEFAULT_CHUNK_SIZE, DEFAULT_MAX_CONCURRENCY
from prefect_kandinsky.credentials import KandinskyCredentials
from prefect_kandinsky.gateway.constants import DEFAULT_WAIT_TIMEOUT_SECONDS
from prefect_kandinsky.gateway.models import as_utc

FLOW_NAME = "nightly-videos"
chunk = generate_videos_chunk
"""The ``generate-videos-chunk`` flow, re-exported for deployment."""


def night_batch_id(deployment_name: str | None, manifest: str, slot: datetime) -> str:
    """The batch id of one slot: ``nightly-videos/<deployment>@<slot>:<manifest>``."""
    name = deployment_name or "no-deployment"
    return f"{FLOW_NAME}/{name}@{as_utc(slot).isoformat()}:{manifest}"


def _run_name() -> str:
    slot = runtime_flow_run.parameters.get("slot") or runtime_flow_run.scheduled_start_time
    return f"{FLOW_NAME}-{as_utc(slot).strftime('%Y-%m-%dt%H%Mz')}"


@flow(name=FLOW_NAME, flow_run_name=_run_name, retries=1, retry_delay_seconds=300)
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

    Returns:
        Every row's record and the night's spend.
    """
    when = as_utc(slot if slot is not None else runtime_flow_run.scheduled_start_time)
    return await generate_videos(
        manifest,
        credentials=credentials,
        destination=destination,
        max_concurrency=max_concurrency,
        max_cost_usd=max_cost_usd,
        rate_limit=rate_limit,
        input_bucket=input_bucket,
        batch_id=night_batch_id(runtime_deployment.name, manifest, when),
        folder=when.strftime("%Y-%m-%d"),
        chunk_size=chunk_size,
        chunk_deployment=chunk_deployment,
        wait_timeout_seconds=wait_timeout_seconds,
    )
