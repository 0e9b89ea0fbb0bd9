"""Prefect tasks: ``submit_video``, ``await_video``, ``persist_video``.

Each task is a thin wrapper over the client and the storage module, cached so that a retried
task, a retried flow run or a re-run with the same idempotency key never pays twice:

- ``submit_video`` is cached per flow run and request, or across runs by ``idempotency_key``;
- ``await_video`` is cached by request id, and only a COMPLETED generation is cached;
- ``persist_video`` is cached by request id, destination and file name.

Cache keys never contain credentials. Results go to Prefect's result storage: local by default;
set ``PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK`` (for example to a saved ``S3Bucket``) when workers
on several machines must share them.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Literal

from prefect import Task, task
from prefect.cache_policies import CachePolicy
from prefect.client.schemas.objects import State, TaskRun
from prefect.concurrency.asyncio import rate_limit as acquire_rate_limit
from prefect.context import TaskRunContext
from prefect.logging import get_run_logger
from prefect.runtime import flow_run as runtime_flow_run
from prefect.runtime import task_run as runtime_task_run
from prefect.utilities.hashing import hash_objects

from prefect_kandinsky.artifacts import (
    WaitProgress,
    publish_failure_summary,
    publish_video_artifacts,
)
from prefect_kandinsky.credentials import KandinskyCredentials
from prefect_kandinsky.events.adoption import (
    ADOPTED_NOTE,
    AmbiguousCallbackError,
    adopt,
    find_in_store,
)
from prefect_kandinsky.events.tokens import run_callback_url
from prefect_kandinsky.events.waits import DEFAULT_SAFETY_POLL_SECONDS, wait_for_event
from prefect_kandinsky.gateway.client import KandinskyClient, raise_for_outcome
from prefect_kandinsky.gateway.constants import (
    DEFAULT_MAX_POLL_INTERVAL,
    DEFAULT_POLL_INTERVAL,
    DEFAULT_WAIT_TIMEOUT_SECONDS,
)
from prefect_kandinsky.gateway.exceptions import (
    KandinskyAPIError,
    KandinskyConnectionError,
    KandinskyJobError,
    KandinskyMediaError,
    KandinskyMediaExpiredError,
    KandinskyRateLimitError,
    KandinskyServerError,
    KandinskySubmitUncertainError,
)
from prefect_kandinsky.gateway.models import (
    CompletedVideo,
    JobStatus,
    PersistedVideo,
    StatusResponse,
    VideoJob,
    VideoRequest,
    WebhookMode,
    gateway_timings,
)
from prefect_kandinsky.media.images import check_image as check_input_image
from prefect_kandinsky.media.images import redact_url
from prefect_kandinsky.media.storage import Destination, destination_key, persist_media
from prefect_kandinsky.progress import StatusRead, report

AWAIT_CACHE_EXPIRATION = timedelta(hours=6)
"""How long a completed status is reused. Re-reading a status is free, and it refreshes
CDN links, which expire; keep this shorter than the CDN links' lifetime."""

_REQUEST_FIELDS = (
    "prompt",
    "image_url",
    "resolution",
    "duration",
    "num_inference_steps",
    "acceleration",
)


def _credentials(credentials: KandinskyCredentials | None) -> KandinskyCredentials:
    return credentials if credentials is not None else KandinskyCredentials.from_env()


def _request_from_inputs(inputs: dict[str, Any]) -> VideoRequest:
    request = inputs.get("request")
    if isinstance(request, VideoRequest):
        return request
    fields = dict(request or {})
    fields.update({k: inputs[k] for k in _REQUEST_FIELDS if inputs.get(k) is not None})
    return VideoRequest(**fields)


def _request_id(job: VideoJob | CompletedVideo | str) -> str:
    return job if isinstance(job, str) else job.request_id


def _gateway_identity(credentials: KandinskyCredentials | None) -> tuple[str, str]:
    # The gateway's origin and model id, never the key: two gateways may reuse request ids.
    if credentials is None:
        return ("env", "")
    return (credentials.base_url.rstrip("/"), credentials.model_id)


# -- cache policies ----------------------------------------------------------------------


