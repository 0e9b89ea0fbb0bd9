"""The input image check over real HTTP: an image host on 127.0.0.1 and the emulator CDN."""

from __future__ import annotations

import io
import logging
import os
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx
import pytest
from PIL import Image

from prefect_kandinsky.assets import sample_image_bytes
from prefect_kandinsky.gateway.exceptions import KandinskyImageError
from prefect_kandinsky.media.addresses import ALLOW_PRIVATE_IMAGES_ENV
from prefect_kandinsky.media.images import CheckedImage, check_image, check_images, redact_url

PNG = sample_image_bytes()
HTML = b"<!DOCTYPE html>\n<html><body><form>Sign in to continue</form></body></html>\n"
BIG_PNG = PNG + b"\x00" * 200_000
SMALL_MAX_BYTES = 50_000
TINY_TIMEOUT = 0.2
HOLD_SECONDS = 30.0
"""How long the slow, stalled and trickling routes hold a request (released at teardown)."""
FAST_ENOUGH = 5.0
"""A bound on a check cut by ``TINY_TIMEOUT``: far above it, so it holds on a loaded machine,
far below ``HOLD_SECONDS`` and the 10 s default timeout, so it still tells them apart."""


def _jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 120, 40)).save(buffer, "JPEG")
    return buffer.getvalue()


JPEG = _jpeg()

# Magic numbers of the other formats, padded: the check reads only the first bytes.
KINDS: dict[str, bytes] = {
    "gif": b"GIF89a\x10\x00\x10\x00",
    "webp": b"RIFF\x24\x00\x00\x00WEBPVP8 ",
    "bmp": b"BM" + b"\x00" * 12 + (40).to_bytes(4, "little"),
    "tiff": b"II*\x00\x08\x00\x00\x00",
    "avif": b"\x00\x00\x00\x20ftypavif\x00\x00\x00\x00avifmif1miafMA1B",
    "heic": b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic",
    "mp4": b"\x00\x00\x00\x20ftypisom\x00\x00\x02\x00isomiso2avc1mp41",
}


@dataclass
class ImageHost:
    """What the image host saw: the headers of each request, by path."""

    base_url: str
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    release: threading.Event = field(default_factory=threading.Event)

    def url(self, path: str) -> str:
        return self.base_url + path

    def seen(self, path: str) -> list[dict[str, str]]:
        with self.lock:
            return [headers for seen, headers in self.requests if seen == path]


class _Handler(BaseHTTPRequestHandler):
    server: _ImageHTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        host = self.server.host
        path = urlsplit(self.path).path
        with host.lock:
            host.requests.append((path, {k.lower(): v for k, v in self.headers.items()}))
        if path.startswith("/kinds/"):
            self._send(200, "application/octet-stream", KINDS[path.removeprefix("/kinds/")])
        elif path in ROUTES:
            ROUTES[path](self)
        else:
            self._send(404, "text/html", b"<html><body>Not Found</body></html>")

    def _send(
        self,
        code: int,
        content_type: str | None,
        body: bytes,
        *,
        length: bool = True,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.send_response(code)
        if content_type:
            self.send_header("Content-Type", content_type)
        if length:
            self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def stalled_body(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(PNG)))
        self.end_headers()
        self.wfile.flush()
        self.server.host.release.wait(HOLD_SECONDS)

    def trickle(self) -> None:
        self.wfile.write(b"HTTP/1.0 200 OK\r\n")
        for _ in range(int(HOLD_SECONDS / 0.05)):
            self.wfile.write(b"X-Wait: 1\r\n")
            self.wfile.flush()
            if self.server.host.release.wait(0.05):
                return


