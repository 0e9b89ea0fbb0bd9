"""Destinations of a generated video: a local path, an ``S3Bucket``, any ``WritableFileSystem``.

This is the only module that writes the video's bytes. Every destination goes the same way:

1. stream ``video.media_url`` through :meth:`KandinskyClient.open_media` (which resumes a
   truncated body with Range requests) into a temporary file, hashing it while writing;
2. check the byte count against the CDN's declared ``Content-Length``;
3. probe the temporary file with PyAV, when installed, for codec, fps, frames and size;
4. move it into place: ``os.replace`` next to the target, a boto3 (multipart) upload, or the
   block's ``write_path``;
5. remove the temporary file, whatever happened (errors and cancellation included).

A target that already holds the same bytes (same SHA-256) is reused, so a re-run is
idempotent; a target holding other bytes is refused unless ``overwrite=True``, and a local
file that is not a video is refused even then. A local target must lie inside the
destination once symbolic links are resolved.

Example:
    ```python
    from prefect_kandinsky import KandinskyClient
    from prefect_kandinsky.media.storage import persist_media
    from prefect_aws import S3Bucket

    async with KandinskyClient(api_key="...") as client:
        stored = await persist_media(client, video, "videos/")
        stored = await persist_media(client, video, S3Bucket.load("BLOCK_NAME"))
    ```
"""

from __future__ import annotations

import errno
import hashlib
import inspect
import logging
import os
import re
import secrets
import shutil
import stat
import sys
import tempfile
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing, suppress
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from functools import partial
from pathlib import Path, PurePosixPath
from typing import IO, TYPE_CHECKING, Any, TypeAlias, TypeGuard, TypeVar, cast
from urllib.parse import unquote, urlsplit, urlunsplit

import anyio
from prefect.filesystems import LocalFileSystem, WritableFileSystem
from pydantic import BaseModel, ConfigDict, Field

from prefect_kandinsky.gateway.client import KandinskyClient, MediaStream
from prefect_kandinsky.gateway.constants import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_PRESIGN_EXPIRES_SECONDS,
    DEFAULT_S3_MULTIPART_CHUNKSIZE,
    DEFAULT_S3_MULTIPART_THRESHOLD,
)
from prefect_kandinsky.gateway.exceptions import KandinskyMediaError
from prefect_kandinsky.gateway.models import CompletedVideo, EmbeddedPreview, PersistedVideo
from prefect_kandinsky.media.images import IMAGE_SNIFF_BYTES, sniff_image_kind

if TYPE_CHECKING:
    from prefect_aws import S3Bucket

__all__ = [
    "Destination",
    "VideoFacts",
    "destination_key",
    "is_s3_bucket",
    "output_filename",
    "persist_media",
    "probe_video",
]

Destination: TypeAlias = str | os.PathLike[str] | WritableFileSystem
"""Where a video goes: a local directory or file path, an ``S3Bucket`` (a
``WritableFileSystem``), or any other ``WritableFileSystem`` block."""


def is_s3_bucket(value: object) -> TypeGuard[S3Bucket]:
    """Whether ``value`` is a prefect-aws ``S3Bucket``, without importing prefect-aws.

    Nothing can be an ``S3Bucket`` before prefect-aws is imported, so a flow that writes to a
    local path never pays for prefect-aws, boto3 and its ECS worker.
    """
    s3 = sys.modules.get("prefect_aws.s3")
    return s3 is not None and isinstance(value, s3.S3Bucket)


MAX_PRESIGN_EXPIRES_SECONDS = 7 * 24 * 3600
"""The longest lifetime S3 (SigV4) allows a presigned URL."""
MAX_STEM_LENGTH = 200
"""Longest file name stem made from a request id, leaving room for an extension."""