@dataclass
class _InputsKeyPolicy(CachePolicy):
    """Hash the parts ``key_parts`` picks from a call's inputs; None means do not cache."""

    def key_parts(self, task_ctx: TaskRunContext, inputs: dict[str, Any]) -> tuple[Any, ...] | None:
        raise NotImplementedError

    def compute_key(
        self,
        task_ctx: TaskRunContext,
        inputs: dict[str, Any],
        flow_parameters: dict[str, Any],
        **kwargs: Any,
    ) -> str | None:
        parts = self.key_parts(task_ctx, inputs)
        return None if parts is None else hash_objects(*parts)


@dataclass
class SubmitCachePolicy(_InputsKeyPolicy):
    """Key a submit by request and idempotency key, or by request within one flow run."""

    def key_parts(self, task_ctx: TaskRunContext, inputs: dict[str, Any]) -> tuple[Any, ...] | None:
        try:
            request = _request_from_inputs(inputs)
        except ValueError:
            return None  # the task body raises the validation error
        scope: object = inputs.get("idempotency_key")
        if not scope:
            run = task_ctx.task_run
            scope = ("flow-run", str(run.flow_run_id or run.id))
        take = inputs.get("take") or 1
        return (
            "kandinsky-submit",
            scope,
            request.to_payload(),
            _gateway_identity(inputs.get("credentials")),
            inputs.get("webhook_url") or inputs.get("webhook_base_url"),
            *((("take", take),) if take != 1 else ()),
        )


@dataclass
class AwaitCachePolicy(_InputsKeyPolicy):
    """Key a wait by the generation's request id alone."""

    def key_parts(self, task_ctx: TaskRunContext, inputs: dict[str, Any]) -> tuple[Any, ...] | None:
        job = inputs.get("job")
        if not job:
            return None
        return ("kandinsky-await", _request_id(job), _gateway_identity(inputs.get("credentials")))


@dataclass
class PersistCachePolicy(_InputsKeyPolicy):
    """Key a persist by request id, destination and file name."""

    def key_parts(self, task_ctx: TaskRunContext, inputs: dict[str, Any]) -> tuple[Any, ...] | None:
        video = inputs.get("video")
        if not isinstance(video, CompletedVideo):
            return None
        return (
            "kandinsky-persist",
            video.request_id,
            destination_key(inputs.get("destination", "output")),
            inputs.get("filename"),
        )


SUBMIT_CACHE_POLICY = SubmitCachePolicy()
AWAIT_CACHE_POLICY = AwaitCachePolicy()
PERSIST_CACHE_POLICY = PersistCachePolicy()

# -- retry conditions --------------------------------------------------------------------


def _exception(state: State[Any]) -> BaseException | None:
    data = state.data
    return data if isinstance(data, BaseException) else None


async def retry_submit(task: Task[..., Any], task_run: TaskRun, state: State[Any]) -> bool:
    """Retry a submit only where the gateway cannot have queued the job."""
    exc = _exception(state)
    if isinstance(exc, KandinskySubmitUncertainError | KandinskyServerError):
        return False  # the job may exist: never pay twice
    return isinstance(exc, KandinskyRateLimitError | KandinskyConnectionError)


async def retry_await(task: Task[..., Any], task_run: TaskRun, state: State[Any]) -> bool:
    """Retry a wait on transient gateway faults; never on FAILED, ERROR or 4xx."""
    exc = _exception(state)
    if isinstance(exc, KandinskyRateLimitError | KandinskyServerError):
        return True
    return isinstance(exc, KandinskyConnectionError)


async def retry_persist(task: Task[..., Any], task_run: TaskRun, state: State[Any]) -> bool:
    """Retry a persist on download faults, not on an expired link or a refused overwrite."""
    exc = _exception(state)
    if isinstance(exc, KandinskyMediaExpiredError):
        return False
    if isinstance(exc, KandinskyMediaError):
        if exc.url is None:
            return False  # a destination conflict: the same bytes would conflict again
        return exc.status_code is None or exc.status_code >= 500 or exc.status_code == 429
    return isinstance(exc, KandinskyConnectionError | OSError) and not isinstance(
        exc, KandinskyAPIError
    )


# -- task run names ----------------------------------------------------------------------


def _slug(text: str, limit: int = 40) -> str:
    words = "".join(c if c.isalnum() else "-" for c in text.lower()).split("-")
    return "-".join(w for w in words if w)[:limit].strip("-") or "video"


