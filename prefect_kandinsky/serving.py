"""Uvicorn servers on sockets bound in advance, served together from one background thread.

The emulator (its gateway and its CDN) and the webhook receiver serve this way, so a test, a
benchmark or a flow can start them in-process, know their ports before the first request, and
stop them for certain. Binding first is what makes port 0 usable: the port is known before the
thread starts, and no other process can take it meanwhile.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import uvicorn


def bind(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` (0: any free port), not yet listening."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio only sets TCP_NODELAY on sockets that say so, and without
    # it every keep-alive answer waits ~40 ms for a delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


class ServingThread:
    """Serve ``uvicorn.Server`` objects, each on its own bound socket, from one daemon thread.

    ``start`` returns once every server accepts connections, or stops them all and raises.
    ``request_exit`` then ``join`` stop them: uvicorn finishes the requests it has accepted
    (up to its graceful-shutdown timeout) before the thread ends and the sockets close.
    """

    def __init__(self, name: str, what: str) -> None:
        self.name = name
        self.what = what
        self._pairs: list[tuple[uvicorn.Server, socket.socket]] = []
        self._thread: threading.Thread | None = None
        self._failure: BaseException | None = None

    @property
    def started(self) -> bool:
        """Whether ``start`` was called and ``join`` not yet."""
        return self._thread is not None

    @property
    def alive(self) -> bool:
        """Whether the thread is serving."""
        return self._thread is not None and self._thread.is_alive()

    def start(self, pairs: list[tuple[uvicorn.Server, socket.socket]], *, timeout: float) -> None:
        """Serve each server on its socket; ``join`` closes the sockets (so does a failure)."""
        if self._thread is not None:
            raise RuntimeError(f"the {self.what} is already started")
        self._pairs = pairs
        self._failure = None
        self._thread = threading.Thread(target=self._serve, name=self.name, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not all(server.started for server, _ in pairs):
            if not self._thread.is_alive() or time.monotonic() > deadline:
                failure = self._failure
                self.request_exit()
                self.join(timeout=10.0)
                raise RuntimeError(
                    f"the {self.what} did not start within {timeout}s"
                    + (f": {failure}" if failure else "")
                ) from failure
            time.sleep(0.005)

    def request_exit(self) -> None:
        """Ask every server to stop accepting and finish; returns at once."""
        for server, _ in self._pairs:
            server.should_exit = True

    def join(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for the thread, then close the sockets. Idempotent."""
        if self._thread is not None:
            self._thread.join(timeout=timeout)
            self._thread = None
        for _, sock in self._pairs:
            sock.close()
        self._pairs = []

    def _serve(self) -> None:
        async def serve_all() -> None:
            await asyncio.gather(*(server.serve(sockets=[sock]) for server, sock in self._pairs))

        try:
            asyncio.run(serve_all())
        except BaseException as exc:  # pragma: no cover - reported by start()
            self._failure = exc
