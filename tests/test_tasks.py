"""Task logic through ``.fn``, retry conditions and cache keys, without orchestration."""

from __future__ import annotations

from typing import Any
from uuid import uuid4

import pytest
from prefect.client.schemas.objects import TaskRun
from prefect.states import Failed
from pydantic import ValidationError

from prefect_kandinsky import (
    KandinskyAuthenticationError,
    KandinskyBadRequestError,
    KandinskyConnectionError,
    KandinskyCredentials,
    KandinskyGenerationFailedError,
    KandinskyInsufficientBalanceError,
    KandinskyMediaError,
    KandinskyMediaExpiredError,
    KandinskyPermissionDeniedError,
    KandinskyRateLimitError,
    KandinskyServerError,
    KandinskySubmitUncertainError,
    KandinskySystemError,
    KandinskyWaitTimeoutError,
    submit_video,
)
from prefect_kandinsky.tasks import (
    AWAIT_CACHE_POLICY,
    PERSIST_CACHE_POLICY,
    SUBMIT_CACHE_POLICY,
    retry_await,
    retry_persist,
    retry_submit,
)

RID = "kandinsky-5-0-pro-953_abc"


def api_error(cls: type[Exception], code: int) -> Exception:
    return cls("refused", status_code=code)  # type: ignore[call-arg]


async def verdict(condition: Any, exc: BaseException) -> bool:
    state = Failed(data=exc)
    run = TaskRun(task_key="k", dynamic_key="0", flow_run_id=uuid4())
    return bool(await condition(None, run, state))


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (api_error(KandinskyBadRequestError, 400), False),
        (api_error(KandinskyAuthenticationError, 401), False),
        (api_error(KandinskyInsufficientBalanceError, 402), False),
        (api_error(KandinskyPermissionDeniedError, 403), False),
        (api_error(KandinskyServerError, 500), False),
        (KandinskySubmitUncertainError("maybe queued"), False),
        (KandinskyRateLimitError("slow down", retry_after=1.0), True),
        (KandinskyConnectionError("refused"), True),
    ],
)
async def test_submit_is_retried_only_where_no_job_can_exist(
    exc: BaseException, expected: bool
) -> None:
    """400/401/402/403, 5xx and ambiguous failures are never resubmitted."""
    assert expected == await verdict(retry_submit, exc)


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (KandinskyGenerationFailedError("f", request_id=RID), False),
        (KandinskySystemError("e", request_id=RID), False),
        (KandinskyWaitTimeoutError("t", request_id=RID), False),
        (api_error(KandinskyAuthenticationError, 401), False),
        (api_error(KandinskyServerError, 503), True),
        (KandinskyConnectionError("reset"), True),
    ],
)
async def test_wait_is_retried_only_on_transient_faults(exc: BaseException, expected: bool) -> None:
    """A FAILED generation or a refused key is final; a flaky gateway is not."""
    assert expected == await verdict(retry_await, exc)


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (KandinskyMediaExpiredError("gone", status_code=403), False),
        (KandinskyMediaError("exists with other content", request_id=RID), False),
        (KandinskyMediaError("cut short", url="https://cdn/x.mp4"), True),
        (KandinskyMediaError("cdn down", url="https://cdn/x.mp4", status_code=503), True),
        (KandinskyMediaError("refused", url="https://cdn/x.mp4", status_code=400), False),
    ],
)
async def test_persist_retries(exc: BaseException, expected: bool) -> None:
    """An expired link or a destination conflict is not retried; a cut download is."""
    assert expected == await verdict(retry_persist, exc)


async def test_invalid_request_fails_before_any_network_call(kandinsky_emulator: Any) -> None:
    """A bad parameter raises naming the field, and the gateway sees nothing."""
    creds = KandinskyCredentials(
        api_key=kandinsky_emulator.api_key, base_url=kandinsky_emulator.base_url
    )
    with pytest.raises(ValidationError, match="resolution must be one of 256P, 512P, 1024P"):
        await submit_video.fn(
            prompt="p", image_url="https://example.com/a.png", resolution="4K", credentials=creds
        )
    assert 0 == kandinsky_emulator.state.count()


def test_cache_keys_ignore_credentials_and_follow_the_request_id() -> None:
    """Keys depend on what was asked, never on the key used to ask it."""
    from prefect_kandinsky.gateway.models import CompletedVideo, StatusResponse, VideoRequest

    ctx: Any = type("Ctx", (), {"task_run": TaskRun(task_key="k", dynamic_key="0")})()
    request = VideoRequest(prompt="p", image_url="https://example.com/a.png")
    one = KandinskyCredentials(api_key="key-one")
    two = KandinskyCredentials(api_key="key-two")

    def key(policy: Any, **inputs: Any) -> str | None:
        result: str | None = policy.compute_key(ctx, inputs, {})
        return result

    with_idem = {"request": request, "idempotency_key": "slot-1"}
    assert key(SUBMIT_CACHE_POLICY, credentials=one, **with_idem) == key(
        SUBMIT_CACHE_POLICY, credentials=two, **with_idem
    )
    assert key(SUBMIT_CACHE_POLICY, credentials=one, **with_idem) != key(
        SUBMIT_CACHE_POLICY, credentials=one, request=request, idempotency_key="slot-2"
    )
    assert key(AWAIT_CACHE_POLICY, job=RID, credentials=one) == key(
        AWAIT_CACHE_POLICY, job=RID, credentials=two
    )
    status = StatusResponse(request_id=RID, status="COMPLETED")  # type: ignore[arg-type]
    video = CompletedVideo(request_id=RID, status=status, media_urls=["https://cdn/x.mp4"])
    assert key(PERSIST_CACHE_POLICY, video=video, destination="a") != key(
        PERSIST_CACHE_POLICY, video=video, destination="b"
    )
