"""Flow runs on a real Prefect API against the emulator: files, artifacts, never paying twice."""

from __future__ import annotations

import asyncio
import html
import threading
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import av
import httpx
import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
from prefect.client.schemas.objects import Artifact
from prefect.concurrency.asyncio import ConcurrencySlotAcquisitionError
from prefect.states import State

from prefect_kandinsky import (
    KandinskyCredentials,
    KandinskyGenerationFailedError,
    PersistedVideo,
    generate_video,
)
from prefect_kandinsky.artifacts import artifact_key, markdown_text

pytestmark = pytest.mark.usefixtures("prefect_api")

FAST = {"resolution": "256P", "duration": 1, "poll_interval_seconds": 0.02}


def params(server: Any, tmp_path: Path, creds: KandinskyCredentials, **changes: Any) -> Any:
    base = {
        "prompt": "The sun rises over the hills.",
        "image_url": server.sample_image_url,
        "destination": str(tmp_path / "videos"),
        "credentials": creds,
        **FAST,
    }
    base.update(changes)
    return base


async def artifacts_of(flow_run_id: UUID) -> dict[str, Artifact]:
    async with get_client() as client:
        found = await client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    return {a.key or f"unkeyed-{a.type}": a for a in found}


def frames_of(path: str) -> tuple[int, int, int, str]:
    with av.open(path) as container:
        stream = container.streams.video[0]
        frames = sum(1 for _ in container.decode(stream))
        return frames, stream.width, stream.height, stream.codec_context.name


async def run(**parameters: Any) -> State[Any]:
    state: State[Any] = await generate_video(**parameters, return_state=True)  # type: ignore[call-overload]
    return state


async def test_generate_video_writes_the_mp4_and_links_it(
    kandinsky_emulator: Any, credentials: KandinskyCredentials, tmp_path: Path
) -> None:
    """One flow run: one submit, an H.264 MP4 of 25 frames on disk, link and summary artifacts."""
    state = await run(**params(kandinsky_emulator, tmp_path, credentials))
    video: PersistedVideo = await state.result()  # type: ignore[misc]

    assert Path(video.uri).is_file()
    assert (25, 384, 256, "h264") == frames_of(video.uri)
    assert 1 == kandinsky_emulator.state.count("submit")
    assert video.request_id in video.uri

    found = await artifacts_of(state.state_details.flow_run_id)  # type: ignore[arg-type]
    key = artifact_key(video.request_id, "summary", "The sun rises over the hills.")
    summary = found[key]
    assert {"unkeyed-progress", key} == set(found)
    text = str(summary.data)
    assert text.startswith("## The sun rises over the hills.")
    assert f"<code>{markdown_text(video.uri)}</code>" in text and "file://" not in text
    assert video.sha256 in text and "- **Parameters:** 256P" in text
    assert "<video" not in text, "no player for the emulator's loopback CDN, gone once it stops"
    assert str(summary.description).startswith("The sun rises over the hills.")
    progress = found["unkeyed-progress"]
    assert 100.0 == progress.data
    assert str(progress.description).startswith("The sun rises over the hills.")
    for artifact in found.values():
        assert credentials.api_key.get_secret_value() not in str(artifact.data)
        assert credentials.api_key.get_secret_value() not in str(artifact.description)


async def test_failed_persist_then_flow_retry_pays_once(
    kandinsky_emulator: Any, credentials: KandinskyCredentials, tmp_path: Path
) -> None:
    """Persist fails after completion; the retried flow run neither resubmits nor re-polls."""
    kandinsky_emulator.state.inject_fault("media", status_code=403)
    retried = generate_video.with_options(retries=1, retry_delay_seconds=0)
    state = await retried(**params(kandinsky_emulator, tmp_path, credentials), return_state=True)
    video: PersistedVideo = await state.result()  # type: ignore[misc]

    log = kandinsky_emulator.state
    assert 1 == log.count("submit")
    polls_after_failure = [r for r in log.requests("status") if r.at > log.requests("media")[0].at]
    assert [] == polls_after_failure
    assert [403, 200] == [r.status_code for r in log.requests("media")]
    assert Path(video.uri).is_file()


