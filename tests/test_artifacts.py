"""Artifacts as a user sees them: read back from the Prefect API after real flow runs."""

from __future__ import annotations

import asyncio
import base64
import io
import re
import sys
from datetime import datetime
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
from prefect_kandinsky.artifacts import artifact_key, summary_markdown
from prefect_kandinsky.gateway.models import CompletedVideo, StatusResponse

pytestmark = pytest.mark.usefixtures("prefect_api")

PROMPT = "The lantern sways in the wind while snow falls past it."
DATA_IMAGE = re.compile(r"data:image/jpeg;base64,([A-Za-z0-9+/=]+)")
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
    summary = str(found[artifact_key(video.request_id, "summary")].data)

    frames = DATA_IMAGE.findall(summary)
    assert 7 == len(frames), "the input thumbnail, the strip of 5 frames and the poster"
    assert video.width and video.height
    for encoded in frames:
        width, height = jpeg_size(encoded)
        assert width <= 256
        assert abs(width / height - video.width / video.height) < 0.02
    assert sum(len(encoded) for encoded in frames) < 100_000
    assert video.preview is not None and 5 == len(video.preview.strip)
    assert "file://" not in str([a.data for a in found.values()])


async def test_video_tag_only_with_a_http_source_and_timeline_sorted(
    kandinsky_emulator: Any, credentials: KandinskyCredentials, tmp_path: Path
) -> None:
    """The summary plays the CDN link while it lives; its timeline is in time order."""
    state = await run_flow(kandinsky_emulator, credentials, tmp_path)
    video: PersistedVideo = await state.result()
    summary = str(
        (await artifacts_of(state.state_details.flow_run_id))[
            artifact_key(video.request_id, "summary")
        ].data
    )

    sources = VIDEO_SRC.findall(summary)
    assert [video.source_url] == [src for src in sources if not src.startswith("data:")]
    assert all(src.startswith(("http://", "https://", "data:video/mp4;base64,")) for src in sources)
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
    assert "`/data/videos/r1.mp4`" in markdown
    assert "](file://" not in markdown and 'src="file://' not in markdown


async def test_input_image_is_fetched_once_and_embedded(
    kandinsky_emulator: Any, credentials: KandinskyCredentials, tmp_path: Path
) -> None:
    """The pre-submit check fetches the image once; its thumbnail and link are in the summary."""
    state = await run_flow(kandinsky_emulator, credentials, tmp_path)
    video: PersistedVideo = await state.result()
    summary = str(
        (await artifacts_of(state.state_details.flow_run_id))[
            artifact_key(video.request_id, "summary")
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
        ("FAILED", "| Charged | Yes: FAILED generations are billed", "change the prompt"),
        ("ERROR", "| Charged | No: ERROR is a system error", "resubmit_on_system_error=True"),
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
    summary = str(found[artifact_key(job.request_id, "summary")].data)
    assert summary.startswith(f"## {PROMPT}")
    assert f"| Status | {outcome} |" in summary
    assert "| Gateway's error | the prompt was rejected by moderation |" in summary
    assert charged in summary
    assert way_out in summary
    assert f"`{job.request_id}`" in summary
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
            artifact_key(job.request_id, "summary")
        ].data
    )
    assert "**TIMED OUT**" in summary
    assert "| Charged | Not yet" in summary
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
            artifact_key(video.request_id, "summary")
        ].data
    )
    assert [] == DATA_IMAGE.findall(summary)
    assert 1 == summary.count("pip install 'prefect-kandinsky[emulator]'")
