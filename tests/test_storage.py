"""Persisting videos: real MP4 bytes over real HTTP into a directory, moto S3 and blocks."""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import av
import httpx
import numpy as np
import pytest
from prefect.filesystems import LocalFileSystem, RemoteFileSystem
from prefect_aws import AwsCredentials, S3Bucket

from prefect_kandinsky.gateway.client import KandinskyClient
from prefect_kandinsky.gateway.exceptions import KandinskyMediaError, KandinskyMediaExpiredError
from prefect_kandinsky.gateway.models import CompletedVideo, JobOutput, JobStatus, StatusResponse
from prefect_kandinsky.media.storage import (
    destination_key,
    output_filename,
    persist_media,
    probe_video,
)

REQUEST_ID = "kandinsky-5-pro-req-0001"
MIB = 1024 * 1024


# -- a tiny CDN ---------------------------------------------------------------------------


@dataclass
class _Route:
    body: bytes
    content_type: str | None
    fault: str | None
    served: int = 0


@dataclass
class MediaServer:
    """A media host on 127.0.0.1 with Range support and faults on request."""

    base_url: str
    routes: dict[str, _Route] = field(default_factory=dict)
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stalled: threading.Event = field(default_factory=threading.Event)
    """Set once a ``stall`` route has sent the first half of its body and waits."""
    release: threading.Event = field(default_factory=threading.Event)

    def add(
        self,
        path: str,
        body: bytes,
        *,
        content_type: str | None = "video/mp4",
        fault: str | None = None,
    ) -> str:
        """Serve ``body`` at ``path``; ``fault`` is one of the modes of ``_Handler``."""
        self.routes[path] = _Route(body, content_type, fault)
        return self.base_url + path

    def reset(self) -> None:
        self.release.set()
        self.routes.clear()
        self.requests.clear()
        self.release = threading.Event()
        self.stalled = threading.Event()