async def test_rerun_with_same_idempotency_key_pays_once(
    kandinsky_emulator: Any, credentials: KandinskyCredentials, tmp_path: Path
) -> None:
    """A new flow run with the same key reuses the job and its status; one download succeeds."""
    key = f"slot-{uuid4()}"
    kandinsky_emulator.state.inject_fault("media", status_code=404)
    first = await run(**params(kandinsky_emulator, tmp_path, credentials, idempotency_key=key))
    assert first.is_failed()
    polls = kandinsky_emulator.state.count("status")

    second = await run(**params(kandinsky_emulator, tmp_path, credentials, idempotency_key=key))
    video: PersistedVideo = await second.result()  # type: ignore[misc]

    assert 1 == kandinsky_emulator.state.count("submit")
    assert polls == kandinsky_emulator.state.count("status")
    assert [404, 200] == [r.status_code for r in kandinsky_emulator.state.requests("media")]
    assert 25 == frames_of(video.uri)[0]

    third = await run(**params(kandinsky_emulator, tmp_path, credentials, idempotency_key=key))
    assert video.uri == (await third.result()).uri  # type: ignore[misc]
    assert 1 == len([r for r in kandinsky_emulator.state.requests("media") if r.status_code == 200])
    found = await artifacts_of(third.state_details.flow_run_id)  # type: ignore[arg-type]
    assert artifact_key(video.request_id, "summary", "The sun rises over the hills.") in found, (
        "cached runs show artifacts too"
    )


async def test_failed_generation_fails_the_flow_without_resubmitting(
    kandinsky_emulator: Any, credentials: KandinskyCredentials, tmp_path: Path
) -> None:
    """FAILED is final: the error quotes the gateway and nothing is submitted again."""
    kandinsky_emulator.state.plan_outcome("FAILED", "content moderation rejected the prompt")
    state = await run(**params(kandinsky_emulator, tmp_path, credentials))
    assert state.is_failed()
    with pytest.raises(KandinskyGenerationFailedError, match="content moderation rejected"):
        await state.result()  # type: ignore[misc]
    assert 1 == kandinsky_emulator.state.count("submit")


async def test_system_error_is_resubmitted_once_when_allowed(
    kandinsky_emulator: Any, credentials: KandinskyCredentials, tmp_path: Path
) -> None:
    """ERROR (not charged) may be resubmitted once; the wallet pays for one video."""
    kandinsky_emulator.state.plan_outcome("ERROR", "GPU node lost")
    before = kandinsky_emulator.state.balance
    state = await run(
        **params(
            kandinsky_emulator,
            tmp_path,
            credentials,
            resolution="512P",
            resubmit_on_system_error=True,
        )
    )
    video: PersistedVideo = await state.result()  # type: ignore[misc]
    assert 2 == kandinsky_emulator.state.count("submit")
    assert Path(video.uri).is_file()
    assert Decimal("0.04") == before - kandinsky_emulator.state.balance


async def test_generate_video_as_a_subflow(
    kandinsky_emulator: Any, credentials: KandinskyCredentials, tmp_path: Path
) -> None:
    """Another team's flow composes generate_video and gets the stored video back."""

    @flow
    async def team_flow(image_urls: list[str]) -> list[str]:
        uris = []
        for url in image_urls:
            video = await generate_video(
                prompt="Slow push-in on the product.",
                image_url=url,
                credentials=credentials,
                destination=str(tmp_path / "team"),
                **FAST,
            )
            uris.append(video.uri)
        return uris

    uris = await team_flow([kandinsky_emulator.sample_image_url] * 2)
    assert 2 == len(set(uris)) == kandinsky_emulator.state.count("submit")
    assert all(Path(uri).is_file() for uri in uris)