_EXTENSIONS = {
    "video/mp4": ".mp4",
    "video/webm": ".webm",
    "video/quicktime": ".mov",
    "video/x-matroska": ".mkv",
    "video/mpeg": ".mpeg",
    "video/x-msvideo": ".avi",
    "image/gif": ".gif",
    "image/png": ".png",
    "image/jpeg": ".jpg",
    "image/webp": ".webp",
}
_DEFAULT_EXTENSION = ".mp4"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_URL_SUFFIX = re.compile(r"\.[a-z0-9]{1,5}")
_HASH_BLOCK = 1024 * 1024
_MATROSKA = b"\x1a\x45\xdf\xa3"
_S3_ABSENT = frozenset({"404", "NoSuchKey", "NotFound"})
_PAGE_TYPES = ("text/", "application/json", "application/xml", "application/problem+")

_logger = logging.getLogger("prefect_kandinsky.media.storage")
_T = TypeVar("_T")


class VideoFacts(BaseModel):
    """What probing a video file found out."""

    model_config = ConfigDict(frozen=True)

    codec: str | None = Field(default=None, description="Video codec, e.g. h264.")
    fps: float | None = Field(default=None, description="Average frames per second.")
    frames: int | None = Field(default=None, description="Number of video frames.")
    width: int | None = Field(default=None, description="Width in pixels.")
    height: int | None = Field(default=None, description="Height in pixels.")
    duration_seconds: float | None = Field(default=None, description="Duration in seconds.")


# -- naming ---------------------------------------------------------------------------------


def output_filename(request_id: str, media_type: str | None, url: str) -> str:
    """The file name of a video: its request id made filesystem-safe, plus an extension.

    The extension comes from the media type (``video/mp4`` -> ``.mp4``), else from the URL's
    path (``.../out.webm`` -> ``.webm``), else it is ``.mp4``. Characters other than letters,
    digits, ``.``, ``_`` and ``-`` become ``_``.

    Example:
        ```python
        output_filename("kandinsky/abc 1", "video/mp4", "https://cdn/x")  # "kandinsky_abc_1.mp4"
        ```
    """
    stem = _UNSAFE.sub("_", request_id).strip("._-")[:MAX_STEM_LENGTH] or "video"
    return stem + _extension(media_type, url)


def _extension(media_type: str | None, url: str) -> str:
    known = _EXTENSIONS.get(_base_type(media_type) or "")
    if known:
        return known
    suffix = PurePosixPath(unquote(urlsplit(url).path)).suffix.lower()
    return suffix if _URL_SUFFIX.fullmatch(suffix) else _DEFAULT_EXTENSION


def _base_type(media_type: str | None) -> str | None:
    if not media_type:
        return None
    return media_type.split(";", 1)[0].strip().lower() or None


def check_filename(filename: str) -> None:
    """Refuse a file name that is empty, absolute, or climbs out of its folder."""
    path = PurePosixPath(filename)
    if (
        not filename.strip()
        or "\\" in filename
        or "\x00" in filename
        or filename.endswith("/")
        or path.is_absolute()
        or any(part in ("..", ".") for part in filename.split("/"))
    ):
        raise ValueError(
            f"filename must be a relative file name such as 'clip.mp4' or 'day1/clip.mp4' "
            f"(no '..', no absolute path); got {filename!r}"
        )


def destination_key(destination: Destination) -> str:
    """A stable string naming a destination, for cache keys; it never holds a secret.

    ``file:///abs/dir`` for a local path, ``s3://bucket/folder`` for an ``S3Bucket`` (plus
    ``?endpoint=...`` for a non-AWS endpoint), ``block:<block type slug>:<base path>`` for
    other blocks. Credentials, URL user info and query strings are left out.
    """
    if is_s3_bucket(destination):
        folder = destination.bucket_folder.strip("/")
        key = f"s3://{destination.bucket_name}" + (f"/{folder}" if folder else "")
        endpoint = destination.credentials.aws_client_parameters.endpoint_url
        return key + (f"?endpoint={_public_url(endpoint)}" if endpoint else "")
    if type(destination) is LocalFileSystem:
        return f"block:{LocalFileSystem.get_block_type_slug()}:{_block_base(destination)}"
    if isinstance(destination, WritableFileSystem):
        slug = type(destination).get_block_type_slug()
        base = getattr(destination, "basepath", None)
        if isinstance(base, str) and base:
            return f"block:{slug}:{_public_url(base)}"
        name = getattr(destination, "_block_document_name", None)
        return f"block:{slug}" + (f":{name}" if name else "")
    return _local_path(destination).as_uri()


