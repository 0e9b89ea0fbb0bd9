"""The webhook receiver: real https callbacks from the emulator, confirmed, as Prefect events.

The emulator's engine posts its callbacks over https to a receiver whose certificate is signed
by a test CA (trustme). Most cases collect events in memory; the terminal, duplicate and forged
cases also go through a real Prefect API and are read back from it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import ssl
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID, uuid4, uuid5

import httpx
import pytest
import trustme
from pydantic import SecretStr

from prefect_kandinsky import JobStatus, KandinskyClient, KandinskyCredentials, VideoRequest
from prefect_kandinsky.emulator import EmulatorServer
from prefect_kandinsky.events.receiver import create_webhook_app
from prefect_kandinsky.events.server import WebhookServer
from prefect_kandinsky.events.tokens import (
    EVENT_ID_NAMESPACE,
    TOKEN_LENGTH,
    callback_token,
    callback_url,
    event_id,
    event_name,
    resource_id,
    run_callback_url,
    verify_token,
)
from prefect_kandinsky.gateway.models import WebhookMode

SECRET = "whsec-test-3b1f0c9e8d7a6b5c4d3e2f1a"
COMPLETED = "kandinsky.video.completed"
PROCESSING = "kandinsky.video.processing"
QUEUED = "kandinsky.video.queued"
SENDERS = ("httpx", "httpcore")
"""Loggers of the HTTP clients that send callbacks (the emulator, these tests): they log the
URLs they post to, tokens included, as any sender may; the receiver's side must not."""


# -- fixtures and helpers --------------------------------------------------------------------


@dataclass(frozen=True)
class TLS:
    ca_file: str
    server_pem: str

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.ca_file)


class EventSink:
    """An ``emit`` that keeps each event's keyword arguments (called from the server thread)."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def __call__(self, **event: Any) -> None:
        with self._lock:
            self.events.append(event)

    def of(self, request_id: str) -> list[dict[str, Any]]:
        with self._lock:
            return [
                e
                for e in self.events
                if e["resource"]["prefect.resource.id"] == resource_id(request_id)
            ]

    def names(self, request_id: str) -> list[str]:
        return [e["event"] for e in self.of(request_id)]


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TLS:
    """A test CA and a certificate for 127.0.0.1 signed by it."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    folder = tmp_path_factory.mktemp("tls")
    ca_file, server_pem = folder / "ca.pem", folder / "server.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    cert.private_key_and_cert_chain_pem.write_to_path(str(server_pem))
    return TLS(ca_file=str(ca_file), server_pem=str(server_pem))


def receiver_credentials(emulator: EmulatorServer, **changes: Any) -> KandinskyCredentials:
    settings: dict[str, Any] = {
        "api_key": emulator.api_key,
        "base_url": emulator.base_url,
        "webhook_secret": SECRET,
        "max_retries": 0,
    }
    settings.update(changes)
    return KandinskyCredentials(**settings)


@pytest.fixture(scope="module")
def sink() -> EventSink:
    return EventSink()


@pytest.fixture(scope="module")
def receiver(
    kandinsky_emulator_server: EmulatorServer, tls: TLS, sink: EventSink
) -> Iterator[WebhookServer]:
    """One https receiver for the module, emitting into ``sink``."""
    with WebhookServer(
        receiver_credentials(kandinsky_emulator_server),
        certfile=tls.server_pem,
        emit=sink,
        confirm_attempts=3,
        confirm_backoff=0.01,
        drain_timeout=2.0,
    ) as server:
        yield server


@pytest.fixture
def emulator(kandinsky_emulator: EmulatorServer, tls: TLS) -> EmulatorServer:
    """The reset session emulator, trusting the test CA for its https callbacks."""
    kandinsky_emulator.configure(webhook_ca_file=tls.ca_file)
    return kandinsky_emulator


