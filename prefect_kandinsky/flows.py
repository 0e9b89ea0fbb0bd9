"""Reusable flows built from the three tasks; each also works as a subflow of your own flows."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from prefect import flow
from prefect.logging import get_run_logger
from prefect.runtime import flow_run as runtime_flow_run
from prefect_aws import S3Bucket
from pydantic import Field

from prefect_kandinsky.blocks import load_credentials, load_destination
from prefect_kandinsky.credentials import KandinskyCredentials
from prefect_kandinsky.events.waits import check_can_suspend, suspend_until_done
from prefect_kandinsky.gateway.constants import (
    DEFAULT_MAX_POLL_INTERVAL,
    DEFAULT_POLL_INTERVAL,
    DEFAULT_WAIT_TIMEOUT_SECONDS,
)
from prefect_kandinsky.gateway.exceptions import KandinskySystemError
from prefect_kandinsky.gateway.models import (
    AccelerationParam,
    CompletedVideo,
    DurationParam,
    HttpUrlParam,
    NoNullChoice,
    OptionalText,
    OptionalWebhookMode,
    PersistedVideo,
    PromptParam,
    ResolutionParam,
    StepsParam,
    VideoJob,
    VideoRequest,
)
from prefect_kandinsky.tasks import await_video, persist_video, submit_video


def _flow_run_name() -> str:
    prompt = str(runtime_flow_run.parameters.get("prompt", "video"))
    words = re.findall(r"[a-z0-9]+", prompt.lower())
    return "generate-video-" + ("-".join(words)[:40].strip("-") or "video")


@flow(name="generate-video", flow_run_name=_flow_run_name)
async def generate_video(
    prompt: PromptParam,
    image_url: HttpUrlParam,
    resolution: ResolutionParam = "512P",
    duration: DurationParam = 5,
    destination: str | S3Bucket = "output",
    credentials: Annotated[KandinskyCredentials | str | None, NoNullChoice()] = None,
    # Advanced: after the essential parameters above, so the run form shows those first.
    num_inference_steps: StepsParam = 28,
    acceleration: AccelerationParam = "regular",
    filename: OptionalText = None,
    overwrite: bool = False,
    idempotency_key: OptionalText = None,
    take: Annotated[int, Field(ge=1)] = 1,
    check_image: bool = True,
    wait: Literal["poll", "events", "suspend"] = "poll",
    webhook_base_url: OptionalText = None,
    webhook_url: OptionalText = None,
    webhook_mode: OptionalWebhookMode = None,
    wait_timeout_seconds: Annotated[float, Field(gt=0)] = DEFAULT_WAIT_TIMEOUT_SECONDS,
    poll_interval_seconds: Annotated[float, Field(gt=0)] = DEFAULT_POLL_INTERVAL,
    max_poll_interval_seconds: Annotated[float, Field(gt=0)] = DEFAULT_MAX_POLL_INTERVAL,
    resubmit_on_system_error: bool = False,
    rate_limit: OptionalText = None,
) -> PersistedVideo:
    """Generate one video from an image and a prompt, and store it.

    Checks the image, submits once (per flow run and take, or per ``idempotency_key`` across
    runs), waits for the render, streams the MP4 to ``destination`` and publishes a summary
    artifact that shows the video. Calling it twice with the same arguments inside one
    parent flow run makes one paid video; ask for another with ``take=2``.

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
        filename: The file name at the destination; the request id and extension by default.
        overwrite: Replace a file that holds other content instead of failing.
        idempotency_key: Makes the submit happen once across flow runs, e.g. one per
            schedule slot.
        take: Which take of this request: the same take is paid once, each other take is a
            new video.
        check_image: Fetch the image before paying and refuse anything that is not an image.
            Turn it off for image hosts that only the gateway can reach.
        wait_timeout_seconds: How long to wait for the render before failing resumably.
        poll_interval_seconds: First wait between two status reads.
        max_poll_interval_seconds: Cap of the wait between two status reads.
        webhook_url: An https endpoint the gateway POSTs the job's status to.
        webhook_mode: "terminal" (one callback at the end) or "sync" (one per poll cycle).
        webhook_base_url: The public https address of the package's webhook receiver; each
            job's callback URL is built from it (see ``submit_video``). Needed for
            ``wait="events"`` and ``wait="suspend"``.
        wait: How to wait for the render: ``poll`` reads the status (holds the worker);
            ``events`` waits on Prefect's event stream (holds a process, reads almost
            nothing); ``suspend`` suspends this flow run, which frees its process and worker
            slot, until the completion event resumes it (deployment runs only).
        resubmit_on_system_error: Submit once more if the gateway reports a system error
            (ERROR, documented as not charged).
        rate_limit: A Prefect global concurrency limit (with slot decay) that every submit
            takes a slot of, so all workers share one gateway rate.

    Returns:
        The stored video.

    Example:
        Use it as a subflow:
        ```python
        from prefect import flow
        from prefect_kandinsky.flows import generate_video

        @flow
        async def weekly_teaser(image_url: str):
            video = await generate_video(
                prompt="Slow push-in on the product, soft studio light.",
                image_url=image_url,
                credentials="BLOCK_NAME",
                destination="s3-bucket/marketing-videos",
            )
            return video.uri
        ```
    """
    logger = get_run_logger()
    request = VideoRequest(
        prompt=prompt,
        image_url=image_url,
        resolution=resolution,
        duration=duration,
        num_inference_steps=num_inference_steps,
        acceleration=acceleration,
    )
    creds = await load_credentials(credentials)
    target = await load_destination(destination)

    async def submit(key: str | None) -> VideoJob:
        return await submit_video(
            request,
            creds,
            idempotency_key=key,
            take=take,
            rate_limit=rate_limit,
            check_image=check_image,
            webhook_url=webhook_url,
            webhook_mode=webhook_mode,
            webhook_base_url=webhook_base_url,
        )

    async def finish(job: VideoJob) -> CompletedVideo:
        if wait == "suspend":
            async with creds.get_client(logger=logger) as client:
                await suspend_until_done(
                    client, job.request_id, timeout_seconds=wait_timeout_seconds
                )
        return await await_video(
            job,
            creds,
            timeout_seconds=wait_timeout_seconds,
            poll_interval=poll_interval_seconds,
            max_poll_interval=max_poll_interval_seconds,
            wait="events" if wait == "events" else "poll",
        )

    if wait != "poll" and webhook_base_url is None and webhook_url is None:
        raise ValueError(
            f"wait={wait!r} waits for the webhook receiver's events: pass webhook_base_url "
            "(the receiver's public https address), or use wait='poll'"
        )
    if wait == "suspend":
        check_can_suspend()
    job = await submit(idempotency_key)
    try:
        video = await finish(job)
    except KandinskySystemError as exc:
        if not resubmit_on_system_error:
            raise
        logger.warning("%s; submitting once more (system errors are not charged)", exc)
        scope = idempotency_key or f"flow-run-{runtime_flow_run.id}"
        job = await submit(f"{scope}-resubmit-after-system-error")
        video = await finish(job)
    return await persist_video(video, creds, target, filename=filename, overwrite=overwrite)