def _public_url(url: str) -> str:
    """The URL without user info, query or fragment, where credentials and tokens hide."""
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _local_path(destination: str | os.PathLike[str]) -> Path:
    raw = os.fspath(destination)
    if "://" in raw:
        raise ValueError(
            f"Destination {_public_url(raw)!r} is a URL, not a local path: pass an S3Bucket "
            "block (or another WritableFileSystem block) for remote storage"
        )
    return Path(os.path.abspath(os.path.expanduser(raw)))


def _block_base(block: LocalFileSystem) -> Path:
    return Path(block.basepath).expanduser().resolve() if block.basepath else Path.cwd()


# -- probing --------------------------------------------------------------------------------


def probe_video(path: str | os.PathLike[str]) -> VideoFacts | None:
    """Codec, fps, frames, size and duration of a video file, read with PyAV.

    Returns None when PyAV (the ``emulator`` extra) is not installed, or when the file holds
    no readable video stream (a warning is logged). Frames come from the container's frame
    count, or else from counting the stream's packets (without decoding).
    """
    try:
        import av
    except ImportError:
        return None
    try:
        with av.open(os.fspath(path)) as container:
            if not container.streams.video:
                _logger.warning("%s holds no video stream; nothing to probe", path)
                return None
            stream = container.streams.video[0]
            rate = stream.average_rate
            duration: float | None = None
            if stream.duration is not None and stream.time_base is not None:
                duration = float(stream.duration * stream.time_base)
            elif container.duration is not None:
                duration = container.duration / av.time_base
            frames = stream.frames or sum(1 for packet in container.demux(stream) if packet.size)
            return VideoFacts(
                codec=stream.codec_context.name,
                fps=float(rate) if rate else None,
                frames=int(frames) or None,
                width=stream.codec_context.width or None,
                height=stream.codec_context.height or None,
                duration_seconds=duration,
            )
    except (av.FFmpegError, OSError) as exc:
        _logger.warning("Could not probe %s as a video: %s", path, exc)
        return None


