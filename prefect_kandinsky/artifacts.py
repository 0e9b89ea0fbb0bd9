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

import hashlib
import html
import re
import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING
from uuid import UUID

from prefect.artifacts import (
    acreate_link_artifact,
    acreate_markdown_artifact,
    acreate_progress_artifact,
    acreate_table_artifact,
    aupdate_progress_artifact,
)
from prefect.context import FlowRunContext, TaskRunContext

from prefect_kandinsky.exceptions import (
    KandinskyGenerationFailedError,
    KandinskyJobError,
    KandinskySystemError,
    KandinskyWaitTimeoutError,
)
from prefect_kandinsky.models import (
    CompletedVideo,
    EmbeddedPreview,
    JobStatus,
    PersistedVideo,
    StatusResponse,
    VideoJob,
    VideoRequest,
    format_cost,
)

if TYPE_CHECKING:
    from prefect_kandinsky.batch import BatchResult
    from prefect_kandinsky.ledger import RowRecord

NO_PREVIEW_HINT = (
    "No pictures of the video: PyAV is not installed where the flow ran "
    "(`pip install 'prefect-kandinsky[emulator]'` adds it)."
)
TITLE_LENGTH = 90
"""Characters of the prompt shown in headings and descriptions."""

_KEY_UNSAFE = re.compile(r"[^a-z0-9-]+")
_QUEUED_PROGRESS = 5.0
_PROCESSING_START = 10.0
_PROCESSING_CEILING = 95.0
_PROCESSING_HALF_LIFE_SECONDS = 60.0
"""Processing progress creeps from 10% towards 95%, half the way in this many seconds."""


def artifact_key(request_id: str, kind: str) -> str:
    """A Prefect artifact key for one video: ``kandinsky-<kind>-<request id>``, sanitised."""
    raw = f"kandinsky-{kind}-{request_id.split('_', 1)[-1]}".lower()
    return _KEY_UNSAFE.sub("-", raw).strip("-")[:200]


def _in_run() -> bool:
    return FlowRunContext.get() is not None or TaskRunContext.get() is not None


def short_prompt(prompt: str | None, limit: int = TITLE_LENGTH) -> str:
    """The prompt on one line, cut at a word near ``limit`` characters with an ellipsis."""
    text = " ".join((prompt or "").split()) or "Kandinsky video"
    if len(text) <= limit:
        return text
    cut = text[:limit].rsplit(" ", 1)[0] or text[:limit]
    return cut.rstrip(",;:.") + "…"


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


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
        f"| prompt | {_cell(request.prompt)} |",
        f"| image_url | [{_cell(short_prompt(request.image_url, 80))}]({request.image_url}) |",
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
    lines += [f"| {name} | {_cell(value)} |" for name, value in rows]
    return [*lines, ""]


# -- summaries ----------------------------------------------------------------------------


def summary_markdown(persisted: PersistedVideo, video: CompletedVideo | None) -> str:
    """The per-video summary: the video itself, the request, its timeline and the stored file."""
    request = video.request if video else None
    title = short_prompt(request.prompt if request else None)
    video_src = persisted.public_url or (
        persisted.source_url if _is_http(persisted.source_url) else None
    )
    lines = [f"## {_cell(title)}", ""]
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
    status = error.status.value if error.status is not None else "unknown"
    label = "TIMED OUT" if isinstance(error, KandinskyWaitTimeoutError) else status
    cost = request.estimated_cost_label if request else format_cost(None)
    lines = [
        f"## {_cell(short_prompt(request.prompt if request else None))}",
        "",
        f"**{label}**: no video was stored.",
        "",
        "| Field | Value |",
        "|---|---|",
        f"| Status | {status} |",
        f"| Gateway's error | {_cell(error.error or 'none given')} |",
        f"| Charged | {_cell(_charged(error, cost))} |",
        f"| Request id | `{error.request_id}` |",
    ]
    if isinstance(error, KandinskyWaitTimeoutError):
        lines.append(f"| Waited | {_seconds(error.waited_seconds)} |")
    lines += ["", "### What now", "", *_way_out(error), ""]
    lines += _request_lines(request, job.input_preview if job else None)
    return "\n".join(lines)


# -- publishing ---------------------------------------------------------------------------


def _describe(prompt: str | None, what: str) -> str:
    return f"{short_prompt(prompt, 60)} — {what}"


