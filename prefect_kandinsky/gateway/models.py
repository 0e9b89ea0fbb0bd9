"""Request, response and result models for the Kandinsky 5.0 Pro gateway.

Request models validate the documented parameters before any network call, and say which
field was wrong, what it held and what is allowed. Response models tolerate fields the
gateway adds later and parse both timestamp forms the gateway uses
(``2026-05-22T13:17:32.110Z`` and ``2026-05-22 13:19:23``, the latter read as UTC).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime, timezone
from decimal import Decimal
from enum import Enum
from typing import Annotated, Any, Literal, NamedTuple
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    WithJsonSchema,
)
from pydantic_core import PydanticCustomError

from prefect_kandinsky.gateway.prices import estimate_cost_usd, format_cost

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


def invalid_value(message: str) -> PydanticCustomError:
    """A validation error whose message stays as written: no "Value error, " prefix and no
    link to pydantic's documentation, in models and in flow parameter errors alike."""
    return PydanticCustomError("kandinsky_parameter", "{message}", {"message": message})


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


def check_prompt(value: object) -> str:
    """A non-empty prompt, as given; raises a message naming the field otherwise."""
    if not isinstance(value, str) or not value.strip():
        raise invalid_value(f"prompt must be a non-empty description of the motion; got {value!r}")
    return value


def check_image_url(value: object) -> str:
    """An absolute http(s) URL, stripped; raises a message naming the field otherwise."""
    text = value.strip() if isinstance(value, str) else ""
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise invalid_value(f"image_url must be an absolute http or https URL; got {value!r}")
    return text


def check_resolution(value: object) -> str:
    """One of the resolution presets (any case); raises a message naming the allowed ones."""
    if isinstance(value, str) and value.strip().upper() in RESOLUTIONS:
        return value.strip().upper()
    raise invalid_value(f"resolution must be one of {', '.join(RESOLUTIONS)}; got {value!r}")


def check_acceleration(value: object) -> str:
    """One of the acceleration settings; raises a message naming the allowed ones."""
    if isinstance(value, str) and value.strip() in ACCELERATIONS:
        return value.strip()
    raise invalid_value(f"acceleration must be one of {', '.join(ACCELERATIONS)}; got {value!r}")


def duration_seconds(value: object) -> int:
    """Whole seconds from ``5``, ``"5"`` or ``"5s"``; raises a message naming the range."""
    normalised = _normalise_duration(value)
    match = re.fullmatch(r"(\d+)s", normalised) if isinstance(normalised, str) else None
    seconds = int(match.group(1)) if match else None
    if seconds is None or not MIN_DURATION_SECONDS <= seconds <= MAX_DURATION_SECONDS:
        raise invalid_value(
            f"duration must be whole seconds from {MIN_DURATION_SECONDS}s to "
            f"{MAX_DURATION_SECONDS}s, written like {', '.join(DOCUMENTED_DURATIONS)} or as an "
            f"int; got {value!r}"
        )
    return seconds


