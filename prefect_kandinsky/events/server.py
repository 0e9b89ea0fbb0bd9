"""Serving the webhook receiver: ``serve`` (blocking, for ``prefect-kandinsky webhooks serve``) and
``WebhookServer`` (a background thread on a loopback port, for tests and notebooks).

uvicorn is imported here only, where a receiver starts.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any
from uuid import UUID

import httpx
from starlette.applications import Starlette

from prefect_kandinsky.credentials import KandinskyCredentials
from prefect_kandinsky.events.receiver import (
    DEFAULT_CONFIRM_ATTEMPTS,
    DEFAULT_CONFIRM_BACKOFF_SECONDS,
    DEFAULT_CONFIRM_WINDOW_SECONDS,
    DEFAULT_DEDUPE_SIZE,
    DEFAULT_DRAIN_TIMEOUT_SECONDS,
    Emit,
    WebhookReceiver,
    create_webhook_app,
)
from prefect_kandinsky.events.tokens import CALLBACK_PATH, callback_url
from prefect_kandinsky.serving import ServingThread, bind

logger = logging.getLogger("prefect_kandinsky.events.receiver")

if TYPE_CHECKING:
    # Imported only where a server starts: every flow imports this module (through waits).
    import uvicorn

DEFAULT_PORT = 8443

DEFAULT_STARTUP_TIMEOUT_SECONDS = 10.0
EVENTS_FLUSH_TIMEOUT_SECONDS = 30.0
"""At shutdown, how long Prefect's events worker may take to send the events still queued."""
GRACEFUL_SHUTDOWN_SECONDS = 5
"""How long uvicorn lets connections finish at shutdown (the accepted work is drained after,
for up to ``drain_timeout``)."""

# --------------------------------------------------------------------------------------------
# Serving
# --------------------------------------------------------------------------------------------


def _uvicorn_config(
    app: Starlette,
    *,
    host: str,
    port: int,
    certfile: str | None,
    keyfile: str | None,
    log_level: str,
    log_config: dict[str, Any] | None,
) -> uvicorn.Config:
    import uvicorn

    if keyfile is not None and certfile is None:
        raise ValueError("keyfile needs a certfile: pass the certificate chain as certfile")
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="asyncio",
        http="h11",
        ws="none",
        lifespan="on",
        access_log=False,  # it would log request paths, and the paths hold tokens
        server_header=False,
        log_level=log_level,
        ssl_certfile=certfile,
        ssl_keyfile=keyfile,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
        log_config=log_config,
    )


def serve(
    credentials: KandinskyCredentials,
    *,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    certfile: str | None = None,
    keyfile: str | None = None,
    emit: Emit | None = None,
    confirm: bool = True,
    dedupe_size: int = DEFAULT_DEDUPE_SIZE,
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT_SECONDS,
    log_level: str = "info",
) -> None:
    """Serve the receiver until interrupted (Ctrl-C or SIGTERM).

    Args:
        credentials: With a ``webhook_secret`` (the same one the submitting flows use).
        host: Interface to bind.
        port: Port to bind.
        certfile: PEM certificate chain for https (may also hold the key).
        keyfile: PEM private key, when not in ``certfile``.
        emit: Called like ``prefect.events.emit_event`` (the default; events go to the
            Prefect API of ``PREFECT_API_URL``).
        confirm: Confirm terminal callbacks by a status read.
        dedupe_size: Deliveries, URL bindings and request progress remembered, each.
        drain_timeout: Seconds the accepted work may take to finish at shutdown.
        log_level: Level of the receiver's and uvicorn's logs.

    Raises:
        ValueError: the credentials have no ``webhook_secret``, or a keyfile has no certfile.
    """
    import uvicorn

    if credentials.webhook_secret is None:
        raise ValueError(
            "The credentials have no webhook_secret: the receiver would refuse every callback. "
            "Set webhook_secret on the KandinskyCredentials block (the flows that submit must "
            "use the same secret)."
        )
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
    logger.setLevel(log_level.upper())
    if certfile is None:
        logger.warning(
            "Serving plain http on %s:%d: the gateway only calls https URLs, so put the "
            "receiver behind a reverse proxy or a tunnel that terminates TLS, or pass "
            "certfile and keyfile",
            host,
            port,
        )
    if emit is None:
        from prefect.settings import PREFECT_API_URL

        api_url = PREFECT_API_URL.value()
        if api_url:
            logger.info("Emitting events to the Prefect API at %s", api_url)
        else:
            logger.warning(
                "PREFECT_API_URL is not set: events go to a temporary local Prefect server that "
                "no automation watches; point PREFECT_API_URL at your Prefect server"
            )
    app = create_webhook_app(
        credentials,
        emit=emit,
        confirm=confirm,
        dedupe_size=dedupe_size,
        drain_timeout=drain_timeout,
    )
    config = _uvicorn_config(
        app,
        host=host,
        port=port,
        certfile=certfile,
        keyfile=keyfile,
        log_level=log_level,
        log_config=uvicorn.config.LOGGING_CONFIG,
    )
    scheme = "https" if certfile else "http"
    logger.info(
        "Receiving Kandinsky callbacks at %s://%s:%d%s/...", scheme, host, port, CALLBACK_PATH
    )
    server = _server_without_reraise(config)
    server.run()
    if emit is None:
        flush_prefect_events()
    logger.info("Stopped receiving callbacks")


