"""Prefect artifacts for generated videos: a summary that shows the video, progress, failures.

What one video publishes, in the run that made or reused it:

- ``kandinsky-summary-<prompt slug>-<id tail>`` (markdown): headed by the prompt's first
  sentence; a moving preview (an animated WebP) and a strip of frames carried inside the
  artifact as ``data:`` images, so they show in both Prefect UIs (the new one strips
  ``<video>``) and after every link is gone; a playable ``<video>`` only while an http(s)
  link to the video is believed alive (a presigned S3 link before its expiry, or the
  gateway's CDN link, never a loopback emulator's), with its expiry said; the request, the
  timeline by the gateway's clock, where the file is, its size, checksum and codec.
- ``kandinsky-video-<prompt slug>-<id tail>`` (link): only when the stored copy has an https
  link (S3).
- a progress artifact while the render runs (not keyed, so the artifacts index lists videos,
  not progress bars).
- for a generation that ends FAILED or ERROR or outlasts its wait: the same summary key,
  saying what failed, whether it was charged, and the way out.

Everything a run received is untrusted (the prompt, the gateway's words, the image URL, the
request id, file names): it is written through `markdown_text` or `markdown_code`, which
leave no markdown or HTML active; links are made only by `markdown_link` from http(s) URLs,
their text redacted (`redact_url`); images only from ``data:`` URIs the package encoded
(`data_image`). Nothing here holds a secret: artifacts are built from results, which never
carry the API key. Keys follow Prefect's rule ``^[a-z0-9-]*$``.
"""

from __future__ import annotations

import html
import ipaddress
import re
from datetime import datetime, timedelta, timezone
from urllib.parse import parse_qsl, quote, urlsplit
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
from prefect_kandinsky.media.images import redact_url

NO_PREVIEW_HINT = (
    "No pictures of the video: PyAV is not installed where the flow ran "
    "(`pip install 'prefect-kandinsky[emulator]'` adds it)."
)
TITLE_LENGTH = 200
"""Most characters of the prompt's first sentence shown in headings and descriptions."""
KEY_SLUG_LENGTH = 40
"""Most characters of the prompt's slug in an artifact key."""
KEY_ID_LENGTH = 12
"""Characters of the request id's end in an artifact key: a UUIDv7 starts with the time,
shared by requests made close together, and ends with random bits."""
PREVIEW_SHOWN_WIDTH = 256
"""Width of the moving preview (or the poster) in a summary, in pixels."""
STRIP_SHOWN_WIDTH = 112
"""Width of each strip frame in a summary, in pixels: five fit an 830 px panel."""

KEY_UNSAFE = re.compile(r"[^a-z0-9-]+")
DATA_IMAGE = re.compile(r"data:image/(?:jpeg|png|webp|gif);base64,[A-Za-z0-9+/]+={0,2}")
"""A picture the package encoded: the only images an artifact loads besides video links."""
_SENTENCE_END = re.compile(r"(?<=[.!?…])\s")
_MARKDOWN_ACTIVE = frozenset("\\`*_[]()!|~")
"""Characters that start markdown inside a line (emphasis, code, links, images, table cells,
strikethrough, autolinks); values never start a line, so ``#``, ``-`` and ``1.`` stay."""
_AUTOLINK_TRIGGERS = re.compile(r"(?i)(:)(?=//)|\b(www)(?=\.)|(@)")
"""Where GFM starts a link in plain text (``https://``, ``www.``, ``a@b.c``). The new UI finds
them in the text after escapes are decoded, so a zero-width space goes after each."""
_ZERO_WIDTH_SPACE = "\u200b"
_HTML_ENTITIES = {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}
_URL_SAFE = "/:?#[]@!$&*+,;=%-._~"
_LINK_TEXT_SAFE = "/:?#@$&+,;=%-._~"
"""Characters a link's text shows as they are: none starts markdown or HTML in link text."""
"""Characters left as they are in a link's destination; parentheses, quotes, angle brackets,
backslashes and spaces are percent-encoded, so no URL ends a markdown link early."""
_QUEUED_PROGRESS = 5.0
_PROCESSING_START = 10.0
_PROCESSING_CEILING = 95.0
_PROCESSING_HALF_LIFE_SECONDS = 60.0
"""Processing progress creeps from 10% towards 95%, half the way in this many seconds."""


