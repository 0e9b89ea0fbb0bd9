"""Private input images made fetchable by the gateway: local files and ``s3://`` objects.

A batch row's image may be a local file or an object in a private bucket, which the gateway
cannot fetch. Through a saved ``S3Bucket`` block, a local file is uploaded (once, keyed by
its content) and a presigned GET link is sent instead; an ``s3://`` object is presigned where
it is. The link lives long enough for the queue and the render (:func:`presign_lifetime`).
prefect_aws and boto3 load only here, where they are used.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import anyio

from prefect_kandinsky.gateway.constants import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_INPUT_FOLDER,
    DEFAULT_PRESIGN_MARGIN_SECONDS,
)
from prefect_kandinsky.gateway.exceptions import KandinskyImageError
from prefect_kandinsky.media.images import (
    IMAGE_SNIFF_BYTES,
    NOTHING_SUBMITTED,
    absolute_http_url,
    gather_outcomes,
    redact_url,
    sniff_image_kind,
)

logger = logging.getLogger(__name__)
_T = TypeVar("_T")

if TYPE_CHECKING:
    # Imported for annotations only: prefect-aws (and boto3) load only when a bucket is used.
    from prefect_aws import S3Bucket

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
"""Content type and file extension of each kind :func:`sniff_image_kind` recognises."""
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
    (:data:`prefect_kandinsky.media.storage.MAX_PRESIGN_EXPIRES_SECONDS`): a longer wait cannot be
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
        from prefect_kandinsky.media.images import prepare_image, presign_lifetime

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
        :class:`~prefect_kandinsky.gateway.exceptions.KandinskyImageError` it failed with.

    Raises:
        ValueError: ``concurrency`` is below 1, or ``expires_seconds`` is not from 1 to
            604800.

    Example:
        ```python
        from prefect import flow
        from prefect_aws import S3Bucket
        from prefect_kandinsky.gateway.exceptions import KandinskyImageError
        from prefect_kandinsky.media.images import prepare_images, presign_lifetime

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
    return await gather_outcomes(distinct, min(concurrency, len(distinct)), preparer.prepare)


def _max_presign_seconds() -> int:
    # Imported here: storage loads prefect-aws and boto3, which the image check does not need.
    from prefect_kandinsky.media.storage import MAX_PRESIGN_EXPIRES_SECONDS

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
                f"Image source {source!r} must be {_SOURCE_FORMS}{NOTHING_SUBMITTED}",
                url=str(source),
            )
        scheme, separator, rest = source.partition("://")
        scheme = scheme.lower() if separator and _SCHEME.fullmatch(scheme) else ""
        if scheme in ("http", "https"):
            absolute_http_url(source)
            return PreparedImage(source, source, uploaded=False, expires_at=None)
        if scheme not in ("", "s3"):
            shown = redact_url(source)
            raise KandinskyImageError(
                f"Image source {shown!r} has the scheme {scheme}://, which is not supported: "
                f"pass {_SOURCE_FORMS}{NOTHING_SUBMITTED}",
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
                f"AWS credentials{NOTHING_SUBMITTED}",
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
                message + NOTHING_SUBMITTED, url=source, status_code=status
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
                f"{way_out}{NOTHING_SUBMITTED}",
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
    kind = sniff_image_kind(head)
    if kind is None:
        what = f"is {size} bytes of something else" if head else "is empty"
        raise KandinskyImageError(
            f"Image file {source!r} is not an image (it {what}): pass a PNG, JPEG or WebP "
            f"file{NOTHING_SUBMITTED}",
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
    return KandinskyImageError(message + NOTHING_SUBMITTED, url=source)


def _parse_s3_uri(source: str, rest: str) -> tuple[str, str]:
    """The bucket and key of ``s3://bucket/key``; the key is taken as written (no decoding)."""
    bucket_name, _, key = rest.partition("/")
    if not bucket_name or not key or key.endswith("/"):
        raise KandinskyImageError(
            f"Image {source!r} is not an S3 object URI: write it as s3://bucket/key, with the "
            f"object's full key{NOTHING_SUBMITTED}",
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
        f'(bucket=S3Bucket.load("BLOCK_NAME")) {action}{NOTHING_SUBMITTED}',
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
        f"S3Bucket block's AWS credentials and endpoint{NOTHING_SUBMITTED}",
        url=source,
    )


def _first_line(exc: BaseException) -> str:
    return redact_url((str(exc).strip().splitlines() or [""])[0][:200])


__all__ = [
    "DEFAULT_IMAGE_PREPARE_CONCURRENCY",
    "IMAGE_SNIFF_BYTES",
    "PreparedImage",
    "prepare_image",
    "prepare_images",
    "presign_lifetime",
    "redact_url",
]
