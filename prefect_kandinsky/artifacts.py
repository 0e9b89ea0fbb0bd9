"""Prefect artifacts for generated videos: links, a markdown summary, progress while waiting.

Nothing here holds a secret: artifacts are built from results, which never carry the API key.
Keys follow Prefect's rule ``^[a-z0-9-]*$``.
"""

from __future__ import annotations

import re
from datetime import datetime
from uuid import UUID

from prefect.artifacts import (
    acreate_link_artifact,
    acreate_markdown_artifact,
    acreate_progress_artifact,
    aupdate_progress_artifact,
)
from prefect.context import FlowRunContext, TaskRunContext

from prefect_kandinsky.models import (
    CompletedVideo,
    JobStatus,
    PersistedVideo,
    StatusResponse,
)

_KEY_UNSAFE = re.compile(r"[^a-z0-9-]+")
_PROGRESS = {
    JobStatus.QUEUED: 10.0,
    JobStatus.PROCESSING: 50.0,
    JobStatus.COMPLETED: 100.0,
    JobStatus.FAILED: 100.0,
    JobStatus.ERROR: 100.0,
}


def artifact_key(request_id: str, kind: str) -> str:
    """A Prefect artifact key for one video: ``kandinsky-<kind>-<request id>``, sanitised."""
    raw = f"kandinsky-{kind}-{request_id.split('_', 1)[-1]}".lower()
    return _KEY_UNSAFE.sub("-", raw).strip("-")[:200]


def _in_run() -> bool:
    return FlowRunContext.get() is not None or TaskRunContext.get() is not None


def _seconds(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f} s"


def _timestamp(value: datetime | None) -> str:
    return "n/a" if value is None else value.strftime("%Y-%m-%d %H:%M:%S UTC")


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def summary_markdown(persisted: PersistedVideo, video: CompletedVideo | None) -> str:
    """The per-video markdown summary: request, timeline, timings, cost, storage facts."""
    lines = [f"# Kandinsky video `{persisted.request_id}`", ""]
    request = video.request if video else None
    if request is not None:
        lines += [
            f"**Prompt:** {_cell(request.prompt)}",
            "",
            f"![input image]({request.image_url})",
            "",
            "| Parameter | Value |",
            "|---|---|",
            f"| image_url | {_cell(request.image_url)} |",
            f"| resolution | {request.resolution} |",
            f"| duration | {request.duration} |",
            f"| num_inference_steps | {request.num_inference_steps} |",
            f"| acceleration | {request.acceleration} |",
            f"| estimated cost | {request.estimated_cost_label} |",
            "",
        ]
    if video is not None:
        status = video.status
        lines += ["## Status timeline", "", "| Status | At | Source |", "|---|---|---|"]
        lines.append(f"| created | {_timestamp(status.created_at)} | gateway |")
        lines += [f"| {e.status.value} | {_timestamp(e.at)} | observed |" for e in video.timeline]
        lines.append(f"| completed | {_timestamp(status.completed_at)} | gateway |")
        lines += [
            "",
            f"Queued for {_seconds(video.queue_seconds)}, "
            f"processed in {_seconds(video.processing_seconds)}, "
            f"done {_seconds(video.total_seconds)} after creation.",
        ]
        if video.queue_seconds is None:
            lines.append(
                "(Queue and processing times need PROCESSING to be observed; this wait "
                "first saw the job when it was already past it.)"
            )
        lines.append("")
    facts = [
        ("Stored at", persisted.uri),
        ("Link", persisted.public_url or "n/a"),
        ("Source", persisted.source_url),
        ("Size", f"{persisted.size_bytes:,} bytes"),
        ("SHA-256", f"`{persisted.sha256}`"),
        ("Media type", persisted.media_type or "n/a"),
    ]
    if persisted.frames is not None:
        facts += [
            ("Codec", persisted.codec or "n/a"),
            ("Size (pixels)", f"{persisted.width}x{persisted.height}"),
            ("Frames", f"{persisted.frames} at {persisted.fps or 0:g} fps"),
            ("Duration", _seconds(persisted.duration_seconds)),
        ]
    lines += ["## Output", "", "| | |", "|---|---|"]
    lines += [f"| {name} | {_cell(value)} |" for name, value in facts]
    return "\n".join(lines) + "\n"


async def publish_video_artifacts(
    persisted: PersistedVideo, video: CompletedVideo | None = None
) -> list[UUID]:
    """Create the link and summary artifacts of one persisted video in the current run.

    Outside a flow or task run this does nothing and returns an empty list.
    """
    if not _in_run():
        return []
    ids = [
        await acreate_link_artifact(
            link=persisted.source_url,
            link_text="Generated video on the gateway CDN",
            key=artifact_key(persisted.request_id, "media"),
            description=f"CDN link of {persisted.request_id}; CDN links expire.",
        )
    ]
    stored_link = persisted.public_url or (
        persisted.uri if "://" in persisted.uri else f"file://{persisted.uri}"
    )
    ids.append(
        await acreate_link_artifact(
            link=stored_link,
            link_text=f"Stored video ({persisted.uri})",
            key=artifact_key(persisted.request_id, "video"),
            description=f"Persisted copy of {persisted.request_id} at {persisted.uri}.",
        )
    )
    ids.append(
        await acreate_markdown_artifact(
            markdown=summary_markdown(persisted, video),
            key=artifact_key(persisted.request_id, "summary"),
            description=f"Summary of Kandinsky video {persisted.request_id}.",
        )
    )
    return ids


class WaitProgress:
    """A progress artifact that follows one generation while it is awaited."""

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        self._artifact_id: UUID | None = None
        self._last: tuple[float, str] | None = None

    async def update(self, status: StatusResponse, elapsed_seconds: float) -> None:
        """Show the status and elapsed time; only changes reach the Prefect API."""
        if not _in_run():
            return
        progress = _PROGRESS[status.status]
        if status.status is JobStatus.PROCESSING:
            # Creep towards 90% so a long render still shows life.
            progress = min(90.0, 50.0 + elapsed_seconds / 10)
        description = f"{self.request_id}: {status.status.value} after {elapsed_seconds:.0f}s"
        if self._last == (round(progress), description):
            return
        self._last = (round(progress), description)
        if self._artifact_id is None:
            self._artifact_id = await acreate_progress_artifact(
                progress=progress,
                key=artifact_key(self.request_id, "progress"),
                description=description,
            )
        else:
            await aupdate_progress_artifact(
                self._artifact_id, progress=progress, description=description
            )
