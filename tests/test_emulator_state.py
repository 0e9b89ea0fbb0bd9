"""The emulator's state machine, driven by a fake clock: no HTTP, no threads, no sleeps."""

from __future__ import annotations

import re
import threading
from decimal import Decimal
from typing import Any

import pytest

from prefect_kandinsky.emulator.state import (
    DEFAULT_BALANCE_USD,
    DEFAULT_STALL_SECONDS,
    EMULATOR_API_KEY,
    BadRequest,
    EmulatorConfig,
    EmulatorState,
    FakeClock,
    Fault,
    InsufficientBalance,
    InvalidTransition,
    MediaExpired,
    ModelNotFound,
    NotFound,
    Unauthorized,
)
from prefect_kandinsky.gateway.models import DEFAULT_MODEL_ID, JobStatus, StatusResponse

IMAGE_URL = "https://images.example.com/dragon.png"
MP4 = b"\x00\x00\x00\x18ftypmp42 pretend video"


def _body(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "prompt": "The camera slowly circles the warrior.",
        "image_url": IMAGE_URL,
        "resolution": "256P",
        "duration": "1s",
    }
    body.update(changes)
    return body


@pytest.fixture
def clock() -> FakeClock:
    """A clock that only moves when the test says so."""
    return FakeClock()


@pytest.fixture
def state(clock: FakeClock) -> EmulatorState:
    """A state with 1 s queued and 2 s processing, on the fake clock."""
    return EmulatorState(
        config=EmulatorConfig(queue_seconds=1.0, processing_seconds=2.0, sync_interval_seconds=0.5),
        clock=clock,
    )


def _render(state: EmulatorState) -> None:
    for task in state.take_render_tasks():
        state.finish_render(task.request_id, MP4, generation=task.generation)


# -- progression -----------------------------------------------------------------------------


def test_job_moves_queued_processing_completed_with_the_clock(
    state: EmulatorState, clock: FakeClock
) -> None:
    """A job stays QUEUED for queue_seconds, PROCESSING for processing_seconds, then completes."""
    job = state.submit(DEFAULT_MODEL_ID, _body())
    assert JobStatus.QUEUED == job.status

    clock.advance(0.9)
    state.tick()
    assert JobStatus.QUEUED == state.job(job.request_id).status

    clock.advance(0.1)
    state.tick()
    assert JobStatus.PROCESSING == state.job(job.request_id).status
    (task,) = state.take_render_tasks()
    assert (job.request_id, IMAGE_URL, 256, 1) == (
        task.request_id,
        task.image_url,
        task.height,
        task.seconds,
    )
    state.finish_render(task.request_id, MP4)

    clock.advance(1.9)
    state.tick()
    assert JobStatus.PROCESSING == state.job(job.request_id).status

    clock.advance(0.1)
    state.tick()
    done = state.job(job.request_id)
    assert JobStatus.COMPLETED == done.status
    assert (JobStatus.QUEUED, JobStatus.PROCESSING, JobStatus.COMPLETED) == done.history
    assert MP4 == state.media(job.request_id)


def test_job_waits_in_processing_until_its_mp4_is_rendered(
    state: EmulatorState, clock: FakeClock
) -> None:
    """COMPLETED is only reported once the MP4 exists, however long processing took."""
    job = state.submit(DEFAULT_MODEL_ID, _body())
    clock.advance(10)
    state.tick()
    assert JobStatus.PROCESSING == state.job(job.request_id).status

    (task,) = state.take_render_tasks()
    state.finish_render(task.request_id, MP4)

    assert JobStatus.COMPLETED == state.job(job.request_id).status


