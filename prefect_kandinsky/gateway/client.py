"""Async client of the Kandinsky 5.0 Pro gateway: submit, status, wait, media streaming.

The client is the only place that speaks HTTP to the gateway, and the only place that retries:

- status reads and media downloads retry on 429 (honouring ``Retry-After``), 5xx and
  connection errors, with capped exponential backoff and jitter;
- a submit is retried only where the gateway cannot have queued the job (429, a connection
  that was never established); anything after which the job may exist (a 5xx, a connection
  cut after the request was sent, a 2xx without a request id) raises
  :class:`~prefect_kandinsky.gateway.exceptions.KandinskySubmitUncertainError` and is never resent,
  because a second submit is a second bill;
- a media download cut short resumes with a Range request at the byte after the last one
  received.

The subscription key is sent only to the gateway's origin, never to the media CDN.

Example:
    ```python
    from prefect_kandinsky import KandinskyClient, VideoRequest

    async with KandinskyClient(api_key="...") as client:
        job = await client.submit(VideoRequest(prompt="...", image_url="https://..."))
        status = await client.wait(job.request_id)
        async with client.open_media(status.media_urls[0]) as media:
            async for chunk in media.chunks():
                ...
    ```
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from email.utils import parsedate_to_datetime
from typing import Any, Literal
from urllib.parse import quote, urlsplit, urlunsplit

import httpx
from pydantic import SecretStr, ValidationError

from prefect_kandinsky.gateway.constants import (
    API_KEY_HEADER,
    DEFAULT_BASE_URL,
    DEFAULT_CHUNK_SIZE,
    DEFAULT_CONNECT_TIMEOUT_SECONDS,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_MEDIA_BYTES,
    DEFAULT_MAX_POLL_INTERVAL,
    DEFAULT_MAX_RESPONSE_BYTES,
    DEFAULT_MAX_RETRIES,
    DEFAULT_MEDIA_RESUMES,
    DEFAULT_MEDIA_TIMEOUT_SECONDS,
    DEFAULT_POLL_BACKOFF,
    DEFAULT_POLL_INTERVAL,
    DEFAULT_RETRY_INITIAL_DELAY,
    DEFAULT_RETRY_JITTER,
    DEFAULT_RETRY_MAX_DELAY,
    DEFAULT_TIMEOUT_SECONDS,
    DEFAULT_WAIT_TIMEOUT_SECONDS,
    MAX_MEDIA_BYTES_ENV,
    MAX_RETRY_AFTER_SECONDS,
    WEBHOOK_MODE_HEADER,
    WEBHOOK_URL_HEADER,
)
from prefect_kandinsky.gateway.exceptions import (
    KandinskyAPIError,
    KandinskyAuthenticationError,
    KandinskyBadRequestError,
    KandinskyConnectionError,
    KandinskyError,
    KandinskyGenerationFailedError,
    KandinskyInsufficientBalanceError,
    KandinskyMediaError,
    KandinskyMediaExpiredError,
    KandinskyNotFoundError,
    KandinskyPermissionDeniedError,
    KandinskyRateLimitError,
    KandinskyServerError,
    KandinskySubmitServerError,
    KandinskySubmitUncertainError,
    KandinskySystemError,
    KandinskyTimeoutError,
    KandinskyWaitTimeoutError,
)
from prefect_kandinsky.gateway.models import (
    DEFAULT_MODEL_ID,
    JobStatus,
    StatusResponse,
    SubmitResponse,
    VideoRequest,
    WebhookMode,
    status_path,
    submit_path,
)
from prefect_kandinsky.gateway.tls import default_tls_context

_Kind = Literal["submit", "status", "media"]
StatusCallback = Callable[[StatusResponse], "Awaitable[None] | None"]

_API_ERRORS: dict[int, type[KandinskyAPIError]] = {
    400: KandinskyBadRequestError,
    401: KandinskyAuthenticationError,
    402: KandinskyInsufficientBalanceError,
    403: KandinskyPermissionDeniedError,
    404: KandinskyNotFoundError,
    429: KandinskyRateLimitError,
}
_WAY_OUT: dict[int, str] = {
    400: "check the request parameters and the model id",
    401: "check the api_key of your KandinskyCredentials block",
    402: "add funds to the gateway wallet, then submit again",
    403: "check that the subscription key may use this model",
    404: "check the request id and the gateway base_url",
}
# Transport errors raised before a single byte of the request left this machine.
TRANSIENT_STATUS_ERRORS = (KandinskyRateLimitError, KandinskyServerError, KandinskyConnectionError)
"""Failures of a status read that can pass: a wait reads again instead of ending."""
_NEVER_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
_SHORT_READ = (httpx.RemoteProtocolError, httpx.ReadError, httpx.ReadTimeout)
_BODY_HEADERS = frozenset({"content-encoding", "content-length", "transfer-encoding"})
"""Headers of the raw body, dropped once the body is read and decoded."""

logger = logging.getLogger("prefect_kandinsky.gateway.client")


def _origin(url: str | httpx.URL) -> tuple[str, str, int | None]:
    parsed = httpx.URL(str(url))
    return (parsed.scheme, parsed.host, parsed.port)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (seconds or an HTTP date)."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            moment = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = moment.timestamp() - time.time()
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_SECONDS)


def raise_for_outcome(status: StatusResponse) -> StatusResponse:
    """Return a COMPLETED status; raise the matching job error for FAILED or ERROR."""
    if status.status is JobStatus.FAILED:
        raise KandinskyGenerationFailedError(
            f"Generation {status.request_id} failed: {status.error or 'no reason given'}",
            request_id=status.request_id,
            status=status.status,
            error=status.error,
        )
    if status.status is JobStatus.ERROR:
        raise KandinskySystemError(
            f"Generation {status.request_id} ended with a system error (not charged): "
            f"{status.error or 'no reason given'}",
            request_id=status.request_id,
            status=status.status,
            error=status.error,
        )
    return status


class MediaStream:
    """An open media download that resumes a truncated body with Range requests.

    Attributes:
        url: The media URL.
        content_type: The CDN's Content-Type, if any.
        content_length: The declared length in bytes of the whole file, if any.
        offset: The byte the body starts at: 0, or where an earlier download stopped
            (``open_media(start=...)``) when the CDN resumed it there.
        resumes: How many Range requests resumed a truncated body so far.
    """

    def __init__(
        self,
        client: KandinskyClient,
        url: str,
        response: httpx.Response,
        *,
        request_id: str | None,
        chunk_size: int,
        max_resumes: int,
        offset: int = 0,
        max_bytes: int = DEFAULT_MAX_MEDIA_BYTES,
    ) -> None:
        self.url = url
        self.content_type = response.headers.get("content-type")
        length = response.headers.get("content-length")
        self.offset = offset
        self.content_length = offset + int(length) if length and length.isdigit() else None
        self.resumes = 0
        self._etag = response.headers.get("etag")
        self._client = client
        self._response = response
        self._request_id = request_id
        self._chunk_size = chunk_size
        self._max_resumes = max_resumes
        self.max_bytes = max_bytes
        if self.content_length is not None and self.content_length > max_bytes:
            raise self._too_large(f"declares {self.content_length} bytes")

    def _too_large(self, what: str) -> KandinskyMediaError:
        return KandinskyMediaError(
            f"Download of {self.url}"
            + (f" for {self._request_id}" if self._request_id else "")
            + f" {what}, over the limit of {self.max_bytes} bytes; it was stopped: raise "
            f"max_media_bytes (or set {MAX_MEDIA_BYTES_ENV}) if the video is this large",
            request_id=self._request_id,
            url=self.url,
        )

    async def chunks(self) -> AsyncIterator[bytes]:
        """Yield the body (from ``offset``) as it arrives, in chunks of at most ``chunk_size``.

        Every byte is yielded as soon as it arrived, never held back for a fuller chunk, so
        a process killed mid-download has handed over all it received (a caller that writes
        each chunk can resume from its file); a cut is resumed at the next byte.
        """
        received = self.offset
        while True:
            failure: Exception | None = None
            try:
                # The raw stream hands over each byte as it arrives (with Accept-Encoding:
                # identity raw bytes are the file's bytes); aiter_bytes(chunk_size) would hold
                # back a partial chunk and lose it when the connection breaks.
                async for data in self._response.aiter_raw():
                    received += len(data)
                    if received > self.max_bytes:
                        raise self._too_large(f"goes on past {self.max_bytes} bytes")
                    for start in range(0, len(data), self._chunk_size):
                        yield data[start : start + self._chunk_size]
            except _SHORT_READ as exc:
                failure = exc
            finally:
                await self._response.aclose()
            if failure is None and (self.content_length is None or received >= self.content_length):
                break
            if self.content_length is None or self.resumes >= self._max_resumes:
                raise KandinskyMediaError(
                    f"Download of {self.url} stopped after {received} of "
                    f"{self.content_length or 'unknown'} bytes"
                    + (f" for {self._request_id}" if self._request_id else "")
                    + f" and could not be resumed ({self.resumes} resumes)",
                    request_id=self._request_id,
                    url=self.url,
                ) from failure
            self.resumes += 1
            self._client._log.info(
                "Media download of %s cut at %d of %d bytes; resuming with a Range request",
                self.url,
                received,
                self.content_length,
            )
            self._response = await self._client._open_media_response(
                self.url, start=received, request_id=self._request_id, if_range=self._etag
            )
            if received and not _resumes_at(self._response, received):
                await self._response.aclose()
                raise KandinskyMediaError(
                    f"Download of {self.url} was cut at {received} bytes and the CDN did not "
                    f"resume it there (answered {self._response.status_code}, Content-Range "
                    f"{self._response.headers.get('content-range')!r}; the file may have "
                    "changed): persist it again",
                    request_id=self._request_id,
                    url=self.url,
                    status_code=self._response.status_code,
                )


class KandinskyClient:
    """Async client of the Kandinsky 5.0 Pro gateway.

    Args:
        api_key: The gateway subscription key; sent only to ``base_url``'s origin. None
            makes a media-only client that can download but not call the gateway.
        base_url: The gateway's origin.
        model_id: The gateway's model id.
        timeout: Read/write timeout of one gateway request, in seconds.
        connect_timeout: Connect timeout, in seconds.
        media_timeout: Read timeout between two chunks of a media download, in seconds.
        max_retries: Retries of one call on 429, 5xx and connection errors.
        retry_initial_delay: First backoff delay, in seconds; it doubles per retry.
        retry_max_delay: Cap of one backoff delay, in seconds.
        max_connections: Connections kept open at most, to the gateway and the CDN together;
            size it to the calls made at once (a batch polls many jobs concurrently).
        allow_http_webhooks: Accept ``http://`` webhook URLs (for a local emulator only;
            the gateway rejects them).
        max_response_bytes: The most bytes of one gateway answer that are read (1 MiB by
            default); a larger answer raises instead of filling the worker's memory.
        transport: An httpx transport, e.g. the emulator's in-process one.
        logger: Where retries and resumes are logged (a Prefect run logger in tasks).
        sleep: The coroutine used to wait; tests pass a fake.
        clock: The monotonic clock used for deadlines; tests pass a fake.
    """

    def __init__(
        self,
        *,
        api_key: str | SecretStr | None,
        base_url: str = DEFAULT_BASE_URL,
        model_id: str = DEFAULT_MODEL_ID,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_SECONDS,
        media_timeout: float = DEFAULT_MEDIA_TIMEOUT_SECONDS,
        max_retries: int = DEFAULT_MAX_RETRIES,
        retry_initial_delay: float = DEFAULT_RETRY_INITIAL_DELAY,
        retry_max_delay: float = DEFAULT_RETRY_MAX_DELAY,
        allow_http_webhooks: bool = False,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        transport: httpx.AsyncBaseTransport | None = None,
        logger: logging.Logger | logging.LoggerAdapter[Any] | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        key = SecretStr(api_key) if isinstance(api_key, str) else api_key
        if key is not None and not key.get_secret_value().strip():
            raise ValueError("api_key must be a non-empty gateway subscription key")
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"base_url must be an absolute http(s) URL; got {base_url!r}")
        if max_retries < 0:
            raise ValueError(f"max_retries must be 0 or more; got {max_retries}")
        self._api_key = key
        self.base_url = base_url.rstrip("/")
        self.model_id = model_id
        self.max_retries = max_retries
        self.retry_initial_delay = retry_initial_delay
        self.retry_max_delay = retry_max_delay
        self.allow_http_webhooks = allow_http_webhooks
        if max_response_bytes < 1:
            raise ValueError(f"max_response_bytes must be 1 or more; got {max_response_bytes}")
        self.max_response_bytes = max_response_bytes
        self._media_timeout = httpx.Timeout(media_timeout, connect=connect_timeout)
        self._gateway_origin = _origin(self.base_url)
        self._log: logging.Logger | logging.LoggerAdapter[Any] = logger or globals()["logger"]
        self._sleep = sleep
        self._clock = clock
        self._http = httpx.AsyncClient(
            transport=transport,
            timeout=httpx.Timeout(timeout, connect=connect_timeout),
            limits=httpx.Limits(
                max_connections=max_connections,
                max_keepalive_connections=max_connections,
            ),
            follow_redirects=False,
            event_hooks={"request": [self._guard_key]},
            verify=default_tls_context(),
        )

    def __repr__(self) -> str:
        return f"KandinskyClient(base_url={self.base_url!r}, model_id={self.model_id!r})"

    async def __aenter__(self) -> KandinskyClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the underlying connections."""
        await self._http.aclose()

    # -- gateway calls -------------------------------------------------------------------

    async def submit(
        self,
        request: VideoRequest | Mapping[str, Any],
        *,
        webhook_url: str | None = None,
        webhook_mode: WebhookMode | None = None,
    ) -> SubmitResponse:
        """Queue one generation and return its request id; every call is billed.

        Args:
            request: The generation; a mapping is validated as a ``VideoRequest`` first.
            webhook_url: An https endpoint the gateway POSTs the final status to.
            webhook_mode: ``terminal`` (one callback at the end) or ``sync`` (one per poll).

        Raises:
            KandinskySubmitUncertainError: the gateway may have queued (and billed) the job:
                a 5xx (as ``KandinskySubmitServerError``, also a ``KandinskyServerError``), a
                connection cut after the request was sent, or a 2xx without a request id. It
                is not resent.
            KandinskyAPIError: the gateway refused the request (subclass per status code).
        """
        video = request if isinstance(request, VideoRequest) else VideoRequest(**request)
        headers = {"Cache-Control": "no-cache"}
        if webhook_url is not None:
            self._check_webhook_url(webhook_url)
            headers[WEBHOOK_URL_HEADER] = webhook_url
        if webhook_mode is not None:
            if webhook_mode not in ("terminal", "sync"):
                raise ValueError(
                    f"webhook_mode must be one of terminal, sync; got {webhook_mode!r}"
                )
            headers[WEBHOOK_MODE_HEADER] = webhook_mode
        response = await self._send(
            "POST",
            self.base_url + submit_path(self.model_id),
            kind="submit",
            json=video.to_payload(),
            headers=headers,
        )
        try:
            return SubmitResponse.model_validate(response.json())
        except (ValueError, ValidationError) as exc:
            error, gateway_message = _error_body(response)
            said = ": ".join(part for part in (error, gateway_message) if part)
            raise KandinskySubmitUncertainError(
                self._redact(
                    f"The submit to {self.base_url} was answered {response.status_code} "
                    + (f"({said}) " if said else "")
                    + "without a readable request_id and was not resent: the job may exist "
                    "and be billed: "
                    f"{_check_before_resubmitting(webhook_url is not None)}"
                ),
                status_code=response.status_code,
                error=error,
                gateway_message=gateway_message,
            ) from exc

    async def get_status(self, request_id: str) -> StatusResponse:
        """Read a generation's status once (retried on transient faults)."""
        if not request_id or not request_id.strip():
            raise ValueError("request_id must be a non-empty gateway request id")
        response = await self._send(
            "GET",
            self.base_url + status_path(quote(request_id, safe="")),
            kind="status",
            request_id=request_id,
        )
        try:
            return StatusResponse.model_validate(response.json())
        except (ValueError, ValidationError) as exc:
            raise KandinskyServerError(
                f"The gateway's status answer for {request_id} could not be read: {exc}",
                status_code=response.status_code,
                request_id=request_id,
            ) from exc

    async def wait(
        self,
        request_id: str,
        *,
        timeout: float = DEFAULT_WAIT_TIMEOUT_SECONDS,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        max_poll_interval: float = DEFAULT_MAX_POLL_INTERVAL,
        on_change: StatusCallback | None = None,
        on_poll: StatusCallback | None = None,
        raise_on_failure: bool = True,
        idle: Callable[[float], Awaitable[object]] | None = None,
    ) -> StatusResponse:
        """Poll until the generation reaches a terminal status, or the deadline passes.

        The first read is immediate, the next comes after about ``poll_interval`` seconds;
        the interval then grows by half each time up to ``max_poll_interval``, and each
        wait is shortened by up to a quarter at random so that many waiters do not poll in
        step. The deadline is monotonic: time spent in requests and retries counts.

        A status read that fails for a reason that can pass (429, 5xx, an unreadable answer,
        a connection error), after the client's own retries, costs a pause, not the wait:
        it is logged as a warning and read again after the gateway's ``Retry-After`` or a
        backoff from ``poll_interval`` up to ``max_poll_interval``, until the deadline. Only
        answers that cannot change (400, 401, 403, 404) end the wait early.

        Args:
            request_id: The generation to wait for.
            timeout: Seconds before :class:`KandinskyWaitTimeoutError` is raised.
            poll_interval: First wait between two reads, in seconds.
            max_poll_interval: Cap of the wait between two reads, in seconds.
            on_change: Called (sync or async) once for each new status.
            on_poll: Called (sync or async) after every read.
            raise_on_failure: Raise for FAILED and ERROR (the default) or return them.
            idle: Awaited between two reads instead of the backoff sleep, with the seconds
                left before the deadline; e.g. a wait for an event about the job.

        Raises:
            KandinskyGenerationFailedError: the generation ended FAILED.
            KandinskySystemError: the generation ended ERROR (not charged).
            KandinskyWaitTimeoutError: the deadline passed (also while status reads kept
                failing); wait again with the same id.
            KandinskyAPIError: a status read was refused for good (400, 401, 403, 404).
        """
        if poll_interval <= 0 or max_poll_interval <= 0:
            raise ValueError("poll_interval and max_poll_interval must be positive")
        started = self._clock()
        deadline = started + timeout
        interval = min(poll_interval, max_poll_interval)
        last: StatusResponse | None = None
        failures = 0
        while True:
            try:
                current = await self.get_status(request_id)
            except TRANSIENT_STATUS_ERRORS as exc:
                failures += 1
                await self._pause_after_failure(
                    exc,
                    request_id=request_id,
                    failures=failures,
                    delay=min(poll_interval * 2.0**failures, max_poll_interval),
                    started=started,
                    deadline=deadline,
                    last=last,
                )
                continue
            failures = 0
            if last is None or current.status is not last.status:
                await _call(on_change, current)
            await _call(on_poll, current)
            last = current
            if current.status.is_terminal:
                return raise_for_outcome(current) if raise_on_failure else current
            remaining = deadline - self._clock()
            if remaining <= 0:
                waited = self._clock() - started
                raise KandinskyWaitTimeoutError(
                    f"Generation {request_id} is still {current.status.value} after "
                    f"{waited:.0f}s; it goes on at the gateway: wait again with this "
                    "request id instead of submitting a new job",
                    request_id=request_id,
                    status=current.status,
                    waited_seconds=waited,
                )
            if idle is not None:
                await idle(remaining)
                continue
            # Jitter below the capped interval, so workers that started together drift
            # apart even once every one of them polls at the cap.
            delay = interval * (1 - DEFAULT_RETRY_JITTER * random.random())
            await self._sleep(min(delay, remaining))
            interval = min(interval * DEFAULT_POLL_BACKOFF, max_poll_interval)

    async def _pause_after_failure(
        self,
        exc: KandinskyError,
        *,
        request_id: str,
        failures: int,
        delay: float,
        started: float,
        deadline: float,
        last: StatusResponse | None,
    ) -> None:
        """Sleep after a failed status read of a wait, or raise once its deadline passed."""
        now = self._clock()
        if now >= deadline:
            status = last.status.value if last is not None else "unknown"
            raise KandinskyWaitTimeoutError(
                f"Generation {request_id} was last seen {status}; its status reads kept "
                f"failing until the wait's deadline ({now - started:.0f}s; last: {exc}); it "
                "may go on at the gateway: wait again with this request id instead of "
                "submitting a new job",
                request_id=request_id,
                status=last.status if last is not None else None,
                waited_seconds=now - started,
            ) from exc
        retry_after = exc.retry_after if isinstance(exc, KandinskyRateLimitError) else None
        if retry_after is None:
            delay *= 1 - DEFAULT_RETRY_JITTER * random.random()
        else:
            delay = retry_after
        delay = min(delay, deadline - now)
        self._log.warning(
            "Status read of %s failed (%s), %d time(s) in a row; reading again in %.1fs "
            "(%.0fs left before the wait's deadline)",
            request_id,
            exc,
            failures,
            delay,
            deadline - now,
        )
        await self._sleep(delay)

    @asynccontextmanager
    async def open_media(
        self,
        url: str,
        *,
        request_id: str | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        max_resumes: int = DEFAULT_MEDIA_RESUMES,
        start: int = 0,
        max_bytes: int | None = None,
    ) -> AsyncIterator[MediaStream]:
        """Open a media URL for streaming, without the subscription key.

        Args:
            url: The media URL.
            request_id: The generation it belongs to, named in errors.
            chunk_size: Most bytes per chunk yielded by :meth:`MediaStream.chunks`.
            max_resumes: Range requests allowed to resume a body cut short.
            start: The first byte wanted, e.g. the size of a partial file an earlier process
                left; sent as a Range request. Where the CDN does not resume there, the
                stream starts at 0: read :attr:`MediaStream.offset`.
            max_bytes: The download stops with an error past this many bytes, and a
                declared ``Content-Length`` over it is refused before reading. None takes
                ``KANDINSKY_MAX_MEDIA_BYTES`` from the environment, else 2 GiB.

        Raises:
            KandinskyMediaExpiredError: the CDN answered 403 or 404.
            KandinskyMediaError: the download failed otherwise, or is over ``max_bytes``.
        """
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be 1 or more; got {chunk_size}")
        if start < 0:
            raise ValueError(f"start must be 0 or more; got {start}")
        limit = max_media_bytes_default() if max_bytes is None else max_bytes
        if limit < 1:
            raise ValueError(f"max_bytes must be 1 or more; got {max_bytes}")
        offset = start
        try:
            response = await self._open_media_response(url, start=start, request_id=request_id)
        except KandinskyMediaError as exc:
            if not (start and exc.status_code == 416):  # 416: nothing from there: start over
                raise
            response, offset = None, 0
        if offset and response is not None and not _resumes_at(response, offset):
            if response.status_code != 200:  # a 200 is the whole file: take it from byte 0
                await response.aclose()
                response = None
            offset = 0
        if response is None:
            response = await self._open_media_response(url, start=0, request_id=request_id)
        try:
            stream = MediaStream(
                self,
                url,
                response,
                request_id=request_id,
                chunk_size=chunk_size,
                max_resumes=max_resumes,
                offset=offset,
                max_bytes=limit,
            )
        except KandinskyMediaError:
            await response.aclose()
            raise
        try:
            yield stream
        finally:
            await stream._response.aclose()

    # -- internals -----------------------------------------------------------------------

    def _check_webhook_url(self, url: str) -> None:
        parts = urlsplit(url)
        allowed = ("https", "http") if self.allow_http_webhooks else ("https",)
        if parts.scheme not in allowed or not parts.netloc:
            # Only the scheme and host are quoted: a callback URL's path holds its token.
            shown = urlunsplit(
                (parts.scheme, parts.netloc.rpartition("@")[2], "/<redacted>", "", "")
            )
            raise ValueError(
                f"webhook_url must be an absolute https URL (the gateway rejects http://); "
                f"got {shown!r}"
            )

    async def _guard_key(self, request: httpx.Request) -> None:
        if API_KEY_HEADER in request.headers and _origin(request.url) != self._gateway_origin:
            raise KandinskyError(
                f"Refusing to send the subscription key to {request.url.host}: "
                "it goes only to the gateway's origin"
            )

    def _backoff(self, attempt: int) -> float:
        delay: float = min(self.retry_max_delay, self.retry_initial_delay * 2.0**attempt)
        return delay * (1 + DEFAULT_RETRY_JITTER * random.random())

    async def _send(
        self,
        method: str,
        url: str,
        *,
        kind: _Kind,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
        request_id: str | None = None,
    ) -> httpx.Response:
        if self._api_key is None:
            raise ValueError(
                "This client has no api_key: build it from KandinskyCredentials to call the gateway"
            )
        all_headers = {**(headers or {}), API_KEY_HEADER: self._api_key.get_secret_value()}
        attempt = 0
        while True:
            try:
                response = await self._request(method, url, json, all_headers, kind, request_id)
            except httpx.TransportError as exc:
                if kind == "submit" and not isinstance(exc, _NEVER_SENT):
                    raise KandinskySubmitUncertainError(
                        f"The submit to {self.base_url} broke off after it was sent "
                        f"({type(exc).__name__}) and was not resent: the gateway may have "
                        "queued and billed the job: "
                        f"{_check_before_resubmitting(WEBHOOK_URL_HEADER in all_headers)}",
                    ) from exc
                if attempt >= self.max_retries:
                    raise _transport_error(exc, url, request_id, attempt) from exc
                delay = self._backoff(attempt)
                self._log.warning(
                    "%s %s failed (%s); retry %d of %d in %.1fs",
                    method,
                    url,
                    type(exc).__name__,
                    attempt + 1,
                    self.max_retries,
                    delay,
                )
            else:
                retryable = response.status_code == 429 or (
                    response.status_code >= 500 and kind != "submit"
                )
                if not retryable or attempt >= self.max_retries:
                    if response.is_error:
                        raise self._api_error(
                            response,
                            kind=kind,
                            request_id=request_id,
                            webhook=WEBHOOK_URL_HEADER in all_headers,
                        )
                    return response
                retry_after = parse_retry_after(response.headers.get("retry-after"))
                delay = retry_after if retry_after is not None else self._backoff(attempt)
                self._log.warning(
                    "%s %s answered %d; retry %d of %d in %.1fs",
                    method,
                    url,
                    response.status_code,
                    attempt + 1,
                    self.max_retries,
                    delay,
                )
            attempt += 1
            await self._sleep(delay)

    async def _request(
        self,
        method: str,
        url: str,
        json: Any,
        headers: Mapping[str, str],
        kind: _Kind,
        request_id: str | None,
    ) -> httpx.Response:
        """Send one gateway request and read its answer, at most ``max_response_bytes``."""
        request = self._http.build_request(method, url, json=json, headers=headers)
        response = await self._http.send(request, stream=True)
        try:
            body = await read_capped(response, self.max_response_bytes)
        finally:
            await response.aclose()
        if body is None:
            subject = f"status read of {request_id}" if request_id else kind
            message = (
                f"The gateway's answer to the {subject} ({response.status_code}) is larger "
                f"than max_response_bytes={self.max_response_bytes} and was not read: raise "
                "KandinskyClient(max_response_bytes=...) if the gateway's answers are this large"
            )
            if kind == "submit":
                raise KandinskySubmitUncertainError(
                    f"{message}; the job may exist and be billed: "
                    f"{_check_before_resubmitting(WEBHOOK_URL_HEADER in headers)}",
                    status_code=response.status_code,
                )
            raise KandinskyServerError(
                message, status_code=response.status_code, request_id=request_id
            )
        # The body as read (decoded): the answer is kept whole, but never larger than the cap.
        kept = [(k, v) for k, v in response.headers.multi_items() if k.lower() not in _BODY_HEADERS]
        return httpx.Response(response.status_code, headers=kept, content=body, request=request)

    def _api_error(
        self,
        response: httpx.Response,
        *,
        kind: _Kind,
        request_id: str | None,
        webhook: bool = False,
    ) -> KandinskyAPIError:
        code = response.status_code
        error, gateway_message = _error_body(response)
        detail = (
            ": ".join(part for part in (error, gateway_message) if part) or response.reason_phrase
        )
        kwargs: dict[str, Any] = {
            "status_code": code,
            "error": error,
            "gateway_message": gateway_message,
            "request_id": request_id,
        }
        if code >= 500 and kind == "submit":
            # The gateway may have committed (and billed) the job before failing.
            return KandinskySubmitServerError(
                self._redact(
                    f"The submit to {self.base_url} was answered {code} by the gateway "
                    f"({detail}) and was not resent: the gateway may have queued and billed "
                    f"the job: {_check_before_resubmitting(webhook)}"
                ),
                **kwargs,
            )
        subject = f"Status read of {request_id}" if request_id else f"The {kind}"
        message = f"{subject} was refused by the gateway with {code}: {detail}"
        if code in _WAY_OUT:
            message += f" ({_WAY_OUT[code]})"
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        if code == 429:
            wait = f"{retry_after:.0f}s" if retry_after is not None else "a while"
            message += f" (rate limited after {self.max_retries} retries; retry after {wait})"
        message = self._redact(message)
        if code == 429:
            return KandinskyRateLimitError(message, retry_after=retry_after, **kwargs)
        cls = _API_ERRORS.get(code, KandinskyServerError if code >= 500 else KandinskyAPIError)
        return cls(message, **kwargs)

    def _redact(self, message: str) -> str:
        """The message with the subscription key, should the gateway echo it, masked."""
        if self._api_key is None:
            return message
        return message.replace(self._api_key.get_secret_value(), "***")

    async def _open_media_response(
        self, url: str, *, start: int, request_id: str | None, if_range: str | None = None
    ) -> httpx.Response:
        # identity: a compressed body would break the length check and the Range offsets.
        headers = {"Accept-Encoding": "identity"}
        if start:
            headers["Range"] = f"bytes={start}-"
            if if_range:
                headers["If-Range"] = if_range
        attempt = 0
        while True:
            request = self._http.build_request(
                "GET", url, headers=headers, timeout=self._media_timeout
            )
            try:
                response = await self._http.send(request, stream=True, follow_redirects=True)
            except httpx.TransportError as exc:
                if attempt >= self.max_retries:
                    raise KandinskyMediaError(
                        f"Could not download {url}"
                        + (f" for {request_id}" if request_id else "")
                        + f": {type(exc).__name__} after {attempt} retries",
                        request_id=request_id,
                        url=url,
                    ) from exc
                delay = self._backoff(attempt)
            else:
                code = response.status_code
                encoding = response.headers.get("content-encoding", "").strip().lower()
                if code < 400 and encoding not in ("", "identity"):
                    await response.aclose()
                    raise KandinskyMediaError(
                        f"The CDN sent {url}"
                        + (f" of {request_id}" if request_id else "")
                        + f" with Content-Encoding {encoding!r} although identity was asked "
                        "for: its bytes are not the file's and a cut could not be resumed at "
                        "the right byte; have the CDN serve the file uncompressed",
                        request_id=request_id,
                        url=url,
                        status_code=code,
                    )
                if code < 400:
                    return response
                await response.aclose()
                if code in (403, 404, 410):
                    raise KandinskyMediaExpiredError(
                        f"The media link {url}"
                        + (f" of {request_id}" if request_id else "")
                        + f" answered {code}: the CDN link has expired or was removed; read "
                        "the status again for fresh links (refresh the await_video cache) "
                        "rather than generating the video again",
                        request_id=request_id,
                        url=url,
                        status_code=code,
                    )
                if not (code == 429 or code >= 500) or attempt >= self.max_retries:
                    raise KandinskyMediaError(
                        f"Downloading {url}"
                        + (f" for {request_id}" if request_id else "")
                        + f" failed with {code}",
                        request_id=request_id,
                        url=url,
                        status_code=code,
                    )
                retry_after = parse_retry_after(response.headers.get("retry-after"))
                delay = retry_after if retry_after is not None else self._backoff(attempt)
            self._log.warning("Media download of %s failed; retrying in %.1fs", url, delay)
            attempt += 1
            await self._sleep(delay)


