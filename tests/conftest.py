"""Shared fixtures, and the order the files are handed to the xdist workers.

The Prefect API (one test harness per worker, shared by the end-to-end tests) comes from
``prefect_server``; the gateway emulator's fixtures (``kandinsky_emulator``,
``kandinsky_emulator_server``) from the package's own pytest plugin; S3 through moto's server
mode from ``s3_fixtures``; https callbacks from ``callback_fixtures``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from prefect_kandinsky import KandinskyCredentials

pytest_plugins = ["prefect_server", "s3_fixtures", "callback_fixtures"]

HANDED_OUT_FIRST = (
    "test_deployments.py",  # to worker 1: the end-to-end tests, the longest file by far
    "test_cli.py",  # to worker 2
    "test_models.py",  # worker 1's second file (each worker gets two at first): a short one
    "test_batch.py",  # then the longest of the rest, to whichever worker runs out first
    "test_flows.py",
    "test_webhooks.py",
    "test_batch_resume.py",
)
"""The order xdist hands the files out in (``--dist loadfile --no-loadscope-reorder``): the
longest first, so that no worker is still on a long file when the other has run out of work.
The rest follow in their usual order."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Put the files of ``HANDED_OUT_FIRST`` first, in that order; the rest keep theirs."""
    rank = {name: position for position, name in enumerate(HANDED_OUT_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


@pytest.fixture
def credentials(kandinsky_emulator: Any) -> KandinskyCredentials:
    """Credentials pointing at the emulator, which accepts its own key."""
    from prefect_kandinsky import KandinskyCredentials

    return KandinskyCredentials(
        api_key=kandinsky_emulator.api_key, base_url=kandinsky_emulator.base_url
    )
