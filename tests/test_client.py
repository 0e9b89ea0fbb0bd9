"""The gateway client against the emulator over real HTTP; respx only for what it cannot do."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import logging
import pickle
import threading
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
import respx

from prefect_kandinsky import (
    JobStatus,
    KandinskyAPIError,
    KandinskyAuthenticationError,
    KandinskyBadRequestError,
    KandinskyClient,
    KandinskyConnectionError,
    KandinskyError,
    KandinskyGenerationFailedError,
    KandinskyInsufficientBalanceError,
    KandinskyMediaError,
    KandinskyMediaExpiredError,
    KandinskyNotFoundError,
    KandinskyPermissionDeniedError,
    KandinskyRateLimitError,
    KandinskyServerError,
    KandinskySubmitUncertainError,
    KandinskySystemError,
    KandinskyWaitTimeoutError,
    VideoRequest,
)
from prefect_kandinsky.gateway.client import parse_retry_after


class FakeTime:
    """A clock and a sleep that move together without waiting."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def fake_time() -> FakeTime:
    return FakeTime()


@pytest.fixture
async def client(kandinsky_emulator: Any, fake_time: FakeTime) -> AsyncIterator[KandinskyClient]:
    async with KandinskyClient(
        api_key=kandinsky_emulator.api_key,
        base_url=kandinsky_emulator.base_url,
        retry_initial_delay=0.01,
        max_retries=2,
        sleep=fake_time.sleep,
        clock=fake_time.clock,
    ) as client:
        yield client


def tiny_request(server: Any, **changes: Any) -> VideoRequest:
    fields: dict[str, Any] = {
        "prompt": "The sun rises over the hills.",
        "image_url": server.sample_image_url,
        "resolution": "256P",
        "duration": 1,
    }
    fields.update(changes)
    return VideoRequest(**fields)


async def test_submit_then_wait_reports_each_transition_once(
    client: KandinskyClient, kandinsky_emulator: Any
) -> None:
    """A job goes QUEUED, PROCESSING, COMPLETED; each change is reported exactly once."""
    # The job moves only when the client has seen where it is: no timing to miss on a busy
    # machine (it stays PROCESSING until its MP4 is rendered, read after read).
    kandinsky_emulator.configure(manual=True)
    job = await client.submit(tiny_request(kandinsky_emulator))
    assert JobStatus.QUEUED == job.status
    assert job.polling_url and job.polling_url.endswith(job.request_id)
    seen: list[JobStatus] = []
    after = {JobStatus.QUEUED: "PROCESSING", JobStatus.PROCESSING: "COMPLETED"}

    def changed(status: Any) -> None:
        seen.append(status.status)
        if status.status in after:
            kandinsky_emulator.state.advance(job.request_id, after[status.status])

    real = KandinskyClient(api_key=kandinsky_emulator.api_key, base_url=kandinsky_emulator.base_url)
    async with real:
        final = await real.wait(
            job.request_id, poll_interval=0.01, max_poll_interval=0.02, on_change=changed
        )
    assert [JobStatus.QUEUED, JobStatus.PROCESSING, JobStatus.COMPLETED] == seen
    assert JobStatus.COMPLETED == final.status
    assert 1 == kandinsky_emulator.state.count("submit")
    assert final.media_urls[0].startswith(kandinsky_emulator.cdn_url)


@pytest.mark.parametrize(
    ("status_code", "error_class", "body"),
    [
        (400, KandinskyBadRequestError, {"error": "Bad Request", "message": "bad prompt"}),
        (403, KandinskyPermissionDeniedError, {"error": "Forbidden", "message": "not allowed"}),
        (500, KandinskySubmitUncertainError, {"error": "Internal", "message": "boom"}),
    ],
)
async def test_injected_status_codes_map_to_their_error_class(
    client: KandinskyClient,
    kandinsky_emulator: Any,
    status_code: int,
    error_class: type[Exception],
    body: dict[str, str],
) -> None:
    """A refused submit reaches the caller as its own class, with the gateway's words."""
    kandinsky_emulator.state.inject_fault("submit", status_code=status_code, body=body)
    with pytest.raises(error_class, match=body["message"]) as caught:
        await client.submit(tiny_request(kandinsky_emulator))
    assert status_code == caught.value.status_code  # type: ignore[attr-defined]
    assert body["error"] == caught.value.error  # type: ignore[attr-defined]
    assert 1 == kandinsky_emulator.state.count("submit")


async def test_unknown_model_is_a_bad_request_naming_the_model(kandinsky_emulator: Any) -> None:
    """The documented "Model not found" body reaches the caller."""
    async with KandinskyClient(
        api_key=kandinsky_emulator.api_key,
        base_url=kandinsky_emulator.base_url,
        model_id="kandinsky-9-0-pro-1",
    ) as client:
        with pytest.raises(KandinskyBadRequestError, match="Model not found: Model 'kandinsky-9"):
            await client.submit(tiny_request(kandinsky_emulator))