async def test_saved_block_name_and_s3_destination(
    kandinsky_emulator: Any,
    credentials: KandinskyCredentials,
    tmp_path: Path,
    s3_bucket: Any,
    s3_client: Any,
) -> None:
    """A block name for credentials and an S3Bucket destination: the object and its link."""
    await credentials.save("emulator-test", overwrite=True)
    state = await run(
        **params(
            kandinsky_emulator,
            tmp_path,
            credentials,
            credentials="emulator-test",
            destination=s3_bucket,
        )
    )
    video: PersistedVideo = await state.result()  # type: ignore[misc]
    assert video.uri.startswith(f"s3://{s3_bucket.bucket_name}/")
    key = video.uri.split("/", 3)[3]
    body = s3_client.get_object(Bucket=s3_bucket.bucket_name, Key=key)["Body"].read()
    assert video.size_bytes == len(body)
    assert video.public_url is not None
    assert body == httpx.get(video.public_url).content
    found = await artifacts_of(state.state_details.flow_run_id)  # type: ignore[arg-type]
    stored = found[artifact_key(video.request_id, "video", "The sun rises over the hills.")]
    assert video.public_url in str(stored.data)
    assert markdown_text(video.uri) in str(stored.data)
    summary = str(
        found[artifact_key(video.request_id, "summary", "The sun rises over the hills.")].data
    )
    assert f'src="{html.escape(video.public_url)}"' in summary, "plays from the presigned link"


async def test_shared_result_storage_lets_another_machine_reuse_the_job(
    kandinsky_emulator: Any,
    credentials: KandinskyCredentials,
    tmp_path: Path,
    s3_bucket: Any,
    s3_client: Any,
) -> None:
    """With results in an S3Bucket, a run whose local storage is empty still pays once."""
    from prefect.settings import PREFECT_RESULTS_LOCAL_STORAGE_PATH, temporary_settings

    block_name = f"results-{uuid4().hex[:8]}"
    await s3_bucket.save(block_name, overwrite=True)
    shared = generate_video.with_options(result_storage=f"s3-bucket/{block_name}")
    key = f"slot-{uuid4()}"
    first = await shared(
        **params(kandinsky_emulator, tmp_path, credentials, idempotency_key=key),
        return_state=True,
    )
    assert first.is_completed()
    listed = s3_client.list_objects_v2(Bucket=s3_bucket.bucket_name).get("Contents", [])
    assert len(listed) >= 3, "submit, await and persist results are in the bucket"

    with temporary_settings({PREFECT_RESULTS_LOCAL_STORAGE_PATH: tmp_path / "other-machine"}):
        second = await shared(
            **params(kandinsky_emulator, tmp_path, credentials, idempotency_key=key),
            return_state=True,
        )
    assert second.is_completed()
    assert 1 == kandinsky_emulator.state.count("submit")
    assert 1 == kandinsky_emulator.state.count("media")


async def test_the_key_is_in_no_parameter_log_result_or_artifact(
    kandinsky_emulator: Any, tmp_path: Path
) -> None:
    """After a run, the key appears nowhere Prefect keeps: parameters, logs, results."""
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.settings import PREFECT_RESULTS_LOCAL_STORAGE_PATH

    secret = f"sk-live-{uuid4().hex}"
    kandinsky_emulator.configure(api_keys={secret})
    creds = KandinskyCredentials(api_key=secret, base_url=kandinsky_emulator.base_url)
    state = await run(**params(kandinsky_emulator, tmp_path, creds))
    assert state.is_completed()
    flow_run_id = state.state_details.flow_run_id
    assert flow_run_id is not None
    from prefect.logging.handlers import APILogHandler

    await APILogHandler.aflush()
    async with get_client() as client:
        flow_run = await client.read_flow_run(flow_run_id)
        logs = await client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
        )
    assert logs, "the run logged its progress"
    assert "credentials" in flow_run.parameters
    assert secret not in str(flow_run.parameters)
    assert not [log.message for log in logs if secret in log.message]
    assert secret not in str(await artifacts_of(flow_run_id))
    storage = Path(str(PREFECT_RESULTS_LOCAL_STORAGE_PATH.value()))
    leaked = [p for p in storage.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]
    assert [] == leaked
    assert all(r.key_present for r in kandinsky_emulator.state.requests("submit"))
    assert not any(r.key_present for r in kandinsky_emulator.state.requests("media"))