ROUTES: dict[str, Any] = {
    "/image.png": lambda h: h._send(200, "image/png", PNG),
    "/photo.jpg": lambda h: h._send(200, "image/jpeg", JPEG),
    "/page.html": lambda h: h._send(200, "text/html; charset=utf-8", HTML),
    "/fake.png": lambda h: h._send(200, "image/png", HTML),
    "/data.json": lambda h: h._send(200, "application/json", b'{"error": "no such image"}'),
    "/private.png": lambda h: h._send(
        403, "application/xml", b"<Error><Code>AccessDenied</Code></Error>"
    ),
    "/broken.png": lambda h: h._send(500, "text/plain", b"oops"),
    "/moved.png": lambda h: h._send(
        302, None, b"", headers={"Location": "/image.png", "Set-Cookie": "session=s3cr3t; Path=/"}
    ),
    "/loop.png": lambda h: h._send(302, None, b"", headers={"Location": "/loop.png"}),
    "/to-metadata.png": lambda h: h._send(
        302, None, b"", headers={"Location": "http://169.254.169.254/latest/meta-data/"}
    ),
    "/secret.txt": lambda h: h._send(200, "text/plain", b"prod-admin-role-7Q2x"),
    "/octet.png": lambda h: h._send(200, "binary/octet-stream", PNG),
    "/empty.png": lambda h: h._send(200, "image/png", b""),
    "/vector.svg": lambda h: h._send(
        200, "image/svg+xml", b'<svg xmlns="http://www.w3.org/2000/svg" width="8" height="8"/>'
    ),
    "/big.png": lambda h: h._send(200, "image/png", BIG_PNG),
    "/big-no-length.png": lambda h: h._send(200, "image/png", BIG_PNG, length=False),
    "/slow.png": lambda h: h.server.host.release.wait(HOLD_SECONDS),
    "/stalled.png": lambda h: h.stalled_body(),
    "/trickle.png": lambda h: h.trickle(),
}


class _ImageHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64
    host: ImageHost

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that stops reading early is the normal case here


@pytest.fixture(scope="module")
def image_host() -> Iterator[ImageHost]:
    """An image host on a free port of 127.0.0.1, serving ``ROUTES``."""
    server = _ImageHTTPServer(("127.0.0.1", 0), _Handler)
    server.host = ImageHost(base_url=f"http://127.0.0.1:{server.server_address[1]}")
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server.host
    finally:
        server.host.release.set()
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture(autouse=True)
def private_images_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    """The image host of these tests is on 127.0.0.1: allowed through the opt-in."""
    monkeypatch.setenv(ALLOW_PRIVATE_IMAGES_ENV, "1")


@pytest.fixture
def no_opt_in(monkeypatch: pytest.MonkeyPatch) -> None:
    """No opt-in for private image hosts, as on a worker by default."""
    monkeypatch.delenv(ALLOW_PRIVATE_IMAGES_ENV, raising=False)


@pytest.fixture
def closed_port() -> int:
    """A port of 127.0.0.1 that nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


# -- images that pass -----------------------------------------------------------------------


async def test_png_passes_with_its_kind_type_and_size(image_host: ImageHost) -> None:
    """A PNG passes; its kind comes from the bytes, its size from Content-Length."""
    image = await check_image(image_host.url("/image.png"))

    assert CheckedImage(image_host.url("/image.png"), "image/png", "png", len(PNG)) == image
    assert None is image.content


async def test_read_content_returns_the_whole_image(image_host: ImageHost) -> None:
    """With read_content the image is fetched once and returned whole."""
    image = await check_image(image_host.url("/photo.jpg"), read_content=True)

    assert "jpeg" == image.kind
    assert JPEG == image.content
    assert len(JPEG) == image.size_bytes


async def test_png_bytes_served_as_octet_stream_pass(image_host: ImageHost) -> None:
    """Real image bytes pass whatever generic content type S3 gave them."""
    image = await check_image(image_host.url("/octet.png"))

    assert ("png", "binary/octet-stream") == (image.kind, image.content_type)


async def test_a_redirect_is_followed_to_the_image(image_host: ImageHost) -> None:
    """A redirect to the image passes, and the host's cookie is not sent back."""
    image = await check_image(image_host.url("/moved.png"), read_content=True)

    assert PNG == image.content
    assert image_host.url("/moved.png") == image.url
    assert all("cookie" not in headers for headers in image_host.seen("/image.png"))


@pytest.mark.parametrize("path", ["/big.png", "/big-no-length.png"])
async def test_an_image_larger_than_max_bytes_passes_without_content(
    image_host: ImageHost, path: str
) -> None:
    """An image over max_bytes passes; only its content is left out."""
    image = await check_image(image_host.url(path), read_content=True, max_bytes=SMALL_MAX_BYTES)

    assert "png" == image.kind
    assert None is image.content
    expected_size = len(BIG_PNG) if path == "/big.png" else None
    assert expected_size == image.size_bytes