@pytest.fixture
async def https(tls: TLS) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client that trusts the test CA, to post callbacks by hand."""
    async with httpx.AsyncClient(verify=tls.client_context(), timeout=10) as client:
        yield client


def tiny_request(emulator: EmulatorServer) -> VideoRequest:
    return VideoRequest(
        prompt="The sun rises over the hills.",
        image_url=emulator.sample_image_url,
        resolution="256P",
        duration=1,
    )


async def submit(
    emulator: EmulatorServer, url: str | None, *, mode: WebhookMode = "terminal"
) -> str:
    async with KandinskyClient(api_key=emulator.api_key, base_url=emulator.base_url) as client:
        job = await client.submit(
            tiny_request(emulator),
            webhook_url=url,
            webhook_mode=mode if url else None,
        )
    return job.request_id


async def completed_job(emulator: EmulatorServer) -> str:
    """A job that completed without any callback: its status JSON is a valid body."""
    request_id = await submit(emulator, None)
    async with KandinskyClient(api_key=emulator.api_key, base_url=emulator.base_url) as client:
        await client.wait(request_id, poll_interval=0.02, max_poll_interval=0.05)
    return request_id


async def until(condition: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not in {timeout}s: {what}"
        await asyncio.sleep(0.02)


def delivery_codes(emulator: EmulatorServer, request_id: str) -> list[int | None]:
    return [
        d.response_code for d in emulator.state.webhook_deliveries if d.request_id == request_id
    ]


def settled(emulator: EmulatorServer, server: WebhookServer, request_id: str, n: int) -> bool:
    """``n`` callbacks of the request were answered and the receiver has no work left."""
    return len(delivery_codes(emulator, request_id)) >= n and server.receiver.in_flight == 0


def token_of(url: str) -> str:
    return url.rsplit("/", 1)[1]


def no_secrets(text: str, *tokens: str) -> bool:
    return all(s not in text for s in (SECRET, "emulator-key", *tokens))


def receiver_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if not r.name.startswith(SENDERS)]


# -- tokens and URLs -------------------------------------------------------------------------


def test_callback_url_carries_flow_run_nonce_and_a_token_that_verifies_only_for_them() -> None:
    """The URL is <base>/kandinsky/callbacks/<flow run>/<nonce>/<token>; the token is bound."""
    flow_run = uuid4()
    url = callback_url(
        "https://hooks.example.com/", SECRET, flow_run_id=flow_run, nonce="n0nce-abc"
    )
    match = re.fullmatch(
        r"https://hooks\.example\.com/kandinsky/callbacks/([0-9a-f-]{36})/n0nce-abc/([\w-]+)", url
    )
    assert match is not None, url
    assert str(flow_run) == match.group(1)
    token = match.group(2)
    assert TOKEN_LENGTH == len(token) == 43
    assert token == callback_token(SecretStr(SECRET), flow_run_id=flow_run, nonce="n0nce-abc")
    assert verify_token(SECRET, token, flow_run_id=str(flow_run), nonce="n0nce-abc")
    assert not verify_token(SECRET, token, flow_run_id=uuid4(), nonce="n0nce-abc")
    assert not verify_token(SECRET, token, flow_run_id=flow_run, nonce="n0nce-abd")
    assert not verify_token("another-secret", token, flow_run_id=flow_run, nonce="n0nce-abc")
    assert not verify_token(SECRET, token, flow_run_id="not-a-uuid", nonce="n0nce-abc")


def test_callback_url_keeps_a_path_prefix_and_makes_a_fresh_nonce() -> None:
    """A reverse proxy's prefix stays; two URLs for the same flow run differ in nonce."""
    first = callback_url("https://example.com/proxy/hooks", SECRET, flow_run_id=None)
    second = callback_url("https://example.com/proxy/hooks", SECRET, flow_run_id=None)
    assert first.startswith("https://example.com/proxy/hooks/kandinsky/callbacks/none/")
    assert first != second
    assert first.split("/")[-2] != second.split("/")[-2]


@pytest.mark.parametrize(
    ("base_url", "kwargs", "message"),
    [
        ("http://hooks.example.com", {}, "absolute https URL.*allow_http=True"),
        ("hooks.example.com", {}, "absolute https URL"),
        ("https://hooks.example.com?x=1", {}, "no query or fragment"),
        ("https://hooks.example.com", {"flow_run_id": "run-7"}, "flow_run_id must be a UUID"),
        ("https://hooks.example.com", {"nonce": "a/b"}, "nonce must be"),
        ("https://hooks.example.com", {"secret": ""}, "webhook secret is empty"),
    ],
)
def test_callback_url_refuses_what_the_gateway_or_the_receiver_could_not_use(
    base_url: str, kwargs: dict[str, Any], message: str
) -> None:
    """http, relative URLs, queries, a non-UUID flow run, a bad nonce and no secret raise."""
    arguments: dict[str, Any] = {"secret": SECRET, "flow_run_id": None, **kwargs}
    with pytest.raises(ValueError, match=message):
        callback_url(base_url, **arguments)


def test_http_base_url_is_allowed_only_when_asked_and_event_helpers_are_deterministic() -> None:
    """allow_http=True admits a local http receiver; names, ids and resources are stable."""
    url = callback_url("http://127.0.0.1:9", SECRET, flow_run_id=None, allow_http=True)
    assert url.startswith("http://127.0.0.1:9/kandinsky/callbacks/none/")
    assert "kandinsky.video.completed" == event_name(JobStatus.COMPLETED) == event_name("completed")
    assert "kandinsky.request.r-1" == resource_id("r-1")
    assert event_id("r-1", "COMPLETED") == event_id("r-1", JobStatus.COMPLETED)
    assert event_id("r-1", "COMPLETED") != event_id("r-1", "FAILED")
    assert UUID("fd783b2e-810f-4745-91e9-70eb87dba462") == EVENT_ID_NAMESPACE


@pytest.mark.parametrize(
    "base_url",
    [
        "http://127.0.0.1.evil.example",
        "http://127.0.0.1.evil.example:8080/hooks",
        "http://127.0.0.1@evil.example",
        "http://localhost.evil.example",
        "http://10.0.0.7:8080",
    ],
)
def test_http_callbacks_go_only_to_a_loopback_address_parsed_as_an_ip(base_url: str) -> None:
    """A host that merely starts with 127.0.0.1 is not loopback: no http callback URL for it."""
    with pytest.raises(ValueError, match="absolute https URL of the webhook receiver"):
        run_callback_url(base_url, SecretStr(SECRET), flow_run_id=None)


