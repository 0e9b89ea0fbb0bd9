"""One video per schedule slot, the entrypoint ``flows/scheduled.py:scheduled_video``.

The flow keys the paid submit on its deployment and its schedule slot (the run's scheduled
start time), and runs ``generate-video`` as a subflow with that ``idempotency_key``. A retried
run, or another run for the same slot, finds the submit in Prefect's cache and resumes the same
generation instead of paying for a second one. Pass ``slot`` to re-run or backfill a given slot.
"""

from __future__ import annotations

from datetime import datetime

from prefect import flow
from prefect.runtime import deployment as runtime_deployment
from prefect.runtime import flow_run as runtime_flow_run
from prefect_aws import S3Bucket

from prefect_kandinsky.credentials import KandinskyCredentials
from prefect_kandinsky.flows import generate_video
from prefect_kandinsky.gateway.constants import DEFAULT_POLL_INTERVAL, DEFAULT_WAIT_TIMEOUT_SECONDS
from prefect_kandinsky.gateway.models import (
    AccelerationParam,
    DurationParam,
    HttpUrlParam,
    PersistedVideo,
    PromptParam,
    ResolutionParam,
    StepsParam,
    as_utc,
)

FLOW_NAME = "scheduled-video"
NO_DEPLOYMENT = "no-deployment"
"""Stands for the deployment name when the flow is called outside a deployment."""


def slot_key(deployment_name: str | None, slot: datetime) -> str:
    """The idempotency key of one schedule slot of one deployment.

    A naive ``slot`` is read as UTC; aware slots in any zone give the same key for the same
    instant, e.g. ``scheduled-video/daily@2026-05-22T06:00:00+00:00``.
    """
    return f"{FLOW_NAME}/{deployment_name or NO_DEPLOYMENT}@{as_utc(slot).isoformat()}"


def _scheduled_run_name() -> str:
    slot = runtime_flow_run.parameters.get("slot") or runtime_flow_run.scheduled_start_time
    return f"{FLOW_NAME}-{as_utc(slot).strftime('%Y-%m-%dt%H%Mz')}"


@flow(name=FLOW_NAME, flow_run_name=_scheduled_run_name, retries=2, retry_delay_seconds=60)
async def scheduled_video(
    prompt: PromptParam,
    image_url: HttpUrlParam,
    resolution: ResolutionParam = "512P",
    duration: DurationParam = 5,
    num_inference_steps: StepsParam = 28,
    acceleration: AccelerationParam = "regular",
    destination: str | S3Bucket = "output",
    credentials: KandinskyCredentials | str | None = None,
    slot: datetime | None = None,
    wait_timeout_seconds: float = DEFAULT_WAIT_TIMEOUT_SECONDS,
    poll_interval_seconds: float = DEFAULT_POLL_INTERVAL,
) -> PersistedVideo:
    """Generate the video of one schedule slot, exactly once however often the slot runs.

    Args:
        prompt: The motion, camera movement and mood to generate.
        image_url: Public http(s) URL of the image to animate.
        resolution: Output resolution preset.
        duration: Video length in seconds, as 5 or "5s" (3, 5 and 10 are documented).
        num_inference_steps: Denoising steps, 20 to 50.
        acceleration: Speed versus quality.
        destination: A directory or file path, an ``S3Bucket``, or a block name such as
            ``s3-bucket/videos``.
        credentials: A ``KandinskyCredentials`` block or its name; ``KANDINSKY_API_KEY``
            when omitted.
        slot: The schedule slot to produce; the run's scheduled start time when omitted.
            Set it to re-run or backfill a slot without paying twice for it.
        wait_timeout_seconds: How long to wait for the render before failing resumably.
        poll_interval_seconds: First wait between two status reads.

    Returns:
        The stored video.

    Example:
        Backfill the 06:00 UTC slot of the ``daily`` deployment:
        ```bash
        prefect deployment run scheduled-video/daily --param slot=2026-05-22T06:00:00Z
        ```
    """
    when = slot if slot is not None else runtime_flow_run.scheduled_start_time
    return await generate_video(
        prompt=prompt,
        image_url=image_url,
        resolution=resolution,
        duration=duration,
        num_inference_steps=num_inference_steps,
        acceleration=acceleration,
        destination=destination,
        credentials=credentials,
        idempotency_key=slot_key(runtime_deployment.name, when),
        wait_timeout_seconds=wait_timeout_seconds,
        poll_interval_seconds=poll_interval_seconds,
    )
