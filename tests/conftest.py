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

END_TO_END = ("test_deployments.py", "test_deployments_batches.py")
"""The files whose end-to-end tests share one set of deployments and process workers: xdist
hands them to one worker as one unit (see ``pytest_xdist_make_scheduler``), which deploys
once."""

HANDED_OUT_FIRST = (
    *END_TO_END,  # one worker: mostly waiting on processes; its harness migrates the template
    "test_emulator_http.py",  # the other two: files without a Prefect API while the
    "test_import.py",  # template database is being migrated, so that no core idles
    "test_storage.py",
    "test_client.py",
    "test_cli.py",  # then the longest first, so that no worker is still on a long file
    "test_batch.py",  # when the others have run out of work
    "test_flows.py",
    "test_batch_resume.py",
    "test_batch_adoption.py",
    "test_webhooks.py",
    "test_artifacts.py",
)
"""The order xdist hands the files out in (``-n 3 --dist loadfile --no-loadscope-reorder``):
each worker takes the next file when it has two tests left. The rest follow in their usual
order."""


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """``--dist loadfile``, with the ``END_TO_END`` files one unit of work, and no other file
    queued behind them: they are the run's longest chain, so their worker takes more work only
    once they are done."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class EndToEndTogether(LoadFileScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            scope: str = super()._split_scope(nodeid)
            return "end-to-end" if Path(scope).name in END_TO_END else scope

        def _reschedule(self, node: Any) -> None:
            end_to_end = self.assigned_work.get(node, {}).get("end-to-end", {})
            if not all(end_to_end.values()) and self.workqueue:
                return
            super()._reschedule(node)

    return EndToEndTogether(config, log)


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