@pytest.mark.parametrize(
    "base_url", ["http://127.0.0.1:8080", "http://127.8.9.1", "http://[::1]:9"]
)
def test_http_callbacks_to_a_loopback_address_are_made(base_url: str) -> None:
    """127.0.0.0/8 and ::1 over http are a receiver on this machine: allowed."""
    url = run_callback_url(base_url, SecretStr(SECRET), flow_run_id=None, nonce="n0nce-abc")
    assert url.startswith(f"{base_url}/kandinsky/callbacks/none/n0nce-abc/")


async def test_a_refused_callback_url_is_quoted_without_its_token() -> None:
    """The client's refusal of an http callback URL names its host, never its path or token."""
    url = callback_url("http://127.0.0.1:9", SECRET, flow_run_id=uuid4(), allow_http=True)
    request = VideoRequest(prompt="Waves.", image_url="https://example.com/a.png")
    async with KandinskyClient(api_key="k", base_url="https://gateway.example") as client:
        with pytest.raises(ValueError, match="absolute https URL") as caught:
            await client.submit(request, webhook_url=url)
    assert "http://127.0.0.1:9/<redacted>" in str(caught.value)
    assert no_secrets(str(caught.value), token_of(url), url.rsplit("/", 2)[1])


def test_event_ids_differ_per_callback_url_and_keep_their_old_form_without_one() -> None:
    """The same status on two URLs is two events; without a URL the id is as it always was."""
    run = uuid4()
    assert event_id("r-1", "COMPLETED", flow_run_id=run, nonce="n0nce-abc") != event_id(
        "r-1", "COMPLETED", flow_run_id=uuid4(), nonce="n0nce-abc"
    )
    assert event_id("r-1", "COMPLETED", flow_run_id=run, nonce="n0nce-abc") != event_id(
        "r-1", "COMPLETED", flow_run_id=run, nonce="n0nce-abd"
    )
    assert UUID("0d2b2a36-0f74-5a3c-9d0e-8a4f3c0c1a11") != event_id("r-1", "COMPLETED")
    assert uuid5(EVENT_ID_NAMESPACE, "r-1:COMPLETED") == event_id("r-1", "COMPLETED")


# -- callbacks over real https ---------------------------------------------------------------


async def test_terminal_callback_emits_one_completed_event_after_a_status_read(
    emulator: EmulatorServer, receiver: WebhookServer, sink: EventSink
) -> None:
    """One https callback, one status read to confirm it, one completed event naming the run."""
    flow_run = uuid4()
    url = receiver.callback_url(flow_run_id=flow_run)
    nonce = url.rsplit("/", 2)[1]
    request_id = await submit(emulator, url)
    await until(lambda: settled(emulator, receiver, request_id, 1), what="callback processed")

    assert [202] == delivery_codes(emulator, request_id)
    assert 1 == emulator.state.count("status", request_id=request_id)
    (event,) = sink.of(request_id)
    status = emulator.state.status(request_id)
    assert COMPLETED == event["event"]
    assert {
        "prefect.resource.id": f"kandinsky.request.{request_id}",
        "prefect.resource.name": request_id,
    } == event["resource"]
    assert [
        {
            "prefect.resource.id": f"prefect.flow-run.{flow_run}",
            "prefect.resource.role": "flow-run",
        },
        {"prefect.resource.id": f"kandinsky.callback.{nonce}", "prefect.resource.role": "callback"},
    ] == event["related"]
    assert event_id(request_id, "COMPLETED", flow_run_id=flow_run, nonce=nonce) == event["id"]
    payload = event["payload"]
    assert status["output"]["media_url"] == payload["media_urls"]
    assert ("COMPLETED", "video/mp4", None) == (
        payload["status"],
        payload["media_type"],
        payload["error"],
    )
    assert sorted(
        [
            "request_id",
            "status",
            "confirmed",
            "media_urls",
            "media_type",
            "error",
            "created_at",
            "updated_at",
            "completed_at",
            "model_id",
        ]
    ) == sorted(payload)
    assert payload["confirmed"] is True
    assert status["completed_at"].replace(" ", "T") == payload["completed_at"][:19]
    assert payload["completed_at"][:19] == event["occurred"].isoformat()[:19]


async def test_sync_mode_emits_each_status_once_in_order(
    emulator: EmulatorServer, receiver: WebhookServer, sink: EventSink
) -> None:
    """Many progress callbacks become one processing and one completed event, in that order."""
    emulator.configure(processing_seconds=0.4)
    request_id = await submit(emulator, receiver.callback_url(flow_run_id=uuid4()), mode="sync")
    await until(
        lambda: COMPLETED in sink.names(request_id) and receiver.receiver.in_flight == 0,
        what="completed event",
    )
    await until(lambda: emulator.state.pending_webhooks() == 0)

    names = sink.names(request_id)
    codes = delivery_codes(emulator, request_id)
    assert 1 == names.count(PROCESSING)
    assert 1 == names.count(COMPLETED)
    assert COMPLETED == names[-1]
    assert set(names) <= {QUEUED, PROCESSING, COMPLETED}
    assert len(codes) > len(names), codes
    assert 200 in codes  # repeated progress callbacks, answered as duplicates
    confirmed = {e["event"]: e["payload"]["confirmed"] for e in sink.of(request_id)}
    assert {PROCESSING: False, COMPLETED: True} == {
        k: v for k, v in confirmed.items() if k != QUEUED
    }
    assert 1 == emulator.state.count("status", request_id=request_id)  # only COMPLETED is read


