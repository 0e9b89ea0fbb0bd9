"""The emulator over real HTTP (the session server of the pytest plugin), spoken to with httpx."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from prefect_kandinsky.emulator import (
    EMULATOR_API_KEY,
    EmulatorConfig,
    EmulatorServer,
    EmulatorTransport,
    emulator_sync_transport,
    probe_video,
)
from prefect_kandinsky.emulator.__main__ import add_arguments, config_from_args
from prefect_kandinsky.gateway.models import DEFAULT_MODEL_ID, JobStatus, status_path, submit_path

KEY_HEADER = "Ocp-Apim-Subscription-Key"
SUBMIT = submit_path(DEFAULT_MODEL_ID)
TERMINAL = {"COMPLETED", "FAILED", "ERROR"}


# -- helpers ---------------------------------------------------------------------------------


@pytest.fixture
def emulator(kandinsky_emulator: EmulatorServer) -> EmulatorServer:
    """The plugin's reset server, under a short name."""
    return kandinsky_emulator


@pytest.fixture
def gateway(emulator: EmulatorServer) -> Iterator[httpx.Client]:
    """An httpx client for the gateway that sends the emulator's key."""
    with httpx.Client(
        base_url=emulator.base_url, headers={KEY_HEADER: emulator.api_key}, timeout=10
    ) as client:
        yield client


@pytest.fixture
def cdn() -> Iterator[httpx.Client]:
    """An httpx client without any key, for media URLs."""
    with httpx.Client(timeout=10) as client:
        yield client


def _body(emulator: EmulatorServer, **changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "prompt": "The camera slowly moves closer over the hills.",
        "image_url": emulator.sample_image_url,
        "resolution": "256P",
        "duration": "1s",
    }
    body.update(changes)
    return body


def _submit(client: httpx.Client, emulator: EmulatorServer, **changes: Any) -> str:
    response = client.post(SUBMIT, json=_body(emulator, **changes))
    assert 202 == response.status_code, response.text
    request_id: str = response.json()["request_id"]
    return request_id


