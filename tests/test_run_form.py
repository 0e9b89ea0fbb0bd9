"""The deployment run form of generate-video: what Prefect's UI builds from the flow's schema."""

from __future__ import annotations

from typing import Any

from prefect.utilities.callables import parameter_schema

from prefect_kandinsky.flows import generate_video


def properties() -> dict[str, Any]:
    schema: dict[str, Any] = parameter_schema(generate_video.fn).model_dump()
    return schema["properties"]


def test_essential_parameters_come_first() -> None:
    """The form opens with what a run needs; the advanced parameters follow."""
    ordered = sorted(properties().items(), key=lambda item: item[1]["position"])
    assert ["prompt", "image_url", "resolution", "duration", "destination", "credentials"] == [
        name for name, _ in ordered[:6]
    ]


def test_closed_sets_are_dropdowns() -> None:
    """Enums (webhook_mode, wait, resolution, acceleration) render as dropdowns."""
    found = properties()
    assert ["terminal", "sync"] == found["webhook_mode"]["enum"]
    assert ["poll", "events", "suspend"] == found["wait"]["enum"]
    assert ["256P", "512P", "1024P"] == found["resolution"]["enum"]
    assert ["regular", "fast", "ultra_fast"] == found["acceleration"]["enum"]


def test_no_parameter_offers_a_type_none_choice() -> None:
    """Optional text is a plain text box, credentials a block or a name: no "type None"."""
    offering_none = [
        name
        for name, field in properties().items()
        if {"type": "null"} in field.get("anyOf", []) or field.get("type") == "null"
    ]
    assert [] == offering_none