def test_status_payload_has_the_documented_shape_and_both_timestamp_forms(
    state: EmulatorState, clock: FakeClock
) -> None:
    """The status JSON carries the documented fields, ISO-Z created_at and plain updated_at."""
    job = state.submit(DEFAULT_MODEL_ID, _body())
    clock.advance(1.0)
    state.tick()
    _render(state)
    clock.advance(2.0)

    payload = state.status(job.request_id)

    assert {
        "request_id",
        "status",
        "model_id",
        "error",
        "output",
        "created_at",
        "updated_at",
        "completed_at",
    } == set(payload)
    assert "COMPLETED" == payload["status"]
    assert DEFAULT_MODEL_ID == payload["model_id"]
    assert {
        "media_url": [f"http://cdn.emulator/v1/{job.request_id}/output.mp4"],
        "media_type": "video/mp4",
    } == payload["output"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", payload["created_at"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", payload["updated_at"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", payload["completed_at"])
    parsed = StatusResponse.model_validate(payload)
    assert 3.0 == pytest.approx((parsed.completed_at - parsed.created_at).total_seconds(), abs=1)


def test_request_id_is_the_model_id_and_a_time_ordered_uuid(state: EmulatorState) -> None:
    """Request ids look like the gateway's: ``<model>_<uuid version 7>``."""
    job = state.submit(DEFAULT_MODEL_ID, _body())
    assert re.fullmatch(
        rf"{DEFAULT_MODEL_ID}_[0-9a-f]{{8}}-[0-9a-f]{{4}}-7[0-9a-f]{{3}}-[89ab][0-9a-f]{{3}}-[0-9a-f]{{12}}",
        job.request_id,
    )


def test_wait_for_jobs_returns_once_the_jobs_are_submitted(state: EmulatorState) -> None:
    """A thread waiting for two jobs wakes on the second submit and sees both."""
    seen: list[list[str]] = []
    waiter = threading.Thread(target=lambda: seen.append(_ids(state.wait_for_jobs(2))))
    waiter.start()
    submitted = [state.submit(DEFAULT_MODEL_ID, _body()).request_id for _ in range(2)]
    waiter.join(timeout=30)
    assert [submitted] == seen


def test_wait_for_jobs_says_how_many_came_when_it_times_out(state: EmulatorState) -> None:
    """Waiting for a job that never comes raises TimeoutError with the count."""
    state.submit(DEFAULT_MODEL_ID, _body())
    with pytest.raises(TimeoutError, match=r"^1 of 2 job\(s\) submitted after 0.01s$"):
        state.wait_for_jobs(2, timeout=0.01)


def _ids(jobs: list[Any]) -> list[str]:
    return [job.request_id for job in jobs]


def test_manual_mode_moves_only_on_advance(clock: FakeClock) -> None:
    """With manual=True the clock does nothing; advance() moves one step at a time."""
    state = EmulatorState(config=EmulatorConfig(manual=True), clock=clock)
    job = state.submit(DEFAULT_MODEL_ID, _body())
    clock.advance(3600)
    state.tick()
    assert JobStatus.QUEUED == state.job(job.request_id).status

    assert JobStatus.PROCESSING == state.advance(job.request_id).status
    # Asked to complete before the render landed: it stays PROCESSING, then completes.
    assert JobStatus.PROCESSING == state.advance(job.request_id).status
    _render(state)
    assert JobStatus.COMPLETED == state.job(job.request_id).status

    with pytest.raises(InvalidTransition, match="already COMPLETED"):
        state.advance(job.request_id)


def test_advance_to_jumps_straight_to_a_failure_with_its_message(clock: FakeClock) -> None:
    """advance(to=FAILED) ends a QUEUED job at once with the given error."""
    state = EmulatorState(config=EmulatorConfig(manual=True), clock=clock)
    job = state.submit(DEFAULT_MODEL_ID, _body())

    view = state.advance(job.request_id, JobStatus.FAILED, error="content moderation rejected it")

    assert JobStatus.FAILED == view.status
    assert "content moderation rejected it" == view.error
    assert "content moderation rejected it" == state.status(job.request_id)["error"]
    assert None is state.status(job.request_id)["output"]


def test_advance_refuses_to_go_backwards(clock: FakeClock) -> None:
    """advance(to=QUEUED) from PROCESSING is not a move the status flow allows."""
    state = EmulatorState(config=EmulatorConfig(manual=True), clock=clock)
    job = state.submit(DEFAULT_MODEL_ID, _body())
    state.advance(job.request_id)

    with pytest.raises(InvalidTransition, match="cannot move to QUEUED"):
        state.advance(job.request_id, "QUEUED")


def test_a_render_failure_fails_the_job_with_the_reason(
    state: EmulatorState, clock: FakeClock
) -> None:
    """An input image that cannot be fetched ends the job FAILED with that reason."""
    job = state.submit(DEFAULT_MODEL_ID, _body())
    clock.advance(1.0)
    state.tick()
    (task,) = state.take_render_tasks()

    state.fail_render(task.request_id, f"could not fetch image_url {IMAGE_URL}: offline")

    view = state.job(job.request_id)
    assert JobStatus.FAILED == view.status
    assert f"could not fetch image_url {IMAGE_URL}: offline" == view.error


def test_late_render_after_reset_is_ignored(state: EmulatorState, clock: FakeClock) -> None:
    """A render finishing after reset() belongs to a forgotten job and changes nothing."""
    state.submit(DEFAULT_MODEL_ID, _body())
    clock.advance(1.0)
    state.tick()
    (task,) = state.take_render_tasks()
    state.reset()

    state.finish_render(task.request_id, MP4, generation=task.generation)

    assert [] == state.jobs()


# -- planned outcomes and the wallet ---------------------------------------------------------


def test_planned_failure_keeps_the_charge(state: EmulatorState, clock: FakeClock) -> None:
    """A job planned to FAIL ends FAILED with the planned message, and stays paid for."""
    state.plan_outcome(JobStatus.FAILED, "content moderation rejected the prompt")
    job = state.submit(DEFAULT_MODEL_ID, _body(resolution="512P", duration="5s"))
    clock.advance(3.0)
    state.tick()

    view = state.job(job.request_id)
    assert JobStatus.FAILED == view.status
    assert "content moderation rejected the prompt" == view.error
    assert DEFAULT_BALANCE_USD - Decimal("0.20") == state.balance
    assert [] == state.take_render_tasks()  # a planned failure renders nothing


def test_error_is_refunded(state: EmulatorState, clock: FakeClock) -> None:
    """A job ending ERROR ("system error, not charged") gets its debit back."""
    state.plan_outcome("ERROR")
    job = state.submit(DEFAULT_MODEL_ID, _body(resolution="1024P", duration="10s"))
    assert DEFAULT_BALANCE_USD - Decimal("1.20") == state.balance
    clock.advance(3.0)
    state.tick()

    assert JobStatus.ERROR == state.job(job.request_id).status
    assert DEFAULT_BALANCE_USD == state.balance
    assert ["debit", "refund"] == [entry.kind for entry in state.ledger]
    assert [Decimal("-1.20"), Decimal("1.20")] == [entry.amount_usd for entry in state.ledger]


def test_planned_outcomes_are_used_in_order_then_jobs_complete(
    state: EmulatorState, clock: FakeClock
) -> None:
    """plan_outcome(times=2) shapes the next two submits; the third completes normally."""
    state.plan_outcome(JobStatus.FAILED, "nope", times=2)
    jobs = [state.submit(DEFAULT_MODEL_ID, _body()) for _ in range(3)]
    clock.advance(1.0)
    state.tick()
    _render(state)
    clock.advance(2.0)
    state.tick()

    assert [JobStatus.FAILED, JobStatus.FAILED, JobStatus.COMPLETED] == [
        state.job(job.request_id).status for job in jobs
    ]


def test_submit_debits_the_documented_price(state: EmulatorState) -> None:
    """512P for 5 s costs $0.20; 256P has no documented price and costs nothing."""
    state.submit(DEFAULT_MODEL_ID, _body(resolution="512P", duration="5s"))
    state.submit(DEFAULT_MODEL_ID, _body(resolution="256P", duration="10s"))

    assert DEFAULT_BALANCE_USD - Decimal("0.20") == state.balance


def test_insufficient_balance_raises_402_and_queues_nothing(state: EmulatorState) -> None:
    """A request the wallet cannot pay is refused with the documented 402 body."""
    state.set_balance("0.39")

    with pytest.raises(InsufficientBalance) as caught:
        state.submit(DEFAULT_MODEL_ID, _body(resolution="512P", duration="10s"))

    assert 402 == caught.value.status_code
    assert {
        "error": "Insufficient Balance",
        "message": "Your wallet does not have enough balance.",
    } == caught.value.to_json()
    assert [] == state.jobs()
    assert Decimal("0.39") == state.balance


# -- validation ------------------------------------------------------------------------------


def test_unknown_model_is_the_documented_400() -> None:
    """An unknown model id answers 400 "Model not found" naming the model."""
    state = EmulatorState()
    with pytest.raises(ModelNotFound) as caught:
        state.submit("kandinsky-9-ultra-1", _body())
    assert 400 == caught.value.status_code
    assert {
        "error": "Model not found",
        "message": "Model 'kandinsky-9-ultra-1' not found or is disabled",
    } == caught.value.to_json()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"image_url": IMAGE_URL}, "prompt"),
        ({"prompt": "", "image_url": IMAGE_URL}, "prompt"),
        ({"prompt": "p"}, "image_url"),
        ({"prompt": "p", "image_url": ""}, "image_url"),
        (_body(resolution="720P"), "resolution"),
        (_body(duration="11s"), "duration"),
        (_body(num_inference_steps=51), "num_inference_steps"),
        (_body(acceleration="warp"), "acceleration"),
    ],
)
def test_invalid_body_is_a_400_naming_the_field(body: dict[str, Any], field: str) -> None:
    """Missing or out-of-range parameters answer 400 Bad Request with the field's name."""
    state = EmulatorState()
    with pytest.raises(BadRequest, match=field) as caught:
        state.submit(DEFAULT_MODEL_ID, body)
    assert "Bad Request" == caught.value.to_json()["error"]


