"""The suite's Prefect API: Prefect's test harness, on a database migrated once per run.

A Prefect server migrating a new SQLite database spends about 7 s of CPU on it, out of about
15 s for its whole start, and every xdist worker starts one. The first worker to get here
migrates a template database (in a subprocess, under a file lock); every harness then starts
on a copy of it, and its start-up migration finds nothing left to do.

``prefect_test_harness`` makes its database in a folder of its own (``mkdtemp``), so the copy
is put there as that folder is made. Should Prefect ever name the file otherwise, the copy is
simply not used and the harness migrates a new database, as it always did: slower, not wrong.

Loaded by ``tests/conftest.py`` (``pytest_plugins``); the harness and Prefect's server are
imported only when a test asks for ``prefect_api``, so a run of the fast tests alone (and the
xdist controller) never imports them.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from unittest import mock

import pytest

HARNESS_DATABASE = "prefect-test.db"
"""The file name ``prefect_test_harness`` gives its database inside its own folder."""

MIGRATE = """
import asyncio
from prefect.server.database import provide_database_interface
from prefect.server.models.block_registration import run_block_auto_registration

async def main() -> None:
    db = provide_database_interface()
    await db.create_db()
    async with await db.session() as session:
        await run_block_auto_registration(session=session)

asyncio.run(main())
"""
"""Migrate the database of ``PREFECT_SERVER_DATABASE_CONNECTION_URL`` and register the block
types, as a server's start-up does."""


def shared_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder every xdist worker of this run shares (this run's own folder without xdist)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def migrated_template(folder: Path) -> Path:
    """A database with Prefect's schema and block types, made once per run in ``folder``."""
    from prefect import __version__

    template = folder / f"prefect-template-{__version__}.db"
    with (folder / "prefect-template.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not template.exists():
            partial = template.with_suffix(".partial")
            partial.unlink(missing_ok=True)
            env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
            env["PREFECT_HOME"] = str(folder / "prefect-template-home")
            env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = f"sqlite+aiosqlite:///{partial}"
            env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
            subprocess.run(
                [sys.executable, "-c", MIGRATE],
                env=env,
                check=True,
                capture_output=True,
                timeout=300,
            )
            copy_database(partial, template)
    return template


def copy_database(source: Path, target: Path) -> None:
    """A consistent copy of SQLite database ``source`` (its write-ahead log included)."""
    with sqlite3.connect(source) as origin, sqlite3.connect(target) as copy:
        origin.backup(copy)
    origin.close()
    copy.close()


@contextmanager
def seeded_harness_folders(template: Path) -> Iterator[None]:
    """While entered, the folder the harness makes for its database holds a copy of
    ``template`` under the harness's database name."""

    def mkdtemp(*args: object, **kwargs: object) -> str:
        folder = tempfile.mkdtemp(*args, **kwargs)  # type: ignore[call-overload]
        copy_database(template, Path(folder) / HARNESS_DATABASE)
        return str(folder)

    with mock.patch("prefect.testing.utilities.mkdtemp", mkdtemp):
        yield


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A real Prefect API (the test harness), started once, with results in a temp folder.

    Its event persister writes every 0.5 s instead of 5 s, so a test that reads events back
    from the API waits for them a tenth as long. A deployment whose concurrency slot is taken
    tries again after 1 s rather than 30 s.
    """
    from prefect.settings import (
        PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW,
        PREFECT_RESULTS_LOCAL_STORAGE_PATH,
        PREFECT_SERVER_ANALYTICS_ENABLED,
        PREFECT_SERVER_DEPLOYMENTS_CONCURRENCY_SLOT_WAIT_SECONDS,
        PREFECT_SERVER_SERVICES_EVENT_PERSISTER_FLUSH_INTERVAL,
        temporary_settings,
    )
    from prefect.testing.utilities import prefect_test_harness

    results = tmp_path_factory.mktemp("prefect-results")
    template = migrated_template(shared_folder(tmp_path_factory))
    with ExitStack() as stack:
        stack.enter_context(
            temporary_settings(
                {
                    PREFECT_RESULTS_LOCAL_STORAGE_PATH: results,
                    PREFECT_SERVER_ANALYTICS_ENABLED: False,
                    PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW: "ignore",
                    PREFECT_SERVER_SERVICES_EVENT_PERSISTER_FLUSH_INTERVAL: 0.5,
                    PREFECT_SERVER_DEPLOYMENTS_CONCURRENCY_SLOT_WAIT_SECONDS: 1,
                }
            )
        )
        with seeded_harness_folders(template):  # only while the harness makes its folder
            stack.enter_context(prefect_test_harness(server_startup_timeout=120))
        yield