# -- untrusted values, made inert ------------------------------------------------------------


def markdown_text(value: object, limit: int | None = None) -> str:
    """``value`` as plain text in markdown and HTML: one line, no active character.

    Whitespace runs (newlines included) become one space and control characters go; HTML's
    special characters become named entities (``&lt;``) and markdown's punctuation is
    backslash-escaped (``\\[``), and a zero-width space breaks each autolink trigger
    (``https:``, ``www``, ``@``), so no link, image, emphasis, table cell, autolink or tag
    can come out of it. (Numeric references such as ``&#91;`` would do in CommonMark, but
    Prefect's classic UI shows them as written; the new UI links ``https://`` in text even
    when escaped.) ``limit`` shortens it first (`shorten`).
    """
    text = " ".join(str(value).split())
    if limit is not None:
        text = shorten(text, limit)
    out = []
    for char in text:
        if char in _HTML_ENTITIES:
            out.append(_HTML_ENTITIES[char])
        elif char in _MARKDOWN_ACTIVE:
            out.append("\\" + char)
        elif char.isprintable():
            out.append(char)
    return _AUTOLINK_TRIGGERS.sub(lambda m: m.group(0) + _ZERO_WIDTH_SPACE, "".join(out))


def markdown_code(value: object) -> str:
    """``value`` in monospace, as inert as `markdown_text` (a ``<code>`` element around it).

    Not a backtick code span: a span shows ``<`` and ``&`` as written, which is right in
    a markdown renderer but leaves raw markup in the text for any other reader.
    """
    return f"<code>{markdown_text(value)}</code>"


def markdown_cell(text: object) -> str:
    """``text`` as inert text in one markdown table cell."""
    return markdown_text(text)


def html_attribute(value: object) -> str:
    """``value`` quoted for an HTML attribute (``alt``, ``title``): one line, escaped."""
    return html.escape(" ".join(str(value).split()), quote=True)


def safe_http_url(url: str | None) -> str | None:
    """``url`` ready for a link or a ``src`` when it is an http(s) URL with a host, else None.

    Characters that could end a markdown link or an HTML attribute are percent-encoded.
    """
    if not url:
        return None
    try:
        parts = urlsplit(str(url).strip())
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return None
    return quote(str(url).strip(), safe=_URL_SAFE)


def markdown_link(url: str | None, text: object | None = None) -> str:
    """A markdown link to an http(s) ``url``; anything else is shown as inert text, unlinked.

    The text is ``text`` (escaped), or the URL with its user info and signature redacted and
    every character that markdown or HTML could read percent-encoded: Prefect's classic UI
    shows a link's text as written, escapes included.
    """
    target = safe_http_url(url)
    redacted = redact_url(str(url or ""))
    if target is None:
        return markdown_text(redacted)
    shown = markdown_text(text) if text is not None else quote(redacted, safe=_LINK_TEXT_SAFE)
    return f"[{shown}]({target})"


def data_image(uri: str | None, *, width: int, alt: str, title: str | None = None) -> str:
    """An ``<img>`` of a ``data:`` picture the package encoded; "" for anything else."""
    if not uri or not DATA_IMAGE.fullmatch(uri):
        return ""
    extra = f' title="{html_attribute(title)}"' if title else ""
    return f'<img src="{uri}" width="{width}" alt="{html_attribute(alt)}"{extra}>'


# -- names ------------------------------------------------------------------------------------


def shorten(text: str, limit: int) -> str:
    """``text`` cut at a word near ``limit`` characters, with an ellipsis."""
    if len(text) <= limit:
        return text
    cut = text[:limit].rsplit(" ", 1)[0] or text[:limit]
    return cut.rstrip(",;:.") + "…"


def first_sentence(prompt: str | None, limit: int = TITLE_LENGTH) -> str:
    """The prompt's first sentence on one line (all of it up to ``limit`` characters)."""
    text = " ".join((prompt or "").split()) or "Kandinsky video"
    return shorten(_SENTENCE_END.split(text, maxsplit=1)[0], limit)