def test_http_webhook_is_rejected_unless_allowed() -> None:
    """Plain http:// callbacks are refused (HTTPS required) unless allow_http_webhooks is set."""
    state = EmulatorState()
    with pytest.raises(BadRequest, match="X-Webhook-URL must use HTTPS"):
        state.submit(DEFAULT_MODEL_ID, _body(), webhook_url="http://127.0.0.1:9/hook")

    state.configure(allow_http_webhooks=True)
    job = state.submit(DEFAULT_MODEL_ID, _body(), webhook_url="http://127.0.0.1:9/hook")
    assert "http://127.0.0.1:9/hook" == job.webhook_url


def test_keys_are_checked() -> None:
    """Missing and unknown keys are 401; configured keys pass."""
    state = EmulatorState(config=EmulatorConfig(api_keys=frozenset({"k1", EMULATOR_API_KEY})))
    state.check_key("k1")
    state.check_key(EMULATOR_API_KEY)
    with pytest.raises(Unauthorized, match="missing subscription key"):
        state.check_key(None)
    with pytest.raises(Unauthorized, match="invalid subscription key"):
        state.check_key("k2")


# -- faults and the request log --------------------------------------------------------------


def test_faults_are_consumed_in_order_per_route() -> None:
    """Faults on a route are used first-in first-out, each for its number of times."""
    state = EmulatorState()
    state.inject_fault("status", status_code=429, retry_after=2, times=2)
    state.inject_fault("submit", action="drop")
    state.inject_fault("status", status_code=503)

    taken = [state.take_fault("status") for _ in range(4)]

    assert ["429", "429", "503", None] == [fault.label if fault else None for fault in taken]
    assert taken[0] is not None
    assert {"Retry-After": "2"} == taken[0].response_headers()
    assert (
        "Rate limit is exceeded. Try again in 2 seconds." == (taken[0].response_body()["message"])
    )
    assert ["submit"] == [fault.route for fault in state.faults]