async def test_a_stalled_body_passes_on_its_image_content_type(image_host: ImageHost) -> None:
    """Headers saying image/png and a body that never comes pass, on the content type."""
    start = time.monotonic()

    image = await check_image(image_host.url("/stalled.png"), timeout=TINY_TIMEOUT)

    assert ("png", len(PNG), None) == (image.kind, image.size_bytes, image.content)
    assert time.monotonic() - start < FAST_ENOUGH


async def test_every_image_kind_is_recognised_and_a_video_is_not(image_host: ImageHost) -> None:
    """GIF, WebP, BMP, TIFF, AVIF and HEIC pass by their magic bytes; an MP4 does not."""
    outcomes = await check_images(image_host.url(f"/kinds/{kind}") for kind in KINDS)

    kinds = {
        url.rpartition("/")[2]: outcome.kind
        for url, outcome in outcomes.items()
        if isinstance(outcome, CheckedImage)
    }
    assert {kind: kind for kind in KINDS if kind != "mp4"} == kinds
    video = outcomes[image_host.url("/kinds/mp4")]
    assert isinstance(video, KandinskyImageError)
    assert "with application/octet-stream (32 bytes), not an image: check the URL" in str(video)


async def test_the_emulator_sample_image_passes_without_the_key(kandinsky_emulator: Any) -> None:
    """The emulator's CDN sample passes, and the CDN never saw the subscription key."""
    image = await check_image(kandinsky_emulator.sample_image_url, read_content=True)

    assert ("png", PNG) == (image.kind, image.content)
    cdn = kandinsky_emulator.state.requests(origin="cdn")
    assert 1 == len(cdn)
    assert not cdn[0].key_present


# -- answers that fail ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "status", "message"),
    [
        ("/missing.jpg", 404, r"answered 404 Not Found: check the URL \(nothing was submitted\)$"),
        (
            "/private.png",
            403,
            r"answered 403 Forbidden: make the image public or pass a presigned URL that has "
            r"not expired \(nothing was submitted\)$",
        ),
        (
            "/broken.png",
            500,
            r"answered 500 Internal Server Error: the image host failed; try again later",
        ),
    ],
    ids=["404", "403", "500"],
)
async def test_an_error_status_fails_naming_the_url_and_the_status(
    image_host: ImageHost, path: str, status: int, message: str
) -> None:
    """404, 403 and 5xx fail with the URL, the status and the way out."""
    url = image_host.url(path)

    with pytest.raises(KandinskyImageError, match=f"^image_url {url} {message}") as caught:
        await check_image(url)

    assert (url, status) == (caught.value.url, caught.value.status_code)


async def test_an_html_page_fails_as_not_an_image(image_host: ImageHost) -> None:
    """A 200 text/html page (a login page) fails, named as such."""
    url = image_host.url("/page.html")

    with pytest.raises(
        KandinskyImageError,
        match=rf"^image_url {url} answered 200 with text/html \({len(HTML)} bytes\), not an image "
        r"\(a login or error page\?\): check the URL points at the image file itself "
        r"\(nothing was submitted\)$",
    ) as caught:
        await check_image(url)

    assert "text/html; charset=utf-8" == caught.value.content_type


async def test_html_labelled_image_png_fails_on_its_bytes(
    image_host: ImageHost,
) -> None:
    """An image/png header on an HTML body fails: the bytes decide, not the header."""
    url = image_host.url("/fake.png")

    with pytest.raises(
        KandinskyImageError,
        match=rf"^image_url {url} answered 200 with image/png \({len(HTML)} bytes\) but the "
        r"bytes are not an image: check the URL",
    ):
        await check_image(url, read_content=True)


