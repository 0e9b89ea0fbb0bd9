"""Checking an input image URL before the submit, so that a bad one is never billed.

Every submit to the gateway is billed, and a job that ends FAILED stays charged. A mistyped
``image_url`` (a 404 from the image host, a login page, a 403 on a private bucket) is accepted
by the gateway, fails when its worker fetches the image, and is paid for all the same. So the
worker fetches the image URL itself first: anything but an image raises
:class:`~prefect_kandinsky.gateway.exceptions.KandinskyImageError`
naming the URL, what came back and
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
    from prefect_kandinsky.gateway.exceptions import KandinskyImageError
    from prefect_kandinsky.media.images import check_image, check_images

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
    from prefect_kandinsky.media.uploads import prepare_images, presign_lifetime

    outcomes = await prepare_images(
        (row["image"] for row in rows),  # "photos/a.png", "s3://team-bucket/b.jpg", "https://..."
        bucket=await S3Bucket.aload("BLOCK_NAME"),
        expires_seconds=presign_lifetime(wait_timeout_seconds=1800),
    )
    image_url = outcomes[row["image"]].url  # or a KandinskyImageError naming the row's image
    ```
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from functools import cache, partial
from http.cookiejar import CookieJar, DefaultCookiePolicy
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, TypeVar
from urllib.parse import unquote_plus, urlsplit, urlunsplit

import anyio
import httpx

from prefect_kandinsky.gateway.constants import (
    API_KEY_HEADER,
    DEFAULT_IMAGE_CHECK_TIMEOUT_SECONDS,
    MAX_IMAGE_CHECK_BYTES,
)
from prefect_kandinsky.gateway.exceptions import KandinskyImageError
from prefect_kandinsky.gateway.tls import default_tls_context
from prefect_kandinsky.media.addresses import (
    ALLOW_PRIVATE_IMAGES_ENV,
    ALLOW_PRIVATE_IMAGES_PARAMETER,
    AddressPolicy,
    AddressRefused,
    AddressUnresolved,
    PinnedURL,
    pin,
)

if TYPE_CHECKING:
    # Imported for annotations only: prefect-aws (and boto3) load only when a bucket is used.
    pass

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
        "id_token",
        "refresh_token",
        "auth",
        "api_key",
        "apikey",
        "key",
        "secret",
        "password",
        "policy",
        "x-goog-security-token",
        "googleaccessid",
    }
)
"""Query parameters (lower case) whose values :func:`redact_url` hides: presigned URLs of
S3, Google Cloud Storage, CloudFront and Azure carry their signature in these."""

NOTHING_SUBMITTED = " (nothing was submitted)"
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
_MAX_SHOWN_TYPE = 80
_MEDIA_TYPE = re.compile(r"[a-z0-9][a-z0-9.+-]*/[a-z0-9][a-z0-9.+-]*")


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
    allow_private_images: bool | None = None,
    gateway_url: str | None = None,
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
        allow_private_images: Allow image hosts on loopback and private addresses (never
            metadata, link-local, multicast or reserved ones). None reads the environment
            variable ``KANDINSKY_ALLOW_PRIVATE_IMAGES`` (``1``, ``true`` or ``yes``);
            by default such hosts are refused before any connection (see
            :mod:`prefect_kandinsky.media.addresses`).
        gateway_url: The gateway's base URL. When it is on loopback (the emulator),
            image hosts on loopback are allowed, so offline runs work without the opt-in.

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
        from prefect_kandinsky.media.images import check_image

        @flow
        async def check(image_url: str) -> str:
            image = await check_image(image_url)
            return image.kind
        ```
    """
    target = absolute_http_url(url)
    policy = AddressPolicy.for_images(
        allow_private_images=allow_private_images, gateway_url=gateway_url
    )
    if client is not None:
        _refuse_credentials(client)
        return await _check(client, url, target, read_content, timeout, max_bytes, policy)
    async with _plain_client(timeout, connections=1) as own:
        return await _check(own, url, target, read_content, timeout, max_bytes, policy)