# -- persisting -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _LocalPlan:
    directory: Path
    file: Path | None
    uri_prefix: str

    def target(self, name: str) -> Path:
        """The final path, inside the destination once symbolic links are resolved; creates
        its directory (blocking)."""
        path = self.file or self.directory.joinpath(*name.split("/"))
        root = Path(os.path.realpath(self.directory))
        if not Path(os.path.realpath(path)).is_relative_to(root):
            raise ValueError(
                f"{path} leads out of the destination {self.directory} through a symbolic "
                "link; nothing is written outside the destination: remove the link, or pass "
                "the folder it points to as the destination"
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        return path


def _plan_local(destination: Destination, filename: str | None) -> _LocalPlan | None:
    """How a local destination resolves (blocking: looks at the file system); None if remote."""
    if type(destination) is LocalFileSystem:
        slug = LocalFileSystem.get_block_type_slug()
        return _LocalPlan(_block_base(destination), None, f"block:{slug}:")
    if isinstance(destination, WritableFileSystem):
        return None
    path = _local_path(destination)
    trailing_sep = os.fspath(destination).endswith(("/", os.sep))
    # One stat, not is_dir() then exists(): a concurrent persist may create the directory
    # in between, which two calls would take for a file.
    try:
        mode: int | None = path.stat().st_mode
    except FileNotFoundError:
        mode = None
    is_dir = mode is not None and stat.S_ISDIR(mode)
    if is_dir or trailing_sep or (mode is None and not path.suffix):
        return _LocalPlan(path, None, "")
    if filename is not None:
        raise ValueError(
            f"Destination {path} names a file, so filename={filename!r} cannot apply: pass "
            "its directory as the destination to choose the file name"
        )
    return _LocalPlan(path.parent, path, "")


async def persist_media(
    client: KandinskyClient,
    video: CompletedVideo,
    destination: Destination,
    *,
    filename: str | None = None,
    overwrite: bool = False,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    presign_expires_seconds: int | None = DEFAULT_PRESIGN_EXPIRES_SECONDS,
    multipart_threshold: int = DEFAULT_S3_MULTIPART_THRESHOLD,
    multipart_chunksize: int = DEFAULT_S3_MULTIPART_CHUNKSIZE,
    preview: bool | int = False,
    preview_width: int | None = None,
    logger: logging.Logger | logging.LoggerAdapter[Any] | None = None,
    partial_path: str | os.PathLike[str] | None = None,
    max_media_bytes: int | None = None,
) -> PersistedVideo:
    """Stream a completed video to its destination in constant memory and describe the copy.

    Destinations:

    - a local path: an existing directory, or a path without a suffix (created if missing),
      receives ``filename`` (default :func:`output_filename`); a path with a suffix is the
      file itself. The bytes go to a hidden temporary file in the target's directory, which
      is then ``os.replace``-d into place, so the final path never holds a partial file.
      The URI is the absolute path.
    - an ``S3Bucket``: the key is ``bucket_folder/filename``; the upload is multipart above
      ``multipart_threshold`` bytes and stores the SHA-256 in the object's metadata. The URI
      is ``s3://bucket/key`` and ``public_url`` a presigned GET link.
    - a ``LocalFileSystem`` block: like a local directory at its ``basepath``; the URI is
      ``block:local-file-system:<path>``.
    - any other ``WritableFileSystem``: its ``write_path`` API takes bytes, so the whole
      video is read into memory for the write (and the existing file, to compare it, unless
      ``overwrite=True``). The URI is ``block:<block type slug>:<path returned>``.

    Args:
        client: The client that downloads the media (no subscription key reaches the CDN).
        video: The completed generation; its first media URL is stored.
        destination: Where the video goes.
        filename: The file name (or relative path) at the destination; defaults to
            :func:`output_filename` of the request id and media type.
        overwrite: Replace a target that holds other bytes instead of raising. It is bounded:
            a local file that is not a video (by its first bytes: MP4, MOV, WebM) is never
            replaced, so a destination naming any other file fails instead of destroying it.
        chunk_size: Bytes per chunk of the download.
        presign_expires_seconds: Lifetime of the S3 ``public_url``; None for no link.
        multipart_threshold: Bytes above which an S3 upload goes multipart.
        multipart_chunksize: Bytes per part of a multipart S3 upload.
        preview: Make small preview pictures of the video for artifacts (needs PyAV):
            ``True`` for a poster, a strip of frames and a preview clip, a number for a
            poster and a strip of that many frames (no clip), ``False`` for none.
        preview_width: Widest a preview picture may be, in pixels (256 by default).
        logger: Where progress is logged (a Prefect run logger in tasks).
        partial_path: A local file to download into instead of a hidden temporary file next to
            the target. It is kept when the download fails or the process dies, and a later
            call with the same ``partial_path`` resumes it with a Range request from its last
            byte (a CDN that does not resume sends the whole file again); it is removed once
            the video is stored. Name it by the request id: the same file for the same video.
        max_media_bytes: The download stops with an error past this many bytes (or when the
            CDN declares more); None takes ``KANDINSKY_MAX_MEDIA_BYTES``, else 2 GiB.

    Returns:
        Where the video is, its size, SHA-256, media type and probed facts.

    Raises:
        KandinskyMediaExpiredError: the CDN link has expired (403/404).
        KandinskyMediaError: the download failed, came out short or long, or was a text
            page instead of media; or the target already holds other bytes; or the
            destination refused the write.
        ValueError: the destination or filename cannot be used.
    """
    log = logger or _logger
    request_id = video.request_id
    url = _check_request(video, filename, presign_expires_seconds)
    plan = await _run(_plan_local, destination, filename)
    temp: Path | None = None
    keep = partial_path is not None  # a partial file outlives a failure, to be resumed
    where = destination_key(destination)
    start = 0 if partial_path is None else await _run(_partial_size, Path(partial_path))
    try:
        async with client.open_media(
            url,
            request_id=request_id,
            chunk_size=chunk_size,
            start=start,
            max_bytes=max_media_bytes,
        ) as media:
            served_type = _served_media_type(media, request_id)
            media_type = video.media_type or served_type
            name = filename or output_filename(request_id, media_type, url)
            target = None if plan is None else await _run(plan.target, name)
            if partial_path is not None:
                temp = Path(partial_path)
                if media.offset:
                    log.info("Resuming the download of %s at byte %d", url, media.offset)
            else:
                staging = target.parent if target is not None else Path(tempfile.gettempdir())
                temp = staging / f".{PurePosixPath(name).name}.{secrets.token_hex(6)}.part"
            size, sha256 = await _download(
                media, temp, durable=target is not None, offset=media.offset, keep=keep
            )
            if media.resumes:
                log.info("Download of %s resumed %d time(s) with Range", url, media.resumes)
            keep = False  # from here on the file is complete, or wrong: never resumed
            _check_length(media, size, request_id)
        facts, pictures = await _run(_describe, temp, preview, preview_width)
        if plan is not None and target is not None:
            where = uri = plan.uri_prefix + str(target)
            reused = await _run(_place_file, temp, target, sha256, overwrite, request_id)
            public_url: str | None = None
        elif is_s3_bucket(destination):
            key = "/".join(part for part in (destination.bucket_folder.strip("/"), name) if part)
            where = uri = f"s3://{destination.bucket_name}/{key}"
            reused, public_url = await _run(
                partial(
                    _store_s3,
                    destination,
                    key,
                    temp,
                    sha256=sha256,
                    media_type=media_type,
                    request_id=request_id,
                    overwrite=overwrite,
                    multipart_threshold=multipart_threshold,
                    multipart_chunksize=multipart_chunksize,
                    presign_expires_seconds=presign_expires_seconds,
                )
            )
        else:
            assert isinstance(destination, WritableFileSystem)
            reused, uri = await _store_block(
                destination, name, temp, sha256=sha256, overwrite=overwrite, request_id=request_id
            )
            public_url = None
    except OSError as exc:
        raise KandinskyMediaError(
            f"Storing {request_id} at {where} failed: {exc}; check the destination's free "
            "space and permissions",
            request_id=request_id,
            url=url,
        ) from exc
    finally:
        if temp is not None and not keep:
            _discard(temp)
    log.info(
        "%s %s at %s (%d bytes, sha256 %s)",
        "Reused identical" if reused else "Stored",
        request_id,
        uri,
        size,
        sha256[:12],
    )
    return PersistedVideo(
        request_id=request_id,
        uri=uri,
        size_bytes=size,
        sha256=sha256,
        media_type=media_type,
        source_url=url,
        public_url=public_url,
        public_url_expires_at=(
            datetime.now(timezone.utc) + timedelta(seconds=presign_expires_seconds)
            if public_url is not None and presign_expires_seconds is not None
            else None
        ),
        duration_seconds=facts.duration_seconds,
        fps=facts.fps,
        frames=facts.frames,
        width=facts.width,
        height=facts.height,
        codec=facts.codec,
        preview=pictures,
    )


def _check_request(
    video: CompletedVideo, filename: str | None, presign_expires_seconds: int | None
) -> str:
    """The media URL to store; refuses a video without one and unusable arguments."""
    if not video.media_urls:
        raise KandinskyMediaError(
            f"Generation {video.request_id} completed without a media URL: nothing to persist",
            request_id=video.request_id,
        )
    if filename is not None:
        check_filename(filename)
    if presign_expires_seconds is not None and not (
        1 <= presign_expires_seconds <= MAX_PRESIGN_EXPIRES_SECONDS
    ):
        raise ValueError(
            f"presign_expires_seconds must be from 1 to {MAX_PRESIGN_EXPIRES_SECONDS} "
            f"(7 days), or None for no link; got {presign_expires_seconds!r}"
        )
    return video.media_urls[0]


def _served_media_type(media: MediaStream, request_id: str) -> str | None:
    """The CDN's media type; refuses a text page served instead of media."""
    served_type = _base_type(media.content_type)
    if served_type is not None and served_type.startswith(_PAGE_TYPES):
        raise KandinskyMediaError(
            f"The media link {media.url} of {request_id} answered with {served_type} instead "
            "of media (an error or login page?); nothing was stored: read the status "
            "again for fresh links",
            request_id=request_id,
            url=media.url,
        )
    return served_type


def _check_length(media: MediaStream, size: int, request_id: str) -> None:
    """Refuse a download shorter or longer than declared, or empty."""
    declared = media.content_length
    if declared is not None and size != declared:
        raise KandinskyMediaError(
            f"Download of {media.url} for {request_id} received {size} bytes but the CDN "
            f"declared {declared} (Content-Length); nothing was stored: persist it again, "
            "and if it repeats the CDN is serving a broken file",
            request_id=request_id,
            url=media.url,
        )
    if size == 0:
        raise KandinskyMediaError(
            f"Download of {media.url} for {request_id} is empty (0 bytes); nothing was stored",
            request_id=request_id,
            url=media.url,
        )


def _describe(
    path: Path, preview: bool | int, width: int | None
) -> tuple[VideoFacts, EmbeddedPreview | None]:
    """Probe the video and, if asked, make its preview pictures (blocking)."""
    facts = probe_video(path) or VideoFacts()
    if preview is False:
        return facts, None
    from prefect_kandinsky.media.previews import PREVIEW_FRAMES, PREVIEW_MAX_WIDTH, embedded_preview

    frames = PREVIEW_FRAMES if preview is True else int(preview)
    return facts, embedded_preview(
        path, frames=frames, max_width=width or PREVIEW_MAX_WIDTH, clip=preview is True
    )


async def _run(func: Callable[..., _T], *args: Any) -> _T:
    """Run blocking work in a worker thread; a cancel waits for it, so cleanup is safe."""
    return await anyio.to_thread.run_sync(partial(func, *args))


def _discard(path: Path) -> None:
    # Synchronous on purpose: an await in a cancelled scope would be cancelled too.
    with suppress(FileNotFoundError):
        path.unlink()


async def _download(
    media: MediaStream, temp: Path, *, durable: bool, offset: int = 0, keep: bool = False
) -> tuple[int, str]:
    """Stream the body into a file, hashing as it goes; returns (bytes, hex sha256).

    A new file, or with ``keep`` a partial file: its first ``offset`` bytes are kept (and
    hashed) and the body appended; each chunk is flushed, so a killed process leaves every
    byte it received for the next one to resume from.
    """
    digest = hashlib.sha256()
    if keep:
        handle = await _run(_open_partial, temp, offset, digest)
    else:
        handle = await _run(open, temp, "xb")
    size = offset
    try:
        # chunks() is an async generator: close it on any exit, not when garbage-collected.
        chunks = cast("AsyncGenerator[bytes, None]", media.chunks())
        async with aclosing(chunks):
            async for chunk in chunks:
                await _run(_absorb, handle, digest, chunk)
                if keep:
                    await _run(handle.flush)
                size += len(chunk)
        if durable:
            await _run(_sync_to_disk, handle)
    finally:
        handle.close()
    return size, digest.hexdigest()


def _partial_size(path: Path) -> int:
    """Bytes a partial download holds (0 if there is none); creates its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _open_partial(path: Path, offset: int, digest: Any) -> IO[bytes]:
    """The partial file cut to ``offset`` bytes, hashed so far, open for appending."""
    handle = path.open("r+b" if offset else "wb")
    handle.truncate(offset)
    while handle.tell() < offset:
        block = handle.read(min(_HASH_BLOCK, offset - handle.tell()))
        if not block:
            break
        digest.update(block)
    handle.seek(offset)
    return handle


def _absorb(handle: IO[bytes], digest: Any, chunk: bytes) -> None:
    handle.write(chunk)
    digest.update(chunk)


def _sync_to_disk(handle: IO[bytes]) -> None:
    handle.flush()
    os.fsync(handle.fileno())


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(_HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def _conflict(where: str, request_id: str, existing: str | None, new: str) -> KandinskyMediaError:
    held = f"sha256 {existing[:12]}" if existing else "no recorded sha256"
    return KandinskyMediaError(
        f"{where} already exists with other content ({held}; the download of {request_id} "
        f"has sha256 {new[:12]}): pass overwrite=True to replace it, or another filename "
        "to keep both",
        request_id=request_id,
    )


def _place_file(temp: Path, target: Path, sha256: str, overwrite: bool, request_id: str) -> bool:
    """Move the download into place; True when the target already held the same bytes."""
    if target.is_dir():
        raise KandinskyMediaError(
            f"{target} is a directory, so {request_id} cannot be stored there: pass another "
            "filename or destination",
            request_id=request_id,
        )
    if target.exists():
        existing = _file_sha256(target)
        if existing == sha256:
            return True
        if not overwrite:
            raise _conflict(str(target), request_id, existing, sha256)
        if not is_video_file(target):
            raise KandinskyMediaError(
                f"{target} already exists and is not a video, so {request_id} does not replace "
                "it even with overwrite=True (which replaces only an earlier video): pass "
                "another filename or destination",
                request_id=request_id,
            )
    try:
        os.replace(temp, target)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        # A partial kept on another file system: copy next to the target, then rename.
        staged = target.parent / f".{target.name}.{secrets.token_hex(6)}.part"
        try:
            shutil.copyfile(temp, staged)
            os.replace(staged, target)
        finally:
            _discard(staged)
    return False


def is_video_file(path: Path) -> bool:
    """Whether ``path`` is empty or starts like a video (MP4, MOV, WebM or Matroska); an ISO
    media file of an image brand (AVIF, HEIC) is not a video."""
    with path.open("rb") as handle:
        head = handle.read(IMAGE_SNIFF_BYTES)
    if not head or head.startswith(_MATROSKA):
        return True
    return head[4:8] == b"ftyp" and sniff_image_kind(head) is None


def _store_s3(
    bucket: S3Bucket,
    key: str,
    source: Path,
    *,
    sha256: str,
    media_type: str | None,
    request_id: str,
    overwrite: bool,
    multipart_threshold: int,
    multipart_chunksize: int,
    presign_expires_seconds: int | None,
) -> tuple[bool, str | None]:
    """Upload unless the same bytes are there; returns (reused, presigned url). Blocking."""
    # The pyproject's mypy override covers "boto3" but not its submodules.
    from boto3.exceptions import S3UploadFailedError  # type: ignore[import-untyped,unused-ignore]
    from boto3.s3.transfer import TransferConfig  # type: ignore[import-untyped,unused-ignore]
    from botocore.exceptions import BotoCoreError, ClientError

    uri = f"s3://{bucket.bucket_name}/{key}"
    reused = False
    try:
        s3 = bucket.credentials.get_s3_client()
        if not overwrite:
            try:
                head = s3.head_object(Bucket=bucket.bucket_name, Key=key)
            except ClientError as exc:
                code = str(exc.response.get("Error", {}).get("Code", ""))
                if code not in _S3_ABSENT:
                    raise KandinskyMediaError(
                        f"Could not check whether {uri} exists ({code or exc}): allow "
                        "s3:GetObject and s3:ListBucket on the bucket, or pass overwrite=True",
                        request_id=request_id,
                    ) from exc
            else:
                existing = head.get("Metadata", {}).get("sha256")
                if existing != sha256:
                    raise _conflict(uri, request_id, existing, sha256)
                reused = True
        if not reused:
            extra: dict[str, Any] = {"Metadata": {"sha256": sha256}}
            if request_id.isascii():
                extra["Metadata"]["request-id"] = request_id
            if media_type:
                extra["ContentType"] = media_type
            s3.upload_file(
                Filename=str(source),
                Bucket=bucket.bucket_name,
                Key=key,
                ExtraArgs=extra,
                Config=TransferConfig(
                    multipart_threshold=multipart_threshold,
                    multipart_chunksize=multipart_chunksize,
                ),
            )
        public_url = None
        if presign_expires_seconds is not None:
            public_url = s3.generate_presigned_url(
                "get_object",
                Params={"Bucket": bucket.bucket_name, "Key": key},
                ExpiresIn=presign_expires_seconds,
            )
    except (BotoCoreError, ClientError, S3UploadFailedError) as exc:
        raise KandinskyMediaError(
            f"Upload of {request_id} to {uri} failed: {exc}", request_id=request_id
        ) from exc
    return reused, None if public_url is None else str(public_url)


async def _store_block(
    block: WritableFileSystem,
    name: str,
    source: Path,
    *,
    sha256: str,
    overwrite: bool,
    request_id: str,
) -> tuple[bool, str]:
    """Write through the block's bytes API; returns (reused, uri)."""
    slug = type(block).get_block_type_slug()
    if not overwrite:
        existing = await _read_existing(block, name, request_id)
        if existing is not None:
            existing_sha = hashlib.sha256(existing).hexdigest()
            del existing
            if existing_sha != sha256:
                raise _conflict(f"block:{slug}:{name}", request_id, existing_sha, sha256)
            resolve = getattr(block, "_resolve_path", None)
            return True, f"block:{slug}:{resolve(name) if callable(resolve) else name}"
    data = await _run(source.read_bytes)
    written = await call_block(block, "write_path", name, data)
    return False, f"block:{slug}:{written if written is not None else name}"


async def _read_existing(block: WritableFileSystem, name: str, request_id: str) -> bytes | None:
    try:
        content = await call_block(block, "read_path", name)
    except Exception as exc:
        if is_missing_file(exc):
            return None
        slug = type(block).get_block_type_slug()
        raise KandinskyMediaError(
            f"Could not check whether block:{slug}:{name} exists ({type(exc).__name__}: "
            f"{exc}): fix the block, or pass overwrite=True to write without checking",
            request_id=request_id,
        ) from exc
    return bytes(content) if content is not None else None


def is_missing_file(exc: BaseException) -> bool:
    """Whether a block's read failed because the file does not exist.

    Blocks signal it in their own ways: FileNotFoundError, a NotFound or NoSuchKey error of
    their SDK, botocore's ClientError with code 404 (``S3Bucket.read_path`` heads the object
    first), or LocalFileSystem's ValueError "does not exist".
    """
    response = getattr(exc, "response", None)
    code = str(response.get("Error", {}).get("Code", "")) if isinstance(response, dict) else ""
    return (
        isinstance(exc, FileNotFoundError)
        or any(word in type(exc).__name__ for word in ("NotFound", "NoSuchKey"))
        or code in {"404", "NoSuchKey", "NotFound"}
        or "does not exist" in str(exc)
    )


async def call_block(block: WritableFileSystem, method: str, *args: Any) -> Any:
    """Call ``a<method>`` if the block has it, else ``<method>`` awaiting what needs it.

    Prefect 3 blocks dispatch ``write_path`` on the calling context (``async_dispatch``);
    calling the explicit async variant avoids getting an unawaited coroutine or blocking.
    """
    async_variant = getattr(block, f"a{method}", None)
    if inspect.iscoroutinefunction(async_variant):
        return await async_variant(*args)
    function = getattr(block, method)
    if inspect.iscoroutinefunction(function):
        return await function(*args)
    result = await _run(function, *args)
    if inspect.isawaitable(result):
        result = await result
    return result
