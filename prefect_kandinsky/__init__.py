"""Prefect 3 integration for the Kandinsky 5.0 Pro image-to-video gateway.

Tasks ``submit_video``, ``await_video`` and ``persist_video``, the ``generate_video`` flow,
the ``KandinskyCredentials`` block, an async ``KandinskyClient`` and the models they share.
The gateway emulator lives in ``prefect_kandinsky.emulator``.
"""

from prefect_kandinsky.artifacts import publish_video_artifacts
from prefect_kandinsky.client import KandinskyClient, MediaStream, raise_for_outcome
from prefect_kandinsky.credentials import KandinskyCredentials
from prefect_kandinsky.exceptions import (
    KandinskyAPIError,
    KandinskyAuthenticationError,
    KandinskyBadRequestError,
    KandinskyConnectionError,
    KandinskyError,
    KandinskyGenerationFailedError,
    KandinskyInsufficientBalanceError,
    KandinskyJobError,
    KandinskyMediaError,
    KandinskyMediaExpiredError,
    KandinskyNotFoundError,
    KandinskyPermissionDeniedError,
    KandinskyRateLimitError,
    KandinskyServerError,
    KandinskySubmitUncertainError,
    KandinskySystemError,
    KandinskyTimeoutError,
    KandinskyWaitTimeoutError,
)
from prefect_kandinsky.flows import generate_video
from prefect_kandinsky.models import (
    CompletedVideo,
    JobStatus,
    PersistedVideo,
    StatusResponse,
    SubmitResponse,
    VideoJob,
    VideoRequest,
    estimate_cost_usd,
)
from prefect_kandinsky.tasks import await_video, persist_video, submit_video

__all__ = [
    "CompletedVideo",
    "JobStatus",
    "KandinskyAPIError",
    "KandinskyAuthenticationError",
    "KandinskyBadRequestError",
    "KandinskyClient",
    "KandinskyConnectionError",
    "KandinskyCredentials",
    "KandinskyError",
    "KandinskyGenerationFailedError",
    "KandinskyInsufficientBalanceError",
    "KandinskyJobError",
    "KandinskyMediaError",
    "KandinskyMediaExpiredError",
    "KandinskyNotFoundError",
    "KandinskyPermissionDeniedError",
    "KandinskyRateLimitError",
    "KandinskyServerError",
    "KandinskySubmitUncertainError",
    "KandinskySystemError",
    "KandinskyTimeoutError",
    "KandinskyWaitTimeoutError",
    "MediaStream",
    "PersistedVideo",
    "StatusResponse",
    "SubmitResponse",
    "VideoJob",
    "VideoRequest",
    "await_video",
    "estimate_cost_usd",
    "generate_video",
    "persist_video",
    "publish_video_artifacts",
    "raise_for_outcome",
    "submit_video",
]