async def check_images(
    urls: Iterable[str],
    *,
    concurrency: int = DEFAULT_IMAGE_CHECK_CONCURRENCY,
    # The socket timeout of each connect and read, as in httpx, not a deadline of the call.
    timeout: float = DEFAULT_IMAGE_CHECK_TIMEOUT_SECONDS,  # noqa: ASYNC109
    client: httpx.AsyncClient | None = None,
    allow_private_images: bool | None = None,
    gateway_url: str | None = None,
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
        allow_private_images: Allow private image hosts (see :func:`check_image`).
        gateway_url: The gateway's base URL (see :func:`check_image`).

    Returns:
        One entry per distinct URL, in the order first given: its :class:`CheckedImage`, or
        the :class:`~prefect_kandinsky.gateway.exceptions.KandinskyImageError` it failed with.

    Raises:
        ValueError: ``concurrency`` is below 1, or ``client`` carries credentials.

    Example:
        ```python
        from prefect import flow
        from prefect_kandinsky.gateway.exceptions import KandinskyImageError
        from prefect_kandinsky.media.images import check_images

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
    check = partial(
        check_image,
        timeout=timeout,
        allow_private_images=allow_private_images,
        gateway_url=gateway_url,
    )
    if client is not None:
        _refuse_credentials(client)
        return await gather_outcomes(distinct, workers, partial(check, client=client))
    async with _plain_client(timeout, connections=workers) as own:
        return await gather_outcomes(distinct, workers, partial(check, client=own))


async def gather_outcomes(
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
    ``X-Amz-Credential``, ``Signature``, ``sig``, ``token``...) and sometimes in the
    fragment; the rest of the URL is kept as written so that it still says which image it is.
    A URL that cannot be parsed is replaced whole.

    Use it for every URL written to a log, an error or a result, and as the *text* of a
    markdown link whose target is the full URL: a presigned link shown in an artifact then
    keeps working while its text shows no signature.

    Example:
        ```python
        redact_url("https://b.s3.amazonaws.com/a.png?X-Amz-Expires=60&X-Amz-Signature=9f2c")
        # 'https://b.s3.amazonaws.com/a.png?X-Amz-Expires=60&X-Amz-Signature=REDACTED'
        ```
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return f"<a URL that cannot be parsed, {REDACTED}>"
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{REDACTED}@{netloc.rpartition('@')[2]}"
    query = "&".join(_redact_pair(pair) for pair in parts.query.split("&"))
    # A token in the fragment (#access_token=... of an OAuth redirect) is hidden alike.
    fragment = "&".join(_redact_pair(pair) for pair in parts.fragment.split("&"))
    if (netloc, query, fragment) == (parts.netloc, parts.query, parts.fragment):
        return url
    return urlunsplit((parts.scheme, netloc, parts.path, query, fragment))


def _redact_pair(pair: str) -> str:
    name, equals, _ = pair.partition("=")
    if equals and unquote_plus(name).strip().lower() in SECRET_QUERY_PARAMS:
        return f"{name}={REDACTED}"
    return pair


def absolute_http_url(url: object) -> httpx.URL:
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
        f"https://example.com/image.png{NOTHING_SUBMITTED}",
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
        verify=default_tls_context(),
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
    policy: AddressPolicy,
) -> CheckedImage:
    shown = redact_url(url)
    deadline = io_timeout * IMAGE_CHECK_DEADLINE_FACTOR
    end = anyio.current_time() + deadline
    response: httpx.Response | None = None
    with anyio.CancelScope(deadline=end):
        try:
            response = await _open(client, target, io_timeout, shown, policy)
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
    client: httpx.AsyncClient,
    target: httpx.URL,
    io_timeout: float,
    shown: str,
    policy: AddressPolicy,
) -> httpx.Response:
    """GET ``target``, following redirects by hand: each hop is resolved, checked and pinned."""
    for hop in range(MAX_IMAGE_CHECK_REDIRECTS + 1):
        pinned = await _pinned(target, shown, policy, redirected=hop > 0)
        request = client.build_request(
            "GET",
            pinned.url,
            headers={**_headers(), **pinned.headers},
            timeout=httpx.Timeout(io_timeout),
            extensions=pinned.extensions,
        )
        response = await client.send(request, stream=True, follow_redirects=False)
        if not response.has_redirect_location:
            return response
        await response.aclose()
        try:
            following = target.join(response.headers["location"])
        except (httpx.InvalidURL, UnicodeError):
            following = None
        if following is None or following.scheme not in ("http", "https") or not following.host:
            raise KandinskyImageError(
                f"image_url {shown} redirected to a location that is not an http(s) URL: "
                f"{_CHECK_THE_URL}{NOTHING_SUBMITTED}",
                url=shown,
                status_code=response.status_code,
            )
        target = following
    raise KandinskyImageError(
        f"image_url {shown} redirected more than {MAX_IMAGE_CHECK_REDIRECTS} times: "
        f"{_CHECK_THE_URL}{NOTHING_SUBMITTED}",
        url=shown,
        status_code=response.status_code,
    )


async def _pinned(
    target: httpx.URL, shown: str, policy: AddressPolicy, *, redirected: bool
) -> PinnedURL:
    """``target`` pinned to a checked address, or the refusal as a KandinskyImageError."""
    try:
        return await pin(target, policy)
    except AddressUnresolved as exc:
        raise _unreachable(shown, f"the host {target.host} could not be resolved") from exc
    except AddressRefused as exc:
        hop = " (after a redirect)" if redirected else ""
        way_out = (
            f"host the image on a public address, or allow private image hosts with "
            f"{ALLOW_PRIVATE_IMAGES_PARAMETER}=True or {ALLOW_PRIVATE_IMAGES_ENV}=1"
            if exc.opt_in
            else "host the image on a public address; this kind is never fetched"
        )
        raise KandinskyImageError(
            f"image_url {shown} is refused: its host{hop} resolves to {exc.kind}, which the "
            f"worker does not fetch from: {way_out}{NOTHING_SUBMITTED}",
            url=shown,
        ) from exc


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
        f"{answered}: {way_out}{NOTHING_SUBMITTED}",
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
                if not wanted or sniff_image_kind(bytes(data[:IMAGE_SNIFF_BYTES])) is None:
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
    kind = sniff_image_kind(body.data[:IMAGE_SNIFF_BYTES])
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
            shown_media_type(media_type),
        )
        return CheckedImage(url, declared, _kind_from_type(media_type), length, None)
    answered = (
        f"image_url {shown} answered {response.status_code} with "
        f"{shown_media_type(media_type)} ({_shown_size(size)})"
    )
    if media_type == "image/svg+xml":
        message = f"{answered}, a vector image: pass a raster image (PNG, JPEG or WebP) instead"
    elif body.data:
        if media_type.startswith("image/"):
            message = f"{answered} but the bytes are not an image: {_CHECK_THE_URL}"
        elif media_type in ("text/html", "application/xhtml+xml"):
            message = f"{answered}, not an image (a login or error page?): {_CHECK_THE_URL}"
        else:
            message = f"{answered}, not an image: {_CHECK_THE_URL}"
    elif body.failure is None:
        message = f"{answered} but an empty body, not an image: {_CHECK_THE_URL}"
    else:
        message = (
            f"{answered}, not an image (the body could not be read: {body.failure}): "
            f"{_CHECK_THE_URL}"
        )
    raise KandinskyImageError(
        message + NOTHING_SUBMITTED,
        url=shown,
        status_code=response.status_code,
        content_type=declared,
    )


def sniff_image_kind(head: bytes) -> str | None:
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


def shown_media_type(media_type: str) -> str:
    """A content type fit for a message: a plain ``type/subtype`` as given, else a description
    (a host's header is its own text, not quoted beyond a well-formed type)."""
    if not media_type:
        return "no content type"
    if len(media_type) <= _MAX_SHOWN_TYPE and _MEDIA_TYPE.fullmatch(media_type):
        return media_type
    return "a malformed content type"


def _shown_size(size: int | None) -> str:
    return f"{size} bytes" if size is not None else "size not declared"


def _content_length(response: httpx.Response) -> int | None:
    if response.headers.get("content-encoding", "identity").lower() != "identity":
        return None
    value = response.headers.get("content-length", "").strip()
    return int(value) if value.isdigit() else None


def _reason(response: httpx.Response) -> str:
    return httpx.codes.get_reason_phrase(response.status_code) or "(an unregistered status)"


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
        f"{NOTHING_SUBMITTED}",
        url=shown,
    )
