"""An offline emulator of the Kandinsky 5.0 Pro gateway, for development and tests.

It speaks the documented contract over real HTTP (paths, headers, status codes, bodies,
webhooks, a wallet), renders real H.264 MP4s from the input image, injects faults on request,
and ships pytest fixtures (``kandinsky_emulator``; see ``pytest_plugin``).

Layout, like moto: ``state`` is the pure state machine, ``app`` the thin HTTP layer (a gateway
app and a CDN app on separate origins), ``render`` the MP4 maker, ``server`` the runners (a
threaded uvicorn server and in-process httpx transports).

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
"""

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
