"""Private input images made fetchable: uploads and presigns on moto's S3 server over real
HTTP, and the gateway emulator fetching the presigned link."""

from __future__ import annotations

import hashlib
import math
import re
import shutil
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from fractions import Fraction
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import httpx
import pytest
from prefect_aws import AwsCredentials, S3Bucket

from prefect_kandinsky.assets import SAMPLE_IMAGE_PATH, sample_image_bytes
from prefect_kandinsky.emulator.render import probe_video
from prefect_kandinsky.gateway.client import KandinskyClient
from prefect_kandinsky.gateway.constants import DEFAULT_PRESIGN_MARGIN_SECONDS
from prefect_kandinsky.gateway.exceptions import KandinskyImageError
from prefect_kandinsky.gateway.models import JobStatus, VideoRequest
from prefect_kandinsky.media.images import check_image
from prefect_kandinsky.media.storage import MAX_PRESIGN_EXPIRES_SECONDS
from prefect_kandinsky.media.uploads import (
    PreparedImage,
    prepare_image,
    prepare_images,
    presign_lifetime,
)

PNG = sample_image_bytes()
PNG_SHA256 = hashlib.sha256(PNG).hexdigest()
SAMPLE = str(SAMPLE_IMAGE_PATH)
LIFETIME = 600
SECRET = "wJalrXUtnFEMI-K7MDENG-bPxRfiCY-never-shown"
"""A secret access key distinctive enough to be looked for in messages."""


# -- a recording reverse proxy in front of moto ---------------------------------------------

_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "host"}
)


@dataclass
class SeenRequest:
    method: str
    target: str
    """The path and query as sent."""
    headers: dict[str, str]
    """The request headers, names in lower case."""


@dataclass
class RecordingProxy:
    """Forwards every request to moto and records it; answers 403 for ``denied`` paths."""

    url: str
    upstream: str
    seen: list[SeenRequest] = field(default_factory=list)
    denied: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def requests(self) -> list[SeenRequest]:
        with self.lock:
            return list(self.seen)


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _ProxyServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        proxy = self.server.proxy
        headers = {name.lower(): value for name, value in self.headers.items()}
        body = self._read_body(headers)
        with proxy.lock:
            proxy.seen.append(SeenRequest(self.command, self.path, headers))
        if unquote(urlsplit(self.path).path) in proxy.denied:
            self._reply(403, {"Content-Type": "application/xml"}, b"<Error><Code>403</Code>")
            return
        forwarded = {name: value for name, value in headers.items() if name not in _HOP_BY_HOP}
        answer = httpx.request(
            self.command, proxy.upstream + self.path, headers=forwarded, content=body
        )
        kept = {
            name: value
            for name, value in answer.headers.items()
            if name.lower() not in _HOP_BY_HOP | {"content-length", "content-encoding"}
        }
        if self.command == "HEAD" and "content-length" in answer.headers:
            kept["Content-Length"] = answer.headers["content-length"]
        self._reply(answer.status_code, kept, answer.content)

    do_HEAD = do_PUT = do_POST = do_DELETE = do_GET

    def _read_body(self, headers: dict[str, str]) -> bytes:
        if headers.get("transfer-encoding", "").lower() == "chunked":
            body = bytearray()
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                body += self.rfile.read(size)
                self.rfile.readline()
            while self.rfile.readline().strip():
                pass  # trailers
            return bytes(body)
        return self.rfile.read(int(headers.get("content-length", "0")))

    def _reply(self, code: int, headers: dict[str, str], body: bytes) -> None:
        self.send_response(code)
        for name, value in headers.items():
            self.send_header(name, value)
        if self.command != "HEAD":
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


class _ProxyServer(ThreadingHTTPServer):
    daemon_threads = True
    proxy: RecordingProxy


@pytest.fixture
def recording_proxy(moto_server: str) -> Iterator[RecordingProxy]:
    """A reverse proxy on 127.0.0.1 in front of the moto server, recording every request."""
    server = _ProxyServer(("127.0.0.1", 0), _ProxyHandler)
    server.proxy = RecordingProxy(
        url=f"http://127.0.0.1:{server.server_address[1]}", upstream=moto_server
    )
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server.proxy
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


# -- helpers --------------------------------------------------------------------------------


def bucket_via(endpoint: str, name: str, *, folder: str = "", secret: str = "testing") -> S3Bucket:
    """An ``S3Bucket`` block on ``name`` that talks to S3 at ``endpoint``."""
    credentials = AwsCredentials(
        aws_access_key_id="testing",
        aws_secret_access_key=secret,
        region_name="us-east-1",
        aws_client_parameters={"endpoint_url": endpoint},
    )
    return S3Bucket(bucket_name=name, credentials=credentials, bucket_folder=folder)