async def test_duplicate_deliveries_change_nothing(
    emulator: EmulatorServer, receiver: WebhookServer, sink: EventSink
) -> None:
    """The same terminal callback three times: 202, then 200 twice, and one event."""
    emulator.configure(duplicate_webhooks=2)
    url = receiver.callback_url(flow_run_id=None)
    request_id = await submit(emulator, url)
    await until(lambda: settled(emulator, receiver, request_id, 3), what="three deliveries")

    assert [202, 200, 200] == delivery_codes(emulator, request_id)
    assert [COMPLETED] == sink.names(request_id)
    assert [
        {
            "prefect.resource.id": f"kandinsky.callback.{url.rsplit('/', 2)[1]}",
            "prefect.resource.role": "callback",
        }
    ] == sink.of(request_id)[0]["related"]
    assert 1 == emulator.state.count("status", request_id=request_id)


async def test_late_progress_callback_after_completion_emits_nothing(
    emulator: EmulatorServer, receiver: WebhookServer, sink: EventSink, https: httpx.AsyncClient
) -> None:
    """A stale PROCESSING (or QUEUED) delivered after COMPLETED is answered 200 and dropped."""
    url = receiver.callback_url(flow_run_id=uuid4())
    request_id = await submit(emulator, url)
    await until(lambda: settled(emulator, receiver, request_id, 1))

    stale = {**emulator.state.status(request_id), "status": "PROCESSING", "output": None}
    for status in ("PROCESSING", "QUEUED"):
        response = await https.post(url, json={**stale, "status": status})
        assert (200, "stale") == (response.status_code, response.json()["status"])
    again = await https.post(url, json=emulator.state.status(request_id))
    assert (200, "duplicate") == (again.status_code, again.json()["status"])
    await until(lambda: receiver.receiver.in_flight == 0)

    assert [COMPLETED] == sink.names(request_id)


async def test_forged_foreign_and_missing_tokens_get_401_and_emit_nothing(
    emulator: EmulatorServer,
    receiver: WebhookServer,
    sink: EventSink,
    https: httpx.AsyncClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A made-up token, another job's token and no token are refused, logged without tokens."""
    caplog.set_level(logging.DEBUG)
    request_id = await completed_job(emulator)
    reads_before = emulator.state.count("status", request_id=request_id)
    body = emulator.state.status(request_id)
    flow_run = uuid4()
    job_a = receiver.callback_url(flow_run_id=flow_run)
    job_b = receiver.callback_url(flow_run_id=flow_run)
    forged = job_a.rsplit("/", 1)[0] + "/" + "A" * TOKEN_LENGTH
    foreign = job_a.rsplit("/", 1)[0] + "/" + token_of(job_b)
    missing = job_a.rsplit("/", 1)[0]

    codes = [(await https.post(url, json=body)).status_code for url in (forged, foreign, missing)]
    codes.append((await https.post(missing + "/", json=body)).status_code)
    await until(lambda: receiver.receiver.in_flight == 0)

    assert [401, 401, 401, 401] == codes
    assert [] == sink.of(request_id)
    assert reads_before == emulator.state.count("status", request_id=request_id)
    messages = [r.getMessage() for r in receiver_records(caplog)]
    assert 2 == sum(f"invalid token for flow run {flow_run}" in m for m in messages), messages
    assert all(no_secrets(m, token_of(job_a), token_of(job_b)) for m in messages)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"COMPLETED", "not JSON"),
        (b'["COMPLETED"]', "must be a JSON object.*got list"),
        (b'{"status": "COMPLETED"}', "no request_id"),
        (b'{"request_id": "kandinsky-5-0-pro-953_x"}', "no status.*QUEUED, PROCESSING"),
        (b'{"request_id": "kandinsky-5-0-pro-953_x", "status": "DONE"}', "status must be.*'DONE'"),
        (b'{"request_id": "a/../b", "status": "COMPLETED"}', "request_id is malformed"),
    ],
)
async def test_malformed_body_gets_400_naming_what_is_wrong(
    receiver: WebhookServer,
    sink: EventSink,
    https: httpx.AsyncClient,
    content: bytes,
    message: str,
) -> None:
    """A body that is not a status object is refused with 400, and nothing is emitted."""
    before = len(sink.events)
    response = await https.post(
        receiver.callback_url(flow_run_id=None),
        content=content,
        headers={"Content-Type": "application/json"},
    )

    assert 400 == response.status_code
    assert re.search(message, response.json()["message"]), response.json()
    assert 0 == receiver.receiver.in_flight
    assert before == len(sink.events)