def check_steps(value: object) -> int:
    """An int from 20 to 50; raises a message naming the range."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or not MIN_INFERENCE_STEPS <= value <= MAX_INFERENCE_STEPS
    ):
        raise invalid_value(
            f"num_inference_steps must be an integer from {MIN_INFERENCE_STEPS} to "
            f"{MAX_INFERENCE_STEPS}; got {value!r}"
        )
    return value


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


def as_utc(moment: datetime | str) -> datetime:
    """``moment`` in UTC: an aware datetime converted, a naive one (or ISO text) read as UTC."""
    parsed = _parse_timestamp(moment)
    if not isinstance(parsed, datetime):
        raise ValueError(f"not a date and time: {moment!r}")
    return parsed.astimezone(timezone.utc)


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


# Parameter types: each carries its check and message, so the request model, the batch row
# and the flows' parameters say the same; their JSON schemas are what Prefect shows in a run
# form and what a deployment with ``enforce_parameter_schema`` applies when a run is triggered.

PromptParam = Annotated[str, BeforeValidator(check_prompt), Field(min_length=1)]
"""A non-empty prompt."""
ResolutionParam = Annotated[Resolution, BeforeValidator(check_resolution)]
"""A resolution preset; "720P" is refused naming the allowed presets."""
AccelerationParam = Annotated[Acceleration, BeforeValidator(check_acceleration)]
"""An acceleration setting; anything else is refused naming the allowed ones."""
StepsParam = Annotated[
    int,
    BeforeValidator(check_steps),
    Field(ge=MIN_INFERENCE_STEPS, le=MAX_INFERENCE_STEPS),
]
"""Denoising steps, 20 to 50."""
DurationParam = Annotated[
    int,
    BeforeValidator(duration_seconds),
    WithJsonSchema(
        {
            "anyOf": [
                {
                    "type": "integer",
                    "minimum": MIN_DURATION_SECONDS,
                    "maximum": MAX_DURATION_SECONDS,
                    "title": "seconds",
                },
                {
                    "type": "string",
                    "pattern": r"^\s*([1-9]|10)\s*s?\s*$",
                    "title": "seconds, written like 5s",
                },
            ],
        }
    ),
]
"""Whole seconds from 1 to 10, given as ``5`` or ``"5s"`` (the documentation's form)."""
HttpUrlParam = Annotated[
    str,
    BeforeValidator(check_image_url),
    WithJsonSchema({"type": "string", "format": "uri", "pattern": r"^https?://[^\s/]+"}),
]
"""An absolute http(s) URL; a local file name such as ``beach.png`` is refused."""
DurationText = Annotated[str, BeforeValidator(lambda value: f"{duration_seconds(value)}s")]
"""Whole seconds from 1 to 10 in the gateway's form, ``"5s"``, from ``5``, ``"5"`` or ``"5s"``."""


def without_null(schema: dict[str, Any]) -> None:
    """Drop the ``null`` branch of a field's JSON schema (``json_schema_extra``), so that
    Prefect's forms do not offer "Property is type None" for a parameter that may be left out."""
    branches = [branch for branch in schema.pop("anyOf", []) if branch != {"type": "null"}]
    if len(branches) == 1:
        schema.update(branches[0])
    elif branches:
        schema["anyOf"] = branches


class NoNullChoice:
    """An ``Annotated`` marker whose JSON schema has no ``null`` branch (`without_null`).

    For a union such as ``KandinskyCredentials | str | None``, whose schema refers to a
    definition and so cannot be written out by hand with ``WithJsonSchema``.
    """

    def __get_pydantic_json_schema__(
        self, core_schema: Any, handler: Callable[[Any], dict[str, Any]]
    ) -> dict[str, Any]:
        schema = handler(core_schema)
        without_null(schema)
        return schema


OptionalText = Annotated[str | None, WithJsonSchema({"type": "string"})]
"""Text that may be left out (None): a plain text box in Prefect's run form, which shows a
``str | None`` parameter as a choice between a text and "Property is type None"."""
OptionalWebhookMode = Annotated[
    WebhookMode | None, WithJsonSchema({"type": "string", "enum": ["terminal", "sync"]})
]
"""A webhook mode that may be left out (None): a dropdown in Prefect's run form."""


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

    prompt: PromptParam = Field(
        description="Description of the desired motion, camera movement and emotional tone.",
    )
    image_url: HttpUrlParam = Field(
        description="Publicly reachable http(s) URL of the input image to animate.",
    )
    resolution: ResolutionParam = Field(
        default="512P",
        description='Output resolution preset: "256P", "512P" or "1024P".',
    )
    duration: DurationText = Field(
        default="5s",
        description=(
            'Video length in whole seconds, written "Ns" (an int is accepted); '
            'the documented values are "3s", "5s" and "10s".'
        ),
    )
    num_inference_steps: StepsParam = Field(
        default=28,
        description="Denoising steps, 20 to 50: more refine detail and take longer.",
    )
    acceleration: AccelerationParam = Field(
        default="regular",
        description='Speed versus quality: "regular", "fast" or "ultra_fast".',
    )

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
    input_preview: str | None = Field(
        default=None,
        description="A small thumbnail of the input image as a data: URI, made when the image "
        "was checked before the submit; None when it was not checked.",
    )
    callback_nonce: str | None = Field(
        default=None,
        description="The nonce of the submit's callback URL, chosen before the submit: the "
        "receiver's events name it (related resource kandinsky.callback.<nonce>); None "
        "without a callback of the package's receiver.",
    )
    adopted: bool = Field(
        default=False,
        description="True when the submit's answer was lost and the job was adopted from its "
        "callback (found by the nonce in Prefect's events): charged like any other.",
    )


class StatusEvent(BaseModel):
    """One status change of a generation, by the gateway's clock where it gives one."""

    status: JobStatus = Field(description="The status entered.")
    at: datetime = Field(description="When it was entered (UTC).")
    source: Literal["gateway", "observed"] = Field(
        default="observed",
        description="gateway: a timestamp of the gateway; observed: when a status read first "
        "saw it (this machine's clock), where the gateway gives no timestamp.",
    )


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
        default_factory=list,
        description="One event per status, in time order: the gateway's timestamps where it "
        "gives them, else when a status read first saw the status.",
    )
    queue_seconds: float | None = Field(
        default=None,
        description="Seconds QUEUED, by the gateway's clock; None when no status read saw "
        "PROCESSING (the gateway then gives no start of processing).",
    )
    processing_seconds: float | None = Field(
        default=None,
        description="Seconds PROCESSING, by the gateway's clock; None like queue_seconds.",
    )
    total_seconds: float | None = Field(
        default=None,
        description="Seconds from creation until completion, by the gateway's clock; "
        "queue_seconds + processing_seconds when both are known.",
    )
    input_preview: str | None = Field(
        default=None, description="A small thumbnail of the input image as a data: URI."
    )

    @property
    def media_url(self) -> str:
        """The first media URL."""
        if not self.media_urls:
            raise ValueError(f"Generation {self.request_id} completed without a media URL")
        return self.media_urls[0]