async def test_other_bodies_that_are_not_images_fail(image_host: ImageHost) -> None:
    """JSON, an empty image/png and an SVG each fail with what came back."""
    outcomes = await check_images(
        image_host.url(path) for path in ("/data.json", "/empty.png", "/vector.svg")
    )

    assert [
        f"image_url {image_host.url('/data.json')} answered 200 with application/json (26 "
        "bytes), not an image: check the URL points at the image file itself (nothing was "
        "submitted)",
        f"image_url {image_host.url('/empty.png')} answered 200 with image/png (0 bytes) but an "
        "empty body, not an image: check the URL points at the image file itself (nothing was "
        "submitted)",
        f"image_url {image_host.url('/vector.svg')} answered 200 with image/svg+xml (62 bytes), "
        "a vector image: pass a raster image (PNG, JPEG or WebP) instead (nothing was submitted)",
    ] == [str(outcome) for outcome in outcomes.values()]


async def test_a_redirect_loop_fails_after_the_limit(image_host: ImageHost) -> None:
    """A redirect loop fails after a bounded number of hops."""
    url = image_host.url("/loop.png")

    with pytest.raises(KandinskyImageError, match=rf"^image_url {url} redirected more than 5 "):
        await check_image(url)

    assert 6 == len(image_host.seen("/loop.png"))


async def test_a_refused_connection_fails_as_unreachable(closed_port: int) -> None:
    """A host that refuses the connection fails with the error and the way out."""
    url = f"http://127.0.0.1:{closed_port}/beach.jpg"

    with pytest.raises(
        KandinskyImageError,
        match=rf"^image_url {url} could not be reached \(ConnectError: .*\): the gateway must be "
        r"able to fetch it; if only the gateway can reach this host, pass check_image=False",
    ) as caught:
        await check_image(url)

    assert None is caught.value.status_code


async def test_a_silent_host_fails_within_the_timeout(image_host: ImageHost) -> None:
    """A host that never answers fails after the small timeout, not the default one."""
    url = image_host.url("/slow.png")
    start = time.monotonic()

    with pytest.raises(
        KandinskyImageError,
        match=rf"^image_url {url} could not be reached \(ReadTimeout: no answer within 0.2 s\)",
    ):
        await check_image(url, timeout=TINY_TIMEOUT)

    assert time.monotonic() - start < FAST_ENOUGH


async def test_a_trickling_host_is_cut_at_the_deadline(image_host: ImageHost) -> None:
    """A host that keeps each read under the timeout is still cut at twice the timeout."""
    url = image_host.url("/trickle.png")
    start = time.monotonic()

    with pytest.raises(
        KandinskyImageError,
        match=rf"^image_url {url} could not be reached \(TimeoutError: no complete answer "
        r"within 0.4 s\)",
    ):
        await check_image(url, timeout=TINY_TIMEOUT)

    assert time.monotonic() - start < FAST_ENOUGH


@pytest.mark.parametrize(
    "url", ["ftp://example.com/beach.jpg", "beach.jpg", "/images/beach.jpg", "https://", ""]
)
async def test_a_url_that_is_not_absolute_http_fails_before_any_request(url: str) -> None:
    """Only absolute http(s) URLs are checked; anything else fails without a request."""
    with pytest.raises(
        KandinskyImageError,
        match=rf"^image_url '{url}' must be an absolute http\(s\) URL, like "
        r"https://example.com/image.png \(nothing was submitted\)$",
    ):
        await check_image(url)


# -- credentials and secrets ----------------------------------------------------------------


async def test_a_presigned_signature_is_redacted_in_the_message(image_host: ImageHost) -> None:
    """The signature and credential of a presigned URL never reach the message."""
    url = image_host.url(
        "/private.png?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAEXAMPLE%2F20250101"
        "&X-Amz-Expires=3600&X-Amz-Signature=deadbeefcafe"
    )

    with pytest.raises(KandinskyImageError, match="answered 403 Forbidden") as caught:
        await check_image(url)

    assert (
        f"image_url {image_host.url('/private.png')}?X-Amz-Algorithm=AWS4-HMAC-SHA256"
        "&X-Amz-Credential=REDACTED&X-Amz-Expires=3600&X-Amz-Signature=REDACTED answered 403"
    ) in str(caught.value)
    assert "deadbeefcafe" not in str(caught.value)
    assert "AKIAEXAMPLE" not in repr(caught.value) + caught.value.url


