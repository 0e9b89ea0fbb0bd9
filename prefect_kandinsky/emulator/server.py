"""Running the emulator: background engine, threaded uvicorn server, in-process httpx transport.

* :class:`EmulatorEngine` does what a real gateway does in the background: it moves jobs along
  the clock, fetches input images and renders MP4s in worker threads, and posts webhooks.
* :class:`EmulatorServer` serves the gateway and the CDN on two loopback ports (port 0: the OS
  picks) from one thread, waits until both answer, and stops cleanly::

      with EmulatorServer() as server:
          httpx.post(server.base_url + submit_path(DEFAULT_MODEL_ID), json=...,
                     headers={"Ocp-Apim-Subscription-Key": server.api_key})

* :func:`emulator_transport` (async) and :func:`emulator_sync_transport` serve the same apps
  inside the process, routed by host (``http://gateway.emulator``, ``http://cdn.emulator``)::

      transport = emulator_transport()
      async with httpx.AsyncClient(transport=transport, base_url=transport.base_url) as client:
          ...

  The engine starts with the first request and stops when the transport is closed.

  They serve every fault, ``stall`` included, with one difference in timing: a transport hands
  an answer to the client only once the app has finished it, so a stalled answer (even the
  first bytes of a stalled media body) arrives after the hold, followed by the
  ``httpx.RemoteProtocolError`` a dropped connection gives. Use :class:`EmulatorServer` when the
  client must see those bytes while the answer is still held.

Stopping the server, or closing the sync transport, releases the answers stalls hold at that
moment (see :meth:`EmulatorState.release_stalls`), so neither waits out ``stall_seconds``; the
async transport's stalls run in the caller's own tasks, which can cancel them.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import ssl
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx
import uvicorn
from anyio.from_thread import BlockingPortal, start_blocking_portal
from starlette.types import ASGIApp, Message

from prefect_kandinsky.gateway.models import JobStatus
from prefect_kandinsky.gateway.tls import default_tls_context
from prefect_kandinsky.serving import ServingThread, bind

from .app import DropConnection, create_cdn_app, create_gateway_app
from .state import (
    DEFAULT_CDN_URL,
    EMULATOR_API_KEY,
    SAMPLE_IMAGE_CDN_PATH,
    EmulatorConfig,
    EmulatorState,
    NotFound,
    RenderTask,
    WebhookMessage,
)

logger = logging.getLogger("prefect_kandinsky.emulator")

IN_PROCESS_GATEWAY_URL = "http://gateway.emulator"
"""Gateway origin of the in-process transport."""
IN_PROCESS_CDN_URL = DEFAULT_CDN_URL
"""CDN origin of the in-process transport."""

DEFAULT_RENDER_WORKERS = 2
DEFAULT_TICK_INTERVAL = 0.01
"""Seconds between two background progression ticks."""
DEFAULT_FETCH_TIMEOUT = 10.0
"""Timeout for fetching an input image."""
DEFAULT_WEBHOOK_TIMEOUT = 5.0
"""Timeout of one webhook POST (the gateway wants a 2xx "within a few seconds")."""
DEFAULT_STARTUP_TIMEOUT = 10.0
MAX_IMAGE_BYTES = 50 * 1024 * 1024
"""Input images larger than this fail the job."""
USER_AGENT = "prefect-kandinsky-emulator"


class _FetchError(Exception):
    pass


# --------------------------------------------------------------------------------------------
# Engine
# --------------------------------------------------------------------------------------------


class EmulatorEngine:
    """Background work for an :class:`EmulatorState`: progression ticks, renders, webhooks.

    All threads are daemons and never raise; :meth:`stop` joins them. Restartable.
    """

    def __init__(
        self,
        state: EmulatorState,
        *,
        render_workers: int = DEFAULT_RENDER_WORKERS,
        tick_interval: float = DEFAULT_TICK_INTERVAL,
        fetch_timeout: float = DEFAULT_FETCH_TIMEOUT,
        webhook_timeout: float = DEFAULT_WEBHOOK_TIMEOUT,
    ) -> None:
        if render_workers < 1:
            raise ValueError(f"render_workers must be 1 or more; got {render_workers}")
        self.state = state
        self.render_workers = render_workers
        self.tick_interval = tick_interval
        self.fetch_timeout = fetch_timeout
        self.webhook_timeout = webhook_timeout
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._renders: queue.Queue[RenderTask | None] = queue.Queue()
        self._webhooks: queue.Queue[WebhookMessage | None] = queue.Queue()

    @property
    def running(self) -> bool:
        """Whether the background threads are up."""
        with self._lock:
            return bool(self._threads)

    def start(self) -> None:
        """Start the threads (does nothing if they run)."""
        with self._lock:
            if self._threads:
                return
            self._stop = threading.Event()
            self._renders = queue.Queue()
            self._webhooks = queue.Queue()
            targets = [("tick", self._tick_loop), ("webhooks", self._webhook_loop)]
            targets += [(f"render-{n}", self._render_loop) for n in range(self.render_workers)]
            for name, target in targets:
                thread = threading.Thread(
                    target=target, name=f"kandinsky-emulator-{name}", daemon=True
                )
                thread.start()
                self._threads.append(thread)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the threads; renders in flight finish first (bounded by ``timeout``)."""
        with self._lock:
            threads, self._threads = self._threads, []
            if not threads:
                return
            self._stop.set()
            for pending in (self._renders, self._webhooks):
                with contextlib.suppress(queue.Empty):
                    while True:
                        pending.get_nowait()
            for _ in range(self.render_workers):
                self._renders.put(None)
            self._webhooks.put(None)
        deadline = time.monotonic() + timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def __enter__(self) -> EmulatorEngine:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _tick_loop(self) -> None:
        stop = self._stop
        while not stop.is_set():
            try:
                self.state.tick()
                for task in self.state.take_render_tasks():
                    self._renders.put(task)
                for message in self.state.take_webhooks():
                    self._webhooks.put(message)
            except Exception:  # pragma: no cover - a bug; keep the emulator alive
                logger.exception("emulator tick failed")
            stop.wait(self.tick_interval)

    def _render_loop(self) -> None:
        renders = self._renders
        with httpx.Client(
            timeout=self.fetch_timeout,
            follow_redirects=True,
            headers={"User-Agent": USER_AGENT},
            verify=default_tls_context(),
        ) as client:
            while True:
                task = renders.get()
                if task is None:
                    return
                if task.generation != self.state.generation:
                    continue  # queued before a reset: nobody is waiting for it
                try:
                    self._render(task, client)
                except Exception as exc:  # pragma: no cover - a bug; report it as a system error
                    logger.exception("emulator render of %s failed", task.request_id)
                    self.state.fail_render(
                        task.request_id,
                        f"internal error while rendering: {exc}",
                        status=JobStatus.ERROR,
                        generation=task.generation,
                    )

    def _render(self, task: RenderTask, client: httpx.Client) -> None:
        try:
            image = self._fetch_image(task.image_url, client)
        except _FetchError as exc:
            self.state.fail_render(task.request_id, str(exc), generation=task.generation)
            return
        try:
            from .render import ImageDecodeError, render_video
        except ImportError as exc:  # pragma: no cover - the emulator extra is missing
            self.state.fail_render(
                task.request_id,
                f"the emulator cannot render video without the 'emulator' extra "
                f"(pip install 'prefect-kandinsky[emulator]'): {exc}",
                status=JobStatus.ERROR,
                generation=task.generation,
            )
            return
        try:
            media = render_video(image, height=task.height, seconds=task.seconds)
        except ImageDecodeError as exc:
            self.state.fail_render(
                task.request_id,
                f"could not decode image_url {task.image_url}: {exc}",
                generation=task.generation,
            )
            return
        self.state.finish_render(task.request_id, media, generation=task.generation)

    def _fetch_image(self, url: str, client: httpx.Client) -> bytes:
        prefix = f"could not fetch image_url {url}"
        try:
            asset = self.state.cdn_asset(url)
        except NotFound as exc:
            raise _FetchError(f"{prefix}: 404 Not Found ({exc.message})") from exc
        if asset is not None:
            return asset.content
        if urlsplit(url).scheme not in ("http", "https"):
            raise _FetchError(f"{prefix}: only http and https URLs can be fetched")
        try:
            with client.stream("GET", url) as response:
                if response.status_code >= 400:
                    raise _FetchError(
                        f"{prefix}: HTTP {response.status_code} {response.reason_phrase}"
                    )
                chunks: list[bytes] = []
                size = 0
                for chunk in response.iter_bytes():
                    size += len(chunk)
                    if size > MAX_IMAGE_BYTES:
                        raise _FetchError(f"{prefix}: larger than {MAX_IMAGE_BYTES} bytes")
                    chunks.append(chunk)
                return b"".join(chunks)
        except httpx.HTTPError as exc:
            raise _FetchError(f"{prefix}: {exc or type(exc).__name__}") from exc

    def _webhook_loop(self) -> None:
        webhooks = self._webhooks
        # One client per trusted CA file (``EmulatorConfig.webhook_ca_file`` can change at run
        # time), built on first use.
        clients: dict[str | None, httpx.Client] = {}
        try:
            while True:
                message = webhooks.get()
                if message is None:
                    return
                ca_file = self.state.config.webhook_ca_file
                try:
                    client = clients.get(ca_file)
                    if client is None:
                        client = clients[ca_file] = self._webhook_client(ca_file)
                    response = client.post(message.url, json=message.payload)
                except (httpx.HTTPError, OSError) as exc:  # OSError: an unreadable CA file
                    self.state.record_webhook_delivery(
                        message, response_code=None, error=str(exc) or type(exc).__name__
                    )
                else:
                    self.state.record_webhook_delivery(message, response_code=response.status_code)
        finally:
            for client in clients.values():
                client.close()

    def _webhook_client(self, ca_file: str | None) -> httpx.Client:
        verify = default_tls_context()
        if ca_file is not None:
            verify = ssl.create_default_context()
            verify.load_verify_locations(cafile=ca_file)
        return httpx.Client(
            timeout=self.webhook_timeout, headers={"User-Agent": USER_AGENT}, verify=verify
        )