async def test_wrong_key_is_401_and_the_key_is_not_in_the_message(
    kandinsky_emulator: Any,
) -> None:
    """A wrong key raises the authentication error, and the message never holds the key."""
    secret = "wrong-key-7f3a9c"
    async with KandinskyClient(api_key=secret, base_url=kandinsky_emulator.base_url) as client:
        with pytest.raises(KandinskyAuthenticationError, match="401.*api_key") as caught:
            await client.submit(tiny_request(kandinsky_emulator))
    assert secret not in str(caught.value)
    assert secret not in repr(caught.value)
    assert secret not in str(pickle.loads(pickle.dumps(caught.value)).__dict__)


async def test_empty_wallet_is_402_with_the_gateway_message(
    client: KandinskyClient, kandinsky_emulator: Any
) -> None:
    """An empty wallet raises the balance error with the documented message."""
    kandinsky_emulator.state.set_balance("0")
    with pytest.raises(
        KandinskyInsufficientBalanceError, match="Your wallet does not have enough balance"
    ):
        await client.submit(tiny_request(kandinsky_emulator, resolution="512P"))


async def test_unknown_request_id_is_404(client: KandinskyClient) -> None:
    """Reading an unknown id raises the not-found error naming the id."""
    with pytest.raises(KandinskyNotFoundError, match="kandinsky-5-0-pro-953_nope"):
        await client.get_status("kandinsky-5-0-pro-953_nope")


async def test_rate_limit_then_success_waits_retry_after(
    client: KandinskyClient, kandinsky_emulator: Any, fake_time: FakeTime
) -> None:
    """After a 429 the client waits at least Retry-After, then the submit succeeds once."""
    kandinsky_emulator.state.inject_fault("submit", status_code=429, retry_after=3)
    job = await client.submit(tiny_request(kandinsky_emulator))
    assert job.request_id
    assert [3.0] == fake_time.sleeps
    assert 1 == len(kandinsky_emulator.state.jobs())
    assert 2 == kandinsky_emulator.state.count("submit")


async def test_rate_limit_exhausted_raises_with_retry_after(
    client: KandinskyClient, kandinsky_emulator: Any
) -> None:
    """A 429 that outlasts the retries raises the rate-limit error with its seconds."""
    kandinsky_emulator.state.inject_fault("status", status_code=429, retry_after=7, times=3)
    job = await client.submit(tiny_request(kandinsky_emulator))
    with pytest.raises(KandinskyRateLimitError, match="retry after 7s") as caught:
        await client.get_status(job.request_id)
    assert 7.0 == caught.value.retry_after
    assert job.request_id == caught.value.request_id


async def test_status_reads_retry_on_5xx_and_dropped_connections(
    client: KandinskyClient, kandinsky_emulator: Any
) -> None:
    """A 503 and a dropped connection on status reads are retried transparently."""
    job = await client.submit(tiny_request(kandinsky_emulator))
    kandinsky_emulator.state.inject_fault("status", status_code=503)
    kandinsky_emulator.state.inject_fault("status", action="drop")
    status = await client.get_status(job.request_id)
    assert job.request_id == status.request_id
    assert 3 == kandinsky_emulator.state.count("status")