def short_prompt(prompt: str | None, limit: int = TITLE_LENGTH) -> str:
    """The prompt on one line, cut at a word near ``limit`` characters with an ellipsis."""
    return shorten(" ".join((prompt or "").split()) or "Kandinsky video", limit)


def prompt_slug(prompt: str | None, limit: int = KEY_SLUG_LENGTH) -> str:
    """The prompt's first words as ``lower-case-words``, at most ``limit`` characters."""
    words = re.findall(r"[a-z0-9]+", (prompt or "").lower())
    slug = ""
    for word in words:
        longer = f"{slug}-{word}" if slug else word
        if len(longer) > limit:
            break
        slug = longer
    return slug or (words[0][:limit] if words else "video")


def artifact_key(request_id: str, kind: str, prompt: str | None = None) -> str:
    """``kandinsky-<kind>-<prompt slug>-<id tail>``: tells videos apart by prompt and id.

    The id's tail is its last `KEY_ID_LENGTH` letters and digits (the random end of a
    UUIDv7). Keys match Prefect's ``^[a-z0-9-]*$`` and stay under 80 characters.
    """
    tail = re.sub(r"[^a-z0-9]", "", request_id.lower())[-KEY_ID_LENGTH:] or "unknown"
    raw = f"kandinsky-{kind}-{prompt_slug(prompt)}-{tail}"
    return KEY_UNSAFE.sub("-", raw).strip("-")


def in_run() -> bool:
    """Whether this runs inside a flow or task run (where artifacts can be made)."""
    return FlowRunContext.get() is not None or TaskRunContext.get() is not None


# -- times and links ----------------------------------------------------------------------------


def clock(value: datetime) -> str:
    """A moment as ``YYYY-MM-DD HH:MM:SS UTC``: whole seconds, as the gateway writes some."""
    return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


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


def _is_loopback(url: str) -> bool:
    host = (urlsplit(url).hostname or "").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def signed_expiry(url: str) -> datetime | None:
    """When a presigned (SigV4) link stops working, from its ``X-Amz-Date`` and ``-Expires``."""
    try:
        query = {k.lower(): v for k, v in parse_qsl(urlsplit(url).query)}
        signed = datetime.strptime(query["x-amz-date"], "%Y%m%dT%H%M%SZ")
        return signed.replace(tzinfo=timezone.utc) + timedelta(seconds=int(query["x-amz-expires"]))
    except (KeyError, ValueError):
        return None


def live_video_link(
    persisted: PersistedVideo, now: datetime | None = None
) -> tuple[str, str] | None:
    """The http(s) link a ``<video>`` may play, and what is known of its lifetime.

    None when no link is believed alive: a presigned link past its expiry, a CDN link past
    its signed expiry, or a CDN on a loopback address (the emulator, gone when it stops).
    """
    now = now or datetime.now(timezone.utc)
    presigned = safe_http_url(persisted.public_url)
    expires = persisted.public_url_expires_at
    if presigned and (expires is None or expires > now):
        until = f", valid until {clock(expires)}" if expires else ""
        return presigned, f"a presigned S3 link{until}"
    cdn = safe_http_url(persisted.source_url)
    if cdn is None or _is_loopback(persisted.source_url):
        return None
    expires = signed_expiry(persisted.source_url)
    if expires is None:
        return cdn, "the gateway's CDN link, which expires (the gateway does not say when)"
    if expires > now:
        return cdn, f"the gateway's CDN link, valid until {clock(expires)}"
    return None


# -- building blocks of the summaries -----------------------------------------------------


def _moving(preview: EmbeddedPreview) -> str | None:
    """The preview's animated picture (WebP or GIF), if it has one."""
    clip = preview.clip
    return clip if clip and clip.startswith(("data:image/webp", "data:image/gif")) else None


