"""Artifacts as a user sees them: read back from the Prefect API after real flow runs."""

from __future__ import annotations

import asyncio
import base64
import html
import io
import re
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from uuid import UUID

import av
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
from prefect.client.schemas.objects import Artifact
from prefect.states import State

from prefect_kandinsky import KandinskyCredentials, PersistedVideo, generate_video
from prefect_kandinsky.artifacts import (
    artifact_key,
    describe,
    failure_markdown,
    markdown_text,
    summary_markdown,
)
from prefect_kandinsky.gateway.models import CompletedVideo, StatusResponse, VideoRequest

pytestmark = pytest.mark.usefixtures("prefect_api")

PROMPT = "The lantern sways in the wind while snow falls past it."
DATA_IMAGE = re.compile(r"data:image/jpeg;base64,([A-Za-z0-9+/=]+)")
MOVING = re.compile(r'<img src="data:image/webp;base64,[A-Za-z0-9+/=]+" width="256" alt="moving')
VIDEO_SRC = re.compile(r'<video[^>]*\ssrc="([^"]+)"')


async def artifacts_of(flow_run_id: UUID) -> dict[str, Artifact]:
    async with get_client() as client:
        found = await client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    return {a.key or f"unkeyed-{a.type}": a for a in found}


async def run_flow(server: Any, creds: KandinskyCredentials, tmp_path: Path, **changes: Any) -> Any:
    parameters: dict[str, Any] = {
        "prompt": PROMPT,
        "image_url": server.sample_image_url,
        "destination": str(tmp_path / "videos"),
        "credentials": creds,
        "resolution": "256P",
        "duration": 1,
        "poll_interval_seconds": 0.02,
        **changes,
    }
    state: State[Any] = await generate_video(**parameters, return_state=True)  # type: ignore[call-overload]
    return state


def jpeg_size(encoded: str) -> tuple[int, int]:
    """Width and height of a base64 JPEG, decoded by PyAV."""
    with av.open(io.BytesIO(base64.b64decode(encoded))) as container:
        frame = next(container.decode(video=0))
        return frame.width, frame.height


def first_job(state: Any) -> Any:
    """The first job the emulator receives, waiting up to 60 s for it (call in a thread)."""
    return state.wait_for_jobs(1, timeout=60)[0]


def timeline_times(markdown: str) -> list[datetime]:
    section = markdown.split("### Timeline", 1)[1].split("###", 1)[0]
    stamps = re.findall(r"\| (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d{3})?) UTC \|", section)
    return [datetime.fromisoformat(stamp) for stamp in stamps]


async def test_summary_shows_the_video_as_embedded_frames(
    kandinsky_emulator: Any, credentials: KandinskyCredentials, tmp_path: Path
) -> None:
    """Poster and strip decode as JPEGs of the video's shape; the total stays small."""
    state = await run_flow(kandinsky_emulator, credentials, tmp_path)
    video: PersistedVideo = await state.result()
    found = await artifacts_of(state.state_details.flow_run_id)
    summary = str(found[artifact_key(video.request_id, "summary", PROMPT)].data)

    frames = DATA_IMAGE.findall(summary)
    assert 6 == len(frames), "the input thumbnail and the strip of 5 frames, each once"
    assert 1 == len(MOVING.findall(summary)), "the moving preview, an image both UIs show"
    assert "data:video" not in summary
    assert video.width and video.height
    for encoded in frames:
        width, height = jpeg_size(encoded)
        assert width <= 256
        assert abs(width / height - video.width / video.height) < 0.02
    assert sum(len(encoded) for encoded in frames) < 100_000
    assert video.preview is not None and 5 == len(video.preview.strip)
    assert "file://" not in str([a.data for a in found.values()])


async def test_no_player_for_the_emulators_cdn_and_timeline_sorted(
    kandinsky_emulator: Any, credentials: KandinskyCredentials, tmp_path: Path
) -> None:
    """The emulator's loopback CDN is gone once it stops: no <video>; timeline in time order."""
    state = await run_flow(kandinsky_emulator, credentials, tmp_path)
    video: PersistedVideo = await state.result()
    summary = str(
        (await artifacts_of(state.state_details.flow_run_id))[
            artifact_key(video.request_id, "summary", PROMPT)
        ].data
    )

    assert [] == VIDEO_SRC.findall(summary)
    assert "a local emulator's link: gone once it stops" in summary
    assert f"]({video.source_url})" not in summary
    times = timeline_times(summary)
    assert len(times) >= 2
    assert sorted(times) == times
    assert summary.count("| QUEUED |") == 1 and summary.count("| COMPLETED |") == 1


