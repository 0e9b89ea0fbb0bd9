"""Batches with callbacks: a row whose submit answer was lost is adopted, not paid twice.

The emulator commits a row's job and then loses the answer (a 500, a cut connection, a batch
process killed while the answer is held). Its callback goes over real https to the package's
receiver, which emits real events to the test Prefect API; the batch finds the row's job by
the nonce recorded in the ledger before the submit. The emulator's request log is the
witness: one job per row.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from callback_fixtures import CALLBACK_SECRET

from prefect_kandinsky import KandinskyCredentials
from prefect_kandinsky.batch.flows import generate_videos
from prefect_kandinsky.batch.result import BatchResult
from prefect_kandinsky.emulator import EmulatorServer
from prefect_kandinsky.events.server import WebhookServer
from prefect_kandinsky.gateway.exceptions import KandinskyBatchIncompleteError

pytestmark = pytest.mark.usefixtures("prefect_api")

SECRET = CALLBACK_SECRET
ROWS = 3
LOST_ANSWERS = {
    "500 after commit": {"status_code": 500},
    "cut after sending": {"action": "drop"},
}
RUN_BATCH = """
import asyncio, json, sys
from prefect_kandinsky import KandinskyCredentials
from prefect_kandinsky.batch import generate_videos

settings = json.loads(sys.argv[1])
credentials = KandinskyCredentials(**settings.pop("credentials"))
asyncio.run(generate_videos(settings.pop("manifest"), credentials=credentials, **settings))
"""


@pytest.fixture
def emulator(kandinsky_emulator: EmulatorServer, tls: tuple[str, str]) -> EmulatorServer:
    kandinsky_emulator.configure(webhook_ca_file=tls[0], queue_seconds=0.1, processing_seconds=0.3)
    return kandinsky_emulator


def credential_fields(emulator: EmulatorServer) -> dict[str, Any]:
    return {
        "api_key": emulator.api_key,
        "base_url": emulator.base_url,
        "webhook_secret": SECRET,
        "max_retries": 0,
    }


def options(emulator: EmulatorServer, tmp_path: Path, **changes: Any) -> dict[str, Any]:
    manifest = tmp_path / "rows.csv"
    with manifest.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "prompt", "image", "resolution", "duration"])
        for n in range(1, ROWS + 1):
            writer.writerow([f"row-{n}", f"Scene {n}: rain.", emulator.sample_image_url, "512P", 1])
    return {
        "manifest": str(manifest),
        "destination": str(tmp_path / "videos"),
        "ledger": str(tmp_path / "ledger"),
        "max_concurrency": 1,
        "poll_interval_seconds": 0.05,
        "max_poll_interval_seconds": 0.1,
        "check_image": False,
        "wait_timeout_seconds": 60,
        **changes,
    }


async def run_batch(emulator: EmulatorServer, settings: dict[str, Any]) -> BatchResult:
    settings = dict(settings)
    credentials = KandinskyCredentials(**credential_fields(emulator))
    try:
        result: BatchResult = await generate_videos(
            settings.pop("manifest"), credentials=credentials, **settings
        )
    except KandinskyBatchIncompleteError as exc:
        return exc.result  # type: ignore[no-any-return]
    return result


def kill_mid_submit(emulator: EmulatorServer, settings: dict[str, Any]) -> None:
    """Run the batch in a process and SIGKILL it while the gateway holds a submit's answer."""
    from prefect.settings import PREFECT_API_URL

    state = emulator.state
    argument = json.dumps({**settings, "credentials": credential_fields(emulator)})
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_API_URL=str(PREFECT_API_URL.value()), PREFECT_SERVER_ANALYTICS_ENABLED="false"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", RUN_BATCH, argument],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not any(r.fault == "stall" for r in state.requests("submit")):
            assert process.poll() is None, "the batch ended before the kill"
            assert time.monotonic() < deadline, "the submit was never held"
            time.sleep(0.02)
    finally:
        process.kill()
        process.wait(timeout=10)


def stored_files(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in (tmp_path / "videos").glob("*") if p.is_file())


@pytest.mark.parametrize("fault", list(LOST_ANSWERS), ids=list(LOST_ANSWERS))
async def test_a_row_whose_answer_was_lost_is_adopted_on_the_same_run(
    emulator: EmulatorServer, receiver: WebhookServer, tmp_path: Path, fault: str
) -> None:
    """One job per row at the gateway, every video stored, the row marked adopted and charged."""
    emulator.state.inject_fault("submit", after_queue=True, **LOST_ANSWERS[fault])

    result = await run_batch(
        emulator, options(emulator, tmp_path, webhook_base_url=receiver.url, webhook_mode="sync")
    )

    assert ROWS == emulator.state.count("submit") == len(emulator.state.jobs())
    assert {"stored": ROWS} == result.counts
    assert ROWS == len(stored_files(tmp_path))
    (adopted,) = [row for row in result.rows if row.adopted]
    assert "row-1" == adopted.row_id
    assert {job.request_id for job in emulator.state.jobs()} == {r.request_id for r in result.rows}
    assert (0, 1) == (result.ambiguous_attempts, result.adopted_rows)
    assert result.charged_usd == sum(r.estimated_cost_usd or 0 for r in result.rows)
    assert "1 adopted from their callback" in result.summary()


@pytest.mark.parametrize("fault", list(LOST_ANSWERS), ids=list(LOST_ANSWERS))
async def test_without_callbacks_the_row_stays_uncertain_and_its_cost_is_shown_apart(
    emulator: EmulatorServer, tmp_path: Path, fault: str
) -> None:
    """No callback, no adoption: the row is uncertain, never resent, its possible cost shown."""
    emulator.state.inject_fault("submit", after_queue=True, **LOST_ANSWERS[fault])

    result = await run_batch(emulator, options(emulator, tmp_path))

    assert ROWS == emulator.state.count("submit")
    assert {"stored": ROWS - 1, "uncertain": 1} == result.counts
    (uncertain,) = [row for row in result.rows if row.state == "uncertain"]
    assert (1, uncertain.estimated_cost_usd) == (result.ambiguous_attempts, result.ambiguous_usd)
    assert "1 ambiguous submit may have cost up to" in result.summary()


async def test_a_batch_killed_mid_submit_adopts_the_row_when_run_again(
    emulator: EmulatorServer, receiver: WebhookServer, tmp_path: Path
) -> None:
    """Killed while the gateway held the first submit's answer: the re-run finds the job by
    the nonce in the ledger, waits for it, stores it, and submits only the other rows."""
    state = emulator.state
    state.inject_fault("submit", action="stall", after_queue=True, stall_seconds=30)
    settings = options(emulator, tmp_path, webhook_base_url=receiver.url)
    kill_mid_submit(emulator, settings)
    assert 1 == len(state.jobs()), "the gateway queued (and billed) the first row"

    result = await run_batch(emulator, settings)

    assert ROWS == state.count("submit") == len(state.jobs())
    assert {"stored": ROWS} == result.counts
    assert ROWS == len(stored_files(tmp_path))
    (adopted,) = [row for row in result.rows if row.adopted]
    assert "row-1" == adopted.row_id
    assert state.jobs()[0].request_id == adopted.request_id
    assert 0 == result.ambiguous_attempts