def test_truncate_fault_waits_for_a_body_to_cut() -> None:
    """A truncate fault is skipped (kept) for requests without a body, e.g. HEAD."""
    state = EmulatorState()
    state.inject_fault("media", action="truncate")

    assert None is state.take_fault("media", allow_truncate=False)
    fault = state.take_fault("media", allow_truncate=True)
    assert fault is not None
    assert "truncate" == fault.label


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"route": "wallet"}, "fault route must be one of"),
        ({"route": "status", "action": "truncate"}, "truncate faults apply to media only"),
        ({"route": "media", "after_queue": True}, "after_queue applies to submit only"),
        ({"route": "status", "colour": "red"}, "unknown fault field"),
        ({"route": "status", "action": "stall", "stall_seconds": 0}, "fault stall_seconds must"),
        ({"route": "status", "action": "stall", "stall_seconds": -1}, "fault stall_seconds must"),
        ({"route": "submit", "stall_seconds": "soon"}, "fault stall_seconds must"),
        ({"route": "media", "stall_seconds": True}, "fault stall_seconds must"),
        ({"route": "status", "action": "hang"}, "fault action must be one of .*stall"),
    ],
)
def test_invalid_fault_specs_say_what_is_wrong(spec: dict[str, Any], message: str) -> None:
    """Fault specs are validated with a message naming the problem."""
    with pytest.raises(ValueError, match=message):
        Fault.from_json(spec)