def _submit_run_name() -> str:
    params = runtime_task_run.parameters
    try:
        prompt = _request_from_inputs(params).prompt
    except ValueError:
        prompt = str(params.get("prompt") or "invalid-request")
    return f"submit-video-{_slug(prompt)}"


def _await_run_name() -> str:
    job = runtime_task_run.parameters.get("job")
    return f"await-video-{_request_id(job) if job else 'unknown'}"


def _persist_run_name() -> str:
    video = runtime_task_run.parameters.get("video")
    return f"persist-video-{video.request_id if isinstance(video, CompletedVideo) else 'unknown'}"


# -- tasks -------------------------------------------------------------------------------


async def _checked_input(url: str, logger: Any, gateway_url: str) -> str | None:
    """Check the input image before paying; return its thumbnail as a data: URI, if any."""
    checked = await check_input_image(url, read_content=True, gateway_url=gateway_url)
    logger.info(
        "Input image %s is a %s (%s bytes)",
        redact_url(url),
        checked.kind,
        checked.size_bytes if checked.size_bytes is not None else "unknown",
    )
    if checked.content is None:
        return None
    from prefect_kandinsky.media.previews import image_thumbnail

    thumbnail = await asyncio.to_thread(image_thumbnail, checked.content)
    return thumbnail.data_uri() if thumbnail is not None else None


def submit_nonce(*parts: object) -> str:
    """The callback nonce of a submit, derived from what keys its cache.

    Every attempt of one submit (a task retry, the flow run run again after a crash or a
    resume, a run with the same ``idempotency_key``) gets the same nonce, so the nonce is
    recorded before the submit by construction: whatever attempt lost the answer, the next
    one looks for that nonce's callback. Not a secret: the URL's token is.
    """
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return base64.urlsafe_b64encode(digest).decode("ascii")[:22]


def _submit_scope(idempotency_key: str | None) -> object:
    if idempotency_key:
        return idempotency_key
    return ("flow-run", str(runtime_flow_run.id or runtime_task_run.id))


async def _adopted(nonce: str, timeout: float, logger: Any) -> str | None:
    """The request id of this submit's job found by its callback, or None."""
    try:
        return await adopt(nonce, timeout=timeout)
    except AmbiguousCallbackError as exc:
        logger.error("Not adopting: %s", exc)
        return None


async def _stored_callback(nonce: str, logger: Any) -> str | None:
    """The request id an earlier attempt's callback reported, from Prefect's event store."""
    try:
        return await find_in_store(nonce)
    except AmbiguousCallbackError as exc:
        raise ValueError(
            f"{exc}; this submit is not sent again until you decide (pass another "
            "idempotency_key to submit anew)"
        ) from None
    except Exception as exc:  # no event store: submit as without callbacks
        logger.warning("Could not read Prefect's events to find an earlier attempt: %s", exc)
        return None