class _Handler(BaseHTTPRequestHandler):
    """Faults: truncate-once (full Content-Length, half the body, then close),
    range-from-zero (like truncate-once, then a 206 that restarts from byte 0),
    stall (half the body, then wait), no-length (close-delimited body),
    expired-403 / expired-404 (an expired link)."""

    protocol_version = "HTTP/1.1"
    server: _MediaHTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        media = self.server.media
        path = urlsplit(self.path).path
        headers = {name.lower(): value for name, value in self.headers.items()}
        with media.lock:
            media.requests.append((path, headers))
            route = media.routes.get(path)
            if route is not None:
                route.served += 1
        if route is None or route.fault == "expired-404":
            self.send_error(404, "Not Found")
            return
        if route.fault == "expired-403":
            self.send_error(403, "Request has expired")
            return
        body, size = route.body, len(route.body)
        if "range" in headers:
            start = int(headers["range"].removeprefix("bytes=").split("-")[0])
            if route.fault == "range-from-zero":
                start = 0
            self._head(
                206, route, size - start, {"Content-Range": f"bytes {start}-{size - 1}/{size}"}
            )
            self.wfile.write(body[start:])
            return
        if route.fault in ("truncate-once", "range-from-zero", "stall") and route.served == 1:
            self._head(200, route, size)
            self.wfile.write(body[: size // 2])
            self.wfile.flush()
            if route.fault == "stall":
                media.stalled.set()
                media.release.wait(10)
            self.close_connection = True
            return
        if route.fault == "no-length":
            self._head(200, route, None, {"Connection": "close"})
            self.wfile.write(body)
            self.close_connection = True
            return
        self._head(200, route, size)
        self.wfile.write(body)

    def _head(
        self, code: int, route: _Route, length: int | None, extra: dict[str, str] | None = None
    ) -> None:
        self.send_response(code)
        if route.content_type:
            self.send_header("Content-Type", route.content_type)
        if length is not None:
            self.send_header("Content-Length", str(length))
        self.send_header("Accept-Ranges", "bytes")
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.end_headers()


class _MediaHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    media: MediaServer


@pytest.fixture(scope="session")
def media_session() -> Iterator[MediaServer]:
    httpd = _MediaHTTPServer(("127.0.0.1", 0), _Handler)
    host, port = httpd.server_address[:2]
    httpd.media = MediaServer(base_url=f"http://{host!s}:{port}")
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd.media
    finally:
        httpd.media.release.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


@pytest.fixture
def media(media_session: MediaServer) -> Iterator[MediaServer]:
    """The media host, with no routes and no recorded requests."""
    media_session.reset()
    yield media_session
    media_session.reset()


@pytest.fixture(scope="session")
def sample_mp4(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A real H.264 MP4: 64x48, 12 frames at 12 fps."""
    path = tmp_path_factory.mktemp("mp4") / "sample.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=12)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for index in range(12):
            pixels = np.full((48, 64, 3), index * 20, dtype=np.uint8)
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path.read_bytes()


@pytest.fixture
async def client() -> AsyncIterator[KandinskyClient]:
    """A client whose gateway is unreachable: media hosts are not the gateway."""
    async with KandinskyClient(
        api_key="k", base_url="http://127.0.0.1:1", retry_initial_delay=0.01, max_retries=2
    ) as kandinsky:
        yield kandinsky


def completed(
    url: str, *, request_id: str = REQUEST_ID, media_type: str | None = "video/mp4"
) -> CompletedVideo:
    status = StatusResponse(
        request_id=request_id,
        status=JobStatus.COMPLETED,
        output=JobOutput(media_url=[url], media_type=media_type),
    )
    return CompletedVideo(
        request_id=request_id, status=status, media_urls=[url], media_type=media_type
    )


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def leftovers(directory: Path) -> list[str]:
    """Temporary files left in a directory."""
    return sorted(path.name for path in directory.rglob("*.part"))


# -- local paths --------------------------------------------------------------------------


async def test_directory_gets_request_id_file(
    client: KandinskyClient, media: MediaServer, sample_mp4: bytes, tmp_path: Path
) -> None:
    """A missing directory is created and receives <request id>.mp4 with the exact bytes."""
    url = media.add("/v/out", sample_mp4)
    destination = tmp_path / "videos"

    stored = await persist_media(client, completed(url), destination, chunk_size=1024)

    target = destination / f"{REQUEST_ID}.mp4"
    assert sample_mp4 == target.read_bytes()
    assert str(target) == stored.uri
    assert len(sample_mp4) == stored.size_bytes
    assert sha256(sample_mp4) == stored.sha256
    assert url == stored.source_url
    assert "video/mp4" == stored.media_type
    assert stored.public_url is None
    assert [target.name] == [path.name for path in destination.iterdir()]


async def test_probed_facts(
    client: KandinskyClient, media: MediaServer, sample_mp4: bytes, tmp_path: Path
) -> None:
    """The stored video carries its codec, frame count, size, fps and duration."""
    url = media.add("/v/facts.mp4", sample_mp4)

    stored = await persist_media(client, completed(url), tmp_path)

    assert "h264" == stored.codec
    assert 12 == stored.frames
    assert (64, 48) == (stored.width, stored.height)
    assert 12.0 == stored.fps
    assert stored.duration_seconds == pytest.approx(1.0, abs=0.1)


async def test_path_with_suffix_is_the_file(
    client: KandinskyClient, media: MediaServer, sample_mp4: bytes, tmp_path: Path
) -> None:
    """A destination with a suffix is the file itself; missing parents are created."""
    url = media.add("/v/a", sample_mp4)
    destination = tmp_path / "day1" / "clip.mp4"

    stored = await persist_media(client, completed(url), destination)

    assert sample_mp4 == destination.read_bytes()
    assert str(destination) == stored.uri
    assert ["clip.mp4"] == [path.name for path in destination.parent.iterdir()]


async def test_filename_in_existing_directory(
    client: KandinskyClient, media: MediaServer, sample_mp4: bytes, tmp_path: Path
) -> None:
    """An explicit filename (with a subfolder) is used inside a directory destination."""
    url = media.add("/v/b", sample_mp4)

    stored = await persist_media(client, completed(url), str(tmp_path), filename="x/run.1.mp4")

    assert sample_mp4 == (tmp_path / "x" / "run.1.mp4").read_bytes()
    assert str(tmp_path / "x" / "run.1.mp4") == stored.uri


async def test_trailing_separator_makes_a_directory(
    client: KandinskyClient, media: MediaServer, sample_mp4: bytes, tmp_path: Path
) -> None:
    """A path ending in a separator is a directory even when its name has a dot."""
    url = media.add("/v/c", sample_mp4)

    stored = await persist_media(client, completed(url), f"{tmp_path}/v1.0/")

    assert str(tmp_path / "v1.0" / f"{REQUEST_ID}.mp4") == stored.uri


async def test_filename_with_file_destination_is_refused(
    client: KandinskyClient, media: MediaServer, sample_mp4: bytes, tmp_path: Path
) -> None:
    """A filename cannot apply when the destination already names a file."""
    url = media.add("/v/d", sample_mp4)

    with pytest.raises(ValueError, match=r"names a file, so filename='y.mp4' cannot apply"):
        await persist_media(client, completed(url), tmp_path / "x.mp4", filename="y.mp4")
    assert [] == media.requests


@pytest.mark.parametrize("filename", ["../escape.mp4", "/abs.mp4", "a/./b.mp4", "dir/", ""])
async def test_unsafe_filename_is_refused(
    client: KandinskyClient, tmp_path: Path, filename: str
) -> None:
    """Filenames that climb out of the destination or name nothing are refused up front."""
    with pytest.raises(ValueError, match="filename must be a relative file name"):
        await persist_media(client, completed("http://127.0.0.1:1/x"), tmp_path, filename=filename)


async def test_url_string_destination_is_refused(client: KandinskyClient) -> None:
    """An s3:// string is not mistaken for a local folder named 's3:'."""
    with pytest.raises(ValueError, match="is a URL, not a local path: pass an S3Bucket"):
        await persist_media(client, completed("http://127.0.0.1:1/x"), "s3://bucket/videos")


async def test_same_content_is_reused(
    client: KandinskyClient, media: MediaServer, sample_mp4: bytes, tmp_path: Path
) -> None:
    """Persisting the same video again keeps the existing file untouched and succeeds."""
    url = media.add("/v/e", sample_mp4)
    first = await persist_media(client, completed(url), tmp_path)
    inode = os.stat(first.uri).st_ino

    second = await persist_media(client, completed(url), tmp_path)

    assert first == second
    assert inode == os.stat(second.uri).st_ino
    assert [] == leftovers(tmp_path)


async def test_other_content_is_refused(
    client: KandinskyClient, media: MediaServer, sample_mp4: bytes, tmp_path: Path
) -> None:
    """A file holding other bytes is kept, with an error naming it and the way out."""
    url = media.add("/v/f", sample_mp4)
    target = tmp_path / f"{REQUEST_ID}.mp4"
    target.write_bytes(b"an older render")

    with pytest.raises(
        KandinskyMediaError,
        match=rf"{target}.* already exists with other content .*{REQUEST_ID}.*"
        r"pass overwrite=True to replace it, or another filename",
    ) as caught:
        await persist_media(client, completed(url), tmp_path)

    assert REQUEST_ID == caught.value.request_id
    assert b"an older render" == target.read_bytes()
    assert [] == leftovers(tmp_path)


async def test_overwrite_replaces_other_content(
    client: KandinskyClient, media: MediaServer, sample_mp4: bytes, tmp_path: Path
) -> None:
    """overwrite=True replaces an earlier video holding other bytes."""
    url = media.add("/v/g", sample_mp4)
    target = tmp_path / "keep.mp4"
    target.write_bytes(b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2 an older render")

    stored = await persist_media(client, completed(url), target, overwrite=True)

    assert sample_mp4 == target.read_bytes()
    assert sha256(sample_mp4) == stored.sha256


async def test_truncated_download_is_resumed(
    client: KandinskyClient, media: MediaServer, sample_mp4: bytes, tmp_path: Path
) -> None:
    """A body cut short is resumed with a Range request and stored byte for byte."""
    url = media.add("/v/cut.mp4", sample_mp4, fault="truncate-once")

    stored = await persist_media(client, completed(url), tmp_path, chunk_size=512)

    assert sample_mp4 == Path(stored.uri).read_bytes()
    assert sha256(sample_mp4) == stored.sha256
    assert [None, "range"] == [headers.get("range") and "range" for _, headers in media.requests]
    resumed_at = int(media.requests[1][1]["range"].removeprefix("bytes=").rstrip("-"))
    assert 0 < resumed_at <= len(sample_mp4) // 2


async def test_cut_within_first_chunk_is_resumed(
    client: KandinskyClient, media: MediaServer, sample_mp4: bytes, tmp_path: Path
) -> None:
    """A body cut before one whole chunk arrived is still resumed (default chunk size)."""
    url = media.add("/v/cut-early.mp4", sample_mp4, fault="truncate-once")

    stored = await persist_media(client, completed(url), tmp_path)

    assert sample_mp4 == Path(stored.uri).read_bytes()


async def test_media_host_never_sees_the_api_key(
    client: KandinskyClient, media: MediaServer, sample_mp4: bytes, tmp_path: Path
) -> None:
    """The download carries no subscription key: the CDN is not the gateway."""
    url = media.add("/v/h", sample_mp4)

    await persist_media(client, completed(url), tmp_path)

    assert 1 == len(media.requests)
    assert "ocp-apim-subscription-key" not in media.requests[0][1]


async def test_download_without_content_length(
    client: KandinskyClient, media: MediaServer, sample_mp4: bytes, tmp_path: Path
) -> None:
    """A close-delimited body without Content-Length is stored whole."""
    url = media.add("/v/i", sample_mp4, fault="no-length")

    stored = await persist_media(client, completed(url), tmp_path)

    assert sample_mp4 == Path(stored.uri).read_bytes()


@pytest.mark.parametrize("fault", ["expired-403", "expired-404"])
async def test_expired_link(
    client: KandinskyClient, media: MediaServer, tmp_path: Path, fault: str
) -> None:
    """An expired CDN link raises KandinskyMediaExpiredError and creates nothing."""
    url = media.add("/v/old.mp4", b"", fault=fault)
    destination = tmp_path / "videos"

    with pytest.raises(KandinskyMediaExpiredError, match="has expired") as caught:
        await persist_media(client, completed(url), destination)

    assert REQUEST_ID == caught.value.request_id
    assert not destination.exists()


async def test_resume_that_restarts_from_zero_is_refused(
    client: KandinskyClient, media: MediaServer, sample_mp4: bytes, tmp_path: Path
) -> None:
    """A Range answer that does not continue at the cut is refused; nothing is stored."""
    url = media.add("/v/long.mp4", sample_mp4, fault="range-from-zero")

    with pytest.raises(
        KandinskyMediaError,
        match=rf"Download of {url} was cut at {len(sample_mp4) // 2} bytes and the CDN did not "
        rf"resume it there "
        rf"\(answered 206, Content-Range 'bytes 0-{len(sample_mp4) - 1}/{len(sample_mp4)}'",
    ):
        await persist_media(client, completed(url), tmp_path, chunk_size=512)

    assert [] == list(tmp_path.iterdir())


async def test_page_instead_of_media_is_refused(
    client: KandinskyClient, media: MediaServer, tmp_path: Path
) -> None:
    """A 200 text page in place of the video is refused before anything is written."""
    url = media.add("/v/login", b"<html>sign in</html>", content_type="text/html; charset=utf-8")

    with pytest.raises(KandinskyMediaError, match="answered with text/html instead of media"):
        await persist_media(client, completed(url), tmp_path / "videos")

    assert [] == list(tmp_path.iterdir())


async def test_cancel_removes_the_temporary_file(
    client: KandinskyClient, media: MediaServer, sample_mp4: bytes, tmp_path: Path
) -> None:
    """Cancelling mid-download leaves neither a temporary nor a final file."""
    url = media.add("/v/slow.mp4", sample_mp4, fault="stall")
    task = asyncio.ensure_future(persist_media(client, completed(url), tmp_path, chunk_size=256))
    assert await asyncio.to_thread(media.stalled.wait, 30), "the CDN never sent the first half"
    deadline = time.monotonic() + 30
    while not leftovers(tmp_path):  # the client has the headers and now writes the first half
        assert time.monotonic() < deadline, "no temporary file was opened"
        await asyncio.sleep(0.01)
    assert 1 == len(leftovers(tmp_path))
    assert not task.done()

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert [] == list(tmp_path.iterdir())


async def test_missing_media_url(client: KandinskyClient, tmp_path: Path) -> None:
    """A completed generation without a media URL cannot be persisted."""
    video = completed("http://127.0.0.1:1/x").model_copy(update={"media_urls": []})

    with pytest.raises(KandinskyMediaError, match=f"{REQUEST_ID} completed without a media URL"):
        await persist_media(client, video, tmp_path)


# -- S3 over moto's HTTP server -----------------------------------------------------------


async def test_s3_object_with_metadata(
    client: KandinskyClient,
    media: MediaServer,
    sample_mp4: bytes,
    s3_bucket: S3Bucket,
    s3_client: Any,
) -> None:
    """The object holds the bytes, the sha256 metadata and the media type."""
    url = media.add("/v/s3", sample_mp4)

    stored = await persist_media(client, completed(url), s3_bucket)

    key = f"{REQUEST_ID}.mp4"
    assert f"s3://{s3_bucket.bucket_name}/{key}" == stored.uri
    obj = s3_client.get_object(Bucket=s3_bucket.bucket_name, Key=key)
    assert sample_mp4 == obj["Body"].read()
    assert sha256(sample_mp4) == obj["Metadata"]["sha256"]
    assert "video/mp4" == obj["ContentType"]
    assert "-" not in obj["ETag"]
    assert 12 == stored.frames


async def test_s3_bucket_folder(
    client: KandinskyClient,
    media: MediaServer,
    sample_mp4: bytes,
    s3_bucket: S3Bucket,
    s3_client: Any,
) -> None:
    """The key sits under the block's bucket_folder."""
    url = media.add("/v/folder", sample_mp4)
    s3_bucket.bucket_folder = "renders/day1/"

    stored = await persist_media(client, completed(url), s3_bucket, filename="clip.mp4")

    key = "renders/day1/clip.mp4"
    assert f"s3://{s3_bucket.bucket_name}/{key}" == stored.uri
    listed = s3_client.list_objects_v2(Bucket=s3_bucket.bucket_name)
    assert [key] == [item["Key"] for item in listed["Contents"]]


async def test_s3_multipart_above_threshold(
    client: KandinskyClient, media: MediaServer, s3_bucket: S3Bucket, s3_client: Any
) -> None:
    """A file above the threshold is uploaded in parts (ETag ends in -<parts>)."""
    payload = os.urandom(6 * MIB + 123)
    url = media.add("/v/big.mp4", payload, content_type="application/octet-stream")

    stored = await persist_media(
        client,
        completed(url, media_type=None),
        s3_bucket,
        multipart_threshold=5 * MIB,
        multipart_chunksize=5 * MIB,
    )

    key = f"{REQUEST_ID}.mp4"
    head = s3_client.head_object(Bucket=s3_bucket.bucket_name, Key=key)
    assert head["ETag"].strip('"').endswith("-2")
    assert len(payload) == head["ContentLength"] == stored.size_bytes
    assert sha256(payload) == head["Metadata"]["sha256"] == stored.sha256
    body = s3_client.get_object(Bucket=s3_bucket.bucket_name, Key=key)["Body"].read()
    assert payload == body
    assert stored.frames is None


async def test_s3_presigned_url_downloads_the_bytes(
    client: KandinskyClient, media: MediaServer, sample_mp4: bytes, s3_bucket: S3Bucket
) -> None:
    """public_url is a presigned GET link that serves the same bytes without credentials."""
    url = media.add("/v/presign", sample_mp4)

    stored = await persist_media(client, completed(url), s3_bucket, presign_expires_seconds=600)

    assert stored.public_url is not None
    assert "Signature=" in stored.public_url or "X-Amz-Signature=" in stored.public_url
    async with httpx.AsyncClient() as plain:
        response = await plain.get(stored.public_url)
    assert 200 == response.status_code
    assert sample_mp4 == response.content


async def test_s3_no_presigned_url(
    client: KandinskyClient, media: MediaServer, sample_mp4: bytes, s3_bucket: S3Bucket
) -> None:
    """presign_expires_seconds=None stores without making a link."""
    url = media.add("/v/nolink", sample_mp4)

    stored = await persist_media(client, completed(url), s3_bucket, presign_expires_seconds=None)

    assert stored.public_url is None


async def test_s3_other_object_is_refused(
    client: KandinskyClient,
    media: MediaServer,
    sample_mp4: bytes,
    s3_bucket: S3Bucket,
    s3_client: Any,
) -> None:
    """An object with other content is kept and named in the error, unless overwrite=True."""
    url = media.add("/v/s3-conflict", sample_mp4)
    key = f"{REQUEST_ID}.mp4"
    s3_client.put_object(
        Bucket=s3_bucket.bucket_name, Key=key, Body=b"old", Metadata={"sha256": sha256(b"old")}
    )

    with pytest.raises(
        KandinskyMediaError,
        match=rf"s3://{s3_bucket.bucket_name}/{key} already exists with other content.*"
        "overwrite=True",
    ):
        await persist_media(client, completed(url), s3_bucket)
    assert b"old" == s3_client.get_object(Bucket=s3_bucket.bucket_name, Key=key)["Body"].read()

    await persist_media(client, completed(url), s3_bucket, overwrite=True)
    assert sample_mp4 == s3_client.get_object(Bucket=s3_bucket.bucket_name, Key=key)["Body"].read()


async def test_s3_object_without_sha256_is_refused(
    client: KandinskyClient,
    media: MediaServer,
    sample_mp4: bytes,
    s3_bucket: S3Bucket,
    s3_client: Any,
) -> None:
    """An object stored by something else (no sha256 metadata) is not silently replaced."""
    url = media.add("/v/s3-foreign", sample_mp4)
    s3_client.put_object(Bucket=s3_bucket.bucket_name, Key=f"{REQUEST_ID}.mp4", Body=sample_mp4)

    with pytest.raises(KandinskyMediaError, match="no recorded sha256"):
        await persist_media(client, completed(url), s3_bucket)


async def test_s3_same_object_is_reused(
    client: KandinskyClient,
    media: MediaServer,
    sample_mp4: bytes,
    s3_bucket: S3Bucket,
    s3_client: Any,
) -> None:
    """An object whose sha256 metadata matches is reused without uploading again."""
    url = media.add("/v/s3-same", sample_mp4)
    key = f"{REQUEST_ID}.mp4"
    s3_client.put_object(
        Bucket=s3_bucket.bucket_name,
        Key=key,
        Body=b"marker: not re-uploaded",
        Metadata={"sha256": sha256(sample_mp4)},
    )

    stored = await persist_media(client, completed(url), s3_bucket)

    assert f"s3://{s3_bucket.bucket_name}/{key}" == stored.uri
    body = s3_client.get_object(Bucket=s3_bucket.bucket_name, Key=key)["Body"].read()
    assert b"marker: not re-uploaded" == body


# -- other blocks -------------------------------------------------------------------------


async def test_local_file_system_block(
    client: KandinskyClient, media: MediaServer, sample_mp4: bytes, tmp_path: Path
) -> None:
    """A LocalFileSystem block stores under its basepath, with a block: URI."""
    url = media.add("/v/lfs", sample_mp4)
    block = LocalFileSystem(basepath=str(tmp_path / "lfs"))

    stored = await persist_media(client, completed(url), block)

    target = (tmp_path / "lfs").resolve() / f"{REQUEST_ID}.mp4"
    assert f"block:local-file-system:{target}" == stored.uri
    assert sample_mp4 == target.read_bytes()
    assert sample_mp4 == await block.aread_path(f"{REQUEST_ID}.mp4")
    assert [] == leftovers(tmp_path)


async def test_generic_writable_file_system(
    client: KandinskyClient, media: MediaServer, sample_mp4: bytes
) -> None:
    """Another WritableFileSystem receives the bytes through write_path; reruns reuse them."""
    url = media.add("/v/remote", sample_mp4)
    base = f"memory://kandinsky-{uuid.uuid4().hex}"
    block = RemoteFileSystem(basepath=base)

    stored = await persist_media(client, completed(url), block)
    again = await persist_media(client, completed(url), block)

    assert f"block:remote-file-system:{base}/{REQUEST_ID}.mp4" == stored.uri == again.uri
    assert sample_mp4 == await block.aread_path(f"{REQUEST_ID}.mp4")
    assert 12 == stored.frames


async def test_generic_writable_file_system_other_content(
    client: KandinskyClient, media: MediaServer, sample_mp4: bytes
) -> None:
    """Another WritableFileSystem's file with other bytes is refused, unless overwrite=True."""
    url = media.add("/v/remote-conflict", sample_mp4)
    block = RemoteFileSystem(basepath=f"memory://kandinsky-{uuid.uuid4().hex}")
    await block.awrite_path("clip.mp4", b"old")

    with pytest.raises(KandinskyMediaError, match="already exists with other content"):
        await persist_media(client, completed(url), block, filename="clip.mp4")
    assert b"old" == await block.aread_path("clip.mp4")

    await persist_media(client, completed(url), block, filename="clip.mp4", overwrite=True)
    assert sample_mp4 == await block.aread_path("clip.mp4")


# -- naming and probing -------------------------------------------------------------------


def test_destination_key_of_paths(tmp_path: Path) -> None:
    """A local destination's key is its absolute file URI, however it is spelled."""
    spelled = tmp_path / "a" / ".." / "videos"

    assert (tmp_path / "videos").as_uri() == destination_key(spelled)
    assert destination_key(str(spelled)) == destination_key(tmp_path / "videos")


def test_destination_key_of_s3_has_no_secret() -> None:
    """An S3Bucket's key names bucket, folder and endpoint, never the credentials."""
    bucket = S3Bucket(
        bucket_name="renders",
        bucket_folder="/team/videos/",
        credentials=AwsCredentials(
            aws_access_key_id="AKIAEXAMPLEKEYID",
            aws_secret_access_key="wJalrXUtnFEMI-super-secret",
            aws_session_token="session-token-secret",
            aws_client_parameters={"endpoint_url": "https://minio.internal:9000"},
        ),
    )

    key = destination_key(bucket)

    assert "s3://renders/team/videos?endpoint=https://minio.internal:9000" == key
    assert key == destination_key(bucket.model_copy())
    for secret in ("wJalrXUtnFEMI-super-secret", "session-token-secret", "AKIAEXAMPLEKEYID"):
        assert secret not in key
    assert "s3://renders" == destination_key(S3Bucket(bucket_name="renders"))


def test_destination_key_of_blocks_has_no_secret(tmp_path: Path) -> None:
    """Block keys name the block type and base path without user info or tokens."""
    remote = RemoteFileSystem(
        basepath="sftp://user:hunter2@files.example.com/videos?token=abc123",
        settings={"password": "hunter2"},
    )

    key = destination_key(remote)

    assert "block:remote-file-system:sftp://files.example.com/videos" == key
    local = LocalFileSystem(basepath=str(tmp_path / "x" / ".." / "lfs"))
    assert f"block:local-file-system:{(tmp_path / 'lfs').resolve()}" == destination_key(local)


@pytest.mark.parametrize(
    ("request_id", "media_type", "url", "expected"),
    [
        ("req-1", "video/mp4", "https://cdn.example/v/abc", "req-1.mp4"),
        ("req-1", "video/webm; codecs=vp9", "https://cdn.example/v.mp4", "req-1.webm"),
        ("req-1", "application/octet-stream", "https://cdn.example/v/OUT.MOV?sig=x", "req-1.mov"),
        ("req-1", None, "https://cdn.example/v/out.webm?X-Amz-Expires=60", "req-1.webm"),
        ("req-1", None, "https://cdn.example/v/out", "req-1.mp4"),
        ("req-1", "image/gif", "https://cdn.example/v/out", "req-1.gif"),
        ("kandinsky/abc 1:2", None, "https://cdn.example/v", "kandinsky_abc_1_2.mp4"),
        ("../../etc/passwd", None, "https://cdn.example/v", "etc_passwd.mp4"),
        ("..", None, "https://cdn.example/v", "video.mp4"),
    ],
)
def test_output_filename(request_id: str, media_type: str | None, url: str, expected: str) -> None:
    """Request id made safe, extension from the media type, else the URL, else .mp4."""
    assert expected == output_filename(request_id, media_type, url)


def test_output_filename_is_bounded() -> None:
    """A very long request id still gives a file name the file system accepts."""
    assert 204 == len(output_filename("r" * 1000, "video/mp4", "https://cdn.example/v"))


def test_probe_video_of_non_video(tmp_path: Path) -> None:
    """A file that is not a video probes to None instead of raising."""
    path = tmp_path / "notes.mp4"
    path.write_bytes(b"this is not a video")

    assert probe_video(path) is None


def test_probe_video_of_sample(sample_mp4: bytes, tmp_path: Path) -> None:
    """Probing reads codec, frames, size, fps and duration."""
    path = tmp_path / "s.mp4"
    path.write_bytes(sample_mp4)

    facts = probe_video(path)

    assert facts is not None
    assert ("h264", 12, 64, 48) == (facts.codec, facts.frames, facts.width, facts.height)
    assert Fraction(12) == Fraction(facts.fps or 0)


def test_probe_video_without_pyav(
    sample_mp4: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without PyAV installed, probing quietly returns None."""
    path = tmp_path / "s.mp4"
    path.write_bytes(sample_mp4)
    monkeypatch.setitem(sys.modules, "av", None)

    assert probe_video(path) is None


def test_a_directory_created_meanwhile_is_still_a_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows of a batch persist at once into a new folder: one creating it misleads no other."""
    from prefect_kandinsky import storage

    folder = tmp_path / "videos-of-the-night"
    real_stat = Path.stat

    def created_by_another_row(path: Path, *args: Any, **kwargs: Any) -> os.stat_result:
        if path == folder and not os.path.exists(folder):
            os.mkdir(folder)  # another row got there first, right after this look
            raise FileNotFoundError(str(path))
        return real_stat(path, *args, **kwargs)

    def created_by_another_row_is_dir(path: Path) -> bool:
        if path == folder and not os.path.exists(folder):
            os.mkdir(folder)
            return False
        return os.path.isdir(path)

    monkeypatch.setattr(Path, "stat", created_by_another_row)
    monkeypatch.setattr(Path, "is_dir", created_by_another_row_is_dir)
    plan = storage._plan_local(str(folder), "row-7.mp4")
    assert plan is not None and folder == plan.directory and plan.file is None


# -- staying inside the destination --------------------------------------------------------


async def test_a_symlink_out_of_the_destination_is_not_followed(
    client: KandinskyClient, media: MediaServer, sample_mp4: bytes, tmp_path: Path
) -> None:
    """A filename through ``out/link -> ../outside`` is refused; nothing is written outside."""
    url = media.add("/v/link", sample_mp4)
    (tmp_path / "outside").mkdir()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "link").symlink_to(tmp_path / "outside")

    with pytest.raises(
        ValueError,
        match=rf"^{tmp_path}/out/link/sub/clip.mp4 leads out of the destination {tmp_path}/out "
        "through a symbolic link; nothing is written outside the destination",
    ):
        await persist_media(client, completed(url), tmp_path / "out", filename="link/sub/clip.mp4")

    assert [] == list((tmp_path / "outside").iterdir())


async def test_a_symlink_inside_the_destination_is_followed(
    client: KandinskyClient, media: MediaServer, sample_mp4: bytes, tmp_path: Path
) -> None:
    """A link that stays inside the destination still works."""
    url = media.add("/v/inner", sample_mp4)
    (tmp_path / "out" / "real").mkdir(parents=True)
    (tmp_path / "out" / "alias").symlink_to(tmp_path / "out" / "real")

    await persist_media(client, completed(url), tmp_path / "out", filename="alias/clip.mp4")

    assert sample_mp4 == (tmp_path / "out" / "real" / "clip.mp4").read_bytes()


async def test_overwrite_never_replaces_a_file_that_is_not_a_video(
    client: KandinskyClient, media: MediaServer, sample_mp4: bytes, tmp_path: Path
) -> None:
    """A file destination naming a non-video (a config file) is kept even with overwrite=True."""
    url = media.add("/v/config", sample_mp4)
    target = tmp_path / "settings.toml"
    target.write_bytes(b"[database]\npassword = 'x'\n")

    with pytest.raises(
        KandinskyMediaError,
        match=rf"^{target} already exists and is not a video, so {REQUEST_ID} does not replace "
        r"it even with overwrite=True \(which replaces only an earlier video\)",
    ):
        await persist_media(client, completed(url), target, overwrite=True)

    assert b"[database]\npassword = 'x'\n" == target.read_bytes()
    assert [] == leftovers(tmp_path)