def test_redact_url_hides_signatures_and_user_info_and_keeps_the_rest() -> None:
    """Known signature parameters (any case) and user info are hidden; the rest is as given."""
    assert (
        "https://REDACTED@cdn.example.com/a%20b.png?sig=REDACTED&sv=2024&TOKEN=REDACTED#top"
        == redact_url("https://me:pw@cdn.example.com/a%20b.png?sig=abc%3D&sv=2024&TOKEN=t#top")
    )
    assert "https://example.com/beach.jpg?w=200" == redact_url(
        "https://example.com/beach.jpg?w=200"
    )
    image = CheckedImage("https://b.example.com/a.png?sig=s3cr3t", "image/png", "png", 3, b"abc")
    assert (
        "CheckedImage(url='https://b.example.com/a.png?sig=REDACTED', content_type='image/png', "
        "kind='png', size_bytes=3, content=<3 bytes>)" == repr(image)
    )


async def test_a_passed_client_is_used_and_left_unchanged(image_host: ImageHost) -> None:
    """A caller's client serves the check; its own headers stay as they were."""
    async with httpx.AsyncClient(headers={"X-Team": "video"}) as http:
        before = dict(http.headers)

        image = await check_image(image_host.url("/photo.jpg"), client=http)

        assert before == dict(http.headers)
    assert "jpeg" == image.kind
    last = image_host.seen("/photo.jpg")[-1]
    assert ("video", "image/*") == (last["x-team"], last["accept"])
    assert last["user-agent"].startswith("prefect-kandinsky/")


async def test_no_credentials_or_cookies_reach_the_image_host(image_host: ImageHost) -> None:
    """The host sees the package's User-Agent and Accept: image/*, and no key, auth or cookie."""
    await check_image(image_host.url("/moved.png"))
    await check_image(image_host.url("/moved.png"))

    seen = image_host.seen("/moved.png")[-2:] + image_host.seen("/image.png")[-2:]
    assert 4 == len(seen)
    for headers in seen:
        assert headers["user-agent"].startswith("prefect-kandinsky/")
        assert "image/*" == headers["accept"]
        assert not {"ocp-apim-subscription-key", "authorization", "cookie"} & set(headers)


@pytest.mark.parametrize(
    "client",
    [
        pytest.param({"headers": {"Ocp-Apim-Subscription-Key": "sk-1"}}, id="key"),
        pytest.param({"headers": {"Authorization": "Bearer sk-1"}}, id="authorization"),
        pytest.param({"auth": ("user", "pw")}, id="auth"),
    ],
)
async def test_a_client_carrying_credentials_is_refused_before_any_request(
    image_host: ImageHost, client: dict[str, Any]
) -> None:
    """A client with the subscription key (or any credential) is refused; nothing is sent."""
    before = len(image_host.requests)

    async with httpx.AsyncClient(**client) as http:
        with pytest.raises(ValueError, match="sends no credentials"):
            await check_image(image_host.url("/image.png"), client=http)
        with pytest.raises(ValueError, match="sends no credentials"):
            await check_images([image_host.url("/image.png")], client=http)

    assert before == len(image_host.requests)


# -- many URLs ------------------------------------------------------------------------------