@task(
    name="submit-video",
    task_run_name=_submit_run_name,
    cache_policy=SUBMIT_CACHE_POLICY,
    retries=2,
    retry_delay_seconds=[10, 60],
    retry_condition_fn=retry_submit,
    tags=["kandinsky", "kandinsky-submit"],
)
async def submit_video(
    request: VideoRequest | dict[str, Any] | None = None,
    credentials: KandinskyCredentials | None = None,
    *,
    prompt: str | None = None,
    image_url: str | None = None,
    resolution: str | None = None,
    duration: str | int | None = None,
    num_inference_steps: int | None = None,
    acceleration: str | None = None,
    idempotency_key: str | None = None,
    take: int = 1,
    webhook_url: str | None = None,
    webhook_mode: WebhookMode | None = None,
    webhook_base_url: str | None = None,
    rate_limit: str | None = None,
    check_image: bool = True,
    adopt_timeout_seconds: float = DEFAULT_WAIT_TIMEOUT_SECONDS,
) -> VideoJob:
    """Submit one image-to-video generation; the gateway bills it.

    The request is validated and its image checked before anything is paid. The submit is
    cached, so it happens once per flow run and request however often the task or the flow
    run is retried: **two identical calls in one flow run are one job**, returned twice. Ask
    for several takes of one prompt with ``take=1, 2, ...`` (each take is a separate paid
    video), and make a submit hold across flow runs with an ``idempotency_key`` (one video
    per schedule slot).

    Args:
        request: A ``VideoRequest`` (or a dict of its fields).
        credentials: The gateway credentials; ``KANDINSKY_API_KEY`` when omitted.
        prompt: The motion to generate, instead of ``request``.
        image_url: The input image's URL, instead of ``request``.
        resolution: "256P", "512P" or "1024P".
        duration: Seconds, "5s" or 5.
        num_inference_steps: 20 to 50.
        acceleration: "regular", "fast" or "ultra_fast".
        idempotency_key: A key that makes the submit happen once across flow runs.
        take: Which take of this request (per flow run, or per ``idempotency_key``): the
            same take is submitted once, each other take is a new paid video.
        webhook_url: An https endpoint the gateway POSTs the final status to.
        webhook_mode: "terminal" or "sync".
        webhook_base_url: The public https address of the package's webhook receiver
            (``prefect-kandinsky webhooks serve``): the job's callback URL is built from it,
            with a token signed by the credentials' ``webhook_secret``, and names this flow
            run, so that the job's completion becomes a Prefect event about it.
        rate_limit: The name of a Prefect global concurrency limit with slot decay; each
            submit takes one slot first, so every worker shares one gateway rate. The limit
            must exist (``prefect gcl create kandinsky-submits --limit 10
            --slot-decay-per-second 0.5``); a missing one is an error, not a silent pass.
        check_image: Fetch the image before submitting and refuse anything that is not an
            image (a 404, an HTML page, a 403), so a mistyped URL costs nothing. Turn it off
            for image hosts that only the gateway can reach.
        adopt_timeout_seconds: With ``webhook_base_url``, when the submit's answer is lost
            (a 5xx after the gateway committed it, a connection cut after sending), how long
            to wait for the job's callback event, which names the job, before raising
            ``KandinskySubmitUncertainError``. The job is then adopted from its callback:
            waited for, stored and charged as if its answer had arrived. ``sync`` callbacks
            adopt within seconds; ``terminal`` ones only once the job ends.

    Returns:
        The queued job: request id, polling URL, the request and its cost estimate.

    Raises:
        KandinskyImageError: the image check failed; nothing was submitted.
        KandinskySubmitUncertainError: the gateway may have queued the job but its answer
            was lost, and no callback named it in time; it is not resent.

    Example:
        ```python
        from prefect import flow
        from prefect_kandinsky import KandinskyCredentials, submit_video

        @flow
        async def kick_off():
            credentials = await KandinskyCredentials.load("BLOCK_NAME")
            job = await submit_video(
                prompt="The lighthouse beam sweeps over a stormy sea.",
                image_url="https://example.com/lighthouse.jpg",
                credentials=credentials,
            )
            return job.request_id
        ```
    """
    if isinstance(take, bool) or not isinstance(take, int) or take < 1:
        raise ValueError(f"take must be a whole number from 1; got {take!r}")
    video = _request_from_inputs(
        {
            "request": request,
            "prompt": prompt,
            "image_url": image_url,
            "resolution": resolution,
            "duration": duration,
            "num_inference_steps": num_inference_steps,
            "acceleration": acceleration,
        }
    )
    creds = _credentials(credentials)
    logger = get_run_logger()
    nonce: str | None = None
    if webhook_base_url is not None:
        if webhook_url is not None:
            raise ValueError("pass webhook_url or webhook_base_url, not both")
        nonce = submit_nonce(
            _submit_scope(idempotency_key),
            video.to_payload(),
            _gateway_identity(credentials),
            webhook_base_url,
            take,
        )
        webhook_url = run_callback_url(
            webhook_base_url, creds.webhook_secret, flow_run_id=runtime_flow_run.id, nonce=nonce
        )

    def job(request_id: str, *, adopted: bool = False) -> VideoJob:
        return VideoJob(
            request_id=request_id,
            polling_url=None,
            request=video,
            model_id=creds.model_id,
            estimated_cost_usd=video.estimated_cost_usd,
            submitted_at=datetime.now(timezone.utc),
            idempotency_key=idempotency_key,
            input_preview=preview,
            callback_nonce=nonce,
            adopted=adopted,
        )

    preview: str | None = None
    if nonce is not None:
        earlier = await _stored_callback(nonce, logger)
        if earlier is not None:
            logger.warning(
                "Generation %s was %s: an earlier attempt of this submit created it and lost "
                "its answer; not submitting again",
                earlier,
                ADOPTED_NOTE,
            )
            return job(earlier, adopted=True)
    preview = await _checked_input(video.image_url, logger, creds.base_url) if check_image else None
    logger.info(
        "Submitting %s %s video (estimated cost %s)",
        video.resolution,
        video.duration,
        video.estimated_cost_label,
    )
    if rate_limit:
        await acquire_rate_limit(rate_limit, strict=True)
    async with creds.get_client(logger=logger) as client:
        try:
            answer = await client.submit(video, webhook_url=webhook_url, webhook_mode=webhook_mode)
        except KandinskySubmitUncertainError as exc:
            if nonce is None:
                raise
            logger.warning(
                "The submit's answer was lost (%s); looking for its job's callback (nonce %s) "
                "for up to %.0fs before calling it uncertain",
                exc.message,
                nonce,
                adopt_timeout_seconds,
            )
            adopted = await _adopted(nonce, adopt_timeout_seconds, logger)
            if adopted is None:
                raise
            logger.warning("Generation %s was %s: it is not submitted again", adopted, ADOPTED_NOTE)
            return job(adopted, adopted=True)
    logger.info("Gateway queued %s (status %s)", answer.request_id, answer.status.value)
    return job(answer.request_id).model_copy(update={"polling_url": answer.polling_url})