async def test_oversized_body_gets_413(receiver: WebhookServer, https: httpx.AsyncClient) -> None:
    """A body far larger than any status JSON is refused before it is parsed."""
    response = await https.post(
        receiver.callback_url(flow_run_id=None), content=b"{" + b" " * 70_000 + b"}"
    )
    assert 413 == response.status_code


async def test_a_callback_url_serves_one_request_only(
    emulator: EmulatorServer, receiver: WebhookServer, sink: EventSink, https: httpx.AsyncClient
) -> None:
    """The first callback binds the URL; one naming another request there gets 409."""
    first, second = await completed_job(emulator), await completed_job(emulator)
    url = receiver.callback_url(flow_run_id=uuid4())

    accepted = await https.post(url, json=emulator.state.status(first))
    refused = await https.post(url, json=emulator.state.status(second))
    await until(lambda: receiver.receiver.in_flight == 0)

    assert (202, 409) == (accepted.status_code, refused.status_code)
    assert [COMPLETED] == sink.names(first)
    assert [] == sink.names(second)


async def test_a_foreign_body_on_an_unused_url_does_not_take_the_jobs_own_event(
    emulator: EmulatorServer, receiver: WebhookServer, sink: EventSink, https: httpx.AsyncClient
) -> None:
    """Job B's completion posted on an unused URL A names A; B's own callback still emits its
    own event, naming B's flow run, instead of being answered as a duplicate."""
    run_a, run_b = uuid4(), uuid4()
    unused = receiver.callback_url(flow_run_id=run_a)
    own = receiver.callback_url(flow_run_id=run_b)
    job_b = await submit(emulator, own)
    await until(lambda: settled(emulator, receiver, job_b, 1), what="B's own callback")
    sink_before = len(sink.of(job_b))

    foreign = await https.post(unused, json=emulator.state.status(job_b))
    again = await https.post(own, json=emulator.state.status(job_b))
    await until(lambda: receiver.receiver.in_flight == 0)

    assert (202, 200) == (foreign.status_code, again.status_code)
    assert [202] == delivery_codes(emulator, job_b)  # B's own callback was processed
    runs = [e["related"][0]["prefect.resource.id"] for e in sink.of(job_b)]
    assert 1 == sink_before
    assert [f"prefect.flow-run.{run_b}", f"prefect.flow-run.{run_a}"] == runs
    ids = {e["id"] for e in sink.of(job_b)}
    assert 2 == len(ids)  # two URLs, two events: neither collapses the other in Prefect


async def test_the_foreign_claim_first_still_leaves_the_jobs_own_callback_its_event(
    emulator: EmulatorServer, receiver: WebhookServer, sink: EventSink, https: httpx.AsyncClient
) -> None:
    """Posted before the job's own callback, a foreign claim does not make that one a duplicate."""
    run_a, run_b = uuid4(), uuid4()
    unused = receiver.callback_url(flow_run_id=run_a)
    own = receiver.callback_url(flow_run_id=run_b)
    job_b = await completed_job(emulator)  # its own callback is posted by hand, after

    foreign = await https.post(unused, json=emulator.state.status(job_b))
    await until(lambda: receiver.receiver.in_flight == 0)
    response = await https.post(own, json=emulator.state.status(job_b))
    await until(lambda: receiver.receiver.in_flight == 0)

    assert (202, 202) == (foreign.status_code, response.status_code)
    runs = [e["related"][0]["prefect.resource.id"] for e in sink.of(job_b)]
    assert [f"prefect.flow-run.{run_a}", f"prefect.flow-run.{run_b}"] == runs


async def test_urls_signed_with_a_previous_secret_stay_valid_while_rotating(
    emulator: EmulatorServer, sink: EventSink, tls: TLS, https: httpx.AsyncClient
) -> None:
    """The receiver takes the current secret and listed previous ones; any other gets 401."""
    old = callback_url("https://x", "whsec-old-secret-1", flow_run_id=None)
    stranger = callback_url("https://x", "whsec-never-listed", flow_run_id=None)
    current = callback_url("https://x", "whsec-new-secret-2", flow_run_id=None)
    request_id = await completed_job(emulator)
    credentials = receiver_credentials(
        emulator,
        webhook_secret="whsec-new-secret-2",
        webhook_previous_secrets=["whsec-old-secret-1"],
    )
    with WebhookServer(credentials, certfile=tls.server_pem, emit=sink) as server:
        codes = [
            (await https.post(server.url + url.split("https://x", 1)[1], json=body)).status_code
            for url, body in (
                (old, emulator.state.status(request_id)),
                (stranger, emulator.state.status(request_id)),
                (current, emulator.state.status(request_id)),
            )
        ]
        await until(lambda: server.receiver.in_flight == 0)
    assert [202, 401, 202] == codes
    assert [COMPLETED, COMPLETED] == sink.names(request_id)