async def test_check_images_returns_one_outcome_per_distinct_url(
    image_host: ImageHost, closed_port: int
) -> None:
    """A mixed batch gives every distinct URL its outcome, bad ones included, in order."""
    png, page, missing = (image_host.url(p) for p in ("/image.png", "/page.html", "/gone.png"))
    presigned = image_host.url("/private.png?Signature=s3cr3t&Expires=1700000000")
    unreachable = f"http://127.0.0.1:{closed_port}/x.png"
    before = len(image_host.seen("/image.png"))

    outcomes = await check_images(
        [png, page, png, missing, "not a url", presigned, unreachable, png], concurrency=3
    )

    assert [png, page, missing, "not a url", presigned, unreachable] == list(outcomes)
    assert before + 1 == len(image_host.seen("/image.png"))
    assert isinstance(outcomes[png], CheckedImage)
    statuses = {
        url: (outcome.status_code if isinstance(outcome, KandinskyImageError) else "ok")
        for url, outcome in outcomes.items()
    }
    assert {
        png: "ok",
        page: 200,
        missing: 404,
        "not a url": None,
        presigned: 403,
        unreachable: None,
    } == statuses
    assert "Signature=REDACTED&Expires=1700000000 answered 403" in str(outcomes[presigned])
    assert "s3cr3t" not in str(outcomes[presigned])


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts descriptors in /proc")
async def test_check_images_keeps_open_sockets_within_the_concurrency(
    image_host: ImageHost,
) -> None:
    """Hundreds of URLs hold no more sockets than the concurrency allows (both ends here)."""
    urls = [image_host.url(f"/image.png?row={row}") for row in range(150)]
    baseline = len(os.listdir("/proc/self/fd"))
    peak = baseline
    done = anyio.Event()

    async def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, len(os.listdir("/proc/self/fd")))
            await anyio.sleep(0.001)

    async with anyio.create_task_group() as group:
        group.start_soon(sample)
        outcomes = await check_images(urls, concurrency=4)
        done.set()

    assert 150 == sum(isinstance(outcome, CheckedImage) for outcome in outcomes.values())
    # Each connection is two descriptors in this process (client and server thread).
    assert peak - baseline <= 2 * 4 + 8


# -- the worker's own network ---------------------------------------------------------------

LOOPBACK_GATEWAY = "http://127.0.0.1:8080"
REFUSED_LOOPBACK = (
    r"is refused: its host resolves to a loopback address, which the worker does not fetch "
    r"from: host the image on a public address, or allow private image hosts with "
    r"allow_private_images=True or KANDINSKY_ALLOW_PRIVATE_IMAGES=1 \(nothing was submitted\)$"
)


@pytest.mark.usefixtures("no_opt_in")
async def test_a_loopback_image_host_is_refused_naming_both_opt_ins(image_host: ImageHost) -> None:
    """An image on the worker's loopback is refused before any request, naming the opt-ins."""
    url = image_host.url("/never-fetched.png")

    with pytest.raises(KandinskyImageError, match=rf"^image_url {url} {REFUSED_LOOPBACK}"):
        await check_image(url)

    assert [] == image_host.seen("/never-fetched.png")


@pytest.mark.usefixtures("no_opt_in")
async def test_a_refused_host_looks_the_same_whatever_answers_there(
    image_host: ImageHost, closed_port: int
) -> None:
    """A closed port, a 404, a non-image and an image on loopback give one refusal: no scanner."""
    urls = {
        "closed": f"http://127.0.0.1:{closed_port}/x",
        "404": image_host.url("/nothing-here"),
        "json": image_host.url("/data.json"),
        "image": image_host.url("/image.png"),
    }

    outcomes = await check_images(urls.values())

    assert {f"image_url URL {REFUSED_LOOPBACK}".replace("\\", "")[:-1]} == {
        str(outcomes[url]).replace(url, "URL") for url in urls.values()
    }


@pytest.mark.usefixtures("no_opt_in")
async def test_a_name_is_judged_by_the_addresses_it_resolves_to(image_host: ImageHost) -> None:
    """localhost is refused like 127.0.0.1: the decision is made after DNS resolution."""
    url = image_host.url("/image.png").replace("127.0.0.1", "localhost")

    with pytest.raises(KandinskyImageError, match=rf"^image_url {url} {REFUSED_LOOPBACK}"):
        await check_image(url)


@pytest.mark.usefixtures("no_opt_in")
async def test_a_loopback_gateway_allows_loopback_images(image_host: ImageHost) -> None:
    """With the gateway itself on loopback (the emulator), a loopback image passes."""
    image = await check_image(image_host.url("/image.png"), gateway_url=LOOPBACK_GATEWAY)

    assert "png" == image.kind


@pytest.mark.usefixtures("no_opt_in")
async def test_the_parameter_allows_a_private_image_host(image_host: ImageHost) -> None:
    """allow_private_images=True lets a loopback image host pass."""
    image = await check_image(image_host.url("/image.png"), allow_private_images=True)

    assert "png" == image.kind