def _pictures(preview: EmbeddedPreview | None) -> list[str]:
    """The moving preview (or the poster), then the strip of frames: each shown once."""
    if preview is None:
        return [f"*{NO_PREVIEW_HINT}*", ""]
    moving = _moving(preview)
    lead = (
        data_image(moving, width=PREVIEW_SHOWN_WIDTH, alt="moving preview of the video")
        if moving
        else data_image(preview.poster, width=PREVIEW_SHOWN_WIDTH, alt="first frame")
    )
    lines = [lead, ""] if lead else []
    frames = [
        (at, data_image(uri, width=STRIP_SHOWN_WIDTH, alt=f"frame at {at:.1f} s"))
        for uri, at in zip(preview.strip, preview.strip_seconds, strict=False)
    ]
    frames = [(at, cell) for at, cell in frames if cell]
    if frames:
        # A one-row table: the new UI shows images one under the other outside a table.
        lines += [
            "| " + " | ".join(f"{at:.1f} s" for at, _ in frames) + " |",
            "|" + "---|" * len(frames),
            "| " + " | ".join(cell for _, cell in frames) + " |",
            "",
        ]
    what = "A moving preview" if moving else "The first frame"
    lines += [
        f"*{what} and {len(frames)} frames, kept in this artifact: they show after every "
        "link has expired.*",
        "",
    ]
    return lines


def _player(persisted: PersistedVideo, preview: EmbeddedPreview | None) -> list[str]:
    """A ``<video>`` of the full video while its link is believed alive, and its expiry."""
    link = live_video_link(persisted)
    if link is None:
        return []
    src, lifetime = link
    width = 2 * preview.width if preview is not None else 512
    return [
        f'<video controls preload="metadata" width="{min(width, 512)}" '
        f'src="{html.escape(src)}"></video>',
        "",
        f"*The full video plays from {lifetime}. Prefect's new UI shows no player: the "
        "preview above stands in for it.*",
        "",
    ]


def _fields(rows: list[tuple[str, str]]) -> list[str]:
    """A list of ``**Name:** value`` lines: wraps in a narrow panel, unlike a wide table."""
    return [*(f"- **{name}:** {value}" for name, value in rows), ""]


def _request_lines(request: VideoRequest | None, input_preview: str | None) -> list[str]:
    if request is None:
        return []
    lines = ["### Request", ""]
    thumbnail = data_image(input_preview, width=160, alt="input image")
    if thumbnail:
        lines += [thumbnail, ""]
    lines += _fields(
        [
            ("Prompt", markdown_text(request.prompt)),
            ("Image", markdown_link(request.image_url)),
            (
                "Parameters",
                f"{markdown_text(request.resolution)}, {markdown_text(request.duration)}, "
                f"{request.num_inference_steps} steps, "
                f"{markdown_text(request.acceleration)} acceleration",
            ),
            ("Estimated cost", markdown_text(request.estimated_cost_label)),
        ]
    )
    return lines


def _timeline_lines(video: CompletedVideo) -> list[str]:
    lines = ["### Timeline", "", "| Status | At | Seen by |", "|---|---|---|"]
    lines += [
        f"| {markdown_text(event.status.value)} | {clock(event.at)} | "
        f"{'the gateway' if event.source == 'gateway' else 'a status read'} |"
        for event in sorted(video.timeline, key=lambda event: event.at)
    ]
    lines.append("")
    note = "Times in whole seconds, by the gateway's clock (it writes some in whole seconds)."
    if video.total_seconds is not None:
        total = round(video.total_seconds)
        if video.queue_seconds is not None:
            queued = min(round(video.queue_seconds), total)
            lines.append(
                f"Queued {_whole(queued)}, then rendered for {_whole(total - queued)}: "
                f"{_whole(total)} from submission to completion. {note}"
            )
        else:
            lines.append(
                f"{_whole(total).capitalize()} from submission to completion (no status read "
                f"fell while it was PROCESSING, so queue and render time are not told apart). "
                f"{note}"
            )
    else:
        lines.append(note)
    return [*lines, ""]