def versioned(s3_client: Any, bucket: S3Bucket) -> S3Bucket:
    """Turn versioning on, so that every PUT leaves a version to count."""
    s3_client.put_bucket_versioning(
        Bucket=bucket.bucket_name, VersioningConfiguration={"Status": "Enabled"}
    )
    return bucket


def versions(s3_client: Any, bucket: S3Bucket) -> list[str]:
    """The key of every stored object version (one per PUT) in the bucket."""
    listing = s3_client.list_object_versions(Bucket=bucket.bucket_name)
    return sorted(version["Key"] for version in listing.get("Versions", []))


def link_expiry(url: str) -> datetime:
    """When a presigned S3 URL expires, read from its query (SigV2 or SigV4)."""
    query = {name.lower(): values[0] for name, values in parse_qs(urlsplit(url).query).items()}
    if "expires" in query:
        return datetime.fromtimestamp(int(query["expires"]), timezone.utc)
    signed = datetime.strptime(query["x-amz-date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)
    return signed + timedelta(seconds=int(query["x-amz-expires"]))


def new_bucket(s3_client: Any) -> str:
    name = f"other-{uuid.uuid4().hex[:16]}"
    s3_client.create_bucket(Bucket=name)
    return name


# -- local files ----------------------------------------------------------------------------


async def test_a_local_png_is_uploaded_once_under_its_sha256(
    s3_bucket: S3Bucket, s3_client: Any
) -> None:
    """A local PNG goes up once under its SHA-256 with its type; the link serves its bytes."""
    bucket = versioned(
        s3_client, bucket_via(s3_client.meta.endpoint_url, s3_bucket.bucket_name, folder="team/")
    )
    before = datetime.now(timezone.utc).replace(microsecond=0)

    first = await prepare_image(SAMPLE, bucket=bucket, expires_seconds=LIFETIME)
    second = await prepare_image(SAMPLE, bucket=bucket, expires_seconds=LIFETIME)

    key = f"team/kandinsky-inputs/{PNG_SHA256}.png"
    assert [key] == versions(s3_client, bucket)
    head = s3_client.head_object(Bucket=bucket.bucket_name, Key=key)
    assert "image/png" == head["ContentType"]
    assert {"sha256": PNG_SHA256} == head["Metadata"]
    assert (True, False) == (first.uploaded, second.uploaded)
    assert SAMPLE == second.source
    assert second.expires_at is not None
    assert timezone.utc == second.expires_at.tzinfo
    assert before + timedelta(seconds=LIFETIME) <= second.expires_at <= link_expiry(second.url)
    assert PNG == httpx.get(second.url).content
    checked = await check_image(second.url, allow_private_images=True)  # moto on 127.0.0.1
    assert ("png", len(PNG)) == (checked.kind, checked.size_bytes)


async def test_the_emulator_fetches_the_presigned_image_and_no_key_reaches_s3(
    kandinsky_emulator: Any, s3_bucket: S3Bucket, recording_proxy: RecordingProxy
) -> None:
    """The gateway renders a video from the presigned link; S3 never sees the gateway key.

    Every S3 request of the run (the HEAD and PUT of the upload, and the emulated gateway's
    GET of the image when the job starts PROCESSING) goes to moto through a recording reverse
    proxy, because moto keeps no headers and the emulator logs only requests made to it. The
    proxy records the headers as they arrive: none may be the subscription key, while the
    emulator logs that the submit did carry it.
    """
    bucket = bucket_via(recording_proxy.url, s3_bucket.bucket_name)
    image = await prepare_image(SAMPLE, bucket=bucket, expires_seconds=presign_lifetime(60))
    assert image.url.startswith(recording_proxy.url + "/")

    async with KandinskyClient(
        api_key=kandinsky_emulator.api_key, base_url=kandinsky_emulator.base_url
    ) as client:
        request = VideoRequest(
            prompt="The sun rises over the hills.",
            image_url=image.url,
            resolution="256P",
            duration=1,
        )
        job = await client.submit(request)
        status = await client.wait(job.request_id, poll_interval=0.02, max_poll_interval=0.05)

    assert JobStatus.COMPLETED == status.status
    video = probe_video(httpx.get(status.media_urls[0]).content)
    assert Fraction(3, 2) == Fraction(video.width, video.height)  # the sample is 480x320
    fetches = [
        seen
        for seen in recording_proxy.requests()
        if seen.method == "GET"
        and seen.headers.get("user-agent", "").startswith("prefect-kandinsky-emulator")
    ]
    assert 1 == len(fetches)
    assert image.url.endswith(fetches[0].target)
    assert {"HEAD", "PUT", "GET"} == {seen.method for seen in recording_proxy.requests()}
    assert [] == [
        seen.target
        for seen in recording_proxy.requests()
        if "ocp-apim-subscription-key" in seen.headers
    ]
    assert all(r.key_present for r in kandinsky_emulator.state.requests("submit"))


async def test_two_files_with_the_same_bytes_are_uploaded_once(
    s3_bucket: S3Bucket, s3_client: Any, tmp_path: Path
) -> None:
    """prepare_images on a mix: one outcome per distinct source, the shared picture put once."""
    bucket = versioned(s3_client, s3_bucket)
    copy = shutil.copy(SAMPLE, tmp_path / "copy.png")
    other = new_bucket(s3_client)
    s3_client.put_object(Bucket=other, Key="in/beach.png", Body=PNG)
    missing = str(tmp_path / "missing.png")
    sources = [
        "https://example.com/beach.jpg",
        SAMPLE,
        SAMPLE,
        str(copy),
        missing,
        f"s3://{other}/in/beach.png",
        SAMPLE,
    ]

    outcomes = await prepare_images(sources, bucket=bucket, expires_seconds=LIFETIME)

    assert list(dict.fromkeys(sources)) == list(outcomes)
    assert (
        PreparedImage("https://example.com/beach.jpg", sources[0], False, None)
        == (outcomes[sources[0]])
    )
    shared = [outcomes[SAMPLE], outcomes[str(copy)]]
    assert [False, True] == sorted(
        outcome.uploaded for outcome in shared if isinstance(outcome, PreparedImage)
    )
    assert [f"kandinsky-inputs/{PNG_SHA256}.png"] == versions(s3_client, bucket)
    assert isinstance(outcomes[missing], KandinskyImageError)
    assert f"Image file {missing!r} does not exist" in str(outcomes[missing])
    from_s3 = outcomes[f"s3://{other}/in/beach.png"]
    assert isinstance(from_s3, PreparedImage)
    assert (False, PNG) == (from_s3.uploaded, httpx.get(from_s3.url).content)


# -- S3 objects -----------------------------------------------------------------------------


async def test_an_object_in_another_bucket_is_presigned_and_fetched(
    s3_bucket: S3Bucket, s3_client: Any
) -> None:
    """An s3:// object outside the block's bucket is presigned with the block's credentials."""
    other = new_bucket(s3_client)
    s3_client.put_object(Bucket=other, Key="photos/day 1/beach.png", Body=PNG)
    source = f"s3://{other}/photos/day 1/beach.png"

    image = await prepare_image(source, bucket=s3_bucket, expires_seconds=LIFETIME)

    assert (source, False) == (image.source, image.uploaded)
    assert image.expires_at is not None
    assert PNG == httpx.get(image.url).content
    assert [] == versions(s3_client, s3_bucket)


async def test_a_missing_object_is_named_with_no_such_object(s3_bucket: S3Bucket) -> None:
    """A mistyped key is reported before anything is paid, naming the URI."""
    source = f"s3://{s3_bucket.bucket_name}/photos/nope.png"
    with pytest.raises(KandinskyImageError, match=f"^Image {re.escape(source)}: no such object"):
        await prepare_image(source, bucket=s3_bucket, expires_seconds=LIFETIME)


async def test_an_unreadable_object_says_to_grant_get_object(
    s3_bucket: S3Bucket, s3_client: Any, recording_proxy: RecordingProxy
) -> None:
    """S3's bare 403 to the HEAD becomes AccessDenied and the permission to grant."""
    s3_client.put_object(Bucket=s3_bucket.bucket_name, Key="locked.png", Body=PNG)
    recording_proxy.denied.add(f"/{s3_bucket.bucket_name}/locked.png")
    bucket = bucket_via(recording_proxy.url, s3_bucket.bucket_name)
    source = f"s3://{s3_bucket.bucket_name}/locked.png"

    with pytest.raises(KandinskyImageError) as caught:
        await prepare_image(source, bucket=bucket, expires_seconds=LIFETIME)

    assert str(caught.value).startswith(
        f"Image {source} could not be read (AccessDenied): grant s3:GetObject on it to the "
        "S3Bucket block's AWS credentials"
    )
    assert 403 == caught.value.status_code


@pytest.mark.parametrize("source", ["s3://", "s3://just-a-bucket", "s3://bucket/folder/"])
async def test_an_s3_uri_without_a_key_is_refused(source: str) -> None:
    """An S3 URI must name an object: bucket and full key."""
    with pytest.raises(KandinskyImageError, match="write it as s3://bucket/key"):
        await prepare_image(source, bucket=None, expires_seconds=LIFETIME)


# -- refusals -------------------------------------------------------------------------------


async def test_a_missing_file_is_named(s3_bucket: S3Bucket, tmp_path: Path) -> None:
    """A missing local file is reported with its path, and nothing is uploaded."""
    path = str(tmp_path / "photos" / "beach.png")
    with pytest.raises(KandinskyImageError, match=f"^Image file {re.escape(repr(path))} does not"):
        await prepare_image(path, bucket=s3_bucket, expires_seconds=LIFETIME)


async def test_a_file_that_is_not_an_image_is_refused(s3_bucket: S3Bucket, tmp_path: Path) -> None:
    """A local file whose bytes are not an image is refused before any upload."""
    page = tmp_path / "beach.png"
    page.write_bytes(b"-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjE=\n")
    with pytest.raises(
        KandinskyImageError, match="is not an image \\(it is 57 bytes of something else\\)"
    ) as caught:
        await prepare_image(str(page), bucket=s3_bucket, expires_seconds=LIFETIME)

    assert "BEGIN" not in str(caught.value)


@pytest.mark.parametrize(
    ("source", "named"),
    [(SAMPLE, repr(SAMPLE)), ("s3://team-bucket/beach.png", "s3://team-bucket/beach.png")],
    ids=["local-file", "s3-object"],
)
async def test_no_bucket_asks_for_an_s3_bucket(source: str, named: str) -> None:
    """A file or an S3 object without a bucket says to pass an S3Bucket, naming the source."""
    with pytest.raises(KandinskyImageError) as caught:
        await prepare_image(source, bucket=None, expires_seconds=LIFETIME)
    assert f"Image {named} is a " in str(caught.value)
    assert "pass an S3Bucket" in str(caught.value)
    assert source == caught.value.url


async def test_an_http_url_passes_through_without_a_bucket() -> None:
    """An http(s) URL is already what the gateway takes: unchanged, not uploaded."""
    url = "https://example.com/beach.jpg?X-Amz-Signature=abc"
    image = await prepare_image(url, bucket=None, expires_seconds=LIFETIME)
    assert PreparedImage(url, url, False, None) == image
    assert "abc" not in repr(image)


async def test_errors_and_links_never_show_the_aws_secret(s3_client: Any, tmp_path: Path) -> None:
    """Failures and presigned links carry no secret access key; upload errors name the key."""
    bucket = bucket_via(s3_client.meta.endpoint_url, "no-such-bucket-here", secret=SECRET)
    other = new_bucket(s3_client)
    s3_client.put_object(Bucket=other, Key="a.png", Body=PNG)

    outcomes = await prepare_images(
        [SAMPLE, f"s3://{other}/a.png", f"s3://{other}/b.png", str(tmp_path / "x.png")],
        bucket=bucket,
        expires_seconds=LIFETIME,
    )

    upload = outcomes[SAMPLE]
    assert isinstance(upload, KandinskyImageError)
    assert str(upload).startswith(
        f"Upload of image file {SAMPLE!r} to "
        f"s3://no-such-bucket-here/kandinsky-inputs/{PNG_SHA256}.png failed (NoSuchBucket)"
    )
    shown = " ".join(
        str(outcome) + repr(outcome) + repr(vars(outcome)) for outcome in outcomes.values()
    )
    assert SECRET not in shown
    assert "REDACTED" in repr(outcomes[f"s3://{other}/a.png"])


@pytest.mark.parametrize("expires_seconds", [0, MAX_PRESIGN_EXPIRES_SECONDS + 1, 1.5])
async def test_lifetimes_s3_cannot_sign_are_refused(expires_seconds: Any) -> None:
    """A presign lifetime outside 1 s to 7 days is a ValueError, before any work."""
    with pytest.raises(ValueError, match="expires_seconds must be a whole number from 1 to"):
        await prepare_images(
            ["https://example.com/a.png"], bucket=None, expires_seconds=expires_seconds
        )


# -- presign_lifetime -----------------------------------------------------------------------


def test_presign_lifetime_covers_the_wait_and_a_margin_up_to_seven_days() -> None:
    """The link outlives the wait's timeout by the margin, and never asks S3 for over 7 days."""
    assert 1800 + DEFAULT_PRESIGN_MARGIN_SECONDS == presign_lifetime(1800)
    assert 91 == presign_lifetime(30.5, margin_seconds=60)
    assert 1 == presign_lifetime(0, margin_seconds=0)
    assert 7 * 24 * 3600 == presign_lifetime(7 * 24 * 3600 - 60)
    assert MAX_PRESIGN_EXPIRES_SECONDS == presign_lifetime(math.inf)
    with pytest.raises(ValueError, match="wait_timeout_seconds must be 0 or more"):
        presign_lifetime(-1)
    with pytest.raises(ValueError, match="margin_seconds must be 0 or more"):
        presign_lifetime(60, margin_seconds=math.nan)
