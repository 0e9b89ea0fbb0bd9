"""Waiting on Prefect events: real https callbacks, the real receiver, a real Prefect API."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from callback_fixtures import CALLBACK_SECRET
from prefect import flow

from prefect_kandinsky import KandinskyCredentials, PersistedVideo, generate_video
from prefect_kandinsky.emulator import EmulatorServer
from prefect_kandinsky.events.server import WebhookServer
from prefect_kandinsky.gateway.models import CompletedVideo
from prefect_kandinsky.tasks import await_video, submit_video

pytestmark = pytest.mark.usefixtures("prefect_api")

SECRET = CALLBACK_SECRET


@pytest.fixture
def creds(kandinsky_emulator: EmulatorServer, tls: tuple[str, str]) -> KandinskyCredentials:
    """Credentials with the receiver's secret; the emulator trusts the test CA."""
    kandinsky_emulator.configure(webhook_ca_file=tls[0])
    return KandinskyCredentials(
        api_key=kandinsky_emulator.api_key,
        base_url=kandinsky_emulator.base_url,
        webhook_secret=SECRET,
    )


async def test_the_completion_event_ends_the_wait(
    kandinsky_emulator: EmulatorServer,
    creds: KandinskyCredentials,
    receiver: WebhookServer,
    tmp_path: Path,
) -> None:
    """A 3 s render with a 60 s safety net: the event wakes the wait right after completion."""
    kandinsky_emulator.configure(queue_seconds=0.1, processing_seconds=3.0)
    started = time.monotonic()
    video: PersistedVideo = await generate_video(
        prompt="The lanterns rise into the night sky.",
        image_url=kandinsky_emulator.sample_image_url,
        resolution="256P",
        duration=1,
        credentials=creds,
        destination=str(tmp_path),
        webhook_base_url=receiver.url,
        wait="events",
    )
    elapsed = time.monotonic() - started
    assert Path(video.uri).is_file()
    # Half the 60 s safety read: room for a loaded machine, and still not the safety read.
    assert elapsed < 30.0, f"woken by the event, not the 60 s safety read ({elapsed:.1f}s)"
    (job,) = kandinsky_emulator.state.jobs()
    assert receiver.url in str(job.webhook_url)
    reads = kandinsky_emulator.state.count("status", request_id=job.request_id)
    assert reads <= 3, "the wait's first read, the receiver's confirmation, the read on the event"
    assert {202} == {d.response_code for d in kandinsky_emulator.state.webhook_deliveries}


async def test_a_lost_callback_is_caught_by_the_safety_read(
    kandinsky_emulator: EmulatorServer, creds: KandinskyCredentials
) -> None:
    """The receiver is unreachable, so no event comes: the slow status read finishes the wait."""
    kandinsky_emulator.configure(queue_seconds=0.1, processing_seconds=0.5)

    @flow
    async def wait_without_events() -> CompletedVideo:
        job = await submit_video(
            prompt="The fountain sprays in the sun.",
            image_url=kandinsky_emulator.sample_image_url,
            resolution="256P",
            duration=1,
            credentials=creds,
            webhook_base_url="https://127.0.0.1:9",  # nothing listens there
        )
        return await await_video(job, creds, wait="events", safety_poll_seconds=0.5)

    video = await wait_without_events()
    assert "COMPLETED" == video.status.status.value
    assert all(d.response_code is None for d in kandinsky_emulator.state.webhook_deliveries)


async def test_events_and_suspend_need_the_receiver(
    kandinsky_emulator: EmulatorServer, creds: KandinskyCredentials, tmp_path: Path
) -> None:
    """Waiting for events without a receiver address is refused before anything is paid."""
    state: Any = await generate_video(
        prompt="p",
        image_url=kandinsky_emulator.sample_image_url,
        credentials=creds,
        destination=str(tmp_path),
        wait="events",
        return_state=True,
    )
    with pytest.raises(ValueError, match="pass webhook_base_url"):
        await state.result()
    assert 0 == kandinsky_emulator.state.count("submit")


async def test_suspend_outside_a_deployment_is_refused_before_waiting(
    kandinsky_emulator: EmulatorServer,
    creds: KandinskyCredentials,
    receiver: WebhookServer,
    tmp_path: Path,
) -> None:
    """A flow called directly cannot be suspended: refused before paying, saying what to use."""
    state: Any = await generate_video(
        prompt="p",
        image_url=kandinsky_emulator.sample_image_url,
        resolution="256P",
        duration=1,
        credentials=creds,
        destination=str(tmp_path),
        webhook_base_url=receiver.url,
        wait="suspend",
        return_state=True,
    )
    with pytest.raises(ValueError, match="needs a flow run of a deployment"):
        await state.result()
    assert 0 == kandinsky_emulator.state.count("submit")


async def test_a_batch_waits_on_one_event_stream(
    kandinsky_emulator: EmulatorServer,
    creds: KandinskyCredentials,
    receiver: WebhookServer,
    tmp_path: Path,
) -> None:
    """Four 3 s renders, one subscription: each row is woken by its own event, few reads."""
    from prefect_kandinsky.batch.flows import generate_videos
    from prefect_kandinsky.batch.result import BatchResult

    kandinsky_emulator.configure(queue_seconds=0.1, processing_seconds=3.0)
    rows = [
        {
            "prompt": f"Scene {n}: the snow falls on the roofs.",
            "image": kandinsky_emulator.sample_image_url,
            "resolution": "256P",
            "duration": "1s",
        }
        for n in range(4)
    ]
    started = time.monotonic()
    result: BatchResult = await generate_videos(
        rows,
        credentials=creds,
        destination=str(tmp_path / "videos"),
        ledger=str(tmp_path / "ledger"),
        webhook_base_url=receiver.url,
        wait="events",
    )
    elapsed = time.monotonic() - started
    assert {"stored": 4} == result.counts
    assert elapsed < 30.0, f"woken by the events, not the 60 s safety reads ({elapsed:.1f}s)"
    for job in kandinsky_emulator.state.jobs():
        assert kandinsky_emulator.state.count("status", request_id=job.request_id) <= 3
