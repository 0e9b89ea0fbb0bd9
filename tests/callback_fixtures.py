"""Fixtures for callbacks over real https: a test CA the emulator trusts, and the package's
webhook receiver serving a certificate it signed, emitting events to the test Prefect API.

Loaded by ``tests/conftest.py`` (``pytest_plugins``). Tests sign their callback URLs with
``CALLBACK_SECRET``, the receiver's secret.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from prefect_kandinsky.emulator import EmulatorServer
    from prefect_kandinsky.events.server import WebhookServer

CALLBACK_SECRET = "receiver-secret-for-callback-tests"
"""The webhook secret of the ``receiver`` fixture."""


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A test CA (for the emulator to trust) and a certificate for 127.0.0.1 signed by it."""
    import trustme

    ca = trustme.CA()
    folder = tmp_path_factory.mktemp("tls")
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(
        str(folder / "server.pem")
    )
    return str(folder / "ca.pem"), str(folder / "server.pem")


@pytest.fixture(scope="module")
def receiver(
    kandinsky_emulator_server: EmulatorServer, tls: tuple[str, str], prefect_api: None
) -> Iterator[WebhookServer]:
    """The package's receiver over https, emitting real events to the test Prefect API."""
    from prefect_kandinsky import KandinskyCredentials
    from prefect_kandinsky.events.server import WebhookServer

    credentials = KandinskyCredentials(
        api_key=kandinsky_emulator_server.api_key,
        base_url=kandinsky_emulator_server.base_url,
        webhook_secret=CALLBACK_SECRET,
    )
    with WebhookServer(credentials, certfile=tls[1]) as server:
        yield server
