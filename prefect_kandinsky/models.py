"""Request, response and result models for the Kandinsky 5.0 Pro gateway.

Request models validate the documented parameters before any network call, and say which
field was wrong, what it held and what is allowed. Response models tolerate fields the
gateway adds later and parse both timestamp forms the gateway uses
(``2026-05-22T13:17:32.110Z`` and ``2026-05-22 13:19:23``, the latter read as UTC).
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from decimal import Decimal
from enum import Enum
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
)

DEFAULT_MODEL_ID = "kandinsky-5-0-pro-953"
"""The gateway's model id for Kandinsky 5.0 Pro."""

Resolution = Literal["256P", "512P", "1024P"]
Acceleration = Literal["regular", "fast", "ultra_fast"]
WebhookMode = Literal["terminal", "sync"]

RESOLUTIONS: tuple[str, ...] = ("256P", "512P", "1024P")
ACCELERATIONS: tuple[str, ...] = ("regular", "fast", "ultra_fast")
DOCUMENTED_DURATIONS: tuple[str, ...] = ("3s", "5s", "10s")
MIN_DURATION_SECONDS = 1
MAX_DURATION_SECONDS = 10
MIN_INFERENCE_STEPS = 20
MAX_INFERENCE_STEPS = 50

PRICE_PER_SECOND_USD: dict[str, Decimal] = {
    "512P": Decimal("0.04"),
    "1024P": Decimal("0.12"),
}
"""The gateway's documented price table. 256P has no documented price."""

_DURATION_RE = re.compile(r"^\s*(\d+)\s*s?\s*$")


def submit_path(model_id: str) -> str:
    """Return the gateway path that accepts generate requests for ``model_id``.

    The gateway names the endpoint after the model without its numeric suffix:
    ``kandinsky-5-0-pro-953`` is served at ``/kandinsky-5-0-pro-953/v1/kandinsky-5-0-pro-request``.
    """
    name = re.sub(r"-\d+$", "", model_id)
    return f"/{model_id}/v1/{name}-request"


def status_path(request_id: str) -> str:
    """Return the gateway path of the universal status endpoint for ``request_id``."""
    return f"/v2/requests/status/{request_id}"


def _normalise_duration(value: object) -> object:
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return f"{value}s"
    if isinstance(value, str):
        match = _DURATION_RE.match(value)
        if match:
            return f"{int(match.group(1))}s"
    return value


def _duration_seconds(value: str) -> int:
    return int(value.rstrip("s"))


def _parse_timestamp(value: object) -> object:
    """Parse ``...T...Z`` and ``YYYY-MM-DD HH:MM:SS`` (UTC) into an aware datetime."""
    if value is None or isinstance(value, datetime):
        if isinstance(value, datetime) and value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        if text.endswith("Z"):
            text = text[:-1] + "+00:00"
        parsed = datetime.fromisoformat(text.replace(" ", "T", 1))
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=timezone.utc)
        return parsed
    return value


Timestamp = Annotated[datetime | None, BeforeValidator(_parse_timestamp)]


class JobStatus(str, Enum):
    """A generation's status as the gateway reports it."""

    QUEUED = "QUEUED"
    PROCESSING = "PROCESSING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    ERROR = "ERROR"

    @property
    def is_terminal(self) -> bool:
        """Whether the status is final (COMPLETED, FAILED or ERROR)."""
        return self in (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.ERROR)