def _output_lines(persisted: PersistedVideo, video: CompletedVideo | None) -> list[str]:
    where = markdown_code(persisted.uri)
    if not persisted.uri.startswith(("s3://", "block:")):
        where += " (a path on the machine that ran the flow)"
    rows: list[tuple[str, str]] = [("Stored at", where)]
    if persisted.public_url:
        until = (
            f", valid until {clock(persisted.public_url_expires_at)}"
            if persisted.public_url_expires_at
            else ""
        )
        rows.append(("Download", f"{markdown_link(persisted.public_url)}{until}"))
    if safe_http_url(persisted.source_url):
        if _is_loopback(persisted.source_url):
            rows.append(
                (
                    "Gateway CDN",
                    f"{markdown_text(redact_url(persisted.source_url))} (a local emulator's "
                    "link: gone once it stops)",
                )
            )
        else:
            rows.append(("Gateway CDN", f"{markdown_link(persisted.source_url)} (expires)"))
    rows.append(("Size", f"{persisted.size_bytes:,} bytes"))
    if persisted.frames is not None:
        shape = (
            f"{markdown_text(persisted.codec or 'unknown codec')}, "
            f"{persisted.width}x{persisted.height}, {persisted.frames} frames at "
            f"{persisted.fps or 0:g} fps"
        )
        if persisted.duration_seconds is not None:
            shape += f", {persisted.duration_seconds:.2f} s"
        rows.append(("Video", shape))
    elif persisted.media_type:
        rows.append(("Media type", markdown_text(persisted.media_type)))
    request = video.request if video else None
    if request is not None:
        rows.append(
            ("Cost", f"{markdown_text(request.estimated_cost_label)} (documented price table)")
        )
    rows += [
        ("Request id", markdown_code(persisted.request_id)),
        ("SHA-256", markdown_code(persisted.sha256)),
    ]
    return ["### Output", "", *_fields(rows)]


# -- summaries ----------------------------------------------------------------------------


def summary_markdown(persisted: PersistedVideo, video: CompletedVideo | None) -> str:
    """The per-video summary: the video itself, the request, its timeline and the stored file."""
    request = video.request if video else None
    lines = [f"## {markdown_text(first_sentence(request.prompt if request else None))}", ""]
    lines += _pictures(persisted.preview)
    lines += _player(persisted, persisted.preview)
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
    if isinstance(error, KandinskyWaitTimeoutError):
        request_id = re.sub(r"[^A-Za-z0-9_.-]", "", error.request_id or "")
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
    rows = [
        ("Status", markdown_text(status)),
        ("Gateway's error", markdown_text(error.error or "none given")),
        ("Charged", _charged(error, markdown_text(cost))),
        ("Request id", markdown_code(error.request_id or "unknown")),
    ]
    if isinstance(error, KandinskyWaitTimeoutError):
        rows.append(("Waited", _seconds(error.waited_seconds)))
    lines = [
        f"## {markdown_text(first_sentence(request.prompt if request else None))}",
        "",
        f"**{markdown_text(label)}**: no video was stored.",
        "",
        *_fields(rows),
        "### What now",
        "",
        *_way_out(error),
        "",
    ]
    lines += _request_lines(request, job.input_preview if job else None)
    return "\n".join(lines)


# -- publishing ---------------------------------------------------------------------------


def describe(prompt: str | None, what: str) -> str:
    """An artifact description: the prompt's first sentence, then what the artifact shows."""
    return f"{markdown_text(first_sentence(prompt))} — {markdown_text(what)}"


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
            key=artifact_key(persisted.request_id, "summary", prompt),
            description=describe(prompt, f"{shape}stored at {persisted.uri}"),
        )
    ]
    link = safe_http_url(persisted.public_url)
    if link:
        ids.append(
            await acreate_link_artifact(
                link=link,
                link_text=markdown_text(
                    f"{first_sentence(prompt, 60)} (presigned link to {persisted.uri})"
                ),
                key=artifact_key(persisted.request_id, "video", prompt),
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
    prompt = job.request.prompt if job else None
    return await acreate_markdown_artifact(
        markdown=failure_markdown(error, job),
        key=artifact_key(error.request_id or "unknown", "summary", prompt),
        description=describe(prompt, f"{label} ({status}), {error.request_id}"),
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
