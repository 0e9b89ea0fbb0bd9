"""Prefect artifacts for generated videos: a summary that shows the video, progress, failures.

What one video publishes, in the run that made or reused it:

- ``kandinsky-summary-<id>`` (markdown): headed by the prompt; a playable ``<video>`` while an
  http(s) link to it lives (the presigned S3 link or the CDN link, both expire), and always a
  poster frame and a strip of frames embedded as small ``data:`` images, so the summary still
  shows the video after every link is gone; the input image as a thumbnail; the parameters;
  the timeline by the gateway's clock; where the file is; its size, checksum and codec.
- ``kandinsky-video-<id>`` (link): only when the stored copy has an https link (S3).
- a progress artifact while the render runs (not keyed, so the artifacts index lists videos,
  not progress bars).
- for a generation that ends FAILED or ERROR or outlasts its wait: the same summary key,
  saying what failed, whether it was charged, and the way out.

Nothing here holds a secret: artifacts are built from results, which never carry the API key.
Keys follow Prefect's rule ``^[a-z0-9-]*$``; descriptions start with the prompt, so the
artifacts index tells videos apart.
"""

from __future__ import annotations

import html
import re
from datetime import datetime, timezone
from uuid import UUID

from prefect.artifacts import (
    acreate_link_artifact,
    acreate_markdown_artifact,
    acreate_progress_artifact,
    aupdate_progress_artifact,
)
from prefect.context import FlowRunContext, TaskRunContext

from prefect_kandinsky.gateway.exceptions import (
    KandinskyGenerationFailedError,
    KandinskyJobError,
    KandinskySystemError,
    KandinskyWaitTimeoutError,
)
from prefect_kandinsky.gateway.models import (
    CompletedVideo,
    EmbeddedPreview,
    JobStatus,
    PersistedVideo,
    StatusResponse,
    VideoJob,
    VideoRequest,
)
from prefect_kandinsky.gateway.prices import format_cost

NO_PREVIEW_HINT = (
    "No pictures of the video: PyAV is not installed where the flow ran "
    "(`pip install 'prefect-kandinsky[emulator]'` adds it)."
)
TITLE_LENGTH = 90
"""Characters of the prompt shown in headings and descriptions."""

KEY_UNSAFE = re.compile(r"[^a-z0-9-]+")
_QUEUED_PROGRESS = 5.0
_PROCESSING_START = 10.0
_PROCESSING_CEILING = 95.0
_PROCESSING_HALF_LIFE_SECONDS = 60.0
"""Processing progress creeps from 10% towards 95%, half the way in this many seconds."""


def artifact_key(request_id: str, kind: str) -> str:
    """A Prefect artifact key for one video: ``kandinsky-<kind>-<request id>``, sanitised."""
    raw = f"kandinsky-{kind}-{request_id.split('_', 1)[-1]}".lower()
    return KEY_UNSAFE.sub("-", raw).strip("-")[:200]


def in_run() -> bool:
    """Whether this runs inside a flow or task run (where artifacts can be made)."""
    return FlowRunContext.get() is not None or TaskRunContext.get() is not None


def short_prompt(prompt: str | None, limit: int = TITLE_LENGTH) -> str:
    """The prompt on one line, cut at a word near ``limit`` characters with an ellipsis."""
    text = " ".join((prompt or "").split()) or "Kandinsky video"
    if len(text) <= limit:
        return text
    cut = text[:limit].rsplit(" ", 1)[0] or text[:limit]
    return cut.rstrip(",;:.") + "…"