async def read_capped(response: httpx.Response, limit: int) -> bytes | None:
    """The (decoded) body of a streamed ``response``, or None once it is over ``limit`` bytes:
    a declared length over the limit is refused before reading, an undeclared one stops at it.
    """
    declared = response.headers.get("content-length", "").strip()
    if declared.isdigit() and int(declared) > limit and _identity(response):
        return None
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)


def _identity(response: httpx.Response) -> bool:
    encoding = str(response.headers.get("content-encoding", "identity"))
    return encoding.strip().lower() == "identity"


def max_media_bytes_default() -> int:
    """The media size cap: :data:`MAX_MEDIA_BYTES_ENV` when set to a whole number, else
    :data:`DEFAULT_MAX_MEDIA_BYTES`."""
    value = os.environ.get(MAX_MEDIA_BYTES_ENV, "").strip()
    if not value:
        return DEFAULT_MAX_MEDIA_BYTES
    if not value.isdigit() or int(value) < 1:
        raise ValueError(
            f"{MAX_MEDIA_BYTES_ENV} must be a whole number of bytes, 1 or more; got {value!r}"
        )
    return int(value)


def _resumes_at(response: httpx.Response, offset: int) -> bool:
    """Whether a Range answer continues exactly at ``offset`` (206, Content-Range bytes N-)."""
    if response.status_code != 206:
        return False
    content_range = response.headers.get("content-range", "")
    unit, _, spec = content_range.partition(" ")
    first = spec.partition("-")[0]
    return unit == "bytes" and first.isdigit() and int(first) == offset


def _error_body(response: httpx.Response) -> tuple[str | None, str | None]:
    try:
        body = response.json()
    except ValueError:
        text = response.text.strip()[:200]
        return None, text or None
    if isinstance(body, dict):
        error = body.get("error")
        message = body.get("message")
        return (
            str(error) if error is not None else None,
            str(message) if message is not None else None,
        )
    return None, str(body)[:200]


def _transport_error(
    exc: httpx.TransportError, url: str, request_id: str | None, retries: int
) -> KandinskyConnectionError:
    target = f"status of {request_id}" if request_id else url
    cls = (
        KandinskyTimeoutError
        if isinstance(exc, httpx.TimeoutException)
        else KandinskyConnectionError
    )
    return cls(
        f"Could not reach the gateway for the {target}: {type(exc).__name__} after "
        f"{retries} retries",
        request_id=request_id,
    )


def _check_before_resubmitting(webhook: bool) -> str:
    """The way out of an uncertain submit, for its error message."""
    if webhook:
        return "check for it (its webhook is called if it was queued) before submitting again"
    return "check for it before submitting again"


async def _call(callback: StatusCallback | None, status: StatusResponse) -> None:
    if callback is None:
        return
    result = callback(status)
    if inspect.isawaitable(result):
        await result