def test_video_tag_is_never_a_local_file() -> None:
    """Without an http(s) link there is no <video> of the file, only its path to copy."""
    status = StatusResponse(request_id="r1", status="COMPLETED")
    completed = CompletedVideo(request_id="r1", status=status, media_urls=["file:///tmp/x.mp4"])
    persisted = PersistedVideo(
        request_id="r1",
        uri="/data/videos/r1.mp4",
        size_bytes=10,
        sha256="0" * 64,
        source_url="file:///tmp/x.mp4",
    )
    markdown = summary_markdown(persisted, completed)
    assert [] == VIDEO_SRC.findall(markdown)
    assert "<code>/data/videos/r1.mp4</code>" in markdown
    assert "](file://" not in markdown and 'src="file://' not in markdown


async def test_input_image_is_fetched_once_and_embedded(
    kandinsky_emulator: Any, credentials: KandinskyCredentials, tmp_path: Path
) -> None:
    """The pre-submit check fetches the image once; its thumbnail and link are in the summary."""
    state = await run_flow(kandinsky_emulator, credentials, tmp_path)
    video: PersistedVideo = await state.result()
    summary = str(
        (await artifacts_of(state.state_details.flow_run_id))[
            artifact_key(video.request_id, "summary", PROMPT)
        ].data
    )
    assert 1 == kandinsky_emulator.state.count("asset")
    assert re.search(
        r'<img src="data:image/jpeg;base64,[^"]+" width="\d+" alt="input image"', summary
    )
    assert f"]({kandinsky_emulator.sample_image_url})" in summary


@pytest.mark.parametrize(
    ("outcome", "charged", "way_out"),
    [
        ("FAILED", "- **Charged:** Yes: FAILED generations are billed", "change the prompt"),
        ("ERROR", "- **Charged:** No: ERROR is a system error", "resubmit_on_system_error=True"),
    ],
)
async def test_failed_generation_says_whether_it_was_charged(
    kandinsky_emulator: Any,
    credentials: KandinskyCredentials,
    tmp_path: Path,
    outcome: str,
    charged: str,
    way_out: str,
) -> None:
    """A FAILED or ERROR job publishes a summary: status, the gateway's words, charged or not."""
    kandinsky_emulator.state.plan_outcome(outcome, "the prompt was rejected by moderation")
    state = await run_flow(kandinsky_emulator, credentials, tmp_path, resolution="512P")
    assert state.is_failed()
    (job,) = kandinsky_emulator.state.jobs()
    found = await artifacts_of(state.state_details.flow_run_id)
    summary = str(found[artifact_key(job.request_id, "summary", PROMPT)].data)
    assert summary.startswith(f"## {PROMPT}")
    assert f"- **Status:** {outcome}\n" in summary
    assert "- **Gateway's error:** the prompt was rejected by moderation\n" in summary
    assert charged in summary
    assert way_out in summary
    assert f"<code>{markdown_text(job.request_id)}</code>" in summary
    progress = found["unkeyed-progress"]
    assert isinstance(progress.data, int | float) and progress.data < 100
    assert outcome in str(progress.description)


async def test_timed_out_wait_says_how_to_resume(
    kandinsky_emulator: Any, credentials: KandinskyCredentials, tmp_path: Path
) -> None:
    """A wait that ends first says the job goes on, is not charged yet, and how to resume."""
    kandinsky_emulator.configure(manual=True)
    state = await run_flow(kandinsky_emulator, credentials, tmp_path, wait_timeout_seconds=0.2)
    assert state.is_failed()
    (job,) = kandinsky_emulator.state.jobs()
    summary = str(
        (await artifacts_of(state.state_details.flow_run_id))[
            artifact_key(job.request_id, "summary", PROMPT)
        ].data
    )
    assert "**TIMED OUT**" in summary
    assert "- **Charged:** Not yet" in summary
    assert f'await_video("{job.request_id}", credentials)' in summary
    assert 1 == kandinsky_emulator.state.count("submit")