class VideoRequest(BaseModel):
    """One image-to-video generation, validated against the documented parameters.

    Example:
        ```python
        request = VideoRequest(
            prompt="The dragon warrior turns towards the camera.",
            image_url="https://example.com/dragon-warrior.jpg",
            resolution="512P",
            duration=5,
        )
        request.estimated_cost_usd  # Decimal("0.20")
        ```
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    prompt: str = Field(
        description="Description of the desired motion, camera movement and emotional tone.",
    )
    image_url: str = Field(
        description="Publicly reachable http(s) URL of the input image to animate.",
    )
    resolution: Resolution = Field(
        default="512P",
        description='Output resolution preset: "256P", "512P" or "1024P".',
    )
    duration: Annotated[str, BeforeValidator(_normalise_duration)] = Field(
        default="5s",
        description=(
            'Video length in whole seconds, written "Ns" (an int is accepted); '
            'the documented values are "3s", "5s" and "10s".'
        ),
    )
    num_inference_steps: int = Field(
        default=28,
        description="Denoising steps, 20 to 50: more refine detail and take longer.",
    )
    acceleration: Acceleration = Field(
        default="regular",
        description='Speed versus quality: "regular", "fast" or "ultra_fast".',
    )

    @field_validator("prompt")
    @classmethod
    def _check_prompt(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("prompt must be a non-empty description of the motion; got ''")
        return value

    @field_validator("image_url")
    @classmethod
    def _check_image_url(cls, value: str) -> str:
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"image_url must be an absolute http or https URL; got {value!r}")
        return value.strip()

    @field_validator("resolution", mode="before")
    @classmethod
    def _check_resolution(cls, value: object) -> object:
        if isinstance(value, str) and value.upper() in RESOLUTIONS:
            return value.upper()
        raise ValueError(f"resolution must be one of {', '.join(RESOLUTIONS)}; got {value!r}")

    @field_validator("acceleration", mode="before")
    @classmethod
    def _check_acceleration(cls, value: object) -> object:
        if isinstance(value, str) and value in ACCELERATIONS:
            return value
        raise ValueError(f"acceleration must be one of {', '.join(ACCELERATIONS)}; got {value!r}")

    @field_validator("duration")
    @classmethod
    def _check_duration(cls, value: str) -> str:
        match = re.fullmatch(r"(\d+)s", value) if isinstance(value, str) else None
        seconds = int(match.group(1)) if match else None
        if seconds is None or not MIN_DURATION_SECONDS <= seconds <= MAX_DURATION_SECONDS:
            raise ValueError(
                f"duration must be whole seconds from {MIN_DURATION_SECONDS}s to "
                f"{MAX_DURATION_SECONDS}s, written like "
                f"{', '.join(DOCUMENTED_DURATIONS)} or as an int; got {value!r}"
            )
        return value

    @field_validator("num_inference_steps", mode="before")
    @classmethod
    def _check_steps(cls, value: object) -> object:
        if (
            isinstance(value, bool)
            or not isinstance(value, int)
            or not MIN_INFERENCE_STEPS <= value <= MAX_INFERENCE_STEPS
        ):
            raise ValueError(
                f"num_inference_steps must be an integer from {MIN_INFERENCE_STEPS} to "
                f"{MAX_INFERENCE_STEPS}; got {value!r}"
            )
        return value

    @property
    def duration_seconds(self) -> int:
        """The duration as a number of seconds."""
        return _duration_seconds(self.duration)

    @property
    def estimated_cost_usd(self) -> Decimal | None:
        """The documented price of this request, or None where the gateway documents none."""
        return estimate_cost_usd(self.resolution, self.duration_seconds)

    @property
    def estimated_cost_label(self) -> str:
        """The estimate as text: ``$0.20`` or ``unknown`` where no price is documented."""
        return format_cost(self.estimated_cost_usd)

    def to_payload(self) -> dict[str, Any]:
        """The JSON body the gateway expects."""
        return self.model_dump(mode="json")


def estimate_cost_usd(resolution: str, duration_seconds: int) -> Decimal | None:
    """Price a video by the documented table; None where no price is documented (256P)."""
    rate = PRICE_PER_SECOND_USD.get(resolution)
    if rate is None:
        return None
    return (rate * duration_seconds).quantize(Decimal("0.01"))


def format_cost(cost: Decimal | None) -> str:
    """Render a cost estimate for people: ``$0.20``, or ``unknown``."""
    return "unknown" if cost is None else f"${cost:.2f}"


class _Response(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class SubmitResponse(_Response):
    """The gateway's answer to a generate request."""

    request_id: str = Field(description="Unique id of the queued generation.")
    status: JobStatus = Field(
        default=JobStatus.QUEUED, description="Status at submission, normally QUEUED."
    )
    polling_url: str | None = Field(
        default=None, description="Absolute URL of the status endpoint for this request."
    )