async def test_submits_take_a_slot_of_a_shared_rate_limit(
    kandinsky_emulator: Any, credentials: KandinskyCredentials, tmp_path: Path
) -> None:
    """A named global rate limit gates each submit; a missing one fails before paying."""
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

    name = f"kandinsky-submits-{uuid4().hex[:8]}"
    missing = await run(**params(kandinsky_emulator, tmp_path, credentials, rate_limit=name))
    assert missing.is_failed()
    with pytest.raises(ConcurrencySlotAcquisitionError, match=rf"\['{name}'\] must be created"):
        await missing.result()  # type: ignore[misc]
    assert 0 == kandinsky_emulator.state.count("submit")

    async with get_client() as client:
        await client.create_global_concurrency_limit(
            GlobalConcurrencyLimitCreate(name=name, limit=5, slot_decay_per_second=0.01)
        )
        state = await run(**params(kandinsky_emulator, tmp_path, credentials, rate_limit=name))
        assert state.is_completed()
        limit = await client.read_global_concurrency_limit_by_name(name)
    assert 1 == kandinsky_emulator.state.count("submit")
    assert 1 == limit.active_slots, "the submit occupied one slot, decaying at 0.01/s"


# -- one consistent API ---------------------------------------------------------------------


async def test_duration_is_accepted_as_documented_and_as_a_number(
    kandinsky_emulator: Any, credentials: KandinskyCredentials, tmp_path: Path
) -> None:
    """The flow takes "1s", the documentation's form, as well as 1."""
    state = await run(**params(kandinsky_emulator, tmp_path, credentials, duration="1s"))
    video: PersistedVideo = await state.result()  # type: ignore[misc]
    assert 25 == frames_of(video.uri)[0]
    (job,) = kandinsky_emulator.state.jobs()
    assert 1 == job.duration_seconds


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        (
            "resolution",
            "720P",
            "resolution: resolution must be one of 256P, 512P, 1024P; got '720P'",
        ),
        ("duration", "11s", r"duration: duration must be whole seconds from 1s to 10s.*got '11s'"),
        (
            "image_url",
            "beach.png",
            "image_url must be an absolute http or https URL; got 'beach.png'",
        ),
        ("num_inference_steps", 60, "num_inference_steps must be an integer from 20 to 50; got 60"),
        (
            "acceleration",
            "turbo",
            "acceleration must be one of regular, fast, ultra_fast; got 'turbo'",
        ),
    ],
)
async def test_flow_parameter_errors_name_field_value_and_allowed(
    kandinsky_emulator: Any,
    credentials: KandinskyCredentials,
    tmp_path: Path,
    field: str,
    value: object,
    message: str,
) -> None:
    """A bad flow parameter is refused with the request model's own words, nothing paid."""
    from prefect.exceptions import ParameterTypeError

    with pytest.raises(ParameterTypeError, match=message) as caught:
        await generate_video(**params(kandinsky_emulator, tmp_path, credentials, **{field: value}))
    assert "errors.pydantic.dev" not in str(caught.value)
    assert 0 == kandinsky_emulator.state.count("submit")


async def test_identical_submits_in_one_run_are_one_job_and_takes_are_more(
    kandinsky_emulator: Any, credentials: KandinskyCredentials
) -> None:
    """The same request twice in a flow run is one paid job; take=2 is a second one."""
    from prefect_kandinsky import submit_video

    request = {
        "prompt": "The kite climbs into the wind.",
        "image_url": kandinsky_emulator.sample_image_url,
        "resolution": "256P",
        "duration": 1,
    }

    @flow
    async def takes() -> list[str]:
        first = await submit_video(request, credentials)
        again = await submit_video(request, credentials)
        second = await submit_video(request, credentials, take=2)
        return [first.request_id, again.request_id, second.request_id]

    first, again, second = await takes()
    assert first == again != second
    assert 2 == kandinsky_emulator.state.count("submit")


