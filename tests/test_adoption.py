"""Orphans adopted: a submit whose answer was lost finds its job again by its callback.

The emulator commits the job and then loses the answer (a 500, a cut connection); its
callbacks go over real https to the package's receiver, which emits real events to the test
Prefect API; the submit finds its job there by the nonce of its callback URL.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from callback_fixtures import CALLBACK_SECRET
from prefect import flow

from prefect_kandinsky import KandinskyCredentials, PersistedVideo
from prefect_kandinsky.emulator import EmulatorServer
from prefect_kandinsky.events.server import WebhookServer
from prefect_kandinsky.gateway.exceptions import KandinskySubmitUncertainError
from prefect_kandinsky.gateway.models import VideoJob, WebhookMode
from prefect_kandinsky.tasks import await_video, persist_video, submit_video

pytestmark = pytest.mark.usefixtures("prefect_api")

SECRET = CALLBACK_SECRET
LOST_ANSWERS = {
    "500 after commit": {"status_code": 500},
    "cut after sending": {"action": "drop"},
}


@pytest.fixture
def creds(kandinsky_emulator: EmulatorServer, tls: tuple[str, str]) -> KandinskyCredentials:
    """Credentials with the receiver's secret and no client retries; the emulator trusts the CA."""
    kandinsky_emulator.configure(webhook_ca_file=tls[0], queue_seconds=0.1, processing_seconds=0.3)
    return KandinskyCredentials(
        api_key=kandinsky_emulator.api_key,
        base_url=kandinsky_emulator.base_url,
        webhook_secret=SECRET,
        max_retries=0,
    )


def one_video(
    emulator: EmulatorServer,
    creds: KandinskyCredentials,
    destination: Path,
    *,
    webhook_base_url: str | None,
    webhook_mode: WebhookMode | None = None,
) -> Any:
    @flow(name="kandinsky-test-adoption")
    async def generate() -> tuple[VideoJob, PersistedVideo]:
        job = await submit_video(
            prompt="The kite climbs into the wind.",
            image_url=emulator.sample_image_url,
            resolution="256P",
            duration=1,
            credentials=creds,
            webhook_base_url=webhook_base_url,
            webhook_mode=webhook_mode,
            adopt_timeout_seconds=30,
        )
        video = await await_video(job, creds, poll_interval=0.1)
        return job, await persist_video(video, creds, str(destination))

    return generate


@pytest.mark.parametrize("mode", ["terminal", "sync"])
@pytest.mark.parametrize("fault", list(LOST_ANSWERS), ids=list(LOST_ANSWERS))
async def test_a_lost_submit_answer_is_adopted_from_its_callback(
    kandinsky_emulator: EmulatorServer,
    creds: KandinskyCredentials,
    receiver: WebhookServer,
    tmp_path: Path,
    fault: str,
    mode: WebhookMode,
) -> None:
    """The gateway committed the job and the answer was lost: one job, its video stored, the
    job marked adopted, nothing resubmitted."""
    kandinsky_emulator.state.inject_fault("submit", after_queue=True, **LOST_ANSWERS[fault])

    generate = one_video(
        kandinsky_emulator, creds, tmp_path, webhook_base_url=receiver.url, webhook_mode=mode
    )
    job, stored = await generate()

    (only,) = kandinsky_emulator.state.jobs()
    assert 1 == kandinsky_emulator.state.count("submit")
    assert (only.request_id, True) == (job.request_id, job.adopted)
    assert job.callback_nonce is not None and job.callback_nonce in str(only.webhook_url)
    assert Path(stored.uri).is_file()
    assert only.request_id == stored.video.request_id


@pytest.mark.parametrize("fault", list(LOST_ANSWERS), ids=list(LOST_ANSWERS))
async def test_without_callbacks_a_lost_answer_stays_uncertain(
    kandinsky_emulator: EmulatorServer, creds: KandinskyCredentials, tmp_path: Path, fault: str
) -> None:
    """Without a callback nothing can name the job: uncertain, never resent."""
    kandinsky_emulator.state.inject_fault("submit", after_queue=True, **LOST_ANSWERS[fault])

    generate = one_video(kandinsky_emulator, creds, tmp_path, webhook_base_url=None)
    with pytest.raises(KandinskySubmitUncertainError, match="may have"):
        await generate()

    assert 1 == kandinsky_emulator.state.count("submit")
    assert 1 == len(kandinsky_emulator.state.jobs())
    assert [] == list(tmp_path.iterdir())


async def test_an_unanswered_callback_leaves_the_submit_uncertain_after_the_timeout(
    kandinsky_emulator: EmulatorServer, creds: KandinskyCredentials, tmp_path: Path
) -> None:
    """A receiver nobody can reach sends no event: uncertain after the adopt timeout."""
    kandinsky_emulator.state.inject_fault("submit", after_queue=True, status_code=500)

    @flow(name="kandinsky-test-adoption-timeout")
    async def generate() -> VideoJob:
        return await submit_video(
            prompt="The kite climbs into the wind.",
            image_url=kandinsky_emulator.sample_image_url,
            resolution="256P",
            duration=1,
            credentials=creds,
            webhook_base_url="https://127.0.0.1:9",  # nothing listens there
            adopt_timeout_seconds=0.5,
        )

    with pytest.raises(KandinskySubmitUncertainError):
        await generate()
    assert 1 == kandinsky_emulator.state.count("submit")
