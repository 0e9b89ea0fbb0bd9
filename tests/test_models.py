"""Request validation, response parsing and pricing."""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal

import pytest
from pydantic import ValidationError

import prefect_kandinsky
from prefect_kandinsky.gateway.models import (
    JobStatus,
    StatusResponse,
    SubmitResponse,
    VideoRequest,
    submit_path,
)
from prefect_kandinsky.gateway.prices import estimate_cost_usd

IMAGE = "https://example.com/dragon-warrior.jpg"


def test_public_names_are_sorted_and_importable() -> None:
    """The package's one public door lists its names sorted, and each one exists."""
    assert sorted(prefect_kandinsky.__all__) == prefect_kandinsky.__all__
    for name in prefect_kandinsky.__all__:
        assert getattr(prefect_kandinsky, name) is not None


def test_defaults_match_the_documentation() -> None:
    """A minimum request takes the documented defaults."""
    request = VideoRequest(prompt="A dragon breathes.", image_url=IMAGE)
    assert {
        "prompt": "A dragon breathes.",
        "image_url": IMAGE,
        "resolution": "512P",
        "duration": "5s",
        "num_inference_steps": 28,
        "acceleration": "regular",
    } == request.to_payload()


@pytest.mark.parametrize(("given", "expected"), [(3, "3s"), ("10s", "10s"), (" 5 s", "5s")])
def test_duration_is_normalised(given: object, expected: str) -> None:
    """An int or a spaced string becomes the gateway's "Ns" form."""
    assert expected == VideoRequest(prompt="p", image_url=IMAGE, duration=given).duration


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("prompt", "   ", "prompt must be a non-empty"),
        ("image_url", "dragon.jpg", "image_url must be an absolute http or https URL; got 'dragon"),
        ("image_url", "ftp://x/y.png", "image_url must be an absolute http or https URL"),
        ("resolution", "720P", "resolution must be one of 256P, 512P, 1024P; got '720P'"),
        ("duration", "4.5s", r"duration must be whole seconds from 1s to 10s.*got '4.5s'"),
        ("duration", 0, r"duration must be whole seconds .*3s, 5s, 10s"),
        ("duration", "11s", "got '11s'"),
        ("num_inference_steps", 19, "num_inference_steps must be an integer from 20 to 50; got 19"),
        ("num_inference_steps", 51, "got 51"),
        ("acceleration", "turbo", "acceleration must be one of regular, fast, ultra_fast"),
    ],
)
def test_invalid_parameters_name_field_value_and_allowed(
    field: str, value: object, message: str
) -> None:
    """Every validation error names the field, the value given and what is allowed."""
    fields: dict[str, object] = {"prompt": "p", "image_url": IMAGE, field: value}
    with pytest.raises(ValidationError, match=message) as caught:
        VideoRequest(**fields)  # type: ignore[arg-type]
    assert field == caught.value.errors()[0]["loc"][0]


def test_unknown_request_field_is_refused() -> None:
    """A misspelt parameter is an error, not silently dropped."""
    with pytest.raises(ValidationError, match="seed"):
        VideoRequest(prompt="p", image_url=IMAGE, seed=1)  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("resolution", "seconds", "expected"),
    [("512P", 5, Decimal("0.20")), ("1024P", 10, Decimal("1.20")), ("256P", 5, None)],
)
def test_price_follows_the_documented_table(
    resolution: str, seconds: int, expected: Decimal | None
) -> None:
    """512P costs $0.04/s, 1024P $0.12/s, and 256P has no documented price."""
    assert expected == estimate_cost_usd(resolution, seconds)


def test_cost_label_says_unknown_for_256p() -> None:
    """An undocumented price is shown as unknown, never as an invented number."""
    request = VideoRequest(prompt="p", image_url=IMAGE, resolution="256P")
    assert "unknown" == request.estimated_cost_label
    assert (
        "$0.36"
        == VideoRequest(
            prompt="p", image_url=IMAGE, resolution="1024P", duration=3
        ).estimated_cost_label
    )


def test_submit_path_drops_the_model_suffix() -> None:
    """The documented endpoint path is derived from the model id."""
    assert "/kandinsky-5-0-pro-953/v1/kandinsky-5-0-pro-request" == submit_path(
        "kandinsky-5-0-pro-953"
    )


def test_status_parses_both_timestamp_forms_and_unknown_fields() -> None:
    """ISO with Z and "YYYY-MM-DD HH:MM:SS" (as UTC) both parse; new fields are kept."""
    status = StatusResponse.model_validate(
        {
            "request_id": "kandinsky-5-0-pro-953_abc",
            "status": "COMPLETED",
            "model_id": "kandinsky-5-0-pro-953",
            "error": None,
            "output": {"media_url": ["https://cdn/x.mp4"], "media_type": "video/mp4"},
            "created_at": "2026-05-22T13:17:32.110Z",
            "updated_at": "2026-05-22 13:19:23",
            "completed_at": "2026-05-22 13:19:23",
            "queue_position": 3,
        }
    )
    assert datetime(2026, 5, 22, 13, 17, 32, 110000, tzinfo=timezone.utc) == status.created_at
    assert datetime(2026, 5, 22, 13, 19, 23, tzinfo=timezone.utc) == status.completed_at
    assert ["https://cdn/x.mp4"] == status.media_urls
    assert 3 == (status.model_extra or {})["queue_position"]
    assert status.status.is_terminal


def test_terminal_statuses() -> None:
    """Only COMPLETED, FAILED and ERROR are terminal."""
    assert {JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.ERROR} == {
        s for s in JobStatus if s.is_terminal
    }


def test_submit_response_tolerates_extra_fields() -> None:
    """The submit answer parses with fields the documentation does not list."""
    answer = SubmitResponse.model_validate(
        {"request_id": "r1", "status": "QUEUED", "polling_url": "https://g/r1", "eta": 9}
    )
    assert "r1" == answer.request_id