def _wait(client: httpx.Client, request_id: str, timeout: float = 15.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        status: dict[str, Any] = client.get(status_path(request_id)).json()
        if status["status"] in TERMINAL:
            return status
        assert time.monotonic() < deadline, f"{request_id} still {status['status']}"
        time.sleep(0.02)


def _until(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


class _Call:
    """Runs ``call`` in a thread, keeping what it raised and how long it took."""

    def __init__(self, call: Callable[[], object]) -> None:
        self.error: BaseException | None = None
        self.seconds = 0.0

        def run() -> None:
            start = time.monotonic()
            try:
                call()
            except BaseException as exc:
                self.error = exc
            self.seconds = time.monotonic() - start

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def join(self, timeout: float = 5.0) -> None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"the call still runs after {timeout}s"


class _Receiver:
    """A tiny webhook receiver on a loopback port, collecting the JSON bodies it is sent."""

    def __init__(self) -> None:
        received: list[dict[str, Any]] = []
        lock = threading.Lock()
        self.received = received
        self.lock = lock

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with lock:
                    received.append(json.loads(body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def statuses(self) -> list[str]:
        with self.lock:
            return [body["status"] for body in self.received]


@pytest.fixture
def receiver() -> Iterator[_Receiver]:
    """A loopback webhook receiver."""
    receiver = _Receiver()
    receiver.thread.start()
    yield receiver
    receiver.server.shutdown()
    receiver.server.server_close()


# -- submit and status -----------------------------------------------------------------------


def test_submit_answers_202_queued_with_an_absolute_polling_url(
    emulator: EmulatorServer, gateway: httpx.Client
) -> None:
    """A valid submit is accepted: 202, QUEUED, a model-prefixed id and an absolute polling URL."""
    response = gateway.post(SUBMIT, json=_body(emulator))

    assert 202 == response.status_code
    body = response.json()
    assert {"request_id", "status", "polling_url"} == set(body)
    assert "QUEUED" == body["status"]
    assert body["request_id"].startswith(f"{DEFAULT_MODEL_ID}_")
    assert f"{emulator.base_url}/v2/requests/status/{body['request_id']}" == body["polling_url"]
    assert 200 == gateway.get(body["polling_url"]).status_code


def test_job_completes_with_the_documented_status_shape(
    emulator: EmulatorServer, gateway: httpx.Client, cdn: httpx.Client
) -> None:
    """A job completes with a CDN media URL, video/mp4, and both timestamp forms."""
    request_id = _submit(gateway, emulator)

    status = _wait(gateway, request_id)

    assert "COMPLETED" == status["status"], status
    assert (request_id, DEFAULT_MODEL_ID, None) == (
        status["request_id"],
        status["model_id"],
        status["error"],
    )
    assert {
        "media_url": [f"{emulator.cdn_url}/v1/{request_id}/output.mp4"],
        "media_type": "video/mp4",
    } == status["output"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", status["created_at"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", status["updated_at"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", status["completed_at"])

    media = cdn.get(status["output"]["media_url"][0])
    assert 200 == media.status_code
    assert "video/mp4" == media.headers["content-type"]
    assert str(len(media.content)) == media.headers["content-length"]
    assert "bytes" == media.headers["accept-ranges"]
    facts = probe_video(media.content)
    assert ("h264", 25, 256) == (facts.codec, facts.frames, facts.height)


def test_unknown_model_is_400_model_not_found(
    emulator: EmulatorServer, gateway: httpx.Client
) -> None:
    """A submit to an unknown model answers the documented 400 body."""
    response = gateway.post(submit_path("kandinsky-9-ultra-1"), json=_body(emulator))

    assert 400 == response.status_code
    assert {
        "error": "Model not found",
        "message": "Model 'kandinsky-9-ultra-1' not found or is disabled",
    } == response.json()


@pytest.mark.parametrize(
    ("content", "field"),
    [
        ({"image_url": "https://x.example.com/a.png"}, "prompt"),
        ({"prompt": "p", "image_url": ""}, "image_url"),
        ({"resolution": "720P"}, "resolution"),
        ({"duration": "30s"}, "duration"),
        ({"num_inference_steps": 5}, "num_inference_steps"),
        ({"acceleration": "warp"}, "acceleration"),
        (None, "JSON object"),
    ],
)
def test_invalid_body_is_400_naming_the_field(
    emulator: EmulatorServer, gateway: httpx.Client, content: dict[str, Any] | None, field: str
) -> None:
    """Missing or out-of-range parameters (or no JSON) answer 400 naming the field."""
    if content is None:
        response = gateway.post(SUBMIT, content=b"prompt=hello")
    elif "image_url" in content or "prompt" in content:
        response = gateway.post(SUBMIT, json=content)
    else:
        response = gateway.post(SUBMIT, json=_body(emulator, **content))

    assert 400 == response.status_code
    assert "Bad Request" == response.json()["error"]
    assert field in response.json()["message"]
    assert 0 == len(emulator.state.jobs())


@pytest.mark.parametrize("key", [None, "wrong-key"])
def test_missing_or_unknown_key_is_401_on_every_gateway_route(
    emulator: EmulatorServer, key: str | None
) -> None:
    """Submit and status both refuse a missing or unknown subscription key with 401 JSON."""
    headers = {KEY_HEADER: key} if key else {}
    with httpx.Client(base_url=emulator.base_url, headers=headers) as client:
        submit = client.post(SUBMIT, json=_body(emulator))
        status = client.get(status_path(f"{DEFAULT_MODEL_ID}_nope"))

    for response in (submit, status):
        assert 401 == response.status_code
        assert "Unauthorized" == response.json()["error"]
        assert "subscription key" in response.json()["message"]


def test_insufficient_balance_is_402(emulator: EmulatorServer, gateway: httpx.Client) -> None:
    """A submit the wallet cannot pay answers the documented 402 body and queues nothing."""
    emulator.state.set_balance("0.10")

    response = gateway.post(SUBMIT, json=_body(emulator, resolution="512P", duration="5s"))

    assert 402 == response.status_code
    assert {
        "error": "Insufficient Balance",
        "message": "Your wallet does not have enough balance.",
    } == response.json()
    assert [] == emulator.state.jobs()


def test_unknown_request_and_route_are_404_json(gateway: httpx.Client) -> None:
    """An unknown request id and an unknown path answer 404, a wrong method 405, all JSON."""
    unknown = gateway.get(status_path(f"{DEFAULT_MODEL_ID}_missing"))
    elsewhere = gateway.get("/v3/nothing")
    wrong_method = gateway.delete(status_path(f"{DEFAULT_MODEL_ID}_missing"))

    assert (405, "Method Not Allowed") == (wrong_method.status_code, wrong_method.json()["error"])
    assert (404, 404) == (unknown.status_code, elsewhere.status_code)
    assert {
        "error": "Not Found",
        "message": f"Request '{DEFAULT_MODEL_ID}_missing' not found",
    } == unknown.json()
    assert "Not Found" == elsewhere.json()["error"]


def test_planned_failure_and_error_reach_the_status_and_the_wallet(
    emulator: EmulatorServer, gateway: httpx.Client
) -> None:
    """A planned FAILED keeps the charge; a planned ERROR is refunded."""
    emulator.state.plan_outcome(JobStatus.FAILED, "content moderation rejected the prompt")
    emulator.state.plan_outcome(JobStatus.ERROR)
    failed = _submit(gateway, emulator, resolution="512P", duration="5s")
    errored = _submit(gateway, emulator, resolution="512P", duration="5s")

    final = _wait(gateway, failed)
    assert ("FAILED", "content moderation rejected the prompt", None) == (
        final["status"],
        final["error"],
        final["output"],
    )
    assert "ERROR" == _wait(gateway, errored)["status"]
    wallet = gateway.get("/_emulator/wallet").json()
    assert "9.80" == wallet["balance_usd"]
    assert ["debit", "debit", "refund"] == [entry["kind"] for entry in wallet["ledger"]]


# -- faults ----------------------------------------------------------------------------------


def test_rate_limit_fault_sends_retry_after_then_the_status_answers(
    emulator: EmulatorServer, gateway: httpx.Client
) -> None:
    """A 429 fault on status answers once with Retry-After; the next poll is a normal 200."""
    request_id = _submit(gateway, emulator)
    emulator.state.inject_fault("status", status_code=429, retry_after=3)

    limited = gateway.get(status_path(request_id))
    normal = gateway.get(status_path(request_id))

    assert 429 == limited.status_code
    assert "3" == limited.headers["retry-after"]
    assert "Too Many Requests" == limited.json()["error"]
    assert 200 == normal.status_code
    assert ["429", None] == [r.fault for r in emulator.state.requests("status")]


def test_server_error_faults_are_consumed_in_order(
    emulator: EmulatorServer, gateway: httpx.Client
) -> None:
    """Faults on status are served first-in first-out: 500, then 503 twice, then 200."""
    request_id = _submit(gateway, emulator)
    emulator.state.inject_fault("status", status_code=500)
    emulator.state.inject_fault("status", status_code=503, times=2)

    codes = [gateway.get(status_path(request_id)).status_code for _ in range(4)]

    assert [500, 503, 503, 200] == codes


def test_dropped_submit_before_queuing_creates_no_job(
    emulator: EmulatorServer, gateway: httpx.Client
) -> None:
    """A drop fault on submit closes the connection with no answer and queues nothing."""
    emulator.state.inject_fault("submit", action="drop")

    with pytest.raises(httpx.RemoteProtocolError):
        gateway.post(SUBMIT, json=_body(emulator))

    assert [] == emulator.state.jobs()
    (record,) = emulator.state.requests("submit")
    assert (None, "drop") == (record.status_code, record.fault)


def test_dropped_submit_after_queuing_leaves_a_job_behind(
    emulator: EmulatorServer, gateway: httpx.Client
) -> None:
    """The ambiguous case: the job is queued and charged, but the client gets no answer."""
    emulator.state.inject_fault("submit", action="drop", after_queue=True)

    with pytest.raises(httpx.RemoteProtocolError):
        gateway.post(SUBMIT, json=_body(emulator, resolution="512P", duration="5s"))

    (job,) = emulator.state.jobs()
    assert Decimal("0.20") == job.charged_usd
    assert job.request_id == emulator.state.requests("submit")[0].request_id
    assert 202 == gateway.post(SUBMIT, json=_body(emulator)).status_code


def test_truncated_media_then_a_range_request_resumes(
    emulator: EmulatorServer, gateway: httpx.Client, cdn: httpx.Client
) -> None:
    """A truncated download is a short read; a Range request for the rest completes the file."""
    url = _wait(gateway, _submit(gateway, emulator))["output"]["media_url"][0]
    full = cdn.get(url).content
    emulator.state.inject_fault("media", action="truncate", truncate_bytes=1000)

    received = bytearray()
    with pytest.raises(httpx.RemoteProtocolError), cdn.stream("GET", url) as response:
        assert str(len(full)) == response.headers["content-length"]
        for chunk in response.iter_bytes():
            received += chunk
    assert 1000 == len(received)

    rest = cdn.get(url, headers={"Range": f"bytes={len(received)}-"})
    assert 206 == rest.status_code
    assert f"bytes 1000-{len(full) - 1}/{len(full)}" == rest.headers["content-range"]
    assert full == bytes(received) + rest.content


def test_range_requests_answer_206_or_416(
    emulator: EmulatorServer, gateway: httpx.Client, cdn: httpx.Client
) -> None:
    """The CDN honours byte ranges (first bytes, suffix) and refuses one past the end."""
    url = _wait(gateway, _submit(gateway, emulator))["output"]["media_url"][0]
    full = cdn.get(url).content

    head = cdn.get(url, headers={"Range": "bytes=0-99"})
    tail = cdn.get(url, headers={"Range": "bytes=-10"})
    beyond = cdn.get(url, headers={"Range": f"bytes={len(full)}-"})
    probe = cdn.head(url)

    assert (206, full[:100], "100") == (
        head.status_code,
        head.content,
        head.headers["content-length"],
    )
    assert (206, full[-10:]) == (tail.status_code, tail.content)
    assert (416, f"bytes */{len(full)}") == (beyond.status_code, beyond.headers["content-range"])
    assert (200, str(len(full)), b"") == (
        probe.status_code,
        probe.headers["content-length"],
        probe.content,
    )


def test_media_fault_can_answer_403_like_an_expired_link(
    emulator: EmulatorServer, gateway: httpx.Client, cdn: httpx.Client
) -> None:
    """A 403 fault on media, and a real media_ttl_seconds expiry, both answer 403."""
    url = _wait(gateway, _submit(gateway, emulator))["output"]["media_url"][0]
    emulator.state.inject_fault("media", status_code=403)
    assert 403 == cdn.get(url).status_code
    assert 200 == cdn.get(url).status_code

    emulator.state.configure(media_ttl_seconds=0)  # completed before the reads above
    expired = cdn.get(url)
    assert 403 == expired.status_code
    assert "expired" in expired.json()["message"]


def test_unknown_media_is_404(emulator: EmulatorServer, cdn: httpx.Client) -> None:
    """The CDN answers 404 for media that does not exist."""
    assert 404 == cdn.get(f"{emulator.cdn_url}/v1/{DEFAULT_MODEL_ID}_nope/output.mp4").status_code


# -- stalls, submit latency, submits in flight ----------------------------------------------


def test_stalled_submit_after_queuing_leaves_a_paid_job_and_a_broken_connection(
    emulator: EmulatorServer, gateway: httpx.Client
) -> None:
    """The client killed mid-submit: the job is queued and charged, the request is in the log
    with no status while held, and the client sees a broken connection after stall_seconds."""
    emulator.configure(manual=True)
    emulator.state.inject_fault("submit", action="stall", after_queue=True, stall_seconds=0.3)

    call = _Call(
        lambda: gateway.post(SUBMIT, json=_body(emulator, resolution="512P", duration="5s"))
    )
    _until(lambda: 1 == emulator.state.count("submit"), timeout=2)
    (held,) = emulator.state.requests("submit")
    (job,) = emulator.state.jobs()
    assert call.thread.is_alive()
    call.join()

    assert (None, "stall", job.request_id) == (held.status_code, held.fault, held.request_id)
    assert (JobStatus.QUEUED, Decimal("0.20")) == (job.status, job.charged_usd)
    assert isinstance(call.error, httpx.RemoteProtocolError)
    assert call.seconds >= 0.3
    assert [held] == emulator.state.requests("submit")


def test_stalled_submit_before_queuing_is_in_flight_while_held_and_queues_nothing(
    emulator: EmulatorServer, gateway: httpx.Client
) -> None:
    """Without after_queue a stalled submit creates no job, and counts as in flight until the
    connection drops."""
    emulator.state.inject_fault("submit", action="stall", stall_seconds=0.3)

    call = _Call(lambda: gateway.post(SUBMIT, json=_body(emulator)))
    _until(lambda: 1 == emulator.state.count("submit"), timeout=2)
    assert 1 == emulator.state.submits_in_flight
    call.join()

    assert isinstance(call.error, httpx.RemoteProtocolError)
    assert [] == emulator.state.jobs()
    assert (0, 1) == (emulator.state.submits_in_flight, emulator.state.max_submits_in_flight)


def test_stalled_media_sends_part_of_the_body_then_breaks_the_connection(
    emulator: EmulatorServer, gateway: httpx.Client, cdn: httpx.Client
) -> None:
    """The download killed midway: truncate_bytes arrive at once under the full Content-Length,
    then the answer is held and the connection drops."""
    url = _wait(gateway, _submit(gateway, emulator))["output"]["media_url"][0]
    size = len(cdn.get(url).content)
    emulator.state.inject_fault("media", action="stall", truncate_bytes=1000, stall_seconds=1.0)

    received = bytearray()
    part_seconds = None
    start = time.monotonic()
    with pytest.raises(httpx.RemoteProtocolError), cdn.stream("GET", url) as response:
        assert str(size) == response.headers["content-length"]
        for chunk in response.iter_bytes():
            received += chunk
            part_seconds = time.monotonic() - start
    total_seconds = time.monotonic() - start

    assert 1000 == len(received)
    assert part_seconds is not None
    assert part_seconds < 1.0 <= total_seconds
    held = emulator.state.requests("media")[-1]
    assert (200, "stall") == (held.status_code, held.fault)


def test_reset_releases_a_stall_at_once(emulator: EmulatorServer, gateway: httpx.Client) -> None:
    """A 30 s stall ends as soon as the state is reset: the client sees the broken connection."""
    emulator.state.inject_fault("status", action="stall")
    call = _Call(lambda: gateway.get(status_path(f"{DEFAULT_MODEL_ID}_held")))
    _until(lambda: 1 == emulator.state.count("status"), timeout=2)

    start = time.monotonic()
    emulator.reset()
    call.join()

    assert time.monotonic() - start < 10.0, "not the 30 s stall"
    assert isinstance(call.error, httpx.RemoteProtocolError)


def test_stopping_the_server_releases_a_stall() -> None:
    """Stopping a server does not wait out a held answer."""
    server = EmulatorServer(config=EmulatorConfig.fast()).start()
    try:
        server.state.inject_fault("status", action="stall")
        call = _Call(
            lambda: httpx.get(
                f"{server.base_url}{status_path(f'{DEFAULT_MODEL_ID}_held')}",
                headers={KEY_HEADER: server.api_key},
            )
        )
        _until(lambda: 1 == server.state.count("status"), timeout=2)
        start = time.monotonic()
    finally:
        server.stop()
    call.join()

    assert time.monotonic() - start < 10.0, "not the 30 s stall"
    assert isinstance(call.error, httpx.RemoteProtocolError)


async def test_submit_latency_lets_concurrent_submits_overlap(emulator: EmulatorServer) -> None:
    """With submit_latency_seconds=0.3, five concurrent submits are all in flight at once, and
    none is once they are answered."""
    emulator.configure(submit_latency_seconds=0.3)
    async with httpx.AsyncClient(
        base_url=emulator.base_url, headers={KEY_HEADER: emulator.api_key}, timeout=10
    ) as client:
        start = time.monotonic()
        responses = await asyncio.gather(
            *(client.post(SUBMIT, json=_body(emulator)) for _ in range(5))
        )
        elapsed = time.monotonic() - start

    assert [202] * 5 == [response.status_code for response in responses]
    assert (0, 5) == (emulator.state.submits_in_flight, emulator.state.max_submits_in_flight)
    assert 0.3 <= elapsed  # five at once is 0.3 s; that they overlapped, the count above says


def test_sequential_submits_are_one_in_flight_at_a_time(
    emulator: EmulatorServer, gateway: httpx.Client
) -> None:
    """Submits sent one after another never overlap: the stats route reports a maximum of 1."""
    gateway.put("/_emulator/config", json={"submit_latency_seconds": 0.05})
    for _ in range(3):
        _submit(gateway, emulator)

    stats = gateway.get("/_emulator/stats")

    assert (200, {"submits_in_flight": 0, "max_submits_in_flight": 1}) == (
        stats.status_code,
        stats.json(),
    )


def test_admin_routes_round_trip_stalls_latency_and_stats(emulator: EmulatorServer) -> None:
    """Out of process, a stall fault, the submit latency and the stats travel as JSON."""
    stall = {"route": "submit", "action": "stall", "after_queue": True, "stall_seconds": 0.5}
    with httpx.Client(
        base_url=emulator.base_url, headers={KEY_HEADER: emulator.api_key}, timeout=10
    ) as admin:
        faults = admin.post("/_emulator/faults", json=stall).json()["faults"]
        config = admin.put("/_emulator/config", json={"submit_latency_seconds": 0.25}).json()
        stats = admin.get("/_emulator/stats").json()
        routes = admin.get("/_emulator/health").json()["routes"]

    assert [stall] == [{key: fault[key] for key in stall} for fault in faults]
    assert 0.5 == emulator.state.faults[0].stall_seconds
    assert 0.25 == config["submit_latency_seconds"] == emulator.state.config.submit_latency_seconds
    assert {"submits_in_flight": 0, "max_submits_in_flight": 0} == stats
    assert "GET    /_emulator/stats" in routes


async def test_in_process_transport_holds_a_stall_then_drops_it(
    kandinsky_emulator_transport: EmulatorTransport,
) -> None:
    """In process, a stalled submit after queuing holds, then raises the error a dropped
    connection gives, and leaves its job behind."""
    transport = kandinsky_emulator_transport
    transport.state.inject_fault("submit", action="stall", after_queue=True, stall_seconds=0.2)
    async with httpx.AsyncClient(transport=transport, base_url=transport.base_url) as client:
        start = time.monotonic()
        with pytest.raises(httpx.RemoteProtocolError, match="without sending a response"):
            await client.post(
                SUBMIT,
                json={
                    "prompt": "p",
                    "image_url": transport.sample_image_url,
                    "resolution": "256P",
                    "duration": "1s",
                },
                headers={KEY_HEADER: transport.api_key},
            )
        elapsed = time.monotonic() - start

    assert elapsed >= 0.2
    (job,) = transport.state.jobs()
    (record,) = transport.state.requests("submit")
    assert (None, "stall", job.request_id) == (record.status_code, record.fault, record.request_id)
    assert 0 == transport.state.submits_in_flight


def test_closing_the_sync_transport_releases_a_stall() -> None:
    """Closing the sync transport ends a held answer instead of waiting it out."""
    transport = emulator_sync_transport(config=EmulatorConfig.fast())
    transport.state.inject_fault("status", action="stall")
    client = httpx.Client(
        transport=transport, base_url=transport.base_url, headers={KEY_HEADER: transport.api_key}
    )
    call = _Call(lambda: client.get(status_path(f"{DEFAULT_MODEL_ID}_held")))
    _until(lambda: 1 == transport.state.count("status"), timeout=2)

    start = time.monotonic()
    transport.close()
    call.join()

    assert time.monotonic() - start < 10.0, "not the 30 s stall"
    assert isinstance(call.error, httpx.RemoteProtocolError)
    client.close()


# -- origins and the key ---------------------------------------------------------------------


def test_cdn_is_another_origin_and_never_receives_the_key(
    emulator: EmulatorServer, gateway: httpx.Client, cdn: httpx.Client
) -> None:
    """Media lives on a separate origin; a client that keeps its key home sends none there."""
    url = _wait(gateway, _submit(gateway, emulator))["output"]["media_url"][0]
    cdn.get(url)

    assert httpx.URL(url).port != httpx.URL(emulator.base_url).port
    assert emulator.state.count("media") == 1
    assert all(record.key_present for record in emulator.state.requests(origin="gateway"))
    assert not any(record.key_present for record in emulator.state.requests(origin="cdn"))


# -- webhooks --------------------------------------------------------------------------------


def test_terminal_webhook_posts_exactly_once(
    emulator: EmulatorServer, gateway: httpx.Client, receiver: _Receiver
) -> None:
    """Terminal mode POSTs the final status JSON exactly once."""
    emulator.configure(allow_http_webhooks=True)
    response = gateway.post(SUBMIT, json=_body(emulator), headers={"X-Webhook-URL": receiver.url})
    request_id = response.json()["request_id"]
    _until(lambda: receiver.statuses() == ["COMPLETED"])
    _until(lambda: 1 == len(emulator.state.webhook_deliveries))
    emulator.state.tick()  # the clock moves on: a late extra callback would be queued now
    assert 0 == emulator.state.pending_webhooks()

    assert ["COMPLETED"] == receiver.statuses()
    assert gateway.get(status_path(request_id)).json() == receiver.received[0]
    (delivery,) = emulator.state.webhook_deliveries
    assert (receiver.url, JobStatus.COMPLETED, 200) == (
        delivery.url,
        delivery.status,
        delivery.response_code,
    )


def test_sync_webhooks_post_progress_then_the_terminal_status(
    emulator: EmulatorServer, gateway: httpx.Client, receiver: _Receiver
) -> None:
    """Sync mode POSTs several progress callbacks while the job runs, the terminal one last."""
    emulator.configure(allow_http_webhooks=True, processing_seconds=0.3)
    gateway.post(
        SUBMIT,
        json=_body(emulator),
        headers={"X-Webhook-URL": receiver.url, "X-Webhook-Mode": "sync"},
    )
    _until(lambda: "COMPLETED" in receiver.statuses())

    statuses = receiver.statuses()
    assert "COMPLETED" == statuses[-1]
    assert len(statuses) >= 3
    assert set(statuses[:-1]) <= {"QUEUED", "PROCESSING"}


def test_duplicate_webhooks_deliver_the_terminal_callback_again(
    emulator: EmulatorServer, gateway: httpx.Client, receiver: _Receiver
) -> None:
    """duplicate_webhooks=2 delivers the same terminal callback three times in all."""
    emulator.configure(allow_http_webhooks=True, duplicate_webhooks=2)
    gateway.post(SUBMIT, json=_body(emulator), headers={"X-Webhook-URL": receiver.url})
    _until(lambda: len(receiver.statuses()) == 3)

    assert ["COMPLETED"] * 3 == receiver.statuses()
    assert receiver.received[0] == receiver.received[2]


def test_http_webhook_urls_are_rejected_by_default(
    emulator: EmulatorServer, gateway: httpx.Client
) -> None:
    """Plain http:// webhook URLs answer 400 (the gateway requires HTTPS)."""
    response = gateway.post(
        SUBMIT, json=_body(emulator), headers={"X-Webhook-URL": "http://127.0.0.1:9/hook"}
    )

    assert 400 == response.status_code
    assert "X-Webhook-URL must use HTTPS" in response.json()["message"]
    assert [] == emulator.state.jobs()


def test_bad_webhook_mode_is_400(emulator: EmulatorServer, gateway: httpx.Client) -> None:
    """An X-Webhook-Mode other than terminal or sync answers 400 naming the header."""
    response = gateway.post(
        SUBMIT,
        json=_body(emulator),
        headers={"X-Webhook-URL": "https://hooks.example.com/k", "X-Webhook-Mode": "always"},
    )

    assert 400 == response.status_code
    assert "X-Webhook-Mode" in response.json()["message"]


# -- input images ----------------------------------------------------------------------------


def test_uploaded_image_is_served_by_the_cdn_and_animated(
    emulator: EmulatorServer, gateway: httpx.Client, cdn: httpx.Client
) -> None:
    """An upload returns a CDN URL that serves the bytes and can be animated."""
    image = emulator.state.asset("/samples/sample.png")
    assert image is not None

    uploaded = gateway.post(
        "/_emulator/uploads", content=image.content, headers={"Content-Type": "image/png"}
    )

    assert 201 == uploaded.status_code
    url = uploaded.json()["url"]
    assert url.startswith(f"{emulator.cdn_url}/uploads/")
    assert image.content == cdn.get(url).content
    assert "COMPLETED" == _wait(gateway, _submit(gateway, emulator, image_url=url))["status"]


def test_upload_must_be_an_image(gateway: httpx.Client) -> None:
    """The upload route refuses non-image content types: 415 for a form's, 400 for others."""
    plain = gateway.post(
        "/_emulator/uploads", content=b"hello", headers={"Content-Type": "text/plain"}
    )
    json_body = gateway.post("/_emulator/uploads", json={"hello": 1})

    assert (415, 400) == (plain.status_code, json_body.status_code)
    assert "image/" in plain.json()["message"]
    assert "image/" in json_body.json()["message"]


def test_unfetchable_image_fails_the_job_with_a_clear_error(
    emulator: EmulatorServer, gateway: httpx.Client
) -> None:
    """An image_url nobody answers on ends the job FAILED, naming the URL and the reason."""
    url = "http://127.0.0.1:9/missing.png"
    status = _wait(gateway, _submit(gateway, emulator, image_url=url))

    assert "FAILED" == status["status"]
    assert status["error"].startswith(f"could not fetch image_url {url}: ")
    assert None is status["output"]


def test_undecodable_image_fails_the_job(emulator: EmulatorServer, gateway: httpx.Client) -> None:
    """An image_url whose bytes are not an image ends the job FAILED (could not decode)."""
    url = emulator.upload(b"<html>surprise</html>", "image/png")
    status = _wait(gateway, _submit(gateway, emulator, image_url=url))

    assert "FAILED" == status["status"]
    assert status["error"].startswith(f"could not decode image_url {url}: ")


def test_missing_cdn_image_fails_the_job_with_404(
    emulator: EmulatorServer, gateway: httpx.Client
) -> None:
    """An image_url on the emulator's CDN that does not exist fails with a 404 reason."""
    url = f"{emulator.cdn_url}/uploads/none.png"
    status = _wait(gateway, _submit(gateway, emulator, image_url=url))

    assert "FAILED" == status["status"]
    assert f"could not fetch image_url {url}: 404 Not Found" in status["error"]


# -- admin routes ----------------------------------------------------------------------------


def test_admin_routes_drive_a_manual_job(emulator: EmulatorServer, cdn: httpx.Client) -> None:
    """Out of process, the admin routes set timings, plan faults and step a job."""
    with httpx.Client(
        base_url=emulator.base_url, headers={KEY_HEADER: emulator.api_key}, timeout=10
    ) as admin:
        config = admin.put("/_emulator/config", json={"manual": True, "queue_seconds": 0})
        assert (200, True) == (config.status_code, config.json()["manual"])
        faults = admin.post(
            "/_emulator/faults", json=[{"route": "status", "status_code": 502, "times": 2}]
        )
        assert [{"route": "status", "status_code": 502, "times": 2}] == [
            {k: f[k] for k in ("route", "status_code", "times")} for f in faults.json()["faults"]
        ]
        assert [] == admin.delete("/_emulator/faults").json()["faults"]
        outcome = admin.post("/_emulator/outcomes", json={"status": "FAILED", "error": "no"})
        assert [{"status": "FAILED", "error": "no", "times": 1}] == outcome.json()["outcomes"]
        assert [] == admin.delete("/_emulator/outcomes").json()["outcomes"]

        submitted = admin.post(SUBMIT, json=_body(emulator), headers={KEY_HEADER: "emulator-key"})
        request_id = submitted.json()["request_id"]
        assert "QUEUED" == admin.get(f"/_emulator/jobs/{request_id}").json()["status"]

        step = admin.post(f"/_emulator/jobs/{request_id}/advance", json={})
        assert "PROCESSING" == step.json()["status"]
        admin.post(f"/_emulator/jobs/{request_id}/advance", json={"to": "COMPLETED"})
        _until(lambda: admin.get(f"/_emulator/jobs/{request_id}").json()["status"] == "COMPLETED")
        again = admin.post(f"/_emulator/jobs/{request_id}/advance", json={})
        assert (409, "Conflict") == (again.status_code, again.json()["error"])
        missing = admin.post(f"/_emulator/jobs/{DEFAULT_MODEL_ID}_x/advance", json={})
        assert 404 == missing.status_code

        jobs = admin.get("/_emulator/jobs").json()["jobs"]
        assert [request_id] == [job["request_id"] for job in jobs]
        assert ["QUEUED", "PROCESSING", "COMPLETED"] == jobs[0]["history"]

        wallet = admin.put("/_emulator/wallet", json={"balance_usd": "1.50"}).json()
        assert "1.50" == wallet["balance_usd"]
        requests = admin.get("/_emulator/requests", params={"kind": "submit"}).json()
        assert 1 == len(requests["requests"])
        assert requests["counts"]["admin"] >= 10
        assert 400 == admin.get("/_emulator/requests", params={"kind": "nope"}).status_code
        assert [] == admin.get("/_emulator/webhooks").json()["deliveries"]
        health = admin.get("/_emulator/health").json()
        assert (True, emulator.cdn_url) == (health["ok"], health["cdn_url"])
        assert 200 == cdn.get(health["sample_image_url"]).status_code

        reset = admin.post("/_emulator/reset")
        assert (200, False) == (reset.status_code, reset.json()["config"]["manual"])
        assert [] == admin.get("/_emulator/jobs").json()["jobs"]
        assert "10.00" == admin.get("/_emulator/wallet").json()["balance_usd"]


def test_admin_routes_reject_bad_input_with_400(emulator: EmulatorServer) -> None:
    """Bad fault specs, settings and outcomes answer 400 with a message."""
    with httpx.Client(base_url=emulator.base_url, headers={KEY_HEADER: emulator.api_key}) as admin:
        fault = admin.post("/_emulator/faults", json={"route": "teapot"})
        setting = admin.put("/_emulator/config", json={"queue_seconds": "soon"})
        unknown = admin.put("/_emulator/config", json={"colour": "red"})
        outcome = admin.post("/_emulator/outcomes", json={"status": "PROCESSING"})
        stall = admin.post(
            "/_emulator/faults", json={"route": "status", "action": "stall", "stall_seconds": 0}
        )
        latency = admin.put("/_emulator/config", json={"submit_latency_seconds": -1})
        latency_text = admin.put("/_emulator/config", json={"submit_latency_seconds": "slow"})

    for response, words in (
        (fault, "fault route"),
        (setting, "queue_seconds"),
        (unknown, "colour"),
        (outcome, "COMPLETED, FAILED or ERROR"),
        (stall, "fault stall_seconds must be a number of seconds above zero"),
        (latency, "submit_latency_seconds must be zero or more"),
        (latency_text, "submit_latency_seconds must be a number of seconds"),
    ):
        assert 400 == response.status_code, response.text
        assert words in response.json()["message"]


# -- in-process transports -------------------------------------------------------------------


async def test_in_process_async_transport_runs_a_job_end_to_end(
    kandinsky_emulator_transport: EmulatorTransport,
) -> None:
    """The async transport routes by host to gateway and CDN; jobs progress in the background."""
    transport = kandinsky_emulator_transport
    async with httpx.AsyncClient(transport=transport, timeout=10) as client:
        submitted = await client.post(
            f"{transport.base_url}{SUBMIT}",
            json={
                "prompt": "pan",
                "image_url": transport.sample_image_url,
                "resolution": "256P",
                "duration": "1s",
            },
            headers={KEY_HEADER: transport.api_key},
        )
        assert 202 == submitted.status_code
        polling_url = submitted.json()["polling_url"]
        assert polling_url.startswith("http://gateway.emulator/v2/requests/status/")
        deadline = time.monotonic() + 15
        while True:
            status = (await client.get(polling_url, headers={KEY_HEADER: EMULATOR_API_KEY})).json()
            if status["status"] in TERMINAL or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.02)
        assert "COMPLETED" == status["status"], status
        media_url = status["output"]["media_url"][0]
        assert media_url.startswith("http://cdn.emulator/v1/")
        media = await client.get(media_url)
        assert 25 == probe_video(media.content).frames

        transport.state.inject_fault("media", action="truncate")
        with pytest.raises(httpx.RemoteProtocolError):
            await client.get(media_url)
        transport.state.inject_fault("status", action="drop")
        with pytest.raises(httpx.RemoteProtocolError):
            await client.get(polling_url, headers={KEY_HEADER: EMULATOR_API_KEY})
        with pytest.raises(httpx.ConnectError, match="not served by the in-process emulator"):
            await client.get("http://elsewhere.example.com/")


def test_in_process_sync_transport_serves_the_gateway() -> None:
    """The sync transport answers httpx.Client calls, here a 401 and a 202."""
    transport = emulator_sync_transport(config=EmulatorConfig.fast())
    with httpx.Client(transport=transport, base_url=transport.base_url) as client:
        assert 401 == client.post(SUBMIT, json={}).status_code
        submitted = client.post(
            SUBMIT,
            json={"prompt": "p", "image_url": transport.sample_image_url, "resolution": "256P"},
            headers={KEY_HEADER: transport.api_key},
        )
    assert 202 == submitted.status_code
    assert 2 == transport.state.count("submit")


# -- the CLI ---------------------------------------------------------------------------------


def test_cli_sets_the_submit_latency() -> None:
    """``--submit-latency-seconds`` reaches the configuration; it is 0 by default."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)

    slow = config_from_args(parser.parse_args(["--submit-latency-seconds", "0.25"]))
    default = config_from_args(parser.parse_args([]))

    assert (0.25, 0.0) == (slow.submit_latency_seconds, default.submit_latency_seconds)


def test_cli_serves_until_interrupted() -> None:
    """``python -m prefect_kandinsky.emulator`` prints its URLs and key, serves, stops on Ctrl-C.

    It starts with SIGINT ignored, as a background job of a non-interactive shell does (and as
    Python leaves it): Ctrl-C (SIGINT) must stop it all the same.
    """
    emulator = f"{shlex.quote(sys.executable)} -m prefect_kandinsky.emulator"
    options = "--port 0 --cdn-port 0 --api-key cli-key --balance 0"
    process = subprocess.Popen(
        ["sh", "-c", f"trap '' INT; exec {emulator} {options}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stdout is not None
        lines: dict[str, str] = {}
        while "admin" not in lines:
            line = process.stdout.readline()
            assert line, process.stderr.read() if process.stderr else "no output"
            name, _, value = line.partition(":")
            if value:
                lines[name.strip()] = value.strip()
        gateway = lines["gateway"]
        with httpx.Client(base_url=gateway, headers={KEY_HEADER: "cli-key"}) as client:
            response = client.post(
                SUBMIT,
                json={"prompt": "p", "image_url": lines["sample"], "resolution": "512P"},
            )
        assert ("cli-key", 402) == (lines["api key"], response.status_code)
        assert lines["cdn"].startswith("http://127.0.0.1:")
    finally:
        process.send_signal(signal.SIGINT)
        code = process.wait(timeout=15)
        if process.stdout:
            process.stdout.close()
        if process.stderr:
            process.stderr.close()
    assert 0 == code


def test_cli_sets_a_webhook_ca_file_that_must_exist(tmp_path: Any) -> None:
    """``--webhook-ca-file`` reaches the configuration; a missing file is refused by name."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    ca_file = tmp_path / "ca.pem"
    ca_file.write_text("-----BEGIN CERTIFICATE-----\n")

    config = config_from_args(parser.parse_args(["--webhook-ca-file", str(ca_file)]))

    assert str(ca_file) == config.webhook_ca_file == config.to_json()["webhook_ca_file"]
    assert config_from_args(parser.parse_args([])).webhook_ca_file is None
    with pytest.raises(ValueError, match="webhook_ca_file must name a PEM file.*missing.pem"):
        EmulatorConfig(webhook_ca_file=str(tmp_path / "missing.pem"))


# -- admin routes are not open to any local page or process ------------------------------------


def test_admin_routes_need_the_key(emulator: EmulatorServer) -> None:
    """Without the key, no admin route answers (the config holds the keys); health does."""
    with httpx.Client(base_url=emulator.base_url, timeout=10) as anyone:
        config = anyone.get("/_emulator/config")
        replaced = anyone.put("/_emulator/config", json={"api_keys": ["mine"]})
        outcome = anyone.post("/_emulator/outcomes", json={"status": "FAILED", "error": "x"})
        health = anyone.get("/_emulator/health")

    assert (401, 401, 401, 200) == tuple(r.status_code for r in (config, replaced, outcome, health))
    assert config.json()["message"].startswith(
        "The emulator's admin routes need its key: send the Ocp-Apim-Subscription-Key header"
    )
    assert emulator.api_key not in config.text
    assert emulator.api_key in emulator.state.config.api_keys
    assert [] == emulator.state.planned_outcomes


def test_admin_routes_refuse_what_a_cross_site_page_can_send(emulator: EmulatorServer) -> None:
    """A text/plain or form body (no CORS preflight) and a cross-site fetch are refused."""
    with httpx.Client(
        base_url=emulator.base_url, headers={KEY_HEADER: emulator.api_key}, timeout=10
    ) as admin:
        plain = admin.put(
            "/_emulator/config",
            content=b'{"api_keys": ["mine"]}',
            headers={"Content-Type": "text/plain"},
        )
        form = admin.post(
            "/_emulator/outcomes",
            content=b"status=FAILED",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        cross_site = admin.post(
            "/_emulator/outcomes",
            json={"status": "FAILED", "error": "x"},
            headers={"Sec-Fetch-Site": "cross-site"},
        )

    assert (415, 415, 403) == (plain.status_code, form.status_code, cross_site.status_code)
    assert "send Content-Type: application/json" in plain.json()["message"]
    assert "refuse requests sent by a page of another site" in cross_site.json()["message"]
    assert emulator.api_key in emulator.state.config.api_keys
    assert [] == emulator.state.planned_outcomes
