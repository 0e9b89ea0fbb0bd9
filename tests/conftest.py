"""Shared fixtures, and the order the files are handed to the xdist workers.

The Prefect API (one test harness per worker, shared by the end-to-end tests) comes from
``prefect_server``; the gateway emulator's fixtures (``kandinsky_emulator``,
``kandinsky_emulator_server``) from the package's own pytest plugin; S3 through moto's server
mode from ``s3_fixtures``; https callbacks from ``callback_fixtures``.
"""

from __future__ import annotations

from typing import Any

import pytest

from prefect_kandinsky import KandinskyCredentials

pytest_plugins = ["prefect_server", "s3_fixtures", "callback_fixtures"]

LONGEST_FIRST = ("test_deployments.py", "test_cli.py", "test_batch.py", "test_flows.py")
"""The files that take longest, handed out first (``--dist loadfile --no-loadscope-reorder``):
started last, the end-to-end tests alone would keep one worker busy long after the other ran
out of work."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Put the files of ``LONGEST_FIRST`` first, in that order; the rest keep theirs."""
    rank = {name: position for position, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


@pytest.fixture
def credentials(kandinsky_emulator: Any) -> KandinskyCredentials:
    """Credentials pointing at the emulator, which accepts its own key."""
    return KandinskyCredentials(
        api_key=kandinsky_emulator.api_key, base_url=kandinsky_emulator.base_url
    )