async def publish_video_artifacts(
    persisted: PersistedVideo, video: CompletedVideo | None = None
) -> list[UUID]:
    """Create the summary (and, for an https copy, the link) of one stored video.

    Outside a flow or task run this does nothing and returns an empty list.
    """
    if not _in_run():
        return []
    request = video.request if video else None
    prompt = request.prompt if request else None
    shape = f"{request.resolution} {request.duration} video, " if request else "video "
    ids = [
        await acreate_markdown_artifact(
            markdown=summary_markdown(persisted, video),
            key=artifact_key(persisted.request_id, "summary"),
            description=_describe(prompt, f"{shape}stored at {persisted.uri}"),
        )
    ]
    if persisted.public_url:
        ids.append(
            await acreate_link_artifact(
                link=persisted.public_url,
                link_text=f"{short_prompt(prompt, 60)} (presigned link to {persisted.uri})",
                key=artifact_key(persisted.request_id, "video"),
                description=_describe(prompt, f"download link of {persisted.uri}; it expires"),
            )
        )
    return ids


async def publish_failure_summary(
    error: KandinskyJobError, job: VideoJob | None = None
) -> UUID | None:
    """Publish the summary of a generation that failed, ended in error or outlasted its wait.

    Outside a flow or task run this does nothing and returns None.
    """
    if not _in_run():
        return None
    label = "timed out" if isinstance(error, KandinskyWaitTimeoutError) else "failed"
    status = error.status.value if error.status is not None else "unknown"
    return await acreate_markdown_artifact(
        markdown=failure_markdown(error, job),
        key=artifact_key(error.request_id or "unknown", "summary"),
        description=_describe(
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
            else f"{error.status.value if error.status else 'failed'}: {error.error or 'no reason'}"
        )
        await self._show(self.progress, f"{what} after {_seconds(self._elapsed(None))}")

    async def _show(self, progress: float, what: str) -> None:
        if not _in_run():
            return
        self.progress = progress
        description = _describe(self.prompt, f"{self.request_id}: {what}")
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


# -- batches ------------------------------------------------------------------------------

BATCH_THUMBNAILS = 48
"""Stored rows shown as thumbnails in a batch summary; the table lists every row."""
BATCH_ERRORS = 20
"""Rows not stored whose error a batch summary quotes."""
THUMB_WIDTH = 96
"""Width of a row's thumbnail in a batch summary, in pixels."""
PROGRESS_INTERVAL_SECONDS = 1.0
"""A batch's progress artifact changes at most this often (and when the last row ends)."""


def batch_key(batch_id: str, kind: str) -> str:
    """``kandinsky-batch[-<kind>]-<name>-<hash>``: readable, and unique per batch id."""
    tail = batch_id.rstrip("/").rsplit("/", 1)[-1].lower()
    name = _KEY_UNSAFE.sub("-", tail).strip("-")[:60] or "rows"
    digest = hashlib.sha256(batch_id.encode()).hexdigest()[:8]
    prefix = "kandinsky-batch" + (f"-{kind}" if kind else "")
    return f"{prefix}-{name}-{digest}"


class BatchProgress:
    """A progress artifact that follows a batch as its rows finish."""

    def __init__(self, total: int, *, title: str) -> None:
        self.total = total
        self.title = title
        self.finished = 0
        self.counts: dict[str, int] = {}
        self._artifact_id: UUID | None = None
        self._shown_at = 0.0
        self._updating = False

    async def start(self, stored_before: int = 0) -> None:
        """Show the batch at 0%, saying how many rows earlier runs stored."""
        if not _in_run():
            return
        before = f"; {stored_before} stored by earlier runs" if stored_before else ""
        self._artifact_id = await acreate_progress_artifact(
            progress=0.0, description=f"{self.title}: {self.total} rows{before}"
        )
        self._shown_at = time.monotonic()

    async def row_done(self, record: RowRecord) -> None:
        """Count a finished row (stored, failed, or stopped for another reason)."""
        self.counts[record.state] = self.counts.get(record.state, 0) + 1
        await self.rows_done(1)

    async def rows_done(self, rows: int) -> None:
        """Count ``rows`` finished rows; show them if a second passed or all are done."""
        self.finished += rows
        due = time.monotonic() - self._shown_at >= PROGRESS_INTERVAL_SECONDS
        if (due or self.finished >= self.total) and not self._updating:
            await self._show()

    async def finish(self) -> None:
        """Show the final count."""
        await self._show()

    async def _show(self) -> None:
        if self._artifact_id is None:
            return
        self._updating = True
        try:
            counts = ", ".join(f"{n} {state}" for state, n in sorted(self.counts.items()))
            description = f"{self.title}: {self.finished} of {self.total} rows finished" + (
                f" ({counts})" if counts else ""
            )
            progress = 100.0 * self.finished / self.total if self.total else 100.0
            await aupdate_progress_artifact(
                self._artifact_id, progress=progress, description=description
            )
            self._shown_at = time.monotonic()
        finally:
            self._updating = False


def _money(value: object) -> str:
    return f"${value:.2f}" if value is not None else "unknown"


def _row_cost(record: RowRecord) -> str:
    """What a row was charged; "unknown" where a charged attempt has no documented price."""
    unpriced = record.estimated_cost_usd is None and any(
        attempt.status in ("COMPLETED", "FAILED") for attempt in record.attempts
    )
    return "unknown (no documented price)" if unpriced else _money(record.charged_usd)


def batch_table(result: BatchResult) -> list[dict[str, object]]:
    """One row per video: row, status, prompt, seconds, cost, error, request id, where, link."""
    return [
        {
            "row": record.row_id or f"line {record.line}",
            "status": record.state,
            "prompt": short_prompt(record.prompt, 60),
            "seconds": f"{record.seconds:.1f}" if record.seconds is not None else "",
            "cost": _row_cost(record),
            "error": (record.error or "")[:300],
            "request id": record.request_id or "",
            "stored at": record.uri or "",
            "link": record.public_url or "",
        }
        for record in result.rows
    ]


def batch_markdown(result: BatchResult) -> str:
    """Counts, spend, a thumbnail per stored row, and what went wrong."""
    counts = result.counts
    stored = [r for r in result.rows if r.done]
    lines = [
        f"## {_cell(short_prompt(result.batch_id))}",
        "",
        f"**{len(stored)} of {len(result.rows)} rows stored**"
        + ("." if result.complete else "; run the batch again to finish the rest, unpaid."),
        "",
        "| State | Rows |",
        "|---|---|",
        *[f"| {state} | {n} |" for state, n in sorted(counts.items())],
        "",
        "| Spend | USD |",
        "|---|---|",
        f"| estimated for this run | {_money(result.estimated_cost_usd)} |",
        f"| charged (all runs, by the documented prices) | {_money(result.charged_usd)} |",
    ]
    if result.unknown_cost_rows:
        lines.append(f"| rows without a documented price (256P) | {result.unknown_cost_rows} |")
    lines += ["", f"Ledger: `{result.ledger}`", ""]
    pictures = [r for r in stored if r.thumbnail][:BATCH_THUMBNAILS]
    if pictures:
        cells = [
            f'<img src="{r.thumbnail}" width="{THUMB_WIDTH}" '
            f'title="{html.escape(r.row_id or f"line {r.line}")}: '
            f'{html.escape(short_prompt(r.prompt, 60))}">'
            for r in pictures
        ]
        more = len(stored) - len(pictures)
        lines += ["### Stored", "", " ".join(cells), ""]
        if more > 0:
            lines += [f"*And {more} more: see the table artifact.*", ""]
    troubled = [r for r in result.rows if not r.done][:BATCH_ERRORS]
    if troubled:
        lines += ["### Not stored", "", "| Row | Status | Error |", "|---|---|---|"]
        lines += [
            f"| {_cell(r.row_id or f'line {r.line}')} | {r.state} | "
            f"{_cell((r.error or '')[:200])} |"
            for r in troubled
        ]
        lines += [
            "",
            "ERROR rows (not charged) are submitted again when the batch runs again; FAILED "
            "rows (charged) only with `retry_failed=True`; uncertain rows (the job may exist) "
            "only with `resubmit_uncertain=True`. Submitted rows are waited for, not paid "
            "again.",
            "",
        ]
    return "\n".join(lines)


async def publish_batch_artifacts(result: BatchResult) -> list[UUID]:
    """Create the batch's table (one row per video) and its summary."""
    if not _in_run():
        return []
    what = f"{len(result.rows)} rows, {result.counts.get('stored', 0)} stored"
    return [
        await acreate_table_artifact(
            table=batch_table(result),
            key=batch_key(result.batch_id, ""),
            description=_describe(result.batch_id, f"{what}: every row"),
        ),
        await acreate_markdown_artifact(
            markdown=batch_markdown(result),
            key=batch_key(result.batch_id, "summary"),
            description=_describe(result.batch_id, f"{what}, ${result.charged_usd:.2f} charged"),
        ),
    ]