async def test_no_log_line_at_any_level_holds_the_key(
    client: KandinskyClient, kandinsky_emulator: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A run through 429s, 5xx and a dropped connection logs its retries, never the key."""
    loggers = [logging.getLogger()] + [
        logger
        for logger in logging.root.manager.loggerDict.values()
        if isinstance(logger, logging.Logger) and not logger.propagate
    ]
    for logger in loggers[1:]:
        logger.addHandler(caplog.handler)
    caplog.set_level(logging.DEBUG)
    state = kandinsky_emulator.state
    state.inject_fault("submit", status_code=429, retry_after=1)
    state.inject_fault("media", status_code=502)
    try:
        job = await client.submit(tiny_request(kandinsky_emulator))
        for fault in ({"status_code": 503}, {"status_code": 429}, {"action": "drop"}):
            state.inject_fault("status", **fault)
            await client.get_status(job.request_id)
        status = await client.wait(job.request_id, poll_interval=0.01, max_poll_interval=0.02)
        async with client.open_media(status.media_urls[0]) as media:
            assert b"ftyp" == b"".join([chunk async for chunk in media.chunks()])[4:8]
        with pytest.raises(KandinskyAuthenticationError):
            async with KandinskyClient(
                api_key=kandinsky_emulator.api_key + "-wrong",
                base_url=kandinsky_emulator.base_url,
            ) as wrong:
                await wrong.get_status(job.request_id)
    finally:
        for logger in loggers[1:]:
            logger.removeHandler(caplog.handler)
    retries = [
        r.getMessage()
        for r in caplog.records
        if r.name.startswith("prefect_kandinsky") and "retry" in r.getMessage()
    ]
    assert 5 == len(retries), retries  # the run went through every retry path
    key = kandinsky_emulator.api_key
    leaked = [
        record.getMessage()
        for record in caplog.records
        if key in record.getMessage() or key in repr(record.__dict__)
    ]
    assert [] == leaked
    assert key not in caplog.text


async def test_submit_is_never_resent_after_an_ambiguous_failure(
    client: KandinskyClient, kandinsky_emulator: Any
) -> None:
    """A submit whose answer is lost after queuing raises and is not repeated."""
    kandinsky_emulator.state.inject_fault("submit", action="drop", after_queue=True)
    with pytest.raises(KandinskySubmitUncertainError, match="may have queued and billed") as caught:
        await client.submit(tiny_request(kandinsky_emulator))
    assert isinstance(caught.value, KandinskyConnectionError)
    assert not isinstance(caught.value, KandinskyServerError)
    assert 1 == kandinsky_emulator.state.count("submit")
    assert 1 == len(kandinsky_emulator.state.jobs())


@pytest.mark.parametrize("status_code", [500, 503])
async def test_submit_5xx_is_uncertain_and_still_a_server_error(
    client: KandinskyClient, kandinsky_emulator: Any, status_code: int
) -> None:
    """A 5xx to a submit raises the uncertain-submit error, also a server error, sent once."""
    body = {"error": "Internal", "message": f"upstream failed for {kandinsky_emulator.api_key}"}
    kandinsky_emulator.state.inject_fault("submit", status_code=status_code, body=body)
    with pytest.raises(
        KandinskySubmitUncertainError,
        match=f"submit to {kandinsky_emulator.base_url} was answered {status_code} by the gateway "
        r"\(Internal: upstream failed for \*\*\*\) and was not resent: the gateway may have "
        "queued and billed the job: check for it before submitting again",
    ) as caught:
        await client.submit(tiny_request(kandinsky_emulator))
    error = caught.value
    assert isinstance(error, KandinskyServerError)
    assert isinstance(error, KandinskyAPIError)
    assert (status_code, "Internal") == (error.status_code, error.error)
    assert body["message"] == error.gateway_message
    assert kandinsky_emulator.api_key not in str(error)
    assert 1 == kandinsky_emulator.state.count("submit")


async def test_submit_5xx_after_queueing_is_billed_and_not_resent(
    client: KandinskyClient, kandinsky_emulator: Any
) -> None:
    """A 502 after the job was queued leaves one billed job and no second submit."""
    before = kandinsky_emulator.state.balance
    kandinsky_emulator.state.inject_fault("submit", status_code=502, after_queue=True)
    with pytest.raises(KandinskySubmitUncertainError, match="answered 502") as caught:
        await client.submit(tiny_request(kandinsky_emulator, resolution="512P"))
    assert isinstance(caught.value, KandinskyServerError)
    assert 502 == caught.value.status_code
    assert 1 == kandinsky_emulator.state.count("submit")
    assert 1 == len(kandinsky_emulator.state.jobs())
    assert before > kandinsky_emulator.state.balance


async def test_submit_5xx_after_a_rate_limit_is_uncertain(
    client: KandinskyClient, kandinsky_emulator: Any, fake_time: FakeTime
) -> None:
    """A 429 is retried; the 500 that follows it is uncertain and not resent."""
    kandinsky_emulator.state.inject_fault("submit", status_code=429, retry_after=2)
    kandinsky_emulator.state.inject_fault("submit", status_code=500, after_queue=True)
    with pytest.raises(KandinskySubmitUncertainError, match="answered 500") as caught:
        await client.submit(tiny_request(kandinsky_emulator))
    assert isinstance(caught.value, KandinskyServerError)
    assert [2.0] == fake_time.sleeps
    assert 2 == kandinsky_emulator.state.count("submit")
    assert 1 == len(kandinsky_emulator.state.jobs())


async def test_uncertain_submit_errors_survive_pickling(
    client: KandinskyClient, kandinsky_emulator: Any
) -> None:
    """Both uncertain-submit errors keep their class, message and attributes when pickled."""
    kandinsky_emulator.state.inject_fault(
        "submit", status_code=503, body={"error": "Unavailable", "message": "try later"}
    )
    kandinsky_emulator.state.inject_fault("submit", action="drop", after_queue=True)
    caught: list[KandinskySubmitUncertainError] = []
    for _ in range(2):
        with pytest.raises(KandinskySubmitUncertainError) as raised:
            await client.submit(tiny_request(kandinsky_emulator))
        caught.append(raised.value)
    for error in caught:
        copy = pickle.loads(pickle.dumps(error))
        assert type(error) is type(copy)
        assert str(error) == str(copy)
        assert error.__dict__ == copy.__dict__
    server, dropped = (pickle.loads(pickle.dumps(error)) for error in caught)
    assert isinstance(server, KandinskyServerError)
    assert (503, "Unavailable", "try later") == (
        server.status_code,
        server.error,
        server.gateway_message,
    )
    assert (None, None, None) == (dropped.status_code, dropped.error, dropped.gateway_message)
    assert isinstance(dropped, KandinskyConnectionError)
    assert not isinstance(dropped, KandinskyAPIError)


async def test_wait_deadline_error_carries_request_id_and_status(
    client: KandinskyClient, kandinsky_emulator: Any, fake_time: FakeTime
) -> None:
    """A job that never finishes makes the wait raise a resumable error with the id."""
    kandinsky_emulator.configure(manual=True)
    job = await client.submit(tiny_request(kandinsky_emulator))
    with pytest.raises(KandinskyWaitTimeoutError, match="still QUEUED after 30s") as caught:
        await client.wait(job.request_id, timeout=30, poll_interval=2, max_poll_interval=8)
    assert job.request_id == caught.value.request_id
    assert JobStatus.QUEUED == caught.value.status
    assert job.request_id in str(caught.value)
    assert all(s <= 8.0 for s in fake_time.sleeps)
    assert 30.0 == pytest.approx(sum(fake_time.sleeps))


async def test_poll_interval_backs_off_towards_the_cap(
    client: KandinskyClient, kandinsky_emulator: Any, fake_time: FakeTime
) -> None:
    """Polls start short and grow to the cap, jittered below it."""
    kandinsky_emulator.configure(manual=True)
    job = await client.submit(tiny_request(kandinsky_emulator))
    with pytest.raises(KandinskyWaitTimeoutError):
        await client.wait(job.request_id, timeout=60, poll_interval=1, max_poll_interval=8)
    assert 0.75 <= fake_time.sleeps[0] <= 1.0
    assert fake_time.sleeps[2] > fake_time.sleeps[0]
    at_cap = fake_time.sleeps[6:-1]
    assert at_cap and all(6.0 <= s <= 8.0 for s in at_cap)
    assert len(set(at_cap)) == len(at_cap), "jitter keeps waiters out of step at the cap"


@pytest.mark.parametrize(
    ("outcome", "error_class", "message"),
    [
        ("FAILED", KandinskyGenerationFailedError, "failed: content moderation rejected"),
        ("ERROR", KandinskySystemError, "system error \\(not charged\\): GPU node lost"),
    ],
)
async def test_failed_and_error_raise_with_the_gateway_text(
    kandinsky_emulator: Any, outcome: str, error_class: type[Exception], message: str
) -> None:
    """FAILED and ERROR raise their own errors, quoting the gateway."""
    text = "content moderation rejected the prompt" if outcome == "FAILED" else "GPU node lost"
    kandinsky_emulator.state.plan_outcome(outcome, text)
    async with KandinskyClient(
        api_key=kandinsky_emulator.api_key, base_url=kandinsky_emulator.base_url
    ) as client:
        job = await client.submit(tiny_request(kandinsky_emulator))
        with pytest.raises(error_class, match=message) as caught:
            await client.wait(job.request_id, poll_interval=0.01, max_poll_interval=0.02)
    assert job.request_id == caught.value.request_id  # type: ignore[attr-defined]


async def test_error_outcome_is_refunded(kandinsky_emulator: Any) -> None:
    """The emulator refunds an ERROR, as the gateway documents it is not charged."""
    before = kandinsky_emulator.state.balance
    kandinsky_emulator.state.plan_outcome("ERROR", "node lost")
    async with KandinskyClient(
        api_key=kandinsky_emulator.api_key, base_url=kandinsky_emulator.base_url
    ) as client:
        job = await client.submit(tiny_request(kandinsky_emulator, resolution="512P"))
        status = await client.wait(
            job.request_id, poll_interval=0.01, max_poll_interval=0.02, raise_on_failure=False
        )
    assert JobStatus.ERROR == status.status
    assert before == kandinsky_emulator.state.balance


async def test_media_goes_to_the_cdn_without_the_key(kandinsky_emulator: Any) -> None:
    """The CDN, another origin, never receives the subscription key."""
    async with KandinskyClient(
        api_key=kandinsky_emulator.api_key, base_url=kandinsky_emulator.base_url
    ) as client:
        job = await client.submit(tiny_request(kandinsky_emulator))
        status = await client.wait(job.request_id, poll_interval=0.01, max_poll_interval=0.02)
        async with client.open_media(status.media_urls[0]) as media:
            body = b"".join([chunk async for chunk in media.chunks()])
    assert media.content_length == len(body)
    assert b"ftyp" == body[4:8]
    cdn = kandinsky_emulator.state.requests("media")
    assert cdn and not any(r.key_present for r in cdn)
    assert all(r.key_present for r in kandinsky_emulator.state.requests("submit"))


async def test_truncated_media_is_resumed_with_range(kandinsky_emulator: Any) -> None:
    """A body cut short is completed with a Range request, and the bytes are whole."""
    async with KandinskyClient(
        api_key=kandinsky_emulator.api_key, base_url=kandinsky_emulator.base_url
    ) as client:
        job = await client.submit(tiny_request(kandinsky_emulator))
        status = await client.wait(job.request_id, poll_interval=0.01, max_poll_interval=0.02)
        expected = kandinsky_emulator.state.media(job.request_id)
        kandinsky_emulator.state.inject_fault("media", action="truncate")
        async with client.open_media(status.media_urls[0], chunk_size=1024) as media:
            body = b"".join([chunk async for chunk in media.chunks()])
    assert expected == body
    assert 1 == media.resumes
    assert "range" in kandinsky_emulator.state.requests("media")[-1].header_names


async def finished_video(client: KandinskyClient, server: Any, **changes: Any) -> tuple[str, bytes]:
    """Generate a video (256P, 1 s by default) on the emulator; return its URL and bytes."""
    job = await client.submit(tiny_request(server, **changes))
    status = await client.wait(job.request_id, poll_interval=0.01, max_poll_interval=0.02)
    return status.media_urls[0], server.state.media(job.request_id)


def media_ranges(server: Any) -> list[str | None]:
    """The Range header of each request the CDN received, oldest first."""
    return [record.range_header for record in server.state.requests("media")]


async def test_cut_inside_the_only_chunk_resumes_at_the_byte_received(
    kandinsky_emulator: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A file smaller than one chunk, cut at half, resumes at that byte with a Range request."""
    caplog.set_level(logging.INFO, logger="prefect_kandinsky.gateway.client")
    async with KandinskyClient(
        api_key=kandinsky_emulator.api_key, base_url=kandinsky_emulator.base_url
    ) as client:
        url, expected = await finished_video(client, kandinsky_emulator)
        size, half = len(expected), len(expected) // 2
        kandinsky_emulator.state.inject_fault("media", action="truncate", truncate_bytes=half)
        async with client.open_media(url) as media:
            received = [chunk async for chunk in media.chunks()]
    assert 0 < half and size < 1024 * 1024
    assert [None, f"bytes={half}-"] == media_ranges(kandinsky_emulator)
    assert [half, size - half] == [len(chunk) for chunk in received]
    assert hashlib.sha256(expected).hexdigest() == hashlib.sha256(b"".join(received)).hexdigest()
    assert 1 == media.resumes
    assert [
        f"Media download of {url} cut at {half} of {size} bytes; resuming with a Range request"
    ] == [record.getMessage() for record in caplog.records if "cut at" in record.getMessage()]


async def test_cuts_inside_chunks_of_a_multi_chunk_file_resume_at_each_byte(
    kandinsky_emulator: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Two cuts in the middle of 4 KiB chunks resume exactly where each one stopped."""
    caplog.set_level(logging.INFO, logger="prefect_kandinsky.gateway.client")
    chunk_size = 4096
    async with KandinskyClient(
        api_key=kandinsky_emulator.api_key, base_url=kandinsky_emulator.base_url
    ) as client:
        url, expected = await finished_video(client, kandinsky_emulator, duration=3)
        size = len(expected)
        first_cut = chunk_size + 1000
        second_cut = first_cut + chunk_size + 200
        assert size > second_cut + chunk_size, "the video must span several chunks"
        kandinsky_emulator.state.inject_fault("media", action="truncate", truncate_bytes=first_cut)
        kandinsky_emulator.state.inject_fault(
            "media", action="truncate", truncate_bytes=second_cut - first_cut
        )
        async with client.open_media(url, chunk_size=chunk_size) as media:
            received = [chunk async for chunk in media.chunks()]
    assert [None, f"bytes={first_cut}-", f"bytes={second_cut}-"] == media_ranges(kandinsky_emulator)
    # Each part is handed over whole before its resume, then full chunks follow again.
    rest = size - second_cut
    tail = [min(chunk_size, rest - start) for start in range(0, rest, chunk_size)]
    assert [chunk_size, 1000, chunk_size, 200, *tail] == [len(chunk) for chunk in received]
    assert hashlib.sha256(expected).hexdigest() == hashlib.sha256(b"".join(received)).hexdigest()
    assert 2 == media.resumes
    assert [f"cut at {first_cut} of {size} bytes", f"cut at {second_cut} of {size} bytes"] == [
        record.getMessage().split("; ")[0].split(f"{url} ")[1]
        for record in caplog.records
        if "cut at" in record.getMessage()
    ]


async def test_unresumable_cut_reports_the_bytes_received(kandinsky_emulator: Any) -> None:
    """With no resume left, the error and the caller both have every byte that arrived."""
    async with KandinskyClient(
        api_key=kandinsky_emulator.api_key, base_url=kandinsky_emulator.base_url
    ) as client:
        url, expected = await finished_video(client, kandinsky_emulator)
        kandinsky_emulator.state.inject_fault("media", action="truncate", truncate_bytes=1000)
        received: list[bytes] = []
        with pytest.raises(
            KandinskyMediaError,
            match=f"stopped after 1000 of {len(expected)} bytes and could not be resumed",
        ):
            async with client.open_media(url, chunk_size=4096, max_resumes=0) as media:
                async for chunk in media.chunks():
                    received.append(chunk)
    assert expected[:1000] == b"".join(received)
    assert [None] == media_ranges(kandinsky_emulator)


async def test_compressed_media_is_refused(client: KandinskyClient) -> None:
    """A CDN that compresses despite Accept-Encoding: identity is refused, not saved as is."""
    packed = gzip.compress(b"\x00" * 5000)
    with respx.mock:
        route = respx.get("https://cdn.example/x.mp4").respond(
            200, content=packed, headers={"Content-Encoding": "gzip"}
        )
        with pytest.raises(KandinskyMediaError, match="Content-Encoding 'gzip'"):
            async with client.open_media("https://cdn.example/x.mp4") as media:
                async for _ in media.chunks():
                    pass
    assert "identity" == route.calls.last.request.headers["accept-encoding"]


async def test_chunk_size_must_be_positive(client: KandinskyClient) -> None:
    """A chunk size below one byte is refused before any download starts."""
    with respx.mock:
        route = respx.get("https://cdn.example/x.mp4").respond(200, content=b"x")
        with pytest.raises(ValueError, match="chunk_size must be 1 or more; got 0"):
            async with client.open_media("https://cdn.example/x.mp4", chunk_size=0):
                pass
    assert not route.called


async def test_expired_media_link_says_so(client: KandinskyClient, kandinsky_emulator: Any) -> None:
    """A 403 from the CDN raises the expired-link error, not a generic failure."""
    kandinsky_emulator.state.inject_fault("media", status_code=403)
    url = f"{kandinsky_emulator.cdn_url}/v1/kandinsky-5-0-pro-953_x/output.mp4"
    with pytest.raises(KandinskyMediaExpiredError, match="has expired"):
        async with client.open_media(url):
            pass


async def test_key_is_never_sent_to_another_host() -> None:
    """Even a status URL on a foreign host cannot carry the key: the client refuses."""
    async with KandinskyClient(api_key="k", base_url="https://gateway.example") as client:
        with respx.mock(assert_all_called=False) as mock:
            route = mock.get("https://cdn.example/x.mp4").respond(200, content=b"x")
            async with client.open_media("https://cdn.example/x.mp4") as media:
                assert [b"x"] == [c async for c in media.chunks()]
        assert "ocp-apim-subscription-key" not in route.calls.last.request.headers
        request = client._http.build_request(
            "GET", "https://cdn.example/x", headers={"Ocp-Apim-Subscription-Key": "k"}
        )
        with pytest.raises(
            KandinskyError, match="Refusing to send the subscription key to cdn.example"
        ):
            await client._http.send(request)


@pytest.mark.parametrize(
    ("answer", "gateway_message"),
    [({"text": "<html>oops</html>"}, "<html>oops</html>"), ({"json": {"status": "QUEUED"}}, None)],
    ids=["not-json", "no-request-id"],
)
async def test_unreadable_submit_answer_is_uncertain(
    answer: dict[str, Any], gateway_message: str | None
) -> None:
    """A 202 without a readable request id says the job may exist."""
    async with KandinskyClient(
        api_key="k", base_url="https://gateway.example", max_retries=0
    ) as client:
        with respx.mock:
            route = respx.post(
                "https://gateway.example/kandinsky-5-0-pro-953/v1/kandinsky-5-0-pro-request"
            ).respond(202, **answer)
            with pytest.raises(
                KandinskySubmitUncertainError, match="may exist and be billed"
            ) as caught:
                await client.submit(VideoRequest(prompt="p", image_url="https://example.com/a.png"))
    assert (202, gateway_message) == (caught.value.status_code, caught.value.gateway_message)
    assert 1 == route.call_count


@pytest.mark.parametrize("failure", [httpx.ReadError, httpx.ReadTimeout, httpx.RemoteProtocolError])
async def test_submit_cut_after_sending_is_uncertain_and_names_the_webhook(
    failure: type[httpx.TransportError], fake_time: FakeTime
) -> None:
    """A submit cut after it was sent is sent once; the message points to its webhook."""
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        raise failure("cut", request=request)

    async with KandinskyClient(
        api_key="k-secret",
        base_url="https://gateway.example",
        transport=httpx.MockTransport(handler),
        sleep=fake_time.sleep,
    ) as client:
        with pytest.raises(
            KandinskySubmitUncertainError,
            match=f"broke off after it was sent \\({failure.__name__}\\) and was not resent: "
            "the gateway may have queued and billed the job: check for it \\(its webhook is "
            "called if it was queued\\) before submitting again",
        ) as caught:
            await client.submit(
                VideoRequest(prompt="p", image_url="https://example.com/a.png"),
                webhook_url="https://hooks.example/k",
            )
    assert isinstance(caught.value, KandinskyConnectionError)
    assert not isinstance(caught.value, KandinskyServerError)
    assert "k-secret" not in str(caught.value)
    assert (1, []) == (calls, fake_time.sleeps)


async def test_submit_retries_when_the_connection_was_never_made(fake_time: FakeTime) -> None:
    """A refused connection cannot have queued a job, so the submit is retried."""
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(202, json={"request_id": "r-1", "status": "QUEUED"})

    async with KandinskyClient(
        api_key="k",
        base_url="https://gateway.example",
        transport=httpx.MockTransport(handler),
        sleep=fake_time.sleep,
    ) as client:
        job = await client.submit(VideoRequest(prompt="p", image_url="https://example.com/a"))
    assert ("r-1", 2) == (job.request_id, calls)


async def test_webhook_headers_and_http_refusal(kandinsky_emulator: Any) -> None:
    """Webhook headers reach the gateway; an http:// webhook is refused before sending."""
    async with KandinskyClient(
        api_key=kandinsky_emulator.api_key, base_url=kandinsky_emulator.base_url
    ) as client:
        with pytest.raises(ValueError, match="webhook_url must be an absolute https URL"):
            await client.submit(
                tiny_request(kandinsky_emulator), webhook_url="http://example.com/hook"
            )
        assert 0 == kandinsky_emulator.state.count("submit")
        await client.submit(
            tiny_request(kandinsky_emulator),
            webhook_url="https://hooks.example/kandinsky",
            webhook_mode="terminal",
        )
    record = kandinsky_emulator.state.requests("submit")[-1]
    assert {"x-webhook-url", "x-webhook-mode"} <= record.header_names


def test_retry_after_parses_seconds_and_dates() -> None:
    """Retry-After is read in both its forms, and nonsense is ignored."""
    assert 5.0 == parse_retry_after("5")
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
    assert parse_retry_after("soon") is None


def test_repr_has_no_key() -> None:
    """The client's repr shows where it points, not what it sends."""
    client = KandinskyClient(api_key="sk-live-123456", base_url="https://gateway.example")
    assert "sk-live-123456" not in repr(client)
    assert "gateway.example" in repr(client)


async def test_a_wait_reads_again_after_refused_status_reads_honouring_retry_after(
    client: KandinskyClient, kandinsky_emulator: Any, fake_time: FakeTime
) -> None:
    """429s past the client's retries cost the wait a Retry-After pause, not the wait."""
    job = await client.submit(tiny_request(kandinsky_emulator))
    await asyncio.to_thread(kandinsky_emulator.state.wait_for_status, job.request_id)
    # Two status reads refused, each after the client's 2 retries: 6 answers of 429.
    kandinsky_emulator.state.inject_fault("status", status_code=429, retry_after=5, times=6)
    final = await client.wait(job.request_id, timeout=600, poll_interval=0.01)
    assert JobStatus.COMPLETED == final.status
    assert [5.0] * 6 == fake_time.sleeps, "every 429's Retry-After, the wait's pauses too"


async def test_a_wait_ends_at_once_on_a_refusal_that_cannot_change(
    client: KandinskyClient, kandinsky_emulator: Any
) -> None:
    """A 403 to a status read ends the wait on the first read; it is not retried."""
    job = await client.submit(tiny_request(kandinsky_emulator))
    kandinsky_emulator.state.inject_fault("status", status_code=403, times=5)
    with pytest.raises(KandinskyPermissionDeniedError, match="refused by the gateway with 403"):
        await client.wait(job.request_id, timeout=600)
    assert 1 == kandinsky_emulator.state.count("status", request_id=job.request_id)


async def test_a_wait_whose_status_reads_keep_failing_ends_at_its_deadline(
    client: KandinskyClient, kandinsky_emulator: Any, fake_time: FakeTime
) -> None:
    """5xx on every status read: the wait ends at its own deadline, resumable by request id."""
    kandinsky_emulator.configure(manual=True)
    job = await client.submit(tiny_request(kandinsky_emulator))
    kandinsky_emulator.state.inject_fault("status", status_code=503, times=1000)
    with pytest.raises(KandinskyWaitTimeoutError, match="status reads kept failing") as caught:
        await client.wait(job.request_id, timeout=60, poll_interval=1, max_poll_interval=8)
    assert job.request_id == caught.value.request_id
    assert 60.0 <= fake_time.now < 61.0


# -- size caps ---------------------------------------------------------------------------------

HUGE = 400 * 1024 * 1024


class _Flood(BaseHTTPRequestHandler):
    """Answers every GET with up to 400 MB: declared (``/declared/...``) or not."""

    protocol_version = "HTTP/1.0"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        if self.path.startswith("/declared/"):
            self.send_header("Content-Length", str(HUGE))
        self.end_headers()
        block = b"[" + b" " * 65_534 if self.path.endswith("status/abc") else b"\0" * 65_535
        total = 0
        try:
            while total < HUGE:
                self.wfile.write(block)
                total += len(block)
        except OSError:
            pass  # the client stopped reading


@pytest.fixture
def flood() -> Iterator[str]:
    """A host on 127.0.0.1 whose answers are 400 MB long."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Flood)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.mark.parametrize("prefix", ["", "/declared"], ids=["no-length", "declared-length"])
async def test_a_huge_status_answer_is_refused_without_reading_it_whole(
    flood: str, prefix: str
) -> None:
    """A 400 MB status body stops at max_response_bytes with an error naming the way out."""
    base_url = flood
    tracemalloc.start()
    try:
        async with KandinskyClient(api_key="k", base_url=base_url + prefix, max_retries=0) as c:
            with pytest.raises(
                KandinskyServerError,
                match=r"^The gateway's answer to the status read of abc \(200\) is larger than "
                r"max_response_bytes=1048576 and was not read: raise "
                r"KandinskyClient\(max_response_bytes=\.\.\.\)",
            ):
                await c.get_status("abc")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

    assert peak < 16 * 1024 * 1024, f"peak {peak} bytes"


@pytest.mark.parametrize(
    ("prefix", "what"),
    [("", "goes on past 1000000 bytes"), ("/declared", f"declares {HUGE} bytes")],
    ids=["no-length", "declared-length"],
)
async def test_a_media_download_stops_at_its_size_cap(flood: str, prefix: str, what: str) -> None:
    """A media answer over max_bytes stops with an error naming the limit and how to raise it."""
    base_url = flood
    async with KandinskyClient(api_key=None, max_retries=0) as client:
        with pytest.raises(
            KandinskyMediaError,
            match=rf"^Download of {base_url}{prefix}/v.mp4 for kandinsky-1 {what}, over the "
            r"limit of 1000000 bytes; it was stopped: raise max_media_bytes \(or set "
            r"KANDINSKY_MAX_MEDIA_BYTES\) if the video is this large$",
        ):
            async with client.open_media(
                f"{base_url}{prefix}/v.mp4", request_id="kandinsky-1", max_bytes=1_000_000
            ) as media:
                async for _ in media.chunks():
                    pass


async def test_the_media_cap_comes_from_the_environment(
    flood: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """KANDINSKY_MAX_MEDIA_BYTES sets the cap when no max_bytes is given."""
    base_url = flood
    monkeypatch.setenv("KANDINSKY_MAX_MEDIA_BYTES", "5000")
    async with KandinskyClient(api_key=None, max_retries=0) as client:
        with pytest.raises(KandinskyMediaError, match="over the limit of 5000 bytes"):
            async with client.open_media(f"{base_url}/declared/v.mp4") as media:
                async for _ in media.chunks():
                    pass


async def test_clients_load_the_ca_bundle_once_per_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A flow opens a client per task: twenty clients load the certificates once, not twenty
    times (about 30 ms of CPU each), and the shared context still verifies every host."""
    import ssl

    from prefect_kandinsky.gateway import tls

    loads: list[object] = []
    load = ssl.SSLContext.load_verify_locations

    def counted(context: ssl.SSLContext, *args: Any, **kwargs: Any) -> None:
        loads.append(args or kwargs)
        load(context, *args, **kwargs)

    monkeypatch.setattr(ssl.SSLContext, "load_verify_locations", counted)
    tls.default_tls_context.cache_clear()
    clients = [KandinskyClient(api_key="a-key") for _ in range(20)]
    for client in clients:
        await client.aclose()

    assert 1 == len(loads)
    shared = tls.default_tls_context()
    assert (ssl.CERT_REQUIRED, True) == (shared.verify_mode, shared.check_hostname)