class JobOutput(_Response):
    """What a completed generation produced."""

    media_url: list[str] = Field(
        default_factory=list, description="URLs of the generated media on the CDN."
    )
    media_type: str | None = Field(default=None, description="MIME type of the output.")


class StatusResponse(_Response):
    """The universal status endpoint's answer, also the webhook callback's body."""

    request_id: str = Field(description="Unique id of the generation.")
    status: JobStatus = Field(description="QUEUED, PROCESSING, COMPLETED, FAILED or ERROR.")
    model_id: str | None = Field(default=None, description="Model that processed the request.")
    error: str | None = Field(default=None, description="Error message when failed.")
    output: JobOutput | None = Field(default=None, description="The result when completed.")
    created_at: Timestamp = Field(default=None, description="When the request was created.")
    updated_at: Timestamp = Field(default=None, description="When the status last changed.")
    completed_at: Timestamp = Field(default=None, description="When the request completed.")

    @property
    def media_urls(self) -> list[str]:
        """The output's media URLs, empty until completed."""
        return list(self.output.media_url) if self.output else []


class VideoJob(BaseModel):
    """A submitted generation: what ``submit_video`` returns and ``await_video`` takes."""

    model_config = ConfigDict(frozen=True)

    request_id: str = Field(description="The gateway's id of the generation.")
    polling_url: str | None = Field(default=None, description="The gateway's status URL.")
    request: VideoRequest = Field(description="The request that was submitted.")
    model_id: str = Field(default=DEFAULT_MODEL_ID, description="The gateway's model id.")
    estimated_cost_usd: Decimal | None = Field(
        default=None, description="Documented price of the request; None where unknown."
    )
    submitted_at: datetime = Field(description="When the gateway accepted the submit (UTC).")
    idempotency_key: str | None = Field(
        default=None, description="The key that makes this submit hold across flow runs."
    )


class StatusEvent(BaseModel):
    """One status change observed while waiting."""

    status: JobStatus = Field(description="The status entered.")
    at: datetime = Field(description="When it was first observed (UTC).")


class CompletedVideo(BaseModel):
    """A generation that reached COMPLETED: what ``await_video`` returns."""

    request_id: str = Field(description="The gateway's id of the generation.")
    status: StatusResponse = Field(description="The final status response.")
    media_urls: list[str] = Field(description="URLs of the generated media on the CDN.")
    media_type: str | None = Field(default=None, description="MIME type of the media.")
    request: VideoRequest | None = Field(
        default=None, description="The request, when the wait started from a job."
    )
    timeline: list[StatusEvent] = Field(
        default_factory=list, description="Status changes observed while waiting."
    )
    queue_seconds: float | None = Field(
        default=None, description="Seconds from creation until processing was observed."
    )
    processing_seconds: float | None = Field(
        default=None, description="Seconds from processing until completion."
    )
    total_seconds: float | None = Field(
        default=None, description="Seconds from creation until completion, by the gateway."
    )

    @property
    def media_url(self) -> str:
        """The first media URL."""
        if not self.media_urls:
            raise ValueError(f"Generation {self.request_id} completed without a media URL")
        return self.media_urls[0]


class PersistedVideo(BaseModel):
    """A video stored at its destination: what ``persist_video`` returns."""

    request_id: str = Field(description="The gateway's id of the generation.")
    uri: str = Field(description="Where the video is: a file path, s3:// URI or block path.")
    size_bytes: int = Field(description="Bytes written.")
    sha256: str = Field(description="Hex SHA-256 of the bytes written.")
    media_type: str | None = Field(default=None, description="MIME type of the media.")
    source_url: str = Field(description="The CDN URL the bytes came from.")
    public_url: str | None = Field(
        default=None, description="An https link to the stored copy (a presigned S3 URL)."
    )
    duration_seconds: float | None = Field(default=None, description="Probed duration.")
    fps: float | None = Field(default=None, description="Probed frames per second.")
    frames: int | None = Field(default=None, description="Probed number of frames.")
    width: int | None = Field(default=None, description="Probed width in pixels.")
    height: int | None = Field(default=None, description="Probed height in pixels.")
    codec: str | None = Field(default=None, description="Probed video codec.")
    video: CompletedVideo | None = Field(
        default=None, description="The completed generation this file came from."
    )