@pytest.mark.parametrize(
    ("host", "kind"),
    [
        ("169.254.169.254", "a cloud metadata address"),
        ("[fd00:ec2::254]", "a cloud metadata address"),
        ("169.254.10.1", "a link-local address"),
        ("[fe80::1]", "a link-local address"),
        ("224.0.0.1", "a multicast address"),
        ("240.0.0.1", "a reserved address"),
        ("0.0.0.0", "an unspecified address"),
        ("[::ffff:169.254.169.254]", "a cloud metadata address"),
        ("[64:ff9b::a9fe:a9fe]", "a cloud metadata address"),
        ("[2002:a9fe:a9fe::1]", "a cloud metadata address"),
    ],
)
async def test_metadata_and_link_local_addresses_are_refused_even_with_the_opt_in(
    host: str, kind: str
) -> None:
    """Metadata, link-local, multicast, reserved and unspecified addresses are never fetched."""
    url = f"http://{host}/latest/meta-data/iam/security-credentials/"

    with pytest.raises(
        KandinskyImageError,
        match=rf"resolves to {kind}, which the worker does not fetch from: host the image on a "
        r"public address; this kind is never fetched",
    ):
        await check_image(url, allow_private_images=True, gateway_url=LOOPBACK_GATEWAY)


@pytest.mark.parametrize("host", ["10.1.2.3", "192.168.0.10", "100.64.0.1", "[fd12::1]"])
@pytest.mark.usefixtures("no_opt_in")
async def test_private_addresses_are_refused_without_the_opt_in(host: str) -> None:
    """RFC 1918, shared and unique local addresses are refused, even with a loopback gateway."""
    url = f"http://{host}/image.png"

    with pytest.raises(
        KandinskyImageError,
        match=r"resolves to a private address, .* allow_private_images=True or "
        r"KANDINSKY_ALLOW_PRIVATE_IMAGES=1",
    ):
        await check_image(url, gateway_url=LOOPBACK_GATEWAY)


@pytest.mark.usefixtures("no_opt_in")
async def test_a_redirect_to_a_refused_address_is_refused(image_host: ImageHost) -> None:
    """Every redirect is judged again: an allowed host redirecting to metadata is refused."""
    url = image_host.url("/to-metadata.png")

    with pytest.raises(
        KandinskyImageError,
        match=rf"^image_url {url} is refused: its host \(after a redirect\) resolves to a cloud "
        r"metadata address",
    ) as caught:
        await check_image(url, gateway_url=LOOPBACK_GATEWAY)

    assert "169.254" not in str(caught.value)