async def test_the_flow_passes_file_name_overwrite_poll_cap_and_webhook(
    kandinsky_emulator: Any, credentials: KandinskyCredentials, tmp_path: Path
) -> None:
    """What the tasks can do, the flow exposes: file name, overwrite, poll cap, webhook."""
    target = tmp_path / "videos" / "clip.mp4"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2 an older render")
    state = await run(
        **params(
            kandinsky_emulator,
            tmp_path,
            credentials,
            filename="clip.mp4",
            overwrite=True,
            max_poll_interval_seconds=0.05,
            webhook_url="https://hooks.example.com/kandinsky",
            webhook_mode="sync",
        )
    )
    video: PersistedVideo = await state.result()  # type: ignore[misc]
    assert str(target) == video.uri
    assert 25 == frames_of(video.uri)[0]
    (job,) = kandinsky_emulator.state.jobs()
    assert ("https://hooks.example.com/kandinsky", "sync") == (job.webhook_url, job.webhook_mode)


def test_persist_video_takes_credentials_second() -> None:
    """The old argument order fails at once, saying the new one."""
    from prefect_kandinsky import persist_video
    from prefect_kandinsky.gateway.models import CompletedVideo, StatusResponse

    status = StatusResponse(request_id="r1", status="COMPLETED")
    video = CompletedVideo(request_id="r1", status=status, media_urls=["https://cdn/x.mp4"])
    with pytest.raises(TypeError, match=r"persist_video\(video, credentials, destination\)"):
        asyncio.run(persist_video.fn(video, "output"))  # type: ignore[arg-type]


# -- the image is checked before paying --------------------------------------------------------


@pytest.fixture(scope="module")
def image_host() -> Any:
    """An image host on 127.0.0.1 that answers a page, a 403 and a 404."""
    answers = {
        "/page.html": (200, "text/html", b"<!DOCTYPE html><html><body>Sign in</body></html>"),
        "/private.png": (403, "application/xml", b"<Error><Code>AccessDenied</Code></Error>"),
    }

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            code, kind, body = answers.get(self.path, (404, "text/html", b"Not Found"))
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/beach.png", "answered 404 Not Found: check the URL"),
        ("/page.html", r"answered 200 with text/html \(\d+ bytes\), not an image"),
        ("/private.png", "answered 403 Forbidden"),
    ],
)
async def test_a_bad_image_url_costs_nothing(
    kandinsky_emulator: Any,
    credentials: KandinskyCredentials,
    tmp_path: Path,
    image_host: str,
    path: str,
    message: str,
) -> None:
    """A 404, an HTML page or a 403 is refused before the submit: nothing is paid."""
    from prefect_kandinsky import KandinskyImageError

    before = kandinsky_emulator.state.balance
    url = image_host + path
    state = await run(**params(kandinsky_emulator, tmp_path, credentials, image_url=url))
    assert state.is_failed()
    with pytest.raises(KandinskyImageError, match=f"image_url {url} {message}"):
        await state.result()  # type: ignore[misc]
    assert 0 == kandinsky_emulator.state.count("submit")
    assert before == kandinsky_emulator.state.balance


async def test_the_image_check_can_be_turned_off(
    kandinsky_emulator: Any, credentials: KandinskyCredentials, tmp_path: Path, image_host: str
) -> None:
    """With check_image=False the request goes to the gateway, which then fails it (billed)."""
    url = image_host + "/beach.png"
    state = await run(
        **params(kandinsky_emulator, tmp_path, credentials, image_url=url, check_image=False)
    )
    assert state.is_failed()
    with pytest.raises(KandinskyGenerationFailedError, match="404"):
        await state.result()  # type: ignore[misc]
    assert 1 == kandinsky_emulator.state.count("submit")