def _server_without_reraise(config: uvicorn.Config) -> uvicorn.Server:
    """A uvicorn server that stops on SIGINT/SIGTERM and then returns normally.

    uvicorn raises the captured signal again once it has shut down: a KeyboardInterrupt
    traceback for Ctrl-C, and for SIGTERM a kill by the default handler, before Prefect's
    events worker has sent what the receiver emitted. This one only asks uvicorn to stop
    (stop accepting, finish the connections and the accepted work), so :func:`serve` returns,
    flushes the events and exits 0.
    """
    import uvicorn

    class _Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            stopping = (signal.SIGINT, signal.SIGTERM)
            previous = {sig: signal.signal(sig, self.handle_exit) for sig in stopping}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    return _Server(config)


def flush_prefect_events(timeout: float = EVENTS_FLUSH_TIMEOUT_SECONDS) -> None:
    """Send the events Prefect's events worker still holds, before the process exits.

    ``emit_event`` only queues an event; the worker sends it later, and a process that exits
    first loses it.
    """
    from prefect.events.worker import EventsWorker

    _, pending = EventsWorker.drain_all(timeout=timeout)  # type: ignore[misc]
    if pending:
        logger.error(
            "Prefect's events worker did not send every event within %.0fs: some events may "
            "be lost; read the status of jobs that ended just before the shutdown",
            timeout,
        )


class WebhookServer:
    """The receiver served by uvicorn from a background thread, on a loopback port.

    Example:
        ```python
        with WebhookServer(credentials, certfile="server.pem") as server:
            server.url                      # https://127.0.0.1:41234
            url = server.callback_url(flow_run_id=None)
            server.receiver.in_flight       # callbacks answered, not yet processed
        ```
    """

    def __init__(
        self,
        credentials: KandinskyCredentials,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        certfile: str | None = None,
        keyfile: str | None = None,
        emit: Emit | None = None,
        confirm: bool = True,
        dedupe_size: int = DEFAULT_DEDUPE_SIZE,
        client_transport: httpx.AsyncBaseTransport | None = None,
        confirm_attempts: int = DEFAULT_CONFIRM_ATTEMPTS,
        confirm_backoff: float = DEFAULT_CONFIRM_BACKOFF_SECONDS,
        drain_timeout: float = DEFAULT_DRAIN_TIMEOUT_SECONDS,
        confirm_window: float = DEFAULT_CONFIRM_WINDOW_SECONDS,
        startup_timeout: float = DEFAULT_STARTUP_TIMEOUT_SECONDS,
        log_level: str = "warning",
    ) -> None:
        self.credentials = credentials
        self.app = create_webhook_app(
            credentials,
            emit=emit,
            confirm=confirm,
            dedupe_size=dedupe_size,
            client_transport=client_transport,
            confirm_attempts=confirm_attempts,
            confirm_backoff=confirm_backoff,
            drain_timeout=drain_timeout,
            confirm_window=confirm_window,
        )
        self.receiver: WebhookReceiver = self.app.state.receiver
        self.host = host
        self.port = port
        self.certfile = certfile
        self.keyfile = keyfile
        self.startup_timeout = startup_timeout
        self.log_level = log_level
        self.url = ""
        self._serving = ServingThread("kandinsky-webhook-server", "webhook server")

    def callback_url(self, *, flow_run_id: UUID | str | None, nonce: str | None = None) -> str:
        """A callback URL of this server, signed with the credentials' secret."""
        if self.credentials.webhook_secret is None:
            raise ValueError("the credentials have no webhook_secret to sign callback URLs with")
        return callback_url(
            self.url,
            self.credentials.webhook_secret,
            flow_run_id=flow_run_id,
            nonce=nonce,
            allow_http=self.certfile is None,
        )

    def start(self) -> WebhookServer:
        """Bind, serve from a thread, and return once the server accepts connections."""
        import uvicorn

        if self._serving.started:
            raise RuntimeError("the webhook server is already started")
        config = _uvicorn_config(
            self.app,
            host=self.host,
            port=self.port,
            certfile=self.certfile,
            keyfile=self.keyfile,
            log_level=self.log_level,
            log_config=None,
        )
        sock = bind(self.host, self.port)
        port = sock.getsockname()[1]
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        if ":" in host:
            host = f"[{host}]"
        self.url = f"{'https' if self.certfile else 'http'}://{host}:{port}"
        self._serving.start([(uvicorn.Server(config), sock)], timeout=self.startup_timeout)
        return self

    def stop(self) -> None:
        """Stop serving, finishing the accepted work first (see ``drain_timeout``)."""
        self._serving.request_exit()
        self._serving.join(timeout=self.receiver.drain_timeout + 10.0)

    def __enter__(self) -> WebhookServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"WebhookServer(url={self.url!r})"


__all__ = [
    "CALLBACK_PATH",
    "DEFAULT_DEDUPE_SIZE",
    "DEFAULT_PORT",
    "WebhookReceiver",
    "WebhookServer",
    "callback_url",
    "create_webhook_app",
    "serve",
]
