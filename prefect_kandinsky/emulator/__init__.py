"""An offline emulator of the Kandinsky 5.0 Pro gateway, for development and tests.

It speaks the documented contract over real HTTP (paths, headers, status codes, bodies,
webhooks, a wallet), renders real H.264 MP4s from the input image, injects faults on request,
and ships pytest fixtures (``kandinsky_emulator``; see ``pytest_plugin``).

Layout, like moto: ``state`` is the pure state machine (no HTTP), a facade over its parts:
``config`` (settings and constants), ``errors`` (the gateway's error answers), ``faults``
(faults and outcomes planned by tests), ``jobs`` (a job's record, the clock, request ids),
``progression`` (how jobs move), ``records`` (snapshots and logs) and ``wallet`` (balance and
ledger). ``app`` is the thin HTTP
layer (a gateway app and a CDN app on separate origins), ``render`` the MP4 maker, ``server``
the runners (a threaded uvicorn server and in-process httpx transports).

Three ways to use it:

```python
# 1. In process, no sockets:
transport = emulator_transport()
async with httpx.AsyncClient(transport=transport) as client: ...

# 2. Over loopback HTTP, from a background thread:
with EmulatorServer() as server:
    print(server.base_url, server.cdn_url, server.api_key)

# 3. From a shell:  python -m prefect_kandinsky.emulator --port 8080
```

Each name below is imported from its module on first access, so importing this package (or
its pytest plugin) loads no uvicorn, starlette, httpx or PyAV until a fixture or a name that
needs them is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prefect_kandinsky.lazy import lazy_exports

if TYPE_CHECKING:
    from prefect_kandinsky.assets import SAMPLE_IMAGE_PATH, sample_image_bytes

    from .app import ADMIN_ROUTES, API_KEY_HEADER, create_cdn_app, create_gateway_app
    from .render import FPS, VideoFacts, frame_count, output_size, probe_video, render_video
    from .server import (
        IN_PROCESS_CDN_URL,
        IN_PROCESS_GATEWAY_URL,
        EmulatorEngine,
        EmulatorServer,
        EmulatorSyncTransport,
        EmulatorTransport,
        emulator_sync_transport,
        emulator_transport,
    )
    from .state import (
        EMULATOR_API_KEY,
        SAMPLE_IMAGE_CDN_PATH,
        EmulatorConfig,
        EmulatorState,
        FakeClock,
        Fault,
        GatewayError,
        JobView,
        LedgerEntry,
        Outcome,
        RequestRecord,
        WebhookDelivery,
    )

# A new public name goes in three places: the imports above, this mapping and ``__all__``.
_LAZY: dict[str, str] = {
    "ADMIN_ROUTES": "prefect_kandinsky.emulator.app",
    "API_KEY_HEADER": "prefect_kandinsky.emulator.app",
    "EMULATOR_API_KEY": "prefect_kandinsky.emulator.state",
    "FPS": "prefect_kandinsky.emulator.render",
    "IN_PROCESS_CDN_URL": "prefect_kandinsky.emulator.server",
    "IN_PROCESS_GATEWAY_URL": "prefect_kandinsky.emulator.server",
    "SAMPLE_IMAGE_CDN_PATH": "prefect_kandinsky.emulator.state",
    "SAMPLE_IMAGE_PATH": "prefect_kandinsky.assets",
    "EmulatorConfig": "prefect_kandinsky.emulator.state",
    "EmulatorEngine": "prefect_kandinsky.emulator.server",
    "EmulatorServer": "prefect_kandinsky.emulator.server",
    "EmulatorState": "prefect_kandinsky.emulator.state",
    "EmulatorSyncTransport": "prefect_kandinsky.emulator.server",
    "EmulatorTransport": "prefect_kandinsky.emulator.server",
    "FakeClock": "prefect_kandinsky.emulator.state",
    "Fault": "prefect_kandinsky.emulator.state",
    "GatewayError": "prefect_kandinsky.emulator.state",
    "JobView": "prefect_kandinsky.emulator.state",
    "LedgerEntry": "prefect_kandinsky.emulator.state",
    "Outcome": "prefect_kandinsky.emulator.state",
    "RequestRecord": "prefect_kandinsky.emulator.state",
    "VideoFacts": "prefect_kandinsky.emulator.render",
    "WebhookDelivery": "prefect_kandinsky.emulator.state",
    "create_cdn_app": "prefect_kandinsky.emulator.app",
    "create_gateway_app": "prefect_kandinsky.emulator.app",
    "emulator_sync_transport": "prefect_kandinsky.emulator.server",
    "emulator_transport": "prefect_kandinsky.emulator.server",
    "frame_count": "prefect_kandinsky.emulator.render",
    "output_size": "prefect_kandinsky.emulator.render",
    "probe_video": "prefect_kandinsky.emulator.render",
    "render_video": "prefect_kandinsky.emulator.render",
    "sample_image_bytes": "prefect_kandinsky.assets",
}
"""Where each public name lives: imported from that module on first access."""

__all__ = [
    "ADMIN_ROUTES",
    "API_KEY_HEADER",
    "EMULATOR_API_KEY",
    "FPS",
    "IN_PROCESS_CDN_URL",
    "IN_PROCESS_GATEWAY_URL",
    "SAMPLE_IMAGE_CDN_PATH",
    "SAMPLE_IMAGE_PATH",
    "EmulatorConfig",
    "EmulatorEngine",
    "EmulatorServer",
    "EmulatorState",
    "EmulatorSyncTransport",
    "EmulatorTransport",
    "FakeClock",
    "Fault",
    "GatewayError",
    "JobView",
    "LedgerEntry",
    "Outcome",
    "RequestRecord",
    "VideoFacts",
    "WebhookDelivery",
    "create_cdn_app",
    "create_gateway_app",
    "emulator_sync_transport",
    "emulator_transport",
    "frame_count",
    "output_size",
    "probe_video",
    "render_video",
    "sample_image_bytes",
]


if not TYPE_CHECKING:
    # Hidden from type checkers, which read the imports above instead: a misspelt name stays
    # an error for mypy and IDEs rather than becoming ``Any``.
    __getattr__, __dir__ = lazy_exports(globals(), _LAZY)
