"""Prefect 3 integration for the Kandinsky 5.0 Pro image-to-video gateway.

Tasks ``submit_video``, ``await_video`` and ``persist_video``, the ``generate_video`` flow and
the ``generate_videos`` batch flow, the ``KandinskyCredentials`` block, an async
``KandinskyClient`` and the models they share.
The gateway emulator lives in ``prefect_kandinsky.emulator``.

Importing the package loads none of the modules behind its public names: each name is
imported from its module on first access, so ``import prefect_kandinsky``, the pytest plugin
and the CLI stay cheap, and ``prefect_aws``, ``boto3`` and ``prefect.artifacts`` load only
with the tasks and the flow that use them. ``dir()`` and ``inspect.getmembers`` still list
every public name. Prefect finds the credentials block through the ``prefect.collections``
entry point, which names ``prefect_kandinsky.credentials``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prefect_kandinsky.lazy import lazy_exports

if TYPE_CHECKING:
    from prefect_kandinsky.artifacts import publish_video_artifacts
    from prefect_kandinsky.batch.flows import generate_videos
    from prefect_kandinsky.batch.ledger import RowRecord
    from prefect_kandinsky.batch.result import BatchResult
    from prefect_kandinsky.credentials import KandinskyCredentials
    from prefect_kandinsky.flows import generate_video
    from prefect_kandinsky.gateway.client import KandinskyClient, MediaStream, raise_for_outcome
    from prefect_kandinsky.gateway.exceptions import (
        KandinskyAPIError,
        KandinskyAuthenticationError,
        KandinskyBadRequestError,
        KandinskyBatchIncompleteError,
        KandinskyBudgetError,
        KandinskyConnectionError,
        KandinskyError,
        KandinskyGenerationFailedError,
        KandinskyImageError,
        KandinskyInsufficientBalanceError,
        KandinskyJobError,
        KandinskyManifestError,
        KandinskyMediaError,
        KandinskyMediaExpiredError,
        KandinskyNotFoundError,
        KandinskyPermissionDeniedError,
        KandinskyRateLimitError,
        KandinskyServerError,
        KandinskySubmitServerError,
        KandinskySubmitUncertainError,
        KandinskySystemError,
        KandinskyTimeoutError,
        KandinskyWaitTimeoutError,
    )
    from prefect_kandinsky.gateway.models import (
        CompletedVideo,
        EmbeddedPreview,
        JobStatus,
        PersistedVideo,
        StatusResponse,
        SubmitResponse,
        VideoJob,
        VideoRequest,
    )
    from prefect_kandinsky.gateway.prices import estimate_cost_usd
    from prefect_kandinsky.media.images import CheckedImage, check_image, check_images
    from prefect_kandinsky.tasks import await_video, persist_video, submit_video

# A new public name goes in three places: the imports above, this mapping and ``__all__``.
_LAZY: dict[str, str] = {
    "BatchResult": "prefect_kandinsky.batch.result",
    "CheckedImage": "prefect_kandinsky.media.images",
    "CompletedVideo": "prefect_kandinsky.gateway.models",
    "EmbeddedPreview": "prefect_kandinsky.gateway.models",
    "JobStatus": "prefect_kandinsky.gateway.models",
    "KandinskyAPIError": "prefect_kandinsky.gateway.exceptions",
    "KandinskyAuthenticationError": "prefect_kandinsky.gateway.exceptions",
    "KandinskyBadRequestError": "prefect_kandinsky.gateway.exceptions",
    "KandinskyBatchIncompleteError": "prefect_kandinsky.gateway.exceptions",
    "KandinskyBudgetError": "prefect_kandinsky.gateway.exceptions",
    "KandinskyClient": "prefect_kandinsky.gateway.client",
    "KandinskyConnectionError": "prefect_kandinsky.gateway.exceptions",
    "KandinskyCredentials": "prefect_kandinsky.credentials",
    "KandinskyError": "prefect_kandinsky.gateway.exceptions",
    "KandinskyGenerationFailedError": "prefect_kandinsky.gateway.exceptions",
    "KandinskyImageError": "prefect_kandinsky.gateway.exceptions",
    "KandinskyInsufficientBalanceError": "prefect_kandinsky.gateway.exceptions",
    "KandinskyJobError": "prefect_kandinsky.gateway.exceptions",
    "KandinskyManifestError": "prefect_kandinsky.gateway.exceptions",
    "KandinskyMediaError": "prefect_kandinsky.gateway.exceptions",
    "KandinskyMediaExpiredError": "prefect_kandinsky.gateway.exceptions",
    "KandinskyNotFoundError": "prefect_kandinsky.gateway.exceptions",
    "KandinskyPermissionDeniedError": "prefect_kandinsky.gateway.exceptions",
    "KandinskyRateLimitError": "prefect_kandinsky.gateway.exceptions",
    "KandinskyServerError": "prefect_kandinsky.gateway.exceptions",
    "KandinskySubmitServerError": "prefect_kandinsky.gateway.exceptions",
    "KandinskySubmitUncertainError": "prefect_kandinsky.gateway.exceptions",
    "KandinskySystemError": "prefect_kandinsky.gateway.exceptions",
    "KandinskyTimeoutError": "prefect_kandinsky.gateway.exceptions",
    "KandinskyWaitTimeoutError": "prefect_kandinsky.gateway.exceptions",
    "MediaStream": "prefect_kandinsky.gateway.client",
    "PersistedVideo": "prefect_kandinsky.gateway.models",
    "RowRecord": "prefect_kandinsky.batch.ledger",
    "StatusResponse": "prefect_kandinsky.gateway.models",
    "SubmitResponse": "prefect_kandinsky.gateway.models",
    "VideoJob": "prefect_kandinsky.gateway.models",
    "VideoRequest": "prefect_kandinsky.gateway.models",
    "await_video": "prefect_kandinsky.tasks",
    "check_image": "prefect_kandinsky.media.images",
    "check_images": "prefect_kandinsky.media.images",
    "estimate_cost_usd": "prefect_kandinsky.gateway.prices",
    "generate_video": "prefect_kandinsky.flows",
    "generate_videos": "prefect_kandinsky.batch.flows",
    "persist_video": "prefect_kandinsky.tasks",
    "publish_video_artifacts": "prefect_kandinsky.artifacts",
    "raise_for_outcome": "prefect_kandinsky.gateway.client",
    "submit_video": "prefect_kandinsky.tasks",
}
"""Where each public name lives: imported from that module on first access."""

__all__ = [
    "BatchResult",
    "CheckedImage",
    "CompletedVideo",
    "EmbeddedPreview",
    "JobStatus",
    "KandinskyAPIError",
    "KandinskyAuthenticationError",
    "KandinskyBadRequestError",
    "KandinskyBatchIncompleteError",
    "KandinskyBudgetError",
    "KandinskyClient",
    "KandinskyConnectionError",
    "KandinskyCredentials",
    "KandinskyError",
    "KandinskyGenerationFailedError",
    "KandinskyImageError",
    "KandinskyInsufficientBalanceError",
    "KandinskyJobError",
    "KandinskyManifestError",
    "KandinskyMediaError",
    "KandinskyMediaExpiredError",
    "KandinskyNotFoundError",
    "KandinskyPermissionDeniedError",
    "KandinskyRateLimitError",
    "KandinskyServerError",
    "KandinskySubmitServerError",
    "KandinskySubmitUncertainError",
    "KandinskySystemError",
    "KandinskyTimeoutError",
    "KandinskyWaitTimeoutError",
    "MediaStream",
    "PersistedVideo",
    "RowRecord",
    "StatusResponse",
    "SubmitResponse",
    "VideoJob",
    "VideoRequest",
    "await_video",
    "check_image",
    "check_images",
    "estimate_cost_usd",
    "generate_video",
    "generate_videos",
    "persist_video",
    "publish_video_artifacts",
    "raise_for_outcome",
    "submit_video",
]


if not TYPE_CHECKING:
    # Hidden from type checkers, which read the imports above instead: a misspelt name stays
    # an error for mypy and IDEs rather than becoming ``Any``.
    __getattr__, __dir__ = lazy_exports(globals(), _LAZY)