@task(
    name="await-video",
    task_run_name=_await_run_name,
    cache_policy=AWAIT_CACHE_POLICY,
    cache_expiration=AWAIT_CACHE_EXPIRATION,
    retries=3,
    retry_delay_seconds=[5, 30, 120],
    retry_condition_fn=retry_await,
)
async def await_video(
    job: VideoJob | str,
    credentials: KandinskyCredentials | None = None,
    *,
    timeout_seconds: float = DEFAULT_WAIT_TIMEOUT_SECONDS,
    poll_interval: float = DEFAULT_POLL_INTERVAL,
    max_poll_interval: float = DEFAULT_MAX_POLL_INTERVAL,
    wait: Literal["poll", "events"] = "poll",
    safety_poll_seconds: float = DEFAULT_SAFETY_POLL_SECONDS,
) -> CompletedVideo:
    """Wait until a generation completes; show its progress as an artifact.

    Only status changes are logged. A completed result is cached by request id, so a
    re-run neither polls nor waits again. A generation that ends FAILED or ERROR, or outlasts
    the deadline, publishes a summary artifact saying what failed, whether it was charged
    and how to go on, before the error is raised.

    Args:
        job: The job from ``submit_video``, or a request id (to resume a wait).
        credentials: The gateway credentials; ``KANDINSKY_API_KEY`` when omitted.
        timeout_seconds: Seconds to wait before raising ``KandinskyWaitTimeoutError``.
        poll_interval: First wait between two status reads, in seconds.
        max_poll_interval: Cap of the wait between status reads, in seconds.
        wait: ``poll`` reads the status until the job ends; ``events`` waits on Prefect's
            event stream for the job's ``kandinsky.video.*`` event from the webhook receiver
            (submit with ``webhook_base_url``) and reads the status when one comes.
        safety_poll_seconds: With ``wait="events"``, read the status this often anyway, in
            case a callback is lost.

    Returns:
        The completed video: media URLs, media type, timeline, queue and processing seconds.

    Raises:
        KandinskyGenerationFailedError: the generation FAILED (with the gateway's text).
        KandinskySystemError: the generation ended ERROR (not charged).
        KandinskyWaitTimeoutError: the deadline passed; await the same request id again.

    Example:
        ```python
        from prefect import flow
        from prefect_kandinsky import KandinskyCredentials, await_video

        @flow
        async def resume(request_id: str):
            credentials = await KandinskyCredentials.load("BLOCK_NAME")
            video = await await_video(request_id, credentials)
            return video.media_url
        ```
    """
    request_id = _request_id(job)
    creds = _credentials(credentials)
    logger = get_run_logger()
    submitted = job if isinstance(job, VideoJob) else None
    progress = WaitProgress(
        request_id,
        prompt=submitted.request.prompt if submitted else None,
        since=submitted.submitted_at if submitted else None,
    )
    observed: dict[JobStatus, datetime] = {}
    processing: list[StatusResponse] = []

    def on_change(status: StatusResponse) -> None:
        observed[status.status] = datetime.now(timezone.utc)
        if status.status is JobStatus.PROCESSING:
            processing.append(status)
        logger.info("Generation %s is %s", request_id, status.status.value)

    async def on_poll(status: StatusResponse) -> None:
        report(StatusRead(request_id, status))
        await progress.update(status)

    try:
        async with creds.get_client(logger=logger) as client:
            if wait == "events":
                final = await wait_for_event(
                    client,
                    request_id,
                    timeout=timeout_seconds,
                    safety_poll_seconds=safety_poll_seconds,
                    on_change=on_change,
                    on_poll=on_poll,
                )
            else:
                final = await client.wait(
                    request_id,
                    timeout=timeout_seconds,
                    poll_interval=poll_interval,
                    max_poll_interval=max_poll_interval,
                    on_change=on_change,
                    on_poll=on_poll,
                    raise_on_failure=False,
                )
        raise_for_outcome(final)
    except KandinskyJobError as exc:
        await progress.fail(exc)
        await publish_failure_summary(exc, job=submitted)
        raise
    timings = gateway_timings(
        final, processing=processing[0] if processing else None, observed=observed
    )
    return CompletedVideo(
        request_id=final.request_id,
        status=final,
        media_urls=final.media_urls,
        media_type=final.output.media_type if final.output else None,
        request=submitted.request if submitted else None,
        timeline=timings.timeline,
        queue_seconds=timings.queue_seconds,
        processing_seconds=timings.processing_seconds,
        total_seconds=timings.total_seconds,
        input_preview=submitted.input_preview if submitted else None,
    )