async def test_completed_callback_ahead_of_the_status_is_confirmed_once_the_gateway_agrees(
    emulator: EmulatorServer, receiver: WebhookServer, sink: EventSink, https: httpx.AsyncClient
) -> None:
    """A COMPLETED callback the status endpoint does not confirm yet is read again until it
    does, then emitted once, after a confirmed processing event; no other callback needed."""
    emulator.configure(manual=True)
    request_id = await submit(emulator, None)  # no callback of its own: only the early one
    emulator.state.advance(request_id)  # QUEUED -> PROCESSING, and it stays there
    url = receiver.callback_url(flow_run_id=uuid4())
    early = {**emulator.state.status(request_id), "status": "COMPLETED"}

    response = await https.post(url, json=early)
    await until(lambda: PROCESSING in sink.names(request_id), what="the confirmed progress")
    assert 202 == response.status_code
    assert [PROCESSING] == sink.names(request_id)  # nothing terminal while the gateway disagrees
    assert True is sink.of(request_id)[0]["payload"]["confirmed"]

    emulator.state.advance(request_id, JobStatus.COMPLETED)  # the status endpoint catches up
    await until(lambda: receiver.receiver.in_flight == 0, what="the re-confirmation")
    assert [PROCESSING, COMPLETED] == sink.names(request_id)
    assert 200 == (await https.post(url, json=early)).status_code  # a redelivery: duplicate
    assert [PROCESSING, COMPLETED] == sink.names(request_id)


async def test_completed_callback_the_gateway_never_confirms_is_let_go_after_the_window(
    emulator: EmulatorServer, sink: EventSink, tls: TLS, https: httpx.AsyncClient
) -> None:
    """Past the confirmation window nothing terminal is emitted and a redelivery is taken."""
    emulator.configure(manual=True)
    request_id = await submit(emulator, None)
    emulator.state.advance(request_id)
    with WebhookServer(
        receiver_credentials(emulator),
        certfile=tls.server_pem,
        emit=sink,
        confirm_backoff=0.01,
        confirm_window=0.2,
    ) as server:
        url = server.callback_url(flow_run_id=uuid4())
        early = {**emulator.state.status(request_id), "status": "COMPLETED"}
        assert 202 == (await https.post(url, json=early)).status_code
        await until(lambda: server.receiver.in_flight == 0, what="the window to pass")
        assert [PROCESSING] == sink.names(request_id)
        assert 202 == (await https.post(url, json=early)).status_code  # not a duplicate


class SlowTransport(httpx.AsyncBaseTransport):
    """Forwards each request after a delay: a slow gateway for the confirmation."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self._inner = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(self.delay)
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


async def test_answer_does_not_wait_for_a_slow_confirmation(
    emulator: EmulatorServer, tls: TLS
) -> None:
    """With a status read that takes 2 s, the callback is answered 202 before it ends."""
    slow_sink = EventSink()
    request_id = await completed_job(emulator)
    with WebhookServer(
        receiver_credentials(emulator),
        certfile=tls.server_pem,
        emit=slow_sink,
        client_transport=SlowTransport(2.0),
    ) as server:
        # A client of its own, closed before the server stops: the server's TLS shutdown
        # waits for the client's answer, which a loop blocked in stop() could not give.
        async with httpx.AsyncClient(verify=tls.client_context(), timeout=10) as client:
            started = time.monotonic()
            response = await client.post(
                server.callback_url(flow_run_id=None), json=emulator.state.status(request_id)
            )
            answered = time.monotonic() - started
            emitted_at_answer = slow_sink.names(request_id)
        await until(lambda: slow_sink.names(request_id) == [COMPLETED], what="slow event")
        confirmed = time.monotonic() - started

    assert 202 == response.status_code
    assert [] == emitted_at_answer
    assert answered < 2.0 <= confirmed, (answered, confirmed)


async def test_failed_and_error_map_to_their_events_with_the_gateways_error(
    emulator: EmulatorServer, receiver: WebhookServer, sink: EventSink
) -> None:
    """FAILED and ERROR become kandinsky.video.failed and .error, carrying the error text."""
    emulator.state.plan_outcome(JobStatus.FAILED, "content moderation rejected the prompt")
    failed = await submit(emulator, receiver.callback_url(flow_run_id=None))
    emulator.state.plan_outcome(JobStatus.ERROR, "GPU node lost")
    errored = await submit(emulator, receiver.callback_url(flow_run_id=None))
    await until(lambda: settled(emulator, receiver, failed, 1))
    await until(lambda: settled(emulator, receiver, errored, 1))

    (failed_event,) = sink.of(failed)
    (error_event,) = sink.of(errored)
    assert ("kandinsky.video.failed", "content moderation rejected the prompt") == (
        failed_event["event"],
        failed_event["payload"]["error"],
    )
    assert ("kandinsky.video.error", "GPU node lost") == (
        error_event["event"],
        error_event["payload"]["error"],
    )
    assert [] == failed_event["payload"]["media_urls"]


async def test_status_read_failures_give_up_without_an_event_then_a_redelivery_works(
    emulator: EmulatorServer,
    receiver: WebhookServer,
    sink: EventSink,
    https: httpx.AsyncClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Three failed confirmations log an error and emit nothing; the next delivery is processed."""
    caplog.set_level(logging.WARNING, logger="prefect_kandinsky.events.receiver")
    request_id = await completed_job(emulator)
    reads_before = emulator.state.count("status", request_id=request_id)
    emulator.state.inject_fault("status", status_code=503, times=3)
    url = receiver.callback_url(flow_run_id=None)
    body = emulator.state.status(request_id)

    first = await https.post(url, json=body)
    await until(lambda: receiver.receiver.in_flight == 0)
    assert 202 == first.status_code
    assert [] == sink.names(request_id)
    assert 3 == emulator.state.count("status", request_id=request_id) - reads_before
    assert any(
        f"Gave up confirming the COMPLETED callback for {request_id}" in r.getMessage()
        for r in caplog.records
    )

    again = await https.post(url, json=body)
    await until(lambda: receiver.receiver.in_flight == 0)
    assert 202 == again.status_code
    assert [COMPLETED] == sink.names(request_id)