@pytest.mark.usefixtures("no_opt_in")
async def test_the_fetch_goes_to_the_address_that_was_checked(
    image_host: ImageHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check resolves a name once and connects to that address, sending the name as Host."""
    real = anyio.getaddrinfo
    lookups: list[str] = []

    async def resolver(host: Any, port: Any, **kwargs: Any) -> Any:
        lookups.append(str(host))
        if host == "images.rebind.test":
            return await real("127.0.0.1", port, **kwargs)
        return await real(host, port, **kwargs)

    monkeypatch.setattr(anyio, "getaddrinfo", resolver)
    port = urlsplit(image_host.base_url).port
    url = f"http://images.rebind.test:{port}/photo.jpg"

    image = await check_image(url, gateway_url=LOOPBACK_GATEWAY)

    assert ("jpeg", ["images.rebind.test"]) == (image.kind, lookups[:1])
    assert 1 == lookups.count("images.rebind.test")
    assert f"images.rebind.test:{port}" == image_host.seen("/photo.jpg")[-1]["host"]


async def test_errors_never_quote_the_body(image_host: ImageHost) -> None:
    """A body that is not an image is described by status, type and size, never quoted."""
    outcomes = await check_images([image_host.url("/secret.txt"), image_host.url("/fake.png")])

    assert [
        f"image_url {image_host.url('/secret.txt')} answered 200 with text/plain (20 bytes), "
        "not an image: check the URL points at the image file itself (nothing was submitted)",
        f"image_url {image_host.url('/fake.png')} answered 200 with image/png ({len(HTML)} "
        "bytes) but the bytes are not an image: check the URL points at the image file itself "
        "(nothing was submitted)",
    ] == [str(outcome) for outcome in outcomes.values()]


# -- secrets in URLs ----------------------------------------------------------------------------


def test_redact_url_hides_user_info_signatures_and_tokens() -> None:
    """User info, signature and token parameters (query and fragment) are hidden, the rest kept."""
    url = (
        "https://alice:hunter2@b.s3.amazonaws.com/in/a.png?X-Amz-Algorithm=AWS4-HMAC-SHA256"
        "&X-Amz-Credential=AKIA%2F20261207&X-Amz-Signature=9f2c&X-Amz-Security-Token=FQo"
        "&sig=az&token=t0k&Signature=cf&api_key=k3y#access_token=jwt"
    )

    assert (
        "https://REDACTED@b.s3.amazonaws.com/in/a.png?X-Amz-Algorithm=AWS4-HMAC-SHA256"
        "&X-Amz-Credential=REDACTED&X-Amz-Signature=REDACTED&X-Amz-Security-Token=REDACTED"
        "&sig=REDACTED&token=REDACTED&Signature=REDACTED&api_key=REDACTED"
        "#access_token=REDACTED"
    ) == redact_url(url)
    assert "<a URL that cannot be parsed, REDACTED>" == redact_url("http://[user:pw@host/a.png")


async def test_the_check_never_shows_credentials_of_the_url(
    image_host: ImageHost, caplog: pytest.LogCaptureFixture
) -> None:
    """User info and a signature in image_url appear neither in the error nor in the logs."""
    url = image_host.url("/page.html?X-Amz-Signature=s3cr3tsig").replace(
        "http://", "http://alice:hunter2@"
    )
    caplog.set_level("DEBUG", logger="prefect_kandinsky")

    with pytest.raises(KandinskyImageError) as caught:
        await check_image(url)
    await check_image(image_host.url("/image.png?sig=s3cr3tsig"))

    shown = str(caught.value) + caught.value.url + caplog.text
    assert [] == [secret for secret in ("hunter2", "s3cr3tsig") if secret in shown]


async def test_the_input_image_log_line_shows_no_user_info(
    image_host: ImageHost, caplog: pytest.LogCaptureFixture
) -> None:
    """The task's "Input image ..." log line redacts user info and signatures."""
    from prefect_kandinsky.tasks import _checked_input

    url = image_host.url("/image.png?sig=s3cr3tsig").replace("http://", "http://alice:hunter2@")
    logger = logging.getLogger("test-input-image")
    caplog.set_level("INFO", logger="test-input-image")

    await _checked_input(url, logger, LOOPBACK_GATEWAY)

    assert [f"Input image {redact_url(url)} is a png ({len(PNG)} bytes)"] == caplog.messages
    assert "hunter2" not in caplog.text


@pytest.fixture
def tls_image_host(tmp_path: Any) -> Iterator[tuple[int, ssl.SSLContext]]:
    """An HTTPS image host on 127.0.0.1 with a certificate for images.test only, and a client
    TLS context that trusts it."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "images.test")])
    now = datetime.now(timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("images.test")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    server = _ImageHTTPServer(("127.0.0.1", 0), _Handler)
    server.host = ImageHost(base_url="unused")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server.server_address[1], ssl.create_default_context(cafile=str(cert_file))
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.mark.usefixtures("no_opt_in")
async def test_a_pinned_https_fetch_still_verifies_the_certificate_of_the_name(
    tls_image_host: tuple[int, ssl.SSLContext], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over HTTPS the pinned request checks the certificate against the URL's name."""
    port, trust = tls_image_host
    real = anyio.getaddrinfo

    async def resolver(host: Any, port: Any, **kwargs: Any) -> Any:
        loopback = host in ("images.test", "other.test")
        return await real("127.0.0.1" if loopback else host, port, **kwargs)

    monkeypatch.setattr(anyio, "getaddrinfo", resolver)
    async with httpx.AsyncClient(verify=trust) as client:
        image = await check_image(
            f"https://images.test:{port}/image.png", client=client, gateway_url=LOOPBACK_GATEWAY
        )
        with pytest.raises(KandinskyImageError, match="certificate is not valid for 'other.test'"):
            await check_image(
                f"https://other.test:{port}/image.png", client=client, gateway_url=LOOPBACK_GATEWAY
            )

    assert "png" == image.kind