# --------------------------------------------------------------------------------------------
# Threaded server
# --------------------------------------------------------------------------------------------


def _url(host: str, port: int) -> str:
    if host in ("0.0.0.0", "", "::"):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


class EmulatorServer:
    """The gateway and its CDN over real HTTP, on two loopback ports, in a background thread.

    Example:
        ```python
        with EmulatorServer(config=EmulatorConfig.fast()) as server:
            server.base_url          # http://127.0.0.1:41234 (the gateway)
            server.cdn_url           # http://127.0.0.1:41235 (media, sample image, uploads)
            server.api_key           # "emulator-key"
            server.state.count("submit")
        ```
    """

    def __init__(
        self,
        *,
        state: EmulatorState | None = None,
        config: EmulatorConfig | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        cdn_port: int = 0,
        render_workers: int = DEFAULT_RENDER_WORKERS,
        startup_timeout: float = DEFAULT_STARTUP_TIMEOUT,
        log_level: str = "warning",
    ) -> None:
        if state is not None and config is not None:
            raise ValueError("pass either state or config, not both")
        self.state = state or EmulatorState(config=config)
        self.engine = EmulatorEngine(self.state, render_workers=render_workers)
        self.host = host
        self.port = port
        self.cdn_port = cdn_port
        self.startup_timeout = startup_timeout
        self.log_level = log_level
        self.base_url = ""
        self.cdn_url = ""
        self._serving = ServingThread("kandinsky-emulator-server", "emulator server")

    @property
    def api_key(self) -> str:
        """A subscription key the gateway accepts."""
        keys = self.state.config.api_keys
        if EMULATOR_API_KEY in keys or not keys:
            return EMULATOR_API_KEY
        return sorted(keys)[0]

    @property
    def sample_image_url(self) -> str:
        """The CDN URL of the bundled sample image."""
        return f"{self.cdn_url}{SAMPLE_IMAGE_CDN_PATH}"

    @property
    def running(self) -> bool:
        """Whether the server thread is serving."""
        return self._serving.alive

    def upload(self, content: bytes, content_type: str = "image/png") -> str:
        """Keep an image on the CDN and return its URL, to animate a local file."""
        return self.state.add_upload(content, content_type)

    def reset(self) -> None:
        """Reset jobs, faults, log, wallet and configuration (see ``EmulatorState.reset``)."""
        self.state.reset()

    def configure(self, **changes: Any) -> EmulatorConfig:
        """Change settings now; see :class:`EmulatorConfig`."""
        return self.state.configure(**changes)

    def start(self) -> EmulatorServer:
        """Bind, serve from a thread, and return once both origins accept connections."""
        if self._serving.started:
            raise RuntimeError("the emulator server is already started")
        gateway = bind(self.host, self.port)
        try:
            cdn = bind(self.host, self.cdn_port)
        except OSError:
            gateway.close()
            raise
        self.base_url = _url(self.host, gateway.getsockname()[1])
        self.cdn_url = _url(self.host, cdn.getsockname()[1])
        self.state.cdn_url = self.cdn_url
        pairs = [
            (uvicorn.Server(self._config(create_gateway_app(self.state))), gateway),
            (uvicorn.Server(self._config(create_cdn_app(self.state))), cdn),
        ]
        self.engine.start()
        try:
            self._serving.start(pairs, timeout=self.startup_timeout)
        except BaseException:
            self.engine.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop serving (dropping stalled answers), wait for the thread, stop the engine. Safe to
        call twice."""
        self._serving.request_exit()
        self.state.release_stalls()
        self._serving.join(timeout=10.0)
        self.engine.stop()

    def __enter__(self) -> EmulatorServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"EmulatorServer(base_url={self.base_url!r}, cdn_url={self.cdn_url!r})"

    def _config(self, app: ASGIApp) -> uvicorn.Config:
        return uvicorn.Config(
            app,
            loop="asyncio",
            http="h11",
            ws="none",
            lifespan="off",
            interface="asgi3",
            log_config=None,
            log_level=self.log_level,
            access_log=False,
            proxy_headers=False,
            timeout_graceful_shutdown=2,
        )


# --------------------------------------------------------------------------------------------
# In-process transports
# --------------------------------------------------------------------------------------------


def _origin(url: str | httpx.URL) -> tuple[str, str, int]:
    parsed = httpx.URL(str(url))
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    return parsed.scheme, parsed.host, port


@dataclass
class _Answer:
    status: int = 0
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    chunks: list[bytes] = field(default_factory=list)
    complete: bool = False


async def _call_app(app: ASGIApp, request: httpx.Request, body: bytes) -> _Answer:
    """Run ``app`` for one request; a :class:`DropConnection` leaves the answer incomplete."""
    url = request.url
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": request.method,
        "headers": [(k.lower(), v) for k, v in request.headers.raw],
        "scheme": url.scheme,
        "path": url.path,
        "raw_path": url.raw_path.split(b"?")[0],
        "query_string": url.query,
        "root_path": "",
        "server": (url.host, url.port or (443 if url.scheme == "https" else 80)),
        "client": ("127.0.0.1", 50000),
    }
    answer = _Answer()
    delivered = False

    async def receive() -> Message:
        nonlocal delivered
        if delivered:
            return {"type": "http.disconnect"}
        delivered = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            answer.status = int(message["status"])
            answer.headers = list(message.get("headers", []))
        elif message["type"] == "http.response.body":
            answer.chunks.append(bytes(message.get("body", b"")))
            if not message.get("more_body", False):
                answer.complete = True

    with contextlib.suppress(DropConnection):
        await app(scope, receive, send)
    if not answer.status:
        raise httpx.RemoteProtocolError(
            "Server disconnected without sending a response.", request=request
        )
    return answer


def _short_read(answer: _Answer, request: httpx.Request) -> httpx.RemoteProtocolError:
    received = sum(len(chunk) for chunk in answer.chunks)
    return httpx.RemoteProtocolError(
        f"peer closed connection without sending complete message body: received {received} bytes",
        request=request,
    )


class _AsyncAnswerStream(httpx.AsyncByteStream):
    def __init__(self, answer: _Answer, request: httpx.Request) -> None:
        self.answer = answer
        self.request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.answer.chunks:
            yield chunk
        if not self.answer.complete:
            raise _short_read(self.answer, self.request)


class _SyncAnswerStream(httpx.SyncByteStream):
    def __init__(self, answer: _Answer, request: httpx.Request) -> None:
        self.answer = answer
        self.request = request

    def __iter__(self) -> Iterator[bytes]:
        yield from self.answer.chunks
        if not self.answer.complete:
            raise _short_read(self.answer, self.request)


class _InProcess:
    """What both transports share: the apps by origin, the state, the engine."""

    def __init__(
        self,
        state: EmulatorState | None,
        config: EmulatorConfig | None,
        gateway_url: str,
        cdn_url: str,
        run_engine: bool,
    ) -> None:
        if state is not None and config is not None:
            raise ValueError("pass either state or config, not both")
        self.state = state or EmulatorState(config=config)
        self.base_url = gateway_url.rstrip("/")
        self.cdn_url = cdn_url.rstrip("/")
        self.state.cdn_url = self.cdn_url
        self.engine = EmulatorEngine(self.state) if run_engine else None
        self._apps = {
            _origin(self.base_url): create_gateway_app(self.state),
            _origin(self.cdn_url): create_cdn_app(self.state),
        }

    @property
    def api_key(self) -> str:
        """A subscription key the gateway accepts."""
        keys = self.state.config.api_keys
        return EMULATOR_API_KEY if EMULATOR_API_KEY in keys or not keys else sorted(keys)[0]

    @property
    def sample_image_url(self) -> str:
        """The CDN URL of the bundled sample image."""
        return f"{self.cdn_url}{SAMPLE_IMAGE_CDN_PATH}"

    def upload(self, content: bytes, content_type: str = "image/png") -> str:
        """Keep an image on the CDN and return its URL."""
        return self.state.add_upload(content, content_type)

    def app_for(self, request: httpx.Request) -> ASGIApp:
        if self.engine is not None:
            self.engine.start()
        app = self._apps.get(_origin(request.url))
        if app is None:
            raise httpx.ConnectError(
                f"{request.url.scheme}://{request.url.netloc.decode()} is not served by the "
                f"in-process emulator (gateway {self.base_url}, CDN {self.cdn_url})",
                request=request,
            )
        return app


class _InProcessFacade:
    """What both in-process transports show of their emulator, like :class:`EmulatorServer`."""

    def _attach(self, inner: _InProcess) -> None:
        self._inner = inner
        self.state = inner.state
        self.base_url = inner.base_url
        self.cdn_url = inner.cdn_url
        self.engine = inner.engine

    @property
    def api_key(self) -> str:
        """A subscription key the gateway accepts."""
        return self._inner.api_key

    @property
    def sample_image_url(self) -> str:
        """The CDN URL of the bundled sample image."""
        return self._inner.sample_image_url

    def upload(self, content: bytes, content_type: str = "image/png") -> str:
        """Keep an image on the CDN and return its URL."""
        return self._inner.upload(content, content_type)


class EmulatorTransport(_InProcessFacade, httpx.AsyncBaseTransport):
    """An async httpx transport serving the emulator's gateway and CDN inside the process.

    Attributes mirror :class:`EmulatorServer`: ``state``, ``base_url``, ``cdn_url``,
    ``api_key``, ``sample_image_url``, ``upload()``. Build it with :func:`emulator_transport`.
    """

    def __init__(
        self,
        state: EmulatorState | None = None,
        *,
        config: EmulatorConfig | None = None,
        gateway_url: str = IN_PROCESS_GATEWAY_URL,
        cdn_url: str = IN_PROCESS_CDN_URL,
        run_engine: bool = True,
    ) -> None:
        self._attach(_InProcess(state, config, gateway_url, cdn_url, run_engine))

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        app = self._inner.app_for(request)
        body = await request.aread()
        answer = await _call_app(app, request, body)
        return httpx.Response(
            answer.status, headers=answer.headers, stream=_AsyncAnswerStream(answer, request)
        )

    async def aclose(self) -> None:
        """Stop the background engine (it restarts with the next request)."""
        if self.engine is not None:
            await anyio.to_thread.run_sync(self.engine.stop)

    def close(self) -> None:
        """Stop the background engine from synchronous code."""
        if self.engine is not None:
            self.engine.stop()


class EmulatorSyncTransport(_InProcessFacade, httpx.BaseTransport):
    """The synchronous twin of :class:`EmulatorTransport` (the apps run on a private loop)."""

    def __init__(
        self,
        state: EmulatorState | None = None,
        *,
        config: EmulatorConfig | None = None,
        gateway_url: str = IN_PROCESS_GATEWAY_URL,
        cdn_url: str = IN_PROCESS_CDN_URL,
        run_engine: bool = True,
    ) -> None:
        self._attach(_InProcess(state, config, gateway_url, cdn_url, run_engine))
        self._portal_context: contextlib.AbstractContextManager[BlockingPortal] | None = None
        self._portal: BlockingPortal | None = None
        self._lock = threading.Lock()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        app = self._inner.app_for(request)
        body = request.read()
        answer = self._get_portal().call(_call_app, app, request, body)
        return httpx.Response(
            answer.status, headers=answer.headers, stream=_SyncAnswerStream(answer, request)
        )

    def close(self) -> None:
        """Stop the private event loop (releasing stalled answers, which it would otherwise
        wait for) and the background engine."""
        self.state.release_stalls()
        with self._lock:
            context, self._portal_context, self._portal = self._portal_context, None, None
        if context is not None:
            context.__exit__(None, None, None)
        if self.engine is not None:
            self.engine.stop()

    def _get_portal(self) -> BlockingPortal:
        with self._lock:
            if self._portal is None:
                self._portal_context = start_blocking_portal()
                self._portal = self._portal_context.__enter__()
            return self._portal


def emulator_transport(
    state: EmulatorState | None = None,
    *,
    config: EmulatorConfig | None = None,
    gateway_url: str = IN_PROCESS_GATEWAY_URL,
    cdn_url: str = IN_PROCESS_CDN_URL,
) -> EmulatorTransport:
    """An async httpx transport serving a (new or given) emulator state in this process.

    Requests to ``gateway_url`` reach the gateway app, to ``cdn_url`` the CDN app; any other
    origin raises ``httpx.ConnectError``. Jobs progress, render and post webhooks in background
    threads that start with the first request and stop when the transport is closed.
    """
    return EmulatorTransport(state, config=config, gateway_url=gateway_url, cdn_url=cdn_url)


def emulator_sync_transport(
    state: EmulatorState | None = None,
    *,
    config: EmulatorConfig | None = None,
    gateway_url: str = IN_PROCESS_GATEWAY_URL,
    cdn_url: str = IN_PROCESS_CDN_URL,
) -> EmulatorSyncTransport:
    """The synchronous variant of :func:`emulator_transport`, for ``httpx.Client``."""
    return EmulatorSyncTransport(state, config=config, gateway_url=gateway_url, cdn_url=cdn_url)