async def test_unknown_request_is_not_emitted_and_does_not_keep_the_url(
    emulator: EmulatorServer, receiver: WebhookServer, sink: EventSink, https: httpx.AsyncClient
) -> None:
    """A terminal callback for a request the gateway does not know emits nothing (404)."""
    url = receiver.callback_url(flow_run_id=None)
    ghost = "kandinsky-5-0-pro-953_00000000-0000-7000-8000-000000000000"
    response = await https.post(url, json={"request_id": ghost, "status": "COMPLETED"})
    await until(lambda: receiver.receiver.in_flight == 0)
    real = await completed_job(emulator)
    after = await https.post(url, json=emulator.state.status(real))
    await until(lambda: receiver.receiver.in_flight == 0)

    assert (202, 202) == (response.status_code, after.status_code)
    assert [] == sink.names(ghost)
    assert [COMPLETED] == sink.names(real)


async def test_no_secret_key_or_token_in_logs_or_events(
    emulator: EmulatorServer,
    receiver: WebhookServer,
    sink: EventSink,
    https: httpx.AsyncClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Through progress, completion, a forgery and a bad body, no log or event holds a secret."""
    caplog.set_level(logging.DEBUG)
    url = receiver.callback_url(flow_run_id=uuid4())
    request_id = await submit(emulator, url, mode="sync")
    await until(lambda: COMPLETED in sink.names(request_id) and receiver.receiver.in_flight == 0)
    forged = url.rsplit("/", 1)[0] + "/" + "B" * TOKEN_LENGTH
    assert (
        401 == (await https.post(forged, json={"request_id": "x", "status": "QUEUED"})).status_code
    )
    assert 400 == (await https.post(url, content=b"nope")).status_code

    records = receiver_records(caplog)
    assert any(r.name == "prefect_kandinsky.events.receiver" for r in records)
    for record in records:
        assert no_secrets(record.getMessage(), token_of(url)), record.getMessage()
    for event in sink.of(request_id):
        assert no_secrets(json.dumps(event, default=str), token_of(url))


async def test_secretless_receiver_refuses_everything_and_prefixes_are_served() -> None:
    """Without webhook_secret every callback is 401; with one, a proxy prefix is accepted."""
    events = EventSink()
    bare = create_webhook_app(KandinskyCredentials(api_key="k"), emit=events, confirm=False)
    url = callback_url("http://hooks", SECRET, flow_run_id=None, allow_http=True)
    body = {"request_id": "kandinsky-5-0-pro-953_p", "status": "PROCESSING"}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=bare)) as client:
        refused = await client.post(url, json=body)
        health = (await client.get("http://hooks/healthz")).json()
    assert 401 == refused.status_code
    assert {"status": "ok", "accepting": False, "in_flight": 0} == health

    app = create_webhook_app(
        KandinskyCredentials(api_key="k", webhook_secret=SECRET), emit=events, confirm=False
    )
    prefixed = callback_url("http://hooks/proxy", SECRET, flow_run_id=None, allow_http=True)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app)) as client:
        accepted = await client.post(prefixed, json=body)
        await app.state.receiver.join()
    assert 202 == accepted.status_code
    assert [PROCESSING] == events.names("kandinsky-5-0-pro-953_p")


# -- through a real Prefect API --------------------------------------------------------------


@dataclass
class RealRun:
    """What one module-wide pass through a real Prefect API produced."""

    flow_run: UUID
    terminal: str
    duplicate: str
    forged: str
    forged_codes: list[int]
    duplicate_codes: list[int | None]
    media_urls: list[str]
    tokens: list[str]
    nonces: list[str]
    emitted: list[dict[str, Any]] = field(default_factory=list)
    api: dict[str, list[Any]] = field(default_factory=dict)


async def read_api_events(request_id: str) -> list[Any]:
    """Events of a request read back from the Prefect API (POST /events/filter)."""
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

    async with get_client() as client:
        page = await client.read_events(
            filter=EventFilter(
                event=EventNameFilter(prefix=["kandinsky.video."]),
                resource=EventResourceFilter(id=[resource_id(request_id)]),
            ),
            limit=50,
        )
    return list(page.events)


@pytest.fixture(scope="module")
async def real_run(
    prefect_api: None, kandinsky_emulator_server: EmulatorServer, tls: TLS
) -> AsyncIterator[RealRun]:
    """Forged callbacks, then a terminal job, then a job with duplicate deliveries, all
    emitted with Prefect's own ``emit_event`` and read back from the API."""
    from prefect import flow
    from prefect.events import emit_event
    from prefect.events.worker import EventsWorker

    # Prefect's events worker keeps the run context it was started in and adds that run to
    # every event sent without one. Start it inside a flow run, as in a user's process that
    # ran a flow before serving callbacks: the receiver's events must still name only theirs.
    await EventsWorker.drain_all(at_exit=False)

    @flow(name="kandinsky-test-starts-the-events-worker")
    def starts_the_events_worker() -> None:
        emit_event(event="kandinsky.test.started", resource={"prefect.resource.id": "k.test"})

    starts_the_events_worker()

    emulator = kandinsky_emulator_server
    emulator.reset()
    emulator.configure(webhook_ca_file=tls.ca_file)
    emitted: list[dict[str, Any]] = []

    def emit(**event: Any) -> Any:
        emitted.append(event)
        return emit_event(**event)

    flow_run = uuid4()
    with WebhookServer(
        receiver_credentials(emulator), certfile=tls.server_pem, emit=emit
    ) as server:
        async with httpx.AsyncClient(verify=tls.client_context(), timeout=10) as https:
            # Forgeries go first: once later events are readable, any event they had caused
            # would be too (one events connection, written in order).
            forged = await completed_job(emulator)
            url = server.callback_url(flow_run_id=flow_run)
            other = server.callback_url(flow_run_id=flow_run)
            body = emulator.state.status(forged)
            base = url.rsplit("/", 1)[0]
            forged_codes = [
                (await https.post(target, json=body)).status_code
                for target in (base + "/" + "C" * TOKEN_LENGTH, base + "/" + token_of(other), base)
            ]
        terminal = await submit(emulator, url)
        await until(lambda: settled(emulator, server, terminal, 1))
        emulator.configure(duplicate_webhooks=2)
        dup_url = server.callback_url(flow_run_id=None)
        duplicate = await submit(emulator, dup_url)
        await until(lambda: settled(emulator, server, duplicate, 3))
        run = RealRun(
            flow_run=flow_run,
            terminal=terminal,
            duplicate=duplicate,
            forged=forged,
            forged_codes=forged_codes,
            duplicate_codes=delivery_codes(emulator, duplicate),
            media_urls=emulator.state.status(terminal)["output"]["media_url"],
            tokens=[token_of(url), token_of(other), token_of(dup_url)],
            nonces=[url.rsplit("/", 2)[1], dup_url.rsplit("/", 2)[1]],
            emitted=emitted,
        )
    deadline = time.monotonic() + 15  # the API writes events in batches, every few seconds
    while time.monotonic() < deadline:
        run.api = {rid: await read_api_events(rid) for rid in (terminal, duplicate, forged)}
        if run.api[terminal] and run.api[duplicate]:
            break
        await asyncio.sleep(0.2)
    emulator.reset()
    yield run


async def test_real_api_stores_the_terminal_event_with_its_resources_and_id(
    real_run: RealRun,
) -> None:
    """The completed event is read back with its name, resource, flow run, media and id."""
    (event,) = real_run.api[real_run.terminal]
    assert COMPLETED == event.event
    assert resource_id(real_run.terminal) == event.resource.id
    assert real_run.terminal == event.resource.name
    flow_run, callback = event.related
    assert (f"prefect.flow-run.{real_run.flow_run}", "flow-run") == (flow_run.id, flow_run.role)
    assert (f"kandinsky.callback.{real_run.nonces[0]}", "callback") == (callback.id, callback.role)
    assert real_run.media_urls == event.payload["media_urls"]
    assert (
        event_id(
            real_run.terminal, "COMPLETED", flow_run_id=real_run.flow_run, nonce=real_run.nonces[0]
        )
        == event.id
    )
    assert event.payload["completed_at"][:19] == event.occurred.isoformat()[:19]


async def test_real_api_duplicates_are_emitted_and_stored_once(real_run: RealRun) -> None:
    """Three deliveries of one callback: the receiver emits once and the API holds one event."""
    assert [202, 200, 200] == real_run.duplicate_codes
    emitted = [
        e
        for e in real_run.emitted
        if e["resource"]["prefect.resource.id"] == resource_id(real_run.duplicate)
    ]
    assert [COMPLETED] == [e["event"] for e in emitted]
    (event,) = real_run.api[real_run.duplicate]
    assert event_id(real_run.duplicate, "COMPLETED", nonce=real_run.nonces[1]) == event.id
    assert [f"kandinsky.callback.{real_run.nonces[1]}"] == [r.id for r in event.related]


async def test_real_api_has_nothing_for_forged_callbacks_and_no_secrets(
    real_run: RealRun,
) -> None:
    """Forged, foreign and missing tokens got 401; the API has no event for them, and no
    stored event holds the secret, the API key or a token."""
    assert [401, 401, 401] == real_run.forged_codes
    assert [] == real_run.api[real_run.forged]
    assert 2 == len(real_run.emitted)
    for events in real_run.api.values():
        for event in events:
            assert no_secrets(event.model_dump_json(), *real_run.tokens)