async def test_without_pyav_the_summary_says_how_to_get_pictures(
    kandinsky_emulator: Any,
    credentials: KandinskyCredentials,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No PyAV where the flow runs: no pictures, and one line saying how to get them."""
    kandinsky_emulator.configure(manual=True)

    async def render_then_hide_pyav() -> None:
        # The emulator renders with PyAV in this process: let it finish before hiding PyAV
        # from the flow, whose next status read comes a second after its first.
        job = await asyncio.to_thread(first_job, kandinsky_emulator.state)
        kandinsky_emulator.state.advance(job.request_id, "COMPLETED")
        await asyncio.to_thread(kandinsky_emulator.state.wait_for_status, job.request_id)
        monkeypatch.setitem(sys.modules, "av", None)

    state, _ = await asyncio.gather(
        run_flow(
            kandinsky_emulator,
            credentials,
            tmp_path,
            check_image=False,
            poll_interval_seconds=1.0,
        ),
        render_then_hide_pyav(),
    )
    video: PersistedVideo = await state.result()
    assert video.preview is None and video.frames is None
    summary = str(
        (await artifacts_of(state.state_details.flow_run_id))[
            artifact_key(video.request_id, "summary", PROMPT)
        ].data
    )
    assert [] == DATA_IMAGE.findall(summary)
    assert 1 == summary.count("pip install 'prefect-kandinsky[emulator]'")


# -- names that tell videos apart ---------------------------------------------------------------


def test_keys_carry_the_prompt_and_the_random_end_of_the_id() -> None:
    """Two requests made together share their UUIDv7's start; their keys still differ."""
    first = "kandinsky-5-0-pro-953_01a24df7-c201-73be-b634-b2e4cfbef7b2"
    second = "kandinsky-5-0-pro-953_01a24df7-c201-73be-b634-0c9a11d2e6f1"
    prompt = "The lantern sways in the wind, while snow falls past it. Night."

    keys = [artifact_key(request_id, "summary", prompt) for request_id in (first, second)]

    assert [
        "kandinsky-summary-the-lantern-sways-in-the-wind-while-snow-b2e4cfbef7b2",
        "kandinsky-summary-the-lantern-sways-in-the-wind-while-snow-0c9a11d2e6f1",
    ] == keys
    hostile = artifact_key("../<x>_ABC", "summary", "ÉTÉ <script> " + "word " * 40)
    for key in [*keys, hostile]:
        assert re.fullmatch(r"[a-z0-9-]*", key) and len(key) <= 80


def test_descriptions_carry_the_whole_first_sentence() -> None:
    """A long first sentence is kept whole in the description, the rest of the prompt is not."""
    sentence = (
        "A red fox trots across a frozen lake at dawn while mist drifts over the ice and the "
        "camera follows it slowly from the left."
    )
    assert 100 < len(sentence)
    assert f"{sentence} — 512P 5s video" == describe(f"{sentence} Birds call.", "512P 5s video")


# -- what each UI can show ----------------------------------------------------------------------


def _stored(**changes: Any) -> PersistedVideo:
    fields: dict[str, Any] = {
        "request_id": "kandinsky-5-0-pro-953_01a24df7-c201-73be-b634-b2e4cfbef7b2",
        "uri": "/data/videos/r1.mp4",
        "size_bytes": 10,
        "sha256": "0" * 64,
        "source_url": "https://cdn.example.com/out/r1.mp4",
        **changes,
    }
    return PersistedVideo(**fields)


def test_a_live_cdn_link_plays_with_its_expiry_said() -> None:
    """A CDN link still signed for an hour gets a <video> and says until when it plays."""
    signed = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    url = (
        "https://cdn.example.com/out/r1.mp4?X-Amz-Date="
        f"{signed}&X-Amz-Expires=3600&X-Amz-Signature=5ecre7"
    )
    markdown = summary_markdown(_stored(source_url=url), None)
    assert [html.escape(url)] == VIDEO_SRC.findall(markdown)
    assert "the gateway's CDN link, valid until " in markdown
    assert "5ecre7" not in markdown.replace(html.escape(url), "").replace(f"]({url})", "]")


@pytest.mark.parametrize(
    "changes",
    [
        {"source_url": "http://127.0.0.1:8081/media/r1.mp4"},
        {"source_url": "http://localhost:8081/media/r1.mp4"},
        {
            "source_url": "https://cdn.example.com/r1.mp4?X-Amz-Date=20200101T000000Z"
            "&X-Amz-Expires=60&X-Amz-Signature=abc"
        },
        {
            "source_url": "file:///tmp/r1.mp4",
            "public_url": "https://bucket.s3.amazonaws.com/r1.mp4?X-Amz-Signature=abc",
            "public_url_expires_at": datetime(2020, 1, 1, tzinfo=timezone.utc),
        },
    ],
    ids=["loopback", "localhost", "expired-cdn", "expired-presigned"],
)
def test_no_player_for_a_link_known_gone(changes: dict[str, Any]) -> None:
    """A loopback emulator's link, or one past its expiry, gets no <video>."""
    assert [] == VIDEO_SRC.findall(summary_markdown(_stored(**changes), None))


# -- hostile values stay text ----------------------------------------------------------------------

HOSTILE = (
    "Log in again](javascript:alert(1)) [Prefect session expired](https://evil.example/login) "
    '<img src="https://tracker.example/p.gif"> <form action="https://evil.example"><input '
    "name=p><button>Sign in</button></form> <script>alert(1)</script> ![x](https://tracker"
    ".example/q.png) www.evil.example `code` | cell | *bold*\n# heading"
)


def _hostile_video() -> tuple[PersistedVideo, CompletedVideo]:
    status = StatusResponse(request_id="r1", status="COMPLETED")
    request = VideoRequest(
        prompt=HOSTILE,
        image_url="https://user:pa55@img.example/a).png?X-Amz-Signature=s1gn&x=<b>",
    )
    completed = CompletedVideo(
        request_id="r1", status=status, media_urls=["https://cdn.example/r1.mp4"], request=request
    )
    persisted = _stored(
        request_id='r1"><script>alert(1)</script>',
        uri="/data/`](javascript:alert(1))<img src=https://tracker.example/f.gif>.mp4",
        codec="<script>alert(1)</script>",
        frames=3,
        width=2,
        height=2,
        fps=1,
        source_url="javascript:alert(1)",
        public_url="https://bucket.s3.amazonaws.com/v.mp4?X-Amz-Signature=s1gn",
    )
    return persisted, completed


def assert_inert(markdown: str) -> None:
    """No active HTML but the package's own, no link or image but to http(s) or data:."""
    lowered = markdown.lower()
    for tag in ("<script", "<form", "<input", "<button", "<iframe"):
        assert tag not in lowered
    for src in re.findall(r'<(?:img|video)\b[^>]*\ssrc="([^"]*)"', markdown):
        assert src.startswith(("data:image/", "https://bucket.s3.amazonaws.com/")), src
    assert len(re.findall(r"<img\b", markdown)) == len(
        re.findall(r'<img src="data:image/[a-z]+;base64,[A-Za-z0-9+/=]+"', markdown)
    )
    targets = re.findall(r"(?<!\\)\]\(([^)]*)\)", markdown)
    for target in targets:
        assert target.startswith(("https://", "http://")), target
    assert "](javascript" not in lowered and 'href="javascript' not in lowered
    assert "tracker.example/p.gif" not in markdown or "&lt;img" in markdown
    assert "s1gn" not in re.sub(r"\]\([^)]*\)|src=\"[^\"]*\"", "", markdown)
    assert "pa55" not in re.sub(r"\]\([^)]*\)", "", markdown)


def test_hostile_values_in_a_summary_stay_text() -> None:
    """Prompt, ids, file names and URLs from a run render as text, never as markup."""
    persisted, completed = _hostile_video()

    markdown = summary_markdown(persisted, completed)

    assert_inert(markdown)
    assert "\\[Prefect session expired\\]\\(https:\u200b//evil.example" in markdown
    assert "&lt;form action=&quot;https:\u200b//evil.example&quot;&gt;" in markdown
    assert "www\u200b.evil.example" in markdown
    assert [] == re.findall(r"(?i)https?://evil|www\.evil", markdown), "no GFM autolink"
    link = "https://REDACTED@img.example/a%29.png?X-Amz-Signature=REDACTED&x=%3Cb%3E"
    assert f"[{link}](https://user:pa55@img.example/a%29.png?X-Amz-Signature=s1gn&x=%3Cb%3E)" in (
        markdown
    ), "the image URL is a link, its text redacted, its destination percent-encoded"
    assert "\n# heading" not in markdown


def test_hostile_values_in_a_failure_and_a_batch_stay_text() -> None:
    """The gateway's error text, row ids and the batch id render as text too."""
    from prefect_kandinsky.batch.artifacts import batch_markdown
    from prefect_kandinsky.batch.ledger import RowRecord
    from prefect_kandinsky.batch.result import BatchResult
    from prefect_kandinsky.gateway.exceptions import KandinskyGenerationFailedError
    from prefect_kandinsky.gateway.models import VideoJob

    _, completed = _hostile_video()
    assert completed.request is not None
    job = VideoJob(
        request_id="r1", request=completed.request, submitted_at=datetime.now(timezone.utc)
    )
    error = KandinskyGenerationFailedError(
        f"failed: {HOSTILE}", request_id='r1"><script>x</script>', status="FAILED", error=HOSTILE
    )
    rows = [
        RowRecord(key="k1", row_id=HOSTILE, line=2, prompt=HOSTILE, state="failed", error=HOSTILE),
        RowRecord(
            key="k2",
            row_id="<img src=https://tracker.example/r.gif>",
            line=3,
            prompt="ok",
            state="stored",
            uri="/out/<script>.mp4",
            thumbnail="https://tracker.example/thumb.gif",
        ),
    ]
    result = BatchResult(
        batch_id=f"s3://b/{HOSTILE}.csv",
        ledger="/tmp/ledger<script>",
        rows=rows,
        estimated_cost_usd=0,
    )

    for markdown in (failure_markdown(error, job), batch_markdown(result)):
        assert_inert(markdown)
    assert "thumb.gif" not in batch_markdown(result)