async def _publish_on_completion(
    task: Task[..., Any], task_run: TaskRun, state: State[Any]
) -> None:
    # A hook runs on fresh and cached completions alike, so the artifacts appear in every
    # run that uses the video, even when the persist itself was served from the cache.
    persisted = await state.aresult()
    if isinstance(persisted, PersistedVideo):
        await publish_video_artifacts(persisted, persisted.video)


@task(
    name="persist-video",
    task_run_name=_persist_run_name,
    cache_policy=PERSIST_CACHE_POLICY,
    retries=2,
    retry_delay_seconds=[5, 30],
    retry_condition_fn=retry_persist,
    on_completion=[_publish_on_completion],
)
async def persist_video(
    video: CompletedVideo,
    credentials: KandinskyCredentials | None = None,
    destination: Destination = "output",
    *,
    filename: str | None = None,
    overwrite: bool = False,
) -> PersistedVideo:
    """Download a completed video to a local path, an ``S3Bucket`` or a Prefect filesystem.

    The media is streamed in constant memory, hashed while written, checked against its
    declared length and resumed with Range requests if cut. The subscription key is never
    sent to the CDN. A summary artifact (with the video's poster and frames, when PyAV is
    installed) is published on every completion, cached or not.

    Args:
        video: The completed video from ``await_video``.
        credentials: Only the gateway's timeouts are used; no key is sent to the CDN.
        destination: A directory or file path, an ``S3Bucket``, or a ``WritableFileSystem``.
        filename: The file name; by default the request id with the media's extension.
        overwrite: Replace an existing file with other content instead of failing.

    Returns:
        Where the video is: URI, size, sha256, media type, probed facts and preview frames.

    Example:
        ```python
        from prefect import flow
        from prefect_aws import S3Bucket
        from prefect_kandinsky import KandinskyCredentials, await_video, persist_video

        @flow
        async def store(request_id: str):
            credentials = await KandinskyCredentials.load("BLOCK_NAME")
            video = await await_video(request_id, credentials)
            bucket = await S3Bucket.load("videos")
            return await persist_video(video, credentials, bucket)
        ```
    """
    if credentials is not None and not isinstance(credentials, KandinskyCredentials):
        raise TypeError(
            "persist_video takes credentials second, like submit_video and await_video: call "
            f"persist_video(video, credentials, destination); got a {type(credentials).__name__} "
            "as credentials"
        )
    logger = get_run_logger()
    client = (
        credentials.get_client(logger=logger)
        if credentials is not None
        else KandinskyClient(api_key=None, logger=logger)
    )
    async with client:
        persisted = await persist_media(
            client,
            video,
            destination,
            filename=filename,
            overwrite=overwrite,
            preview=True,
            logger=logger,
        )
    return persisted.model_copy(update={"video": video})
