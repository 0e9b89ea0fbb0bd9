"""The suite's Prefect API: Prefect's test harness, on a database migrated once per run.

A Prefect server migrating a new SQLite database spends about 7 s of CPU on it, out of about
15 s for its whole start, and every xdist worker starts one. The first worker's harness
migrates its database as usual; once it answers, a copy of that database becomes the run's
template, and every other worker's harness starts on a copy of the template, where its
start-up migration finds nothing left to do. A file lock makes the others wait for the
template rather than migrate one more database each.

``prefect_test_harness`` makes its database in a folder of its own (``mkdtemp``), so the copy
is put there as that folder is made. Should Prefect ever name the file otherwise, the copy is
simply not used and the harness migrates a new database, as it always did: slower, not wrong.

Loaded by ``tests/conftest.py`` (``pytest_plugins``); the harness and Prefect's server are
imported only when a test asks for ``prefect_api``, so the xdist controller never imports them.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from unittest import mock

import pytest

HARNESS_DATABASE = "prefect-test.db"
"""The file name ``prefect_test_harness`` gives its database inside its own folder."""


def shared_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder every xdist worker of this run shares (this run's own folder without xdist)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def copy_database(source: Path, target: Path) -> None:
    """A consistent copy of SQLite database ``source``, also while a server writes to it."""
    origin = sqlite3.connect(source)
    try:
        copy = sqlite3.connect(target)
        try:
            origin.backup(copy)
        finally:
            copy.close()
    finally:
        origin.close()


@contextmanager
def migrated_once(folder: Path) -> Iterator[None]:
    """While entered, a harness starting makes its database from this run's template in
    ``folder``; without one yet, the harness migrates its own, and the template is copied from
    it on the way out (the harness has started by then), while the others wait."""
    from prefect import __version__

    template = folder / f"prefect-template-{__version__}.db"
    made: list[Path] = []

    def mkdtemp(*args: object, **kwargs: object) -> str:
        harness_folder = Path(tempfile.mkdtemp(*args, **kwargs))  # type: ignore[call-overload]
        if template.exists():
            copy_database(template, harness_folder / HARNESS_DATABASE)
        made.append(harness_folder / HARNESS_DATABASE)
        return str(harness_folder)

    with (folder / "prefect-template.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if template.exists():  # the others need not wait for this harness
            fcntl.flock(lock, fcntl.LOCK_UN)
        with mock.patch("prefect.testing.utilities.mkdtemp", mkdtemp):
            yield
        if not template.exists() and made and made[0].exists():
            partial = template.with_suffix(".partial")
            copy_database(made[0], partial)
            partial.rename(template)


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A real Prefect API (the test harness), started once, with results in a temp folder.

    Its event persister writes every 0.5 s instead of 5 s, so a test that reads events back
    from the API waits for them a tenth as long. A deployment whose concurrency slot is taken
    tries again after 1 s rather than 30 s.

    The API is plain HTTP on 127.0.0.1, yet every Prefect client (Prefect makes one per flow
    run, and more) loads a CA bundle into a TLS context of its own: about 30 ms of CPU each.
    The suite's clients load a one-certificate file instead.
    """
    import trustme
    from prefect.settings import (
        PREFECT_API_SSL_CERT_FILE,
        PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW,
        PREFECT_RESULTS_LOCAL_STORAGE_PATH,
        PREFECT_SERVER_ANALYTICS_ENABLED,
        PREFECT_SERVER_DEPLOYMENTS_CONCURRENCY_SLOT_WAIT_SECONDS,
        PREFECT_SERVER_SERVICES_EVENT_PERSISTER_FLUSH_INTERVAL,
        temporary_settings,
    )
    from prefect.testing.utilities import prefect_test_harness

    results = tmp_path_factory.mktemp("prefect-results")
    one_certificate = tmp_path_factory.mktemp("prefect-api-tls") / "ca.pem"
    trustme.CA().cert_pem.write_to_path(str(one_certificate))
    with ExitStack() as stack:
        stack.enter_context(
            temporary_settings(
                {
                    PREFECT_RESULTS_LOCAL_STORAGE_PATH: results,
                    PREFECT_API_SSL_CERT_FILE: str(one_certificate),
                    PREFECT_SERVER_ANALYTICS_ENABLED: False,
                    PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW: "ignore",
                    PREFECT_SERVER_SERVICES_EVENT_PERSISTER_FLUSH_INTERVAL: 0.5,
                    PREFECT_SERVER_DEPLOYMENTS_CONCURRENCY_SLOT_WAIT_SECONDS: 1,
                }
            )
        )
        with migrated_once(shared_folder(tmp_path_factory)):  # only while the harness starts
            stack.enter_context(prefect_test_harness(server_startup_timeout=120))
        yield