def test_stall_fault_round_trips_through_json_with_its_seconds() -> None:
    """A stall fault keeps stall_seconds (30 s unless given) through to_json and from_json."""
    spec = {"route": "submit", "action": "stall", "after_queue": True, "stall_seconds": 0.3}

    fault = Fault.from_json(spec)

    assert ("stall", 0.3, True) == (fault.label, fault.stall_seconds, fault.after_queue)
    assert fault == Fault.from_json(fault.to_json())
    assert {**spec, "times": 1, "truncate_bytes": None} == {
        key: fault.to_json()[key] for key in (*spec, "times", "truncate_bytes")
    }
    assert 30.0 == Fault(route="status", action="stall").stall_seconds


def test_media_stall_waits_for_a_body_to_cut_but_other_stalls_do_not() -> None:
    """A media stall, like a truncate, is kept for a request without a body; a status stall is
    used by the next status request."""
    state = EmulatorState()
    state.inject_fault("media", action="stall", truncate_bytes=10, stall_seconds=0.5)
    state.inject_fault("status", action="stall")

    assert None is state.take_fault("media", allow_truncate=False)
    status = state.take_fault("status", allow_truncate=False)
    media = state.take_fault("media", allow_truncate=True)

    assert status is not None
    assert media is not None
    assert ("stall", DEFAULT_STALL_SECONDS) == (status.label, status.stall_seconds)
    assert ("stall", 10, 0.5) == (media.label, media.truncate_bytes, media.stall_seconds)
    assert [] == state.faults


def test_release_stalls_and_reset_move_the_stall_epoch() -> None:
    """release_stalls() and reset() each move the epoch a held answer watches."""
    state = EmulatorState()
    start = state.stall_epoch

    state.release_stalls()
    released = state.stall_epoch
    state.reset()

    assert (start + 1, start + 2) == (released, state.stall_epoch)


def test_submits_in_flight_are_counted_with_their_maximum() -> None:
    """begin_submit/end_submit count submits in flight and keep the highest count seen."""
    state = EmulatorState()
    tokens = [state.begin_submit() for _ in range(3)]
    state.end_submit(tokens.pop())
    state.end_submit(tokens.pop())
    tokens.append(state.begin_submit())

    assert (2, 3) == (state.submits_in_flight, state.max_submits_in_flight)
    for token in tokens:
        state.end_submit(token)
    assert {"submits_in_flight": 0, "max_submits_in_flight": 3} == state.stats_json()


def test_reset_zeroes_the_submit_counters_and_ignores_older_submits() -> None:
    """After reset() both counters are zero; a submit that began before it is not counted."""
    state = EmulatorState()
    before = state.begin_submit()
    state.begin_submit()

    state.reset()
    after = state.begin_submit()
    state.end_submit(before)

    assert (1, 1) == (state.submits_in_flight, state.max_submits_in_flight)
    state.end_submit(after)
    assert (0, 1) == (state.submits_in_flight, state.max_submits_in_flight)


def test_submit_latency_is_a_setting_in_seconds() -> None:
    """submit_latency_seconds defaults to 0, is set from JSON numbers, and refuses bad values."""
    state = EmulatorState()

    assert 0.0 == state.config.submit_latency_seconds
    assert 0.25 == state.apply_config_json({"submit_latency_seconds": 0.25}).submit_latency_seconds
    assert 0.25 == state.config.to_json()["submit_latency_seconds"]
    with pytest.raises(BadRequest, match="submit_latency_seconds must be a number of seconds"):
        state.apply_config_json({"submit_latency_seconds": "slow"})
    with pytest.raises(ValueError, match="submit_latency_seconds must be zero or more"):
        EmulatorConfig(submit_latency_seconds=-0.1)


