"""pytest fixtures for testing code against the Kandinsky gateway emulator.

Installed with prefect-kandinsky (a ``pytest11`` entry point), so any project can use them:

* ``kandinsky_emulator_server`` (session): one :class:`EmulatorServer` on two loopback ports
  with fast timings (0.05 s queued, 0.1 s processing), started once per test session.
* ``kandinsky_emulator`` (function): the same server, reset before the test: no jobs, faults,
  planned outcomes, logged requests or webhook deliveries; a full wallet ($10); fast timings.
* ``kandinsky_emulator_transport`` (function): an in-process async httpx transport over a
  fresh emulator (``http://gateway.emulator``, ``http://cdn.emulator``), no sockets.

Example:
    ```python
    import httpx
    from prefect_kandinsky.gateway.models import DEFAULT_MODEL_ID, submit_path


    def test_my_flow_survives_a_rate_limit(kandinsky_emulator):
        kandinsky_emulator.state.inject_fault("status", status_code=429, retry_after=0.1)
        kandinsky_emulator.state.plan_outcome("FAILED", "content moderation rejected the prompt")

        run_my_flow(
            base_url=kandinsky_emulator.base_url,
            api_key=kandinsky_emulator.api_key,
            image_url=kandinsky_emulator.sample_image_url,
        )

        assert 1 == kandinsky_emulator.state.count("submit")
        assert not any(r.key_present for r in kandinsky_emulator.state.requests(origin="cdn"))
    ```

Out of process (a flow run by a worker), drive the same server through its admin routes,
e.g. ``POST {base_url}/_emulator/faults`` with ``{"route": "status", "status_code": 503}``,
sending its key as for the gateway (``Ocp-Apim-Subscription-Key: {api_key}``) and JSON
bodies: the admin routes refuse requests without the key and bodies a cross-site form could
send.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from .server import EmulatorServer, EmulatorTransport


@pytest.fixture(scope="session")
def kandinsky_emulator_server() -> Iterator[EmulatorServer]:
    """One emulator server (gateway + CDN on loopback) for the whole session, fast timings."""
    from .server import EmulatorServer
    from .state import EmulatorConfig

    with EmulatorServer(config=EmulatorConfig.fast()) as server:
        yield server


@pytest.fixture
def kandinsky_emulator(kandinsky_emulator_server: EmulatorServer) -> EmulatorServer:
    """The session's emulator server, reset to a clean state with fast timings."""
    kandinsky_emulator_server.reset()
    return kandinsky_emulator_server


@pytest.fixture
def kandinsky_emulator_transport() -> Iterator[EmulatorTransport]:
    """A fresh in-process emulator behind an async httpx transport, fast timings."""
    from .server import emulator_transport
    from .state import EmulatorConfig

    transport = emulator_transport(config=EmulatorConfig.fast())
    try:
        yield transport
    finally:
        transport.close()