def markdown_cell(text: object) -> str:
    """``text`` made safe for one markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def _status_text(error: KandinskyJobError) -> str:
    status = error.status
    if status is None:
        return "unknown"
    return str(status.value) if isinstance(status, JobStatus) else str(status)


def _seconds(value: float) -> str:
    return f"{value:.1f} s" if value < 60 else f"{value / 60:.1f} min"


def _whole(seconds: int) -> str:
    if seconds <= 0:
        return "under 1 s"
    return f"{seconds} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def _clock(value: datetime) -> str:
    moment = value.astimezone(timezone.utc)
    text = moment.strftime("%Y-%m-%d %H:%M:%S")
    return text + (f".{moment.microsecond // 1000:03d}" if moment.microsecond else "") + " UTC"


def _is_http(url: str | None) -> bool:
    return bool(url) and str(url).startswith(("https://", "http://"))


# -- building blocks of the summaries -----------------------------------------------------


def _pictures(preview: EmbeddedPreview | None, *, video_src: str | None) -> list[str]:
    """The video itself: a playable <video> while a link lives, and what the artifact keeps.

    The Prefect UI drops a <video>'s ``poster``, so the poster is an image of its own,
    beside the preview clip when there is one.
    """
    lines: list[str] = []
    if video_src is not None:
        width = preview.width * 2 if preview is not None else 512
        lines += [
            f'<video controls preload="metadata" width="{width}" '
            f'src="{html.escape(video_src)}"></video>',
            "",
        ]
    if preview is None:
        return [*lines, f"*{NO_PREVIEW_HINT}*", ""]
    kept = [f'<img src="{preview.poster}" width="{preview.width}" alt="poster frame">']
    if preview.clip is not None:
        kept.append(
            f'<video controls loop muted width="{preview.width}" src="{preview.clip}"></video>'
        )
    lines += [" ".join(kept), ""]
    if preview.strip:
        cells = [
            f'<img src="{uri}" width="{min(preview.width, 120)}" alt="frame at {at:.1f} s" '
            f'title="{at:.1f} s">'
            for uri, at in zip(preview.strip, preview.strip_seconds, strict=False)
        ]
        times = ", ".join(f"{at:.1f} s" for at in preview.strip_seconds)
        clip = " and a low-resolution preview clip" if preview.clip is not None else ""
        lines += [
            " ".join(cells),
            "",
            f"*Poster{clip}; frames at {times}. These stay in this artifact after the "
            "links expire.*",
            "",
        ]
    return lines


def _request_lines(request: VideoRequest | None, input_preview: str | None) -> list[str]:
    if request is None:
        return []
    lines = ["### Request", ""]
    if input_preview is not None:
        lines += [
            f'<img src="{input_preview}" width="160" alt="input image"> ',
            "",
        ]
    lines += [
        "| Parameter | Value |",
        "|---|---|",
        f"| prompt | {markdown_cell(request.prompt)} |",
        f"| image_url | [{markdown_cell(short_prompt(request.image_url, 80))}]"
        f"({request.image_url}) |",
        f"| resolution | {request.resolution} |",
        f"| duration | {request.duration} |",
        f"| num_inference_steps | {request.num_inference_steps} |",
        f"| acceleration | {request.acceleration} |",
        f"| estimated cost | {request.estimated_cost_label} |",
        "",
    ]
    return lines


def _timeline_lines(video: CompletedVideo) -> list[str]:
    lines = ["### Timeline", "", "| Status | At | Source |", "|---|---|---|"]
    lines += [
        f"| {event.status.value} | {_clock(event.at)} | "
        f"{'gateway' if event.source == 'gateway' else 'first seen by a status read'} |"
        for event in sorted(video.timeline, key=lambda event: event.at)
    ]
    lines.append("")
    if video.total_seconds is not None:
        # The gateway gives some timestamps in whole seconds: so are the durations, and the
        # two parts add up to the whole.
        total = round(video.total_seconds)
        if video.queue_seconds is not None:
            queued = min(round(video.queue_seconds), total)
            lines.append(
                f"Queued {_whole(queued)}, then rendered for {_whole(total - queued)}: "
                f"{_whole(total)} from submission to completion, by the gateway's timestamps."
            )
        else:
            lines.append(
                f"{_whole(total).capitalize()} from submission to completion, by the gateway's "
                "timestamps (no status read fell while it was PROCESSING, so queue and render "
                "time are not told apart)."
            )
        lines.append("")
    return lines


def _output_lines(persisted: PersistedVideo, video: CompletedVideo | None) -> list[str]:
    rows: list[tuple[str, str]] = [("Request id", f"`{persisted.request_id}`")]
    if persisted.uri.startswith(("s3://", "block:")):
        rows.append(("Stored at", f"`{persisted.uri}`"))
    else:
        rows.append(("Stored at", f"`{persisted.uri}` (a path on the machine that ran the flow)"))
    if persisted.public_url:
        until = (
            f", valid until {_clock(persisted.public_url_expires_at)}"
            if persisted.public_url_expires_at
            else ""
        )
        rows.append(("Link", f"[presigned download]({persisted.public_url}){until}"))
    if _is_http(persisted.source_url):
        rows.append(("Gateway CDN", f"[output]({persisted.source_url}) (CDN links expire)"))
    rows += [
        ("Size", f"{persisted.size_bytes:,} bytes"),
        ("SHA-256", f"`{persisted.sha256}`"),
    ]
    if persisted.frames is not None:
        rows.append(
            (
                "Video",
                f"{persisted.codec or 'unknown codec'}, {persisted.width}x{persisted.height}, "
                f"{persisted.frames} frames at {persisted.fps or 0:g} fps"
                + (
                    f", {persisted.duration_seconds:.2f} s"
                    if persisted.duration_seconds is not None
                    else ""
                ),
            )
        )
    elif persisted.media_type:
        rows.append(("Media type", persisted.media_type))
    request = video.request if video else None
    if request is not None:
        rows.append(("Cost", f"{request.estimated_cost_label} (documented price table)"))
    lines = ["### Output", "", "| Field | Value |", "|---|---|"]
    lines += [f"| {name} | {markdown_cell(value)} |" for name, value in rows]
    return [*lines, ""]


# -- summaries ----------------------------------------------------------------------------


def summary_markdown(persisted: PersistedVideo, video: CompletedVideo | None) -> str:
    """The per-video summary: the video itself, the request, its timeline and the stored file."""
    request = video.request if video else None
    title = short_prompt(request.prompt if request else None)
    video_src = persisted.public_url or (
        persisted.source_url if _is_http(persisted.source_url) else None
    )
    lines = [f"## {markdown_cell(title)}", ""]
    if video_src is not None:
        source = "a presigned S3 link" if persisted.public_url else "the gateway's CDN link"
        kept = "; the frames below are kept in this artifact" if persisted.preview else ""
        lines += [f"*Plays from {source}, which expires{kept}.*", ""]
    lines += _pictures(persisted.preview, video_src=video_src)
    lines += _request_lines(request, video.input_preview if video else None)
    if video is not None:
        lines += _timeline_lines(video)
    lines += _output_lines(persisted, video)
    return "\n".join(lines)


def _charged(error: KandinskyJobError, cost: str) -> str:
    if isinstance(error, KandinskyGenerationFailedError):
        return f"Yes: FAILED generations are billed ({cost} by the documented price table)."
    if isinstance(error, KandinskySystemError):
        return "No: ERROR is a system error, documented as not charged."
    return f"Not yet: the job goes on at the gateway and is billed ({cost}) when it completes."


def _way_out(error: KandinskyJobError) -> list[str]:
    request_id = error.request_id
    if isinstance(error, KandinskyWaitTimeoutError):
        return [
            "The generation goes on at the gateway: **resume waiting with its request id**, "
            "do not submit again (that would be a second bill):",
            "",
            "```python",
            f'video = await await_video("{request_id}", credentials)',
            "stored = await persist_video(video, credentials, destination)",
            "```",
            "",
            "or raise `wait_timeout_seconds` for the next run.",
        ]
    if isinstance(error, KandinskySystemError):
        return [
            "Submit again: a system error is not charged. "
            "`generate_video(..., resubmit_on_system_error=True)` does it once by itself.",
        ]
    return [
        "The gateway refused to render this request and billed it. Read its error above, "
        "change the prompt or the image, then submit again (a new paid job).",
    ]


def failure_markdown(error: KandinskyJobError, job: VideoJob | None = None) -> str:
    """What failed, whether it was charged, and the way out."""
    request = job.request if job else None
    status = _status_text(error)
    label = "TIMED OUT" if isinstance(error, KandinskyWaitTimeoutError) else status
    cost = request.estimated_cost_label if request else format_cost(None)
    lines = [
        f"## {markdown_cell(short_prompt(request.prompt if request else None))}",
        "",
        f"**{label}**: no video was stored.",
        "",
        "| Field | Value |",
        "|---|---|",
        f"| Status | {status} |",
        f"| Gateway's error | {markdown_cell(error.error or 'none given')} |",
        f"| Charged | {markdown_cell(_charged(error, cost))} |",
        f"| Request id | `{error.request_id}` |",
    ]
    if isinstance(error, KandinskyWaitTimeoutError):
        lines.append(f"| Waited | {_seconds(error.waited_seconds)} |")
    lines += ["", "### What now", "", *_way_out(error), ""]
    lines += _request_lines(request, job.input_preview if job else None)
    return "\n".join(lines)


# -- publishing ---------------------------------------------------------------------------


def describe(prompt: str | None, what: str) -> str:
    """An artifact description: the start of the prompt, then what the artifact shows."""
    return f"{short_prompt(prompt, 60)} — {what}"


async def publish_video_artifacts(
    persisted: PersistedVideo, video: CompletedVideo | None = None
) -> list[UUID]:
    """Create the summary (and, for an https copy, the link) of one stored video.

    Outside a flow or task run this does nothing and returns an empty list.
    """
    if not in_run():
        return []
    request = video.request if video else None
    prompt = request.prompt if request else None
    shape = f"{request.resolution} {request.duration} video, " if request else "video "
    ids = [
        await acreate_markdown_artifact(
            markdown=summary_markdown(persisted, video),
            key=artifact_key(persisted.request_id, "summary"),
            description=describe(prompt, f"{shape}stored at {persisted.uri}"),
        )
    ]
    if persisted.public_url:
        ids.append(
            await acreate_link_artifact(
                link=persisted.public_url,
                link_text=f"{short_prompt(prompt, 60)} (presigned link to {persisted.uri})",
                key=artifact_key(persisted.request_id, "video"),
                description=describe(prompt, f"download link of {persisted.uri}; it expires"),
            )
        )
    return ids


async def publish_failure_summary(
    error: KandinskyJobError, job: VideoJob | None = None
) -> UUID | None:
    """Publish the summary of a generation that failed, ended in error or outlasted its wait.

    Outside a flow or task run this does nothing and returns None.
    """
    if not in_run():
        return None
    label = "timed out" if isinstance(error, KandinskyWaitTimeoutError) else "failed"
    status = _status_text(error)
    return await acreate_markdown_artifact(
        markdown=failure_markdown(error, job),
        key=artifact_key(error.request_id or "unknown", "summary"),
        description=describe(
            job.request.prompt if job else None, f"{label} ({status}), {error.request_id}"
        ),
    )


class WaitProgress:
    """A progress artifact that follows one generation while it is awaited.

    Progress is 5% while QUEUED, creeps from 10% towards 95% while PROCESSING (the gateway
    gives no percentage), 100% at COMPLETED, and stays where it was for a failure, whose
    description then says what happened. Elapsed time counts from the submit.
    """

    def __init__(
        self, request_id: str, *, prompt: str | None = None, since: datetime | None = None
    ) -> None:
        self.request_id = request_id
        self.prompt = prompt
        self.since = since
        self.progress = 0.0
        self._artifact_id: UUID | None = None
        self._last: tuple[float, str] | None = None
        self._processing_since: datetime | None = None

    def _elapsed(self, status: StatusResponse | None) -> float:
        start = self.since or (status.created_at if status is not None else None)
        if start is None:
            self.since = start = datetime.now(timezone.utc)
        return max(0.0, (datetime.now(timezone.utc) - start).total_seconds())

    async def update(self, status: StatusResponse) -> None:
        """Show the status and the time since the submit; only changes reach the API."""
        elapsed = self._elapsed(status)
        if status.status is JobStatus.QUEUED:
            progress = _QUEUED_PROGRESS
        elif status.status is JobStatus.PROCESSING:
            now = datetime.now(timezone.utc)
            self._processing_since = self._processing_since or now
            busy = (now - self._processing_since).total_seconds()
            share = 1 - 0.5 ** (busy / _PROCESSING_HALF_LIFE_SECONDS)
            progress = _PROCESSING_START + (_PROCESSING_CEILING - _PROCESSING_START) * share
        elif status.status is JobStatus.COMPLETED:
            progress = 100.0
        else:
            progress = self.progress  # a failure never shows as done
        await self._show(progress, f"{status.status.value} after {_seconds(elapsed)}")

    async def fail(self, error: KandinskyJobError) -> None:
        """Say how the wait ended, keeping the progress where it was."""
        what = (
            "still running at the gateway when the wait ended"
            if isinstance(error, KandinskyWaitTimeoutError)
            else f"{_status_text(error) if error.status else 'failed'}: "
            f"{error.error or 'no reason'}"
        )
        await self._show(self.progress, f"{what} after {_seconds(self._elapsed(None))}")

    async def _show(self, progress: float, what: str) -> None:
        if not in_run():
            return
        self.progress = progress
        description = describe(self.prompt, f"{self.request_id}: {what}")
        if self._last == (round(progress), description):
            return
        self._last = (round(progress), description)
        if self._artifact_id is None:
            self._artifact_id = await acreate_progress_artifact(
                progress=progress, description=description
            )
        else:
            await aupdate_progress_artifact(
                self._artifact_id, progress=progress, description=description
            )
