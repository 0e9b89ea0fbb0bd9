"""``prefect-kandinsky webhooks serve`` as a user runs it: a process, stopped by a signal.

The receiver runs in a subprocess pointed at the test Prefect API and the emulator; the
emulator posts its callbacks over https; the process is stopped while the accepted callbacks
are still being confirmed. Every accepted event must then be readable from the Prefect API.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from uuid import uuid4

import httpx
import pytest

from prefect_kandinsky import KandinskyClient, VideoRequest
from prefect_kandinsky.emulator import EmulatorServer
from prefect_kandinsky.events.tokens import callback_url, resource_id

SECRET = "whsec-serve-test-6c0d2e4f8a1b3c5d7e9f"
JOBS = 4
STALL_SECONDS = 1.5
"""Each confirming status read is held this long: the work is still in flight at the signal."""

pytestmark = pytest.mark.usefixtures("prefect_api")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def receiver_process(
    kandinsky_emulator: EmulatorServer, tmp_path: Path
) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """``prefect-kandinsky webhooks serve --self-signed DIR`` on a free port, ready to take
    callbacks from the emulator, which trusts ``DIR/ca.pem`` (as the README says)."""
    from prefect.settings import PREFECT_API_URL

    ca_file = str(tmp_path / "tls" / "ca.pem")
    port = free_port()
    env = {
        **os.environ,
        "PREFECT_API_URL": str(PREFECT_API_URL.value()),
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "KANDINSKY_API_KEY": kandinsky_emulator.api_key,
        "KANDINSKY_BASE_URL": kandinsky_emulator.base_url,
        "KANDINSKY_WEBHOOK_SECRET": SECRET,
    }
    command = [
        sys.executable,
        "-c",
        "from prefect_kandinsky.cli import main; raise SystemExit(main())",
        *("webhooks", "serve", "--port", str(port), "--self-signed", str(tmp_path / "tls")),
    ]
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    url = f"https://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        assert process.poll() is None, process.communicate()[1]
        try:
            httpx.get(f"{url}/healthz", verify=ca_file, timeout=1).raise_for_status()
            break
        except (httpx.HTTPError, OSError):  # not listening, or its CA not written yet
            assert time.monotonic() < deadline, "the receiver did not start in 60 s"
            time.sleep(0.1)
    kandinsky_emulator.configure(webhook_ca_file=ca_file)
    try:
        yield process, url
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


async def api_events(request_id: str) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

    async with get_client() as client:
        page = await client.read_events(
            filter=EventFilter(
                event=EventNameFilter(prefix=["kandinsky.video."]),
                resource=EventResourceFilter(id=[resource_id(request_id)]),
            ),
            limit=10,
        )
    return [event.event for event in page.events]


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
async def test_a_stopped_receiver_delivers_every_accepted_event_and_exits_0(
    kandinsky_emulator: EmulatorServer,
    receiver_process: tuple[subprocess.Popen[str], str],
    stop: signal.Signals,
) -> None:
    """Callbacks accepted, their confirmations still running, then the signal: exit 0, no
    traceback, and every job's completed event in the Prefect API."""
    process, url = receiver_process
    emulator = kandinsky_emulator
    emulator.state.inject_fault("status", action="stall", stall_seconds=STALL_SECONDS, times=JOBS)
    request = VideoRequest(
        prompt="The tide comes in.",
        image_url=emulator.sample_image_url,
        resolution="256P",
        duration=1,
    )
    async with KandinskyClient(api_key=emulator.api_key, base_url=emulator.base_url) as client:
        jobs = [
            (
                await client.submit(
                    request, webhook_url=callback_url(url, SECRET, flow_run_id=uuid4())
                )
            ).request_id
            for _ in range(JOBS)
        ]
    deadline = time.monotonic() + 30
    while sum(
        d.response_code == 202 for d in emulator.state.webhook_deliveries if d.request_id in jobs
    ) < len(jobs):
        assert time.monotonic() < deadline, "the callbacks were not all accepted in 30 s"
        await asyncio.sleep(0.02)

    process.send_signal(stop)
    _, stderr = await asyncio.to_thread(process.communicate, timeout=60)

    assert 0 == process.returncode, stderr
    assert "Traceback" not in stderr, stderr
    assert "KeyboardInterrupt" not in stderr, stderr
    found: dict[str, list[str]] = {}
    deadline = time.monotonic() + 15  # the API writes events in batches
    while time.monotonic() < deadline:
        found = {job: await api_events(job) for job in jobs}
        if all(found.values()):
            break
        await asyncio.sleep(0.2)
    assert {job: ["kandinsky.video.completed"] for job in jobs} == found
