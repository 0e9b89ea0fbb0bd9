"""Shared fixtures: one Prefect test harness per session, isolated from the user's home.

The gateway emulator's fixtures (``kandinsky_emulator``, ``kandinsky_emulator_server``) come
from the package's own pytest plugin; S3 through moto's server mode from ``s3_fixtures``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from prefect.settings import (
    PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW,
    PREFECT_RESULTS_LOCAL_STORAGE_PATH,
    PREFECT_SERVER_ANALYTICS_ENABLED,
    PREFECT_SERVER_SERVICES_EVENT_PERSISTER_FLUSH_INTERVAL,
    temporary_settings,
)
from prefect.testing.utilities import prefect_test_harness

from prefect_kandinsky import KandinskyCredentials

pytest_plugins = ["s3_fixtures", "callback_fixtures"]


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A real Prefect API (the test harness), started once, with results in a temp folder.

    Its event persister writes every 0.5 s instead of 5 s, so a test that reads events back
    from the API waits for them a tenth as long.
    """
    results = tmp_path_factory.mktemp("prefect-results")
    with (
        temporary_settings(
            {
                PREFECT_RESULTS_LOCAL_STORAGE_PATH: results,
                PREFECT_SERVER_ANALYTICS_ENABLED: False,
                PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW: "ignore",
                PREFECT_SERVER_SERVICES_EVENT_PERSISTER_FLUSH_INTERVAL: 0.5,
            }
        ),
        prefect_test_harness(server_startup_timeout=120),
    ):
        yield


@pytest.fixture
def credentials(kandinsky_emulator: Any) -> KandinskyCredentials:
    """Credentials pointing at the emulator, which accepts its own key."""
    return KandinskyCredentials(
        api_key=kandinsky_emulator.api_key, base_url=kandinsky_emulator.base_url
    )