class EmbeddedPreview(BaseModel):
    """Small pictures of a stored video, as data: URIs that an artifact can embed."""

    width: int = Field(description="Width of the pictures in pixels.")
    height: int = Field(description="Height of the pictures in pixels.")
    poster: str = Field(description="The poster frame, a data:image/jpeg URI.")
    strip: list[str] = Field(
        default_factory=list, description="Frames spread across the video, data: URIs."
    )
    strip_seconds: list[float] = Field(
        default_factory=list, description="Where in the video each strip frame is, in seconds."
    )
    clip: str | None = Field(
        default=None, description="The moving preview: an animated WebP as a data:image/webp URI."
    )

    @property
    def size_bytes(self) -> int:
        """Characters of every data: URI together, as embedded in an artifact."""
        return sum(len(uri) for uri in (self.poster, *self.strip, self.clip or ""))


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
    public_url_expires_at: datetime | None = Field(
        default=None, description="When ``public_url`` stops working (UTC)."
    )
    duration_seconds: float | None = Field(default=None, description="Probed duration.")
    fps: float | None = Field(default=None, description="Probed frames per second.")
    frames: int | None = Field(default=None, description="Probed number of frames.")
    width: int | None = Field(default=None, description="Probed width in pixels.")
    height: int | None = Field(default=None, description="Probed height in pixels.")
    codec: str | None = Field(default=None, description="Probed video codec.")
    preview: EmbeddedPreview | None = Field(
        default=None,
        description="Poster and frames of the video for artifacts; None without PyAV.",
    )
    video: CompletedVideo | None = Field(
        default=None, description="The completed generation this file came from."
    )


class Timings(NamedTuple):
    """A generation's timeline and durations, one source of truth per event."""

    timeline: list[StatusEvent]
    queue_seconds: float | None
    processing_seconds: float | None
    total_seconds: float | None


def gateway_timings(
    final: StatusResponse,
    *,
    processing: StatusResponse | None = None,
    observed: dict[JobStatus, datetime] | None = None,
) -> Timings:
    """Build the timeline and durations of a generation from the gateway's timestamps.

    QUEUED is the gateway's ``created_at``; PROCESSING is the ``updated_at`` of the first
    status read that saw it (``processing``), the one timestamp the gateway gives for the
    start of processing; the terminal status is ``completed_at``. Where the gateway gives no
    timestamp, the time a status read first saw the status (``observed``) stands in, marked
    as observed. Events are sorted, never earlier than the one before (the gateway writes
    some timestamps in whole seconds), and the durations all come from the same points, so
    queue plus processing is the total.
    """
    seen = observed or {}
    points: list[tuple[JobStatus, datetime | None, datetime | None]] = [
        (JobStatus.QUEUED, final.created_at, seen.get(JobStatus.QUEUED)),
        (
            JobStatus.PROCESSING,
            processing.updated_at if processing is not None else None,
            seen.get(JobStatus.PROCESSING),
        ),
    ]
    if final.status.is_terminal:
        ended = final.completed_at or final.updated_at
        points.append((final.status, ended, seen.get(final.status)))
    timeline: list[StatusEvent] = []
    for status, gateway_at, observed_at in points:
        at = gateway_at or observed_at
        if at is None:
            continue
        if timeline and at < timeline[-1].at:
            at = timeline[-1].at
        source: Literal["gateway", "observed"] = "gateway" if gateway_at else "observed"
        timeline.append(StatusEvent(status=status, at=at, source=source))
    by_status = {event.status: event for event in timeline}
    created = by_status.get(JobStatus.QUEUED)
    started = by_status.get(JobStatus.PROCESSING)
    finished = by_status.get(final.status) if final.status.is_terminal else None
    total = queue = processing_seconds = None
    if created and finished and created.source == finished.source:
        total = (finished.at - created.at).total_seconds()
        if started and started.source == created.source:
            queue = (started.at - created.at).total_seconds()
            processing_seconds = total - queue
    return Timings(timeline, queue, processing_seconds, total)