def test_request_log_counts_by_kind_and_records_the_key_header() -> None:
    """count() tallies logged requests by kind, origin and request id."""
    state = EmulatorState()
    state.record_request(
        origin="gateway",
        kind="submit",
        method="POST",
        path="/x",
        status_code=202,
        header_names=["Ocp-Apim-Subscription-Key", "Content-Type"],
        request_id="r1",
    )
    for _ in range(3):
        state.record_request(
            origin="gateway",
            kind="status",
            method="GET",
            path="/v2/requests/status/r1",
            status_code=200,
            header_names=["Ocp-Apim-Subscription-Key"],
            request_id="r1",
        )
    state.record_request(
        origin="cdn",
        kind="media",
        method="GET",
        path="/v1/r1/output.mp4",
        status_code=200,
        header_names=["Range"],
        request_id="r1",
    )

    assert (1, 3, 1, 5) == (
        state.count("submit"),
        state.count("status", request_id="r1"),
        state.count(origin="cdn"),
        state.count(),
    )
    assert [False] == [record.key_present for record in state.requests(origin="cdn")]
    assert {"range"} == state.requests("media")[0].header_names


# -- webhooks, media expiry, reset -----------------------------------------------------------


def test_terminal_webhook_is_queued_once_plus_duplicates(
    state: EmulatorState, clock: FakeClock
) -> None:
    """Terminal mode queues one callback at the end, plus duplicate_webhooks extra copies."""
    state.configure(duplicate_webhooks=2)
    job = state.submit(DEFAULT_MODEL_ID, _body(), webhook_url="https://hooks.example.com/k")
    clock.advance(1.0)
    state.tick()
    _render(state)
    clock.advance(2.0)
    state.tick()

    messages = state.take_webhooks()
    assert 3 == len(messages)
    assert {(job.request_id, JobStatus.COMPLETED, True)} == {
        (m.request_id, m.status, m.terminal) for m in messages
    }
    assert "COMPLETED" == messages[0].payload["status"]


def test_sync_webhooks_report_progress_then_the_terminal_status(
    state: EmulatorState, clock: FakeClock
) -> None:
    """Sync mode posts on every interval and status change, and the terminal status last."""
    state.submit(
        DEFAULT_MODEL_ID,
        _body(),
        webhook_url="https://hooks.example.com/k",
        webhook_mode="sync",
    )
    for _ in range(7):
        clock.advance(0.5)
        state.tick()
        _render(state)

    statuses = [m.status for m in state.take_webhooks()]
    assert JobStatus.COMPLETED == statuses[-1]
    assert 4 <= len(statuses)
    assert {JobStatus.QUEUED, JobStatus.PROCESSING} == set(statuses[:-1])


def test_media_link_expires_after_its_ttl(state: EmulatorState, clock: FakeClock) -> None:
    """With media_ttl_seconds set, the CDN refuses the media once it is older than that."""
    state.configure(media_ttl_seconds=60)
    job = state.submit(DEFAULT_MODEL_ID, _body())
    with pytest.raises(NotFound):
        state.media(job.request_id)
    clock.advance(1.0)
    state.tick()
    _render(state)
    clock.advance(2.0)
    assert MP4 == state.media(job.request_id)

    clock.advance(61)
    with pytest.raises(MediaExpired, match="expired 60s after completion"):
        state.media(job.request_id)


def test_reset_forgets_everything_and_restores_the_baseline(state: EmulatorState) -> None:
    """reset() clears jobs, faults, outcomes, log and wallet, and restores the configuration."""
    state.submit(DEFAULT_MODEL_ID, _body(resolution="512P"))
    state.inject_fault("status")
    state.plan_outcome("ERROR")
    state.configure(manual=True)
    state.record_request(
        origin="gateway", kind="admin", method="GET", path="/", status_code=200, header_names=[]
    )

    state.reset()

    assert ([], [], [], 0, [], DEFAULT_BALANCE_USD, False) == (
        state.jobs(),
        state.faults,
        state.planned_outcomes,
        state.count(),
        state.ledger,
        state.balance,
        state.config.manual,
    )


def test_uploads_live_on_the_cdn() -> None:
    """An uploaded image gets a CDN URL whose asset the state can resolve."""
    state = EmulatorState(cdn_url="http://cdn.test")
    url = state.add_upload(b"\x89PNG...", "image/png")

    assert url.startswith("http://cdn.test/uploads/")
    asset = state.cdn_asset(url)
    assert asset is not None
    assert b"\x89PNG..." == asset.content
    assert None is state.cdn_asset("https://elsewhere.example.com/a.png")
    with pytest.raises(BadRequest, match="image/"):
        state.add_upload(b"text", "text/plain")
