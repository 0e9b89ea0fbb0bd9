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

from prefect_kandinsky._lazy import lazy_exports

if TYPE_CHECKING:
    from prefect_kandinsky.artifacts import publish_video_artifacts
    from prefect_kandinsky.batch import BatchResult, generate_videos
    from prefect_kandinsky.client import KandinskyClient, MediaStream, raise_for_outcome
    from prefect_kandinsky.credentials import KandinskyCredentials
    from prefect_kandinsky.exceptions import (
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
    from prefect_kandinsky.flows import generate_video
    from prefect_kandinsky.inputs import CheckedImage, check_image, check_images
    from prefect_kandinsky.ledger import RowRecord
    from prefect_kandinsky.models import (
        CompletedVideo,
        EmbeddedPreview,
        JobStatus,
        PersistedVideo,
        StatusResponse,
        SubmitResponse,
        VideoJob,
        VideoRequest,
        estimate_cost_usd,
    )
    from prefect_kandinsky.tasks import await_video, persist_video, submit_video

# A new public name goes in three places: the imports above, this mapping and ``__all__``.
_LAZY: dict[str, str] = {
    "BatchResult": "prefect_kandinsky.batch",
    "CheckedImage": "prefect_kandinsky.inputs",
    "CompletedVideo": "prefect_kandinsky.models",
    "EmbeddedPreview": "prefect_kandinsky.models",
    "JobStatus": "prefect_kandinsky.models",
    "KandinskyAPIError": "prefect_kandinsky.exceptions",
    "KandinskyAuthenticationError": "prefect_kandinsky.exceptions",
    "KandinskyBadRequestError": "prefect_kandinsky.exceptions",
    "KandinskyBatchIncompleteError": "prefect_kandinsky.exceptions",
    "KandinskyBudgetError": "prefect_kandinsky.exceptions",
    "KandinskyClient": "prefect_kandinsky.client",
    "KandinskyConnectionError": "prefect_kandinsky.exceptions",
    "KandinskyCredentials": "prefect_kandinsky.credentials",
    "KandinskyError": "prefect_kandinsky.exceptions",
    "KandinskyGenerationFailedError": "prefect_kandinsky.exceptions",
    "KandinskyImageError": "prefect_kandinsky.exceptions",
    "KandinskyInsufficientBalanceError": "prefect_kandinsky.exceptions",
    "KandinskyJobError": "prefect_kandinsky.exceptions",
    "KandinskyManifestError": "prefect_kandinsky.exceptions",
    "KandinskyMediaError": "prefect_kandinsky.exceptions",
    "KandinskyMediaExpiredError": "prefect_kandinsky.exceptions",
    "KandinskyNotFoundError": "prefect_kandinsky.exceptions",
    "KandinskyPermissionDeniedError": "prefect_kandinsky.exceptions",
    "KandinskyRateLimitError": "prefect_kandinsky.exceptions",
    "KandinskyServerError": "prefect_kandinsky.exceptions",
    "KandinskySubmitServerError": "prefect_kandinsky.exceptions",
    "KandinskySubmitUncertainError": "prefect_kandinsky.exceptions",
    "KandinskySystemError": "prefect_kandinsky.exceptions",
    "KandinskyTimeoutError": "prefect_kandinsky.exceptions",
    "KandinskyWaitTimeoutError": "prefect_kandinsky.exceptions",
    "MediaStream": "prefect_kandinsky.client",
    "PersistedVideo": "prefect_kandinsky.models",
    "RowRecord": "prefect_kandinsky.ledger",
    "StatusResponse": "prefect_kandinsky.models",
    "SubmitResponse": "prefect_kandinsky.models",
    "VideoJob": "prefect_kandinsky.models",
    "VideoRequest": "prefect_kandinsky.models",
    "await_video": "prefect_kandinsky.tasks",
    "check_image": "prefect_kandinsky.inputs",
    "check_images": "prefect_kandinsky.inputs",
    "estimate_cost_usd": "prefect_kandinsky.models",
    "generate_video": "prefect_kandinsky.flows",
    "generate_videos": "prefect_kandinsky.batch",
    "persist_video": "prefect_kandinsky.tasks",
    "publish_video_artifacts": "prefect_kandinsky.artifacts",
    "raise_for_outcome": "prefect_kandinsky.client",
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
