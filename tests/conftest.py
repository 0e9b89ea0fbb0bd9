"""Shared fixtures, and the order the files are handed to the xdist workers.

The Prefect API (one test harness per worker, shared by the end-to-end tests) comes from
``prefect_server``; the end-to-end tests' deployments and workers from
``deployment_fixtures``; the gateway emulator's fixtures (``kandinsky_emulator``,
``kandinsky_emulator_server``) from the package's own pytest plugin; S3 through moto's server
mode from ``s3_fixtures``; https callbacks from ``callback_fixtures``.
"""

from __future__ import annotations

import compileall
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from prefect_kandinsky import KandinskyCredentials

pytest_plugins = ["prefect_server", "deployment_fixtures", "s3_fixtures", "callback_fixtures"]

HANDED_OUT_FIRST = (
    "test_deployments.py",  # worker 1: the end-to-end tests, which mostly wait on processes
    "test_cli.py",  # worker 2: the command line's subprocesses
    "test_batch.py",  # worker 3
    "test_deployments_batches.py",  # worker 1 again (each worker gets two files at first):
    # the other end-to-end tests, on the same deployments and process workers
    "test_flows.py",  # then the longest of the rest, to whichever worker runs out first
    "test_webhooks.py",
    "test_batch_resume.py",
    "test_batch_adoption.py",
    "test_artifacts.py",
)
"""The order xdist hands the files out in (``-n 3 --dist loadfile --no-loadscope-reorder``):
the longest first, so that no worker is still on a long file when the others have run out of
work, and both end-to-end files on one worker, which deploys once. The rest follow in their
usual order."""


def pytest_configure(config: pytest.Config) -> None:
    """Compile the package and the flows once, before any test starts an interpreter.

    The suite starts about fifty interpreters (flow runs, workers, the command line). In a
    shell that exports ``PYTHONDONTWRITEBYTECODE`` none of them writes bytecode, so each one
    compiled the package's sources again, about 0.25 s of CPU every time; compiled here once
    (0.2 s), they all read it. Only the controller does it: xdist's workers start after it.
    """
    if not hasattr(config, "workerinput"):
        root = Path(__file__).resolve().parents[1]
        for folder in ("prefect_kandinsky", "flows"):
            compileall.compile_dir(root / folder, quiet=1)


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
