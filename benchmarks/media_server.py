"""A local stand-in for the media CDN: N bytes on 127.0.0.1, with Range and a one-time cut.

The body is a seeded 1 MiB random block repeated, so nothing of size N is ever held in memory
(by the server or here) and its SHA-256 is known in advance. Two kinds of path:

- ``/media/<name>.mp4``: the whole body (200), or the asked-for range (206).
- ``/cut-once/<name>.mp4``: the first GET of ``<name>`` declares the full ``Content-Length``,
  sends half of the body and closes the connection; later GETs (Range or not) are served whole.

Every byte written to a socket is counted per name, so a benchmark can say how many bytes a
download strategy pulled over the wire.
"""

from __future__ import annotations

import hashlib
import random
import re
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType

BLOCK = 1024 * 1024
"""Size of the repeated random block, and of one socket write."""
_PATH_RE = re.compile(r"^/(?P<kind>media|cut-once)/(?P<name>[A-Za-z0-9_-]+)\.mp4$")
_RANGE_RE = re.compile(r"^bytes=(\d+)-(\d*)$")


@dataclass
class NameStats:
    """What the server sent for one name."""

    requests: int = 0
    range_requests: int = 0
    bytes_sent: int = 0
    cuts: int = 0


@dataclass
class _Shared:
    size: int
    block: bytes
    lock: threading.Lock = field(default_factory=threading.Lock)
    stats: dict[str, NameStats] = field(default_factory=dict)


def _block(seed: int) -> bytes:
    return random.Random(seed).randbytes(BLOCK)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_HEAD(self) -> None:
        self._answer(send_body=False)

    def do_GET(self) -> None:
        self._answer(send_body=True)

    def _answer(self, *, send_body: bool) -> None:
        shared = self.server.shared
        match = _PATH_RE.match(self.path)
        if match is None:
            self.send_error(404)
            return
        name, size = match["name"], shared.size
        start, end = 0, size - 1
        ranged = _RANGE_RE.match(self.headers.get("Range", "").replace(" ", ""))
        if ranged:
            start = int(ranged[1])
            end = min(int(ranged[2]), size - 1) if ranged[2] else size - 1
            if start >= size or end < start:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
        with shared.lock:
            stats = shared.stats.setdefault(name, NameStats())
            stats.requests += 1
            stats.range_requests += bool(ranged)
            cut = send_body and match["kind"] == "cut-once" and stats.cuts == 0
            stats.cuts += cut
        length = end - start + 1
        self.send_response(206 if ranged else 200)
        self.send_header("Content-Type", "video/mp4")
        self.send_header("Content-Length", str(length))
        self.send_header("Accept-Ranges", "bytes")
        if ranged:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        if not send_body:
            return
        stop = start + (length // 2 if cut else length)
        doubled = memoryview(shared.block + shared.block)
        offset = start
        try:
            while offset < stop:
                n = min(BLOCK, stop - offset)
                at = offset % BLOCK
                self.wfile.write(doubled[at : at + n])
                offset += n
                with shared.lock:
                    stats.bytes_sent += n
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
            return
        if cut:
            # Declared the full length, sent half: the client sees a short body.
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, shared: _Shared) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.shared = shared


class MediaServer:
    """Serves ``size`` bytes from a background thread on a port the OS picks.

    Example:
        ```python
        with MediaServer(200 * 1024 * 1024) as server:
            httpx.get(server.url("media", "clip"))
            server.stats("clip").bytes_sent
        ```
    """

    def __init__(self, size: int, *, seed: int = 0) -> None:
        self.size = size
        self._shared = _Shared(size=size, block=_block(seed))
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> MediaServer:
        """Bind and serve from a daemon thread."""
        self._server = _Server(self._shared)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="bench-media-server", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = self._thread = None

    def __enter__(self) -> MediaServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def url(self, kind: str, name: str) -> str:
        """``http://127.0.0.1:<port>/<kind>/<name>.mp4``; kind is ``media`` or ``cut-once``."""
        if self._server is None:
            raise RuntimeError("the media server is not started")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/{kind}/{name}.mp4"

    def stats(self, name: str) -> NameStats:
        """A copy of what was sent for ``name`` so far."""
        with self._shared.lock:
            found = self._shared.stats.get(name, NameStats())
            return NameStats(**vars(found))

    def expected_sha256(self) -> str:
        """Hex SHA-256 of the whole body."""
        digest = hashlib.sha256()
        block, full, rest = self._shared.block, *divmod(self.size, BLOCK)
        for _ in range(full):
            digest.update(block)
        digest.update(block[:rest])
        return digest.hexdigest()
