"""Checking an input image URL before the submit, so that a bad one is never billed.

Every submit to the gateway is billed, and a job that ends FAILED stays charged. A mistyped
``image_url`` (a 404 from the image host, a login page, a 403 on a private bucket) is accepted
by the gateway, fails when its worker fetches the image, and is paid for all the same. So the
worker fetches the image URL itself first: anything but an image raises
:class:`~prefect_kandinsky.exceptions.KandinskyImageError` naming the URL, what came back and
the way out, and nothing is submitted.

The check is one short streamed ``GET`` (redirects followed, at most
:data:`MAX_IMAGE_CHECK_REDIRECTS`) whose body is read only as far as the magic bytes, unless
the caller wants the whole image. A ``HEAD`` first would cost a round trip more and would not
help: many hosts (presigned S3 URLs among them, whose signature covers the method) refuse
``HEAD`` or answer it differently, and only the first bytes prove that the body is an image.
An ``image/png`` header on an HTML error page fails; real image bytes served as
``binary/octet-stream`` pass.

The check sends no credentials of any kind: no subscription key, no ``Authorization``, no
cookies, only a ``User-Agent`` naming the package and ``Accept: image/*``. What the URL itself
carries (a presigned query, user info) is sent as the gateway would send it, and redacted in
every message (:func:`redact_url`).

Example:
    ```python
    from prefect_kandinsky.exceptions import KandinskyImageError
    from prefect_kandinsky.inputs import check_image, check_images

    image = await check_image("https://example.com/beach.jpg", read_content=True)
    print(image.kind, image.size_bytes)  # "jpeg", 48213; image.content holds the bytes

    outcomes = await check_images(row["image_url"] for row in rows)
    bad = {url: error for url, error in outcomes.items() if isinstance(error, KandinskyImageError)}
    ```

Private inputs:
    The gateway fetches ``image_url`` itself, so it must be a public http(s) URL. An image on
    the worker's disk or in a private bucket is made reachable first, before anything is
    paid: :func:`prepare_image` uploads a local file through an ``S3Bucket`` block (under
    the SHA-256 of its bytes, so a picture is uploaded once however often it is used) and
    presigns a GET link to it; an ``s3://bucket/key`` object is checked with a ``HEAD`` and
    presigned; an http(s) URL passes through. Only the block's AWS credentials are used for
    this, never the gateway's key. The gateway reads the image when the job starts
    PROCESSING, which can be long after the submit, so the link must outlive the queue and
    the render: :func:`presign_lifetime` turns the wait's timeout into a lifetime.

    ```python
    from prefect_aws import S3Bucket
    from prefect_kandinsky.inputs import prepare_images, presign_lifetime

    outcomes = await prepare_images(
        (row["image"] for row in rows),  # "photos/a.png", "s3://team-bucket/b.jpg", "https://..."
        bucket=await S3Bucket.aload("BLOCK_NAME"),
        expires_seconds=presign_lifetime(wait_timeout_seconds=1800),
    )
    image_url = outcomes[row["image"]].url  # or a KandinskyImageError naming the row's image
    ```
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from functools import cache, partial
from http.cookiejar import CookieJar, DefaultCookiePolicy
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import unquote_plus, urlsplit, urlunsplit

import anyio
import httpx

from prefect_kandinsky._constants import (
    API_KEY_HEADER,
    DEFAULT_CHUNK_SIZE,
    DEFAULT_IMAGE_CHECK_TIMEOUT_SECONDS,
    DEFAULT_INPUT_FOLDER,
    DEFAULT_PRESIGN_MARGIN_SECONDS,
    MAX_IMAGE_CHECK_BYTES,
)
from prefect_kandinsky.exceptions import KandinskyImageError

if TYPE_CHECKING:
    # Imported for annotations only: prefect-aws (and boto3) load only when a bucket is used.
    from prefect_aws import S3Bucket

logger = logging.getLogger(__name__)
_T = TypeVar("_T")

MAX_IMAGE_CHECK_REDIRECTS = 5
"""Redirects the image check follows before it gives up on a URL."""
IMAGE_CHECK_DEADLINE_FACTOR = 2.0
"""The whole check of one URL (redirects, headers, first bytes) lasts at most this many
times its timeout, however slowly the host trickles its answer."""
IMAGE_SNIFF_BYTES = 64
"""Bytes read from the start of the body to recognise an image by its magic number."""
DEFAULT_IMAGE_CHECK_CONCURRENCY = 8
"""Image URLs :func:`check_images` checks at the same time (and connections it opens)."""

REDACTED = "REDACTED"
"""What :func:`redact_url` writes in place of a secret."""
SECRET_QUERY_PARAMS = frozenset(
    {
        "x-amz-signature",
        "x-amz-credential",
        "x-amz-security-token",
        "x-goog-signature",
        "x-goog-credential",
        "signature",
        "sig",
        "token",
        "access_token",
    }
)
"""Query parameters (lower case) whose values :func:`redact_url` hides: presigned URLs of
S3, Google Cloud Storage, CloudFront and Azure carry their signature in these."""

_NOTHING_SUBMITTED = " (nothing was submitted)"
_CHECK_THE_URL = "check the URL points at the image file itself"
_BMP_HEADER_SIZES = frozenset({12, 40, 52, 56, 64, 108, 124})
_HEIF_BRANDS = frozenset({b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis"})
_TYPE_KINDS = {
    "jpg": "jpeg",
    "pjpeg": "jpeg",
    "ms-bmp": "bmp",
    "tif": "tiff",
    "heic-sequence": "heic",
    "heif-sequence": "heif",
    "avif-sequence": "avif",
}
_PREVIEW_CHARS = 20


def _user_agent() -> str:
    try:
        return f"prefect-kandinsky/{version('prefect-kandinsky')}"
    except PackageNotFoundError:  # pragma: no cover - running from a bare source tree
        return "prefect-kandinsky"


@cache
def _headers() -> dict[str, str]:
    """The check's request headers, made at the first check (not at import: the version
    lookup reads package metadata from disk)."""
    return {
        "User-Agent": _user_agent(),
        "Accept": "image/*",
        # identity: Content-Length is then the image's size.
        "Accept-Encoding": "identity",
    }


@dataclass(frozen=True)
class CheckedImage:
    """An image URL that answered with an image.

    Attributes:
        url: The URL as given (redirects were followed from it).
        content_type: The ``Content-Type`` the host declared, as written, or None.
        kind: The image format recognised from the magic bytes (``"png"``, ``"jpeg"``,
            ``"gif"``, ``"webp"``, ``"bmp"``, ``"tiff"``, ``"avif"``, ``"heic"``, ``"heif"``,
            ``"jxl"``, ``"jp2"``), or taken from the content type when the body could not be
            read.
        size_bytes: The ``Content-Length``, or the bytes read when the whole body was read;
            None when neither is known.
        content: The whole image when ``read_content=True`` and it fitted in ``max_bytes``;
            else None.
    """

    url: str
    content_type: str | None
    kind: str
    size_bytes: int | None
    content: bytes | None = field(default=None, repr=False)

    def __repr__(self) -> str:
        content = "None" if self.content is None else f"<{len(self.content)} bytes>"
        return (
            f"CheckedImage(url={redact_url(self.url)!r}, content_type={self.content_type!r}, "
            f"kind={self.kind!r}, size_bytes={self.size_bytes!r}, content={content})"
        )


async def check_image(
    url: str,
    *,
    read_content: bool = False,
    # The socket timeout of each connect and read, as in httpx, not a deadline of the call.
    timeout: float = DEFAULT_IMAGE_CHECK_TIMEOUT_SECONDS,  # noqa: ASYNC109
    max_bytes: int = MAX_IMAGE_CHECK_BYTES,
    client: httpx.AsyncClient | None = None,
) -> CheckedImage:
    """Fetch the start of ``url`` and make sure it is an image, before anything is billed.

    It passes when the host answers 2xx and the first bytes are an image's magic number, or,
    when the body cannot be read at all, the content type is ``image/*``. The content type
    alone never passes readable bytes: an ``image/png`` error page fails, PNG bytes served as
    ``binary/octet-stream`` pass.

    Args:
        url: The absolute http(s) URL of the input image.
        read_content: Keep reading up to ``max_bytes`` and return the image in
            ``content`` (for a thumbnail, so that the image is fetched once). A larger image
            still passes, with ``content`` None.
        timeout: Seconds allowed to connect and for each read; the whole check lasts at
            most :data:`IMAGE_CHECK_DEADLINE_FACTOR` times as long. When the image's bytes
            are still being read at the deadline, the check passes without ``content``.
        max_bytes: The most bytes read when ``read_content`` is True.
        client: An ``httpx.AsyncClient`` to reuse. It must carry no credentials (never the
            gateway's ``Ocp-Apim-Subscription-Key``, no ``Authorization``, no ``auth``);
            headers are set per request and the client is left unchanged. Its cookie jar is
            used as is. By default a plain client that keeps no cookies is opened and closed.

    Returns:
        The image's URL, declared content type, detected kind, size and, on request, bytes.

    Raises:
        KandinskyImageError: The URL is not an absolute http(s) URL, could not be reached,
            answered an error status, or answered something that is not an image. The message
            names the URL (its signature redacted) and what came back; ``status_code`` and
            ``content_type`` hold the answer's.
        ValueError: ``client`` carries credentials.

    Example:
        ```python
        from prefect import flow
        from prefect_kandinsky.inputs import check_image

        @flow
        async def check(image_url: str) -> str:
            image = await check_image(image_url)
            return image.kind
        ```
    """
    target = _absolute_http_url(url)
    if client is not None:
        _refuse_credentials(client)
        return await _check(client, url, target, read_content, timeout, max_bytes)
    async with _plain_client(timeout, connections=1) as own:
        return await _check(own, url, target, read_content, timeout, max_bytes)


async def check_images(
    urls: Iterable[str],
    *,
    concurrency: int = DEFAULT_IMAGE_CHECK_CONCURRENCY,
    # The socket timeout of each connect and read, as in httpx, not a deadline of the call.
    timeout: float = DEFAULT_IMAGE_CHECK_TIMEOUT_SECONDS,  # noqa: ASYNC109
    client: httpx.AsyncClient | None = None,
) -> dict[str, CheckedImage | KandinskyImageError]:
    """Check many image URLs at once and return every outcome, so a batch reports all bad rows.

    Equal URLs are checked once. At most ``concurrency`` checks run at a time over one
    shared client whose connection pool is sized to match, so thousands of URLs never hold
    more than ``concurrency`` sockets. A bad URL is an outcome, not an exception.

    Args:
        urls: The image URLs, in any number, duplicates allowed.
        concurrency: How many URLs are checked at the same time.
        timeout: Seconds allowed to connect and for each read of one URL (see
            :func:`check_image`).
        client: An ``httpx.AsyncClient`` to share, with the same rules as in
            :func:`check_image`; by default a plain one sized to ``concurrency``.

    Returns:
        One entry per distinct URL, in the order first given: its :class:`CheckedImage`, or
        the :class:`~prefect_kandinsky.exceptions.KandinskyImageError` it failed with.

    Raises:
        ValueError: ``concurrency`` is below 1, or ``client`` carries credentials.

    Example:
        ```python
        from prefect import flow
        from prefect_kandinsky.exceptions import KandinskyImageError
        from prefect_kandinsky.inputs import check_images

        @flow
        async def bad_rows(image_urls: list[str]) -> list[str]:
            outcomes = await check_images(image_urls)
            return [str(e) for e in outcomes.values() if isinstance(e, KandinskyImageError)]
        ```
    """
    if concurrency < 1:
        raise ValueError(f"concurrency must be 1 or more; got {concurrency}")
    distinct = list(dict.fromkeys(urls))
    if not distinct:
        return {}
    workers = min(concurrency, len(distinct))
    if client is not None:
        _refuse_credentials(client)
        return await _outcomes(
            distinct, workers, partial(check_image, timeout=timeout, client=client)
        )
    async with _plain_client(timeout, connections=workers) as own:
        return await _outcomes(distinct, workers, partial(check_image, timeout=timeout, client=own))


async def _outcomes(
    distinct: list[str], workers: int, attempt: Callable[[str], Awaitable[_T]]
) -> dict[str, _T | KandinskyImageError]:
    """Run ``attempt`` on each item, ``workers`` at a time; a KandinskyImageError is an outcome.

    Returns:
        One outcome per item, in the order of ``distinct``.
    """
    outcomes: dict[str, _T | KandinskyImageError] = {}
    pending = iter(distinct)

    async def work() -> None:
        for item in pending:
            try:
                outcomes[item] = await attempt(item)
            except KandinskyImageError as exc:
                outcomes[item] = exc

    async with anyio.create_task_group() as group:
        for _ in range(workers):
            group.start_soon(work)
    return {item: outcomes[item] for item in distinct}


def redact_url(url: str) -> str:
    """``url`` with the values of signature query parameters and any user info replaced.

    Presigned URLs carry a credential in their query (``X-Amz-Signature``,
    ``X-Amz-Credential``, ``Signature``, ``sig``, ``token``...); the rest of the URL is kept
    as written so that it still says which image it is.

    Example:
        ```python
        redact_url("https://b.s3.amazonaws.com/a.png?X-Amz-Expires=60&X-Amz-Signature=9f2c")
        # 'https://b.s3.amazonaws.com/a.png?X-Amz-Expires=60&X-Amz-Signature=REDACTED'
        ```
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{REDACTED}@{netloc.rpartition('@')[2]}"
    query = "&".join(_redact_pair(pair) for pair in parts.query.split("&"))
    if netloc == parts.netloc and query == parts.query:
        return url
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _redact_pair(pair: str) -> str:
    name, equals, _ = pair.partition("=")
    if equals and unquote_plus(name).strip().lower() in SECRET_QUERY_PARAMS:
        return f"{name}={REDACTED}"
    return pair


def _absolute_http_url(url: object) -> httpx.URL:
    if isinstance(url, str):
        try:
            parsed = httpx.URL(url)
        except httpx.InvalidURL:
            pass
        else:
            if parsed.scheme in ("http", "https") and parsed.host:
                return parsed
    shown = redact_url(url) if isinstance(url, str) else repr(url)
    raise KandinskyImageError(
        f"image_url {shown!r} must be an absolute http(s) URL, like "
        f"https://example.com/image.png{_NOTHING_SUBMITTED}",
        url=shown,
    )


def _refuse_credentials(client: httpx.AsyncClient) -> None:
    for header in (API_KEY_HEADER, "Authorization"):
        if header in client.headers:
            raise ValueError(
                f"The image check sends no credentials, but the client carries {header}; "
                "pass a plain httpx.AsyncClient or none"
            )
    if client.auth is not None:
        raise ValueError(
            "The image check sends no credentials, but the client has auth set; "
            "pass a plain httpx.AsyncClient or none"
        )


def _plain_client(timeout: float, *, connections: int) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        timeout=httpx.Timeout(timeout),
        limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
        follow_redirects=False,
        # A jar that refuses every cookie: nothing a host sets is sent anywhere.
        cookies=CookieJar(policy=DefaultCookiePolicy(allowed_domains=[])),
    )


@dataclass
class _Body:
    data: bytes
    complete: bool
    """Whether the body was read to its end."""
    overflow: bool
    """Whether reading stopped because the body is larger than ``max_bytes``."""
    failure: str | None
    """Why reading stopped early: an error or the deadline."""


async def _check(
    client: httpx.AsyncClient,
    url: str,
    target: httpx.URL,
    read_content: bool,
    io_timeout: float,
    max_bytes: int,
) -> CheckedImage:
    shown = redact_url(url)
    deadline = io_timeout * IMAGE_CHECK_DEADLINE_FACTOR
    end = anyio.current_time() + deadline
    response: httpx.Response | None = None
    with anyio.CancelScope(deadline=end):
        try:
            response = await _open(client, target, io_timeout, shown)
        except httpx.HTTPError as exc:
            raise _unreachable(shown, _describe(exc, url, shown, io_timeout)) from exc
    if response is None:
        raise _unreachable(shown, f"TimeoutError: no complete answer within {deadline:g} s")
    try:
        _raise_for_status(response, shown)
        length = _content_length(response)
        wanted = max_bytes if read_content and (length is None or length <= max_bytes) else 0
        body = await _read_body(response, end, wanted)
    finally:
        await response.aclose()
    image = _judge(response, shown, url, body, length, read_content)
    logger.debug("image_url %s is a %s image (%s bytes)", shown, image.kind, image.size_bytes)
    return image


async def _open(
    client: httpx.AsyncClient, target: httpx.URL, io_timeout: float, shown: str
) -> httpx.Response:
    request = client.build_request(
        "GET", target, headers=_headers(), timeout=httpx.Timeout(io_timeout)
    )
    for _ in range(MAX_IMAGE_CHECK_REDIRECTS + 1):
        response = await client.send(request, stream=True, follow_redirects=False)
        following = response.next_request
        if following is None:
            return response
        await response.aclose()
        if following.url.scheme not in ("http", "https"):
            raise KandinskyImageError(
                f"image_url {shown} redirected to {redact_url(str(following.url))}, which is "
                f"not an http(s) URL: {_CHECK_THE_URL}{_NOTHING_SUBMITTED}",
                url=shown,
                status_code=response.status_code,
            )
        request = following
    raise KandinskyImageError(
        f"image_url {shown} redirected more than {MAX_IMAGE_CHECK_REDIRECTS} times: "
        f"{_CHECK_THE_URL}{_NOTHING_SUBMITTED}",
        url=shown,
        status_code=response.status_code,
    )


def _raise_for_status(response: httpx.Response, shown: str) -> None:
    code = response.status_code
    if 200 <= code < 300:
        return
    answered = f"image_url {shown} answered {code} {_reason(response)}"
    if code in (401, 403):
        way_out = "make the image public or pass a presigned URL that has not expired"
    elif code == 429:
        way_out = "the image host is limiting requests; try again later"
    elif code >= 500:
        way_out = "the image host failed; try again later or host the image elsewhere"
    elif code >= 400:
        way_out = "check the URL"
    else:
        answered += ", not an image"
        way_out = _CHECK_THE_URL
    raise KandinskyImageError(
        f"{answered}: {way_out}{_NOTHING_SUBMITTED}",
        url=shown,
        status_code=code,
        content_type=response.headers.get("content-type"),
    )


async def _read_body(response: httpx.Response, end: float, wanted: int) -> _Body:
    """Read the first bytes, and on to ``wanted`` bytes once they are an image's."""
    data = bytearray()
    complete = overflow = False
    failure: str | None = None
    with anyio.CancelScope(deadline=end) as scope:
        try:
            async for chunk in response.aiter_bytes():
                data += chunk
                if len(data) < IMAGE_SNIFF_BYTES:
                    continue
                if not wanted or _sniff(bytes(data[:IMAGE_SNIFF_BYTES])) is None:
                    break
                if len(data) > wanted:
                    overflow = True
                    break
            else:
                complete = True
        except httpx.HTTPError as exc:
            failure = type(exc).__name__
    if scope.cancelled_caught:
        failure = "TimeoutError"
    return _Body(bytes(data), complete, overflow, failure)


def _judge(
    response: httpx.Response,
    shown: str,
    url: str,
    body: _Body,
    length: int | None,
    read_content: bool,
) -> CheckedImage:
    declared = response.headers.get("content-type")
    media_type = declared.partition(";")[0].strip().lower() if declared else ""
    size = len(body.data) if body.complete else length
    kind = _sniff(body.data[:IMAGE_SNIFF_BYTES])
    if kind is not None:
        content = body.data if read_content and body.complete and not body.overflow else None
        return CheckedImage(url, declared, kind, size, content)
    unreadable = not body.data and body.failure is not None
    is_image_type = media_type.startswith("image/") and media_type != "image/svg+xml"
    if unreadable and is_image_type:
        logger.warning(
            "The body of image_url %s could not be read (%s); trusting its content type %s",
            shown,
            body.failure,
            media_type,
        )
        return CheckedImage(url, declared, _kind_from_type(media_type), length, None)
    answered = (
        f"image_url {shown} answered {response.status_code} with {media_type or 'no content type'}"
    )
    if media_type == "image/svg+xml":
        message = f"{answered}, a vector image: pass a raster image (PNG, JPEG or WebP) instead"
    elif body.data:
        start = f"starts with {_preview(body.data)}"
        if media_type.startswith("image/"):
            message = f"{answered} but the bytes are not an image ({start}): {_CHECK_THE_URL}"
        elif media_type in ("text/html", "application/xhtml+xml"):
            message = f"{answered}, not an image (a login or error page?): {_CHECK_THE_URL}"
        else:
            message = f"{answered}, not an image ({start}): {_CHECK_THE_URL}"
    elif body.failure is None:
        message = f"{answered} but an empty body, not an image: {_CHECK_THE_URL}"
    else:
        message = (
            f"{answered}, not an image (the body could not be read: {body.failure}): "
            f"{_CHECK_THE_URL}"
        )
    raise KandinskyImageError(
        message + _NOTHING_SUBMITTED,
        url=shown,
        status_code=response.status_code,
        content_type=declared,
    )


def _sniff(head: bytes) -> str | None:
    """The image format whose magic number ``head`` starts with, or None."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "gif"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "webp"
    if head.startswith((b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")):
        return "tiff"
    if (
        head.startswith(b"BM")
        and len(head) >= 18
        and int.from_bytes(head[14:18], "little") in _BMP_HEADER_SIZES
    ):
        return "bmp"
    if head.startswith((b"\xff\x0a", b"\x00\x00\x00\x0cJXL \r\n\x87\n")):
        return "jxl"
    if head.startswith(b"\x00\x00\x00\x0cjP  \r\n\x87\n"):
        return "jp2"
    if head[4:8] == b"ftyp":
        return _heif_kind(head)
    return None


def _heif_kind(head: bytes) -> str | None:
    """AVIF, HEIC or HEIF from the brands of an ISO media ``ftyp`` box; None for a video."""
    box_size = int.from_bytes(head[:4], "big")
    end = min(box_size, len(head)) if box_size >= 16 else len(head)
    brands = {head[8:12]} | {head[i : i + 4] for i in range(16, end - 3, 4)}
    if brands & {b"avif", b"avis"}:
        return "avif"
    if brands & _HEIF_BRANDS:
        return "heic"
    if brands & {b"mif1", b"msf1"}:
        return "heif"
    return None


def _kind_from_type(media_type: str) -> str:
    subtype = media_type.partition("/")[2].removeprefix("x-")
    return _TYPE_KINDS.get(subtype, subtype)


def _preview(data: bytes) -> str:
    """The start of a body: quoted text, or hex bytes when it is binary."""
    head = data[:_PREVIEW_CHARS]
    if any((byte < 0x20 and byte not in b"\t\n\r") or byte == 0x7F for byte in head):
        return "bytes " + head[:8].hex(" ")
    text = " ".join(head.decode("utf-8", "replace").split())
    return repr(text)


def _content_length(response: httpx.Response) -> int | None:
    if response.headers.get("content-encoding", "identity").lower() != "identity":
        return None
    value = response.headers.get("content-length", "").strip()
    return int(value) if value.isdigit() else None


def _reason(response: httpx.Response) -> str:
    return httpx.codes.get_reason_phrase(response.status_code) or response.reason_phrase


def _describe(exc: httpx.HTTPError, url: str, shown: str, timeout: float) -> str:
    if isinstance(exc, httpx.TimeoutException):
        detail = f"no answer within {timeout:g} s"
    else:
        detail = (str(exc).strip().splitlines() or [""])[0][:200].replace(url, shown)
    name = type(exc).__name__
    return f"{name}: {detail}" if detail else name


def _unreachable(shown: str, what: str) -> KandinskyImageError:
    return KandinskyImageError(
        f"image_url {shown} could not be reached ({what}): the gateway must be able to fetch "
        f"it; if only the gateway can reach this host, pass check_image=False"
        f"{_NOTHING_SUBMITTED}",
        url=shown,
    )


# -- private inputs: upload to S3 and presign -----------------------------------------------

DEFAULT_IMAGE_PREPARE_CONCURRENCY = 8
"""Sources :func:`prepare_images` prepares at the same time (files hashed, S3 calls made)."""

_KIND_CONTENT_TYPES = {
    "png": ("image/png", ".png"),
    "jpeg": ("image/jpeg", ".jpg"),
    "gif": ("image/gif", ".gif"),
    "webp": ("image/webp", ".webp"),
    "bmp": ("image/bmp", ".bmp"),
    "tiff": ("image/tiff", ".tiff"),
    "avif": ("image/avif", ".avif"),
    "heic": ("image/heic", ".heic"),
    "heif": ("image/heif", ".heif"),
    "jxl": ("image/jxl", ".jxl"),
    "jp2": ("image/jp2", ".jp2"),
}
"""Content type and file extension of each kind :func:`_sniff` recognises."""
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")
_S3_ABSENT = frozenset({"404", "NoSuchKey", "NotFound", "NoSuchBucket"})
_S3_DENIED = frozenset({"403", "AccessDenied", "Forbidden", "AllAccessDisabled"})
_SOURCE_FORMS = "a local file path, an s3://bucket/key URI or an http(s) URL"


@dataclass(frozen=True)
class PreparedImage:
    """An input image made fetchable by the gateway.

    Attributes:
        source: What the row gave: a local path, ``s3://bucket/key`` or an http(s) URL.
        url: The http(s) URL to send as ``image_url``: a presigned GET link for a local file
            or an S3 object, the source itself for an http(s) URL.
        uploaded: True when this call uploaded the bytes; False when they were in the bucket
            already, or when there was nothing to upload.
        expires_at: When the presigned link stops working (UTC); None for a plain URL.
    """

    source: str
    url: str
    uploaded: bool
    expires_at: datetime | None

    def __repr__(self) -> str:
        return (
            f"PreparedImage(source={redact_url(self.source)!r}, url={redact_url(self.url)!r}, "
            f"uploaded={self.uploaded!r}, expires_at={self.expires_at!r})"
        )


def presign_lifetime(
    wait_timeout_seconds: float, *, margin_seconds: float = DEFAULT_PRESIGN_MARGIN_SECONDS
) -> int:
    """Seconds a presigned input image link must live: the wait's timeout plus a margin.

    The gateway does not fetch the image when it accepts the submit, but when the job starts
    PROCESSING, after its time in the queue. A link that has expired by then fails the job,
    and a failed job is billed. The wait's timeout bounds the time from the submit to the end
    of the render, queue included, so a link that lives that long is valid whenever the
    gateway reads it. The margin covers the time from the presign to the submit (the rest of
    a batch being prepared and submitted under the rate limit) and clock skew. The result is
    capped at S3's SigV4 maximum of 7 days
    (:data:`prefect_kandinsky.storage.MAX_PRESIGN_EXPIRES_SECONDS`): a longer wait cannot be
    covered by one link.

    A link signed with temporary credentials (an assumed role, an instance profile, an SSO
    session) stops working when they expire, whatever its lifetime: presign with credentials
    that outlive the wait.

    Args:
        wait_timeout_seconds: The timeout of the wait for the generation (``math.inf`` for
            none: the cap applies).
        margin_seconds: Extra seconds, for the time before the submit and clock skew.

    Returns:
        Whole seconds, from 1 to 604800 (7 days).

    Raises:
        ValueError: A negative or NaN argument.

    Example:
        ```python
        presign_lifetime(1800)  # 5400: a 30 min wait plus an hour of margin
        presign_lifetime(30 * 24 * 3600)  # 604800: capped at 7 days
        ```
    """
    for name, value in (
        ("wait_timeout_seconds", wait_timeout_seconds),
        ("margin_seconds", margin_seconds),
    ):
        if math.isnan(value) or value < 0:
            raise ValueError(f"{name} must be 0 or more; got {value!r}")
    maximum = _max_presign_seconds()
    total = wait_timeout_seconds + margin_seconds
    if not math.isfinite(total):
        return maximum
    return max(1, min(maximum, math.ceil(total)))


async def prepare_image(
    source: str,
    *,
    bucket: S3Bucket | None,
    expires_seconds: int,
    folder: str = DEFAULT_INPUT_FOLDER,
) -> PreparedImage:
    """Make one input image fetchable by the gateway, before anything is paid.

    - An http(s) URL passes through unchanged (:func:`check_image` checks it).
    - A local file is hashed in chunks and must be an image (by its magic bytes, which also
      give its content type and extension). It is uploaded to ``bucket`` under
      ``{bucket_folder}/{folder}/{sha256}{ext}`` with that content type and the SHA-256 in
      its metadata, unless a ``HEAD`` finds the key there with the same SHA-256: a re-run,
      or the same picture in another row, uploads nothing. Then a GET link is presigned.
    - An ``s3://bucket/key`` object, in any bucket the block's credentials can read (not
      only the block's ``bucket_name``), is checked with a ``HEAD`` and a GET link is
      presigned. The block's region must be that bucket's region for the link to work.

    Only the block's AWS credentials are used, never the gateway's key. The S3 calls and
    the file reads run in a worker thread, not on the event loop. To prove the link works
    from outside, pass ``url`` to :func:`check_image`.

    Args:
        source: A local file path, ``s3://bucket/key`` or an http(s) URL.
        bucket: The ``S3Bucket`` block whose credentials upload and presign; needed for a
            local file or an ``s3://`` source, unused for an http(s) URL.
        expires_seconds: Lifetime of a presigned link, from 1 s to 7 days; see
            :func:`presign_lifetime`.
        folder: Folder under the block's ``bucket_folder`` that local files are uploaded to.

    Returns:
        The URL to submit, whether this call uploaded it, and when the link expires.

    Raises:
        KandinskyImageError: The source is neither a file, an S3 URI nor an http(s) URL; no
            ``bucket`` was given for a file or an S3 object; the file is missing, unreadable
            or not an image; the S3 object does not exist or cannot be read; the upload
            failed. The message names the source and the way out; nothing is submitted.
        ValueError: ``expires_seconds`` is not from 1 to 604800.

    Example:
        ```python
        from prefect import flow
        from prefect_aws import S3Bucket
        from prefect_kandinsky.inputs import prepare_image, presign_lifetime

        @flow
        async def image_url_for(path: str) -> str:
            image = await prepare_image(
                path,
                bucket=await S3Bucket.aload("BLOCK_NAME"),
                expires_seconds=presign_lifetime(1800),
            )
            return image.url
        ```
    """
    _check_expires(expires_seconds)
    return await _Preparer(bucket, expires_seconds, folder).prepare(source)


async def prepare_images(
    sources: Iterable[str],
    *,
    bucket: S3Bucket | None,
    expires_seconds: int,
    concurrency: int = DEFAULT_IMAGE_PREPARE_CONCURRENCY,
    folder: str = DEFAULT_INPUT_FOLDER,
) -> dict[str, PreparedImage | KandinskyImageError]:
    """Prepare many input images at once and return every outcome, so a batch reports all
    bad rows before anything is paid.

    Each source is prepared as by :func:`prepare_image`. Equal sources are prepared once;
    files with the same bytes are uploaded once (one of them reports ``uploaded=True``). At
    most ``concurrency`` sources are worked on at a time, over one S3 client made from the
    block (only when a source needs S3). A bad source is an outcome, not an exception.

    Args:
        sources: Local file paths, ``s3://bucket/key`` URIs and http(s) URLs, in any number,
            duplicates allowed.
        bucket: The ``S3Bucket`` block that uploads and presigns (see :func:`prepare_image`).
        expires_seconds: Lifetime of each presigned link; see :func:`presign_lifetime`.
        concurrency: How many sources are prepared at the same time.
        folder: Folder under the block's ``bucket_folder`` that local files are uploaded to.

    Returns:
        One entry per distinct source, in the order first given: its
        :class:`PreparedImage`, or the
        :class:`~prefect_kandinsky.exceptions.KandinskyImageError` it failed with.

    Raises:
        ValueError: ``concurrency`` is below 1, or ``expires_seconds`` is not from 1 to
            604800.

    Example:
        ```python
        from prefect import flow
        from prefect_aws import S3Bucket
        from prefect_kandinsky.exceptions import KandinskyImageError
        from prefect_kandinsky.inputs import prepare_images, presign_lifetime

        @flow
        async def image_urls(sources: list[str]) -> dict[str, str]:
            outcomes = await prepare_images(
                sources,
                bucket=await S3Bucket.aload("BLOCK_NAME"),
                expires_seconds=presign_lifetime(1800),
            )
            bad = [str(e) for e in outcomes.values() if isinstance(e, KandinskyImageError)]
            if bad:
                raise ValueError("\n".join(bad))
            return {source: image.url for source, image in outcomes.items()}
        ```
    """
    if concurrency < 1:
        raise ValueError(f"concurrency must be 1 or more; got {concurrency}")
    _check_expires(expires_seconds)
    distinct = list(dict.fromkeys(sources))
    if not distinct:
        return {}
    preparer = _Preparer(bucket, expires_seconds, folder)
    return await _outcomes(distinct, min(concurrency, len(distinct)), preparer.prepare)


def _max_presign_seconds() -> int:
    # Imported here: storage loads prefect-aws and boto3, which the image check does not need.
    from prefect_kandinsky.storage import MAX_PRESIGN_EXPIRES_SECONDS

    return MAX_PRESIGN_EXPIRES_SECONDS


def _check_expires(expires_seconds: int) -> None:
    maximum = _max_presign_seconds()
    if isinstance(expires_seconds, bool) or not (
        isinstance(expires_seconds, int) and 1 <= expires_seconds <= maximum
    ):
        raise ValueError(
            f"expires_seconds must be a whole number from 1 to {maximum} (7 days); "
            f"got {expires_seconds!r}"
        )


async def _in_thread(func: Callable[..., _T], *args: Any) -> _T:
    """Run blocking work in a worker thread; a cancel waits for it to finish."""
    return await anyio.to_thread.run_sync(partial(func, *args))


@dataclass(frozen=True)
class _ImageFile:
    """A local image file, read once: where it is, its SHA-256, size and format."""

    path: Path
    sha256: str
    size: int
    kind: str

    @property
    def content_type(self) -> str:
        return _KIND_CONTENT_TYPES[self.kind][0]

    @property
    def name(self) -> str:
        """The content-addressed object name: the SHA-256 and the format's extension."""
        return self.sha256 + _KIND_CONTENT_TYPES[self.kind][1]


class _Preparer:
    """Prepares the sources of one call: one S3 client, one lock per uploaded key."""

    def __init__(self, bucket: S3Bucket | None, expires_seconds: int, folder: str) -> None:
        self.bucket = bucket
        self.expires_seconds = expires_seconds
        base = bucket.bucket_folder.strip("/") if bucket is not None else ""
        self.prefix = "/".join(part for part in (base, folder.strip("/")) if part)
        self._client: Any = None
        self._client_error: str | None = None
        self._client_lock = anyio.Lock()
        self._key_locks: dict[str, anyio.Lock] = {}

    async def prepare(self, source: str) -> PreparedImage:
        if not isinstance(source, str) or not source.strip():
            raise KandinskyImageError(
                f"Image source {source!r} must be {_SOURCE_FORMS}{_NOTHING_SUBMITTED}",
                url=str(source),
            )
        scheme, separator, rest = source.partition("://")
        scheme = scheme.lower() if separator and _SCHEME.fullmatch(scheme) else ""
        if scheme in ("http", "https"):
            _absolute_http_url(source)
            return PreparedImage(source, source, uploaded=False, expires_at=None)
        if scheme not in ("", "s3"):
            shown = redact_url(source)
            raise KandinskyImageError(
                f"Image source {shown!r} has the scheme {scheme}://, which is not supported: "
                f"pass {_SOURCE_FORMS}{_NOTHING_SUBMITTED}",
                url=shown,
            )
        if scheme == "s3":
            bucket_name, key = _parse_s3_uri(source, rest)
            if self.bucket is None:
                raise _no_bucket(source, s3=True)
            client = await self._s3(source)
            return await _in_thread(self._presign_object, client, source, bucket_name, key)
        if self.bucket is None:
            raise _no_bucket(source, s3=False)
        image = await _in_thread(_read_image_file, source)
        key = "/".join(part for part in (self.prefix, image.name) if part)
        # Two files with the same bytes have the same key: the second waits, then finds it.
        lock = self._key_locks.setdefault(key, anyio.Lock())
        async with lock:
            client = await self._s3(source)
            return await _in_thread(self._upload_and_presign, client, source, image, key)

    async def _s3(self, source: str) -> Any:
        """The call's one S3 client (boto3 clients are thread-safe), made on first use."""
        assert self.bucket is not None
        async with self._client_lock:
            if self._client is None and self._client_error is None:
                try:
                    self._client = await _in_thread(self.bucket.credentials.get_s3_client)
                except Exception as exc:
                    self._client_error = f"{type(exc).__name__}: {_first_line(exc)}"
                else:
                    self._warn_if_temporary()
        if self._client_error is not None:
            raise KandinskyImageError(
                f"Image {source} cannot be prepared: no S3 client could be made from the "
                f"S3Bucket block {self.bucket.bucket_name!r} ({self._client_error}): fix its "
                f"AWS credentials{_NOTHING_SUBMITTED}",
                url=source,
            )
        return self._client

    def _warn_if_temporary(self) -> None:
        assert self.bucket is not None
        credentials = self.bucket.credentials
        if getattr(credentials, "aws_session_token", None) or getattr(
            credentials, "assume_role_arn", None
        ):
            logger.warning(
                "The S3Bucket %r signs with temporary AWS credentials (a session token or an "
                "assumed role): its presigned input image links stop working when those "
                "expire, even before their %d s are up",
                self.bucket.bucket_name,
                self.expires_seconds,
            )

    def _presign_object(
        self, client: Any, source: str, bucket_name: str, key: str
    ) -> PreparedImage:
        """HEAD the object, then presign a GET to it (blocking)."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            client.head_object(Bucket=bucket_name, Key=key)
        except ClientError as exc:
            code, status = _s3_error(exc)
            if code in _S3_ABSENT:
                message = (
                    f"Image {source}: no such object (S3 answered {code} to a HEAD): check "
                    "the bucket name and the key"
                )
            elif code in _S3_DENIED:
                message = (
                    f"Image {source} could not be read ({_denied(code)}): grant s3:GetObject "
                    f"on it to the S3Bucket block's AWS credentials (and s3:ListBucket on "
                    f"{bucket_name}, without which a missing key also looks like AccessDenied)"
                )
            else:
                message = (
                    f"Image {source} could not be checked (S3 answered {code}): check the "
                    "S3Bucket block's AWS credentials and region"
                )
            raise KandinskyImageError(
                message + _NOTHING_SUBMITTED, url=source, status_code=status
            ) from exc
        except BotoCoreError as exc:
            raise _s3_unreachable(source, "could not be checked", exc) from exc
        return self._presign(client, source, bucket_name, key, uploaded=False)

    def _upload_and_presign(
        self, client: Any, source: str, image: _ImageFile, key: str
    ) -> PreparedImage:
        """Upload the file unless the same bytes are at ``key``, then presign (blocking)."""
        from botocore.exceptions import BotoCoreError, ClientError

        assert self.bucket is not None
        bucket_name = self.bucket.bucket_name
        uri = f"s3://{bucket_name}/{key}"
        try:
            try:
                head = client.head_object(Bucket=bucket_name, Key=key)
            except ClientError as exc:
                if _s3_error(exc)[0] not in _S3_ABSENT:
                    raise
                stored = None
            else:
                stored = head.get("Metadata", {}).get("sha256")
            uploaded = stored != image.sha256
            if uploaded:
                if stored is not None:
                    logger.warning(
                        "%s records sha256 %s, not the one in its name: uploading %s again",
                        uri,
                        stored[:12],
                        source,
                    )
                with image.path.open("rb") as body:
                    client.put_object(
                        Bucket=bucket_name,
                        Key=key,
                        Body=body,
                        ContentLength=image.size,
                        ContentType=image.content_type,
                        Metadata={"sha256": image.sha256},
                    )
                logger.debug("Uploaded %s to %s (%d bytes)", source, uri, image.size)
        except ClientError as exc:
            code, status = _s3_error(exc)
            if code in _S3_DENIED:
                way_out = (
                    f"grant s3:GetObject and s3:PutObject on s3://{bucket_name}/"
                    f"{self.prefix + '/' if self.prefix else ''}* to the S3Bucket block's AWS "
                    "credentials"
                )
            else:
                way_out = "check the S3Bucket block's bucket, AWS credentials and region"
            raise KandinskyImageError(
                f"Upload of image file {source!r} to {uri} failed ({_denied(code)}): "
                f"{way_out}{_NOTHING_SUBMITTED}",
                url=source,
                status_code=status,
            ) from exc
        except BotoCoreError as exc:
            raise _s3_unreachable(source, f"could not be uploaded to {uri}", exc) from exc
        except OSError as exc:
            raise _unreadable_file(source, image.path, exc) from exc
        return self._presign(client, source, bucket_name, key, uploaded=uploaded)

    def _presign(
        self, client: Any, source: str, bucket_name: str, key: str, *, uploaded: bool
    ) -> PreparedImage:
        from botocore.exceptions import BotoCoreError

        # Taken before signing and rounded down to the second as signers do (an ``Expires``
        # or ``X-Amz-Date`` in whole seconds): the link works at least until expires_at.
        now = datetime.now(timezone.utc).replace(microsecond=0)
        expires_at = now + timedelta(seconds=self.expires_seconds)
        try:
            url = client.generate_presigned_url(
                "get_object",
                Params={"Bucket": bucket_name, "Key": key},
                ExpiresIn=self.expires_seconds,
            )
        except BotoCoreError as exc:
            raise _s3_unreachable(source, "could not be presigned", exc) from exc
        return PreparedImage(source, str(url), uploaded=uploaded, expires_at=expires_at)


def _read_image_file(source: str) -> _ImageFile:
    """Hash a local file in chunks and recognise its format (blocking)."""
    path = Path(source).expanduser()
    digest = hashlib.sha256()
    head = b""
    size = 0
    try:
        with path.open("rb") as handle:
            while chunk := handle.read(DEFAULT_CHUNK_SIZE):
                if len(head) < IMAGE_SNIFF_BYTES:
                    head += chunk[: IMAGE_SNIFF_BYTES - len(head)]
                digest.update(chunk)
                size += len(chunk)
    except OSError as exc:
        raise _unreadable_file(source, path, exc) from exc
    kind = _sniff(head)
    if kind is None:
        what = f"starts with {_preview(head)}" if head else "is empty"
        raise KandinskyImageError(
            f"Image file {source!r} is not an image (it {what}): pass a PNG, JPEG or WebP "
            f"file{_NOTHING_SUBMITTED}",
            url=source,
        )
    return _ImageFile(path, digest.hexdigest(), size, kind)


def _unreadable_file(source: str, path: Path, exc: OSError) -> KandinskyImageError:
    where = "" if path.is_absolute() else f" (looked for {Path.cwd() / path})"
    if isinstance(exc, FileNotFoundError):
        message = f"Image file {source!r} does not exist{where}: check the path"
    elif isinstance(exc, IsADirectoryError):
        message = f"Image file {source!r} is a directory{where}: name the image file in it"
    elif isinstance(exc, PermissionError):
        message = (
            f"Image file {source!r} cannot be read{where}: permission denied; let the "
            "worker's user read it"
        )
    else:
        message = (
            f"Image file {source!r} could not be read{where} "
            f"({type(exc).__name__}: {exc.strerror or exc})"
        )
    return KandinskyImageError(message + _NOTHING_SUBMITTED, url=source)


def _parse_s3_uri(source: str, rest: str) -> tuple[str, str]:
    """The bucket and key of ``s3://bucket/key``; the key is taken as written (no decoding)."""
    bucket_name, _, key = rest.partition("/")
    if not bucket_name or not key or key.endswith("/"):
        raise KandinskyImageError(
            f"Image {source!r} is not an S3 object URI: write it as s3://bucket/key, with the "
            f"object's full key{_NOTHING_SUBMITTED}",
            url=source,
        )
    return bucket_name, key


def _no_bucket(source: str, *, s3: bool) -> KandinskyImageError:
    if s3:
        what = f"Image {source} is a private S3 object"
        action = "whose AWS credentials can read it, so that a link to it is presigned"
    else:
        what = f"Image {source!r} is a local file"
        action = "so that it is uploaded and a link to it presigned"
    return KandinskyImageError(
        f"{what}, but the gateway can only fetch a public http(s) URL: pass an S3Bucket "
        f'(bucket=S3Bucket.load("BLOCK_NAME")) {action}{_NOTHING_SUBMITTED}',
        url=source,
    )


def _s3_error(exc: Any) -> tuple[str, int | None]:
    """The error code and HTTP status of a botocore ``ClientError``."""
    response = getattr(exc, "response", None) or {}
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    code = str(response.get("Error", {}).get("Code") or status or "an error")
    return code, status if isinstance(status, int) else None


def _denied(code: str) -> str:
    """``AccessDenied`` for the bare 403 that S3 answers to a HEAD."""
    return "AccessDenied" if code == "403" else code


def _s3_unreachable(source: str, what: str, exc: Exception) -> KandinskyImageError:
    return KandinskyImageError(
        f"Image {source} {what} ({type(exc).__name__}: {_first_line(exc)}): check the "
        f"S3Bucket block's AWS credentials and endpoint{_NOTHING_SUBMITTED}",
        url=source,
    )


def _first_line(exc: BaseException) -> str:
    return redact_url((str(exc).strip().splitlines() or [""])[0][:200])


__all__ = [
    "DEFAULT_IMAGE_CHECK_CONCURRENCY",
    "DEFAULT_IMAGE_PREPARE_CONCURRENCY",
    "IMAGE_CHECK_DEADLINE_FACTOR",
    "IMAGE_SNIFF_BYTES",
    "MAX_IMAGE_CHECK_REDIRECTS",
    "REDACTED",
    "SECRET_QUERY_PARAMS",
    "CheckedImage",
    "PreparedImage",
    "check_image",
    "check_images",
    "prepare_image",
    "prepare_images",
    "presign_lifetime",
    "redact_url",
]
