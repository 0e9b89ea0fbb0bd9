"""The batch flow on a real Prefect API against the emulator: rows, refusals, spend, re-runs."""

from __future__ import annotations

import csv
import json
import re
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
from prefect.client.schemas.objects import Artifact

from prefect_kandinsky import KandinskyCredentials
from prefect_kandinsky.batch.artifacts import batch_key
from prefect_kandinsky.batch.flows import generate_videos
from prefect_kandinsky.batch.result import BatchResult
from prefect_kandinsky.emulator.render import probe_video
from prefect_kandinsky.gateway.exceptions import (
    KandinskyBatchIncompleteError,
    KandinskyBudgetError,
    KandinskyManifestError,
)

pytestmark = pytest.mark.usefixtures("prefect_api")

FAST = {"poll_interval_seconds": 0.02, "max_poll_interval_seconds": 0.05}
COLUMNS = ["id", "prompt", "image", "resolution", "duration", "filename"]


def write_manifest(path: Path, rows: list[dict[str, Any]]) -> str:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return str(path)


def catalogue(server: Any, count: int, **changes: Any) -> list[dict[str, Any]]:
    rows = [
        {
            "id": f"sku-{n}",
            "prompt": f"Product {n} turns slowly on a white table.",
            "image": server.sample_image_url,
            "resolution": "256P",
            "duration": "1s",
        }
        for n in range(1, count + 1)
    ]
    for row in rows:
        row.update(changes)
    return rows


async def artifacts_of(flow_run_id: UUID) -> dict[str, Artifact]:
    async with get_client() as client:
        found = await client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    return {a.key or f"unkeyed-{a.type}": a for a in found}


async def run_batch(
    manifest: str | list[Any], creds: KandinskyCredentials, tmp_path: Path, **options: Any
) -> Any:
    parameters = {
        "credentials": creds,
        "destination": str(tmp_path / "videos"),
        "ledger": str(tmp_path / "ledger"),
        **FAST,
        **options,
    }
    return await generate_videos(manifest, **parameters, return_state=True)  # type: ignore[call-overload]


async def test_a_manifest_becomes_one_stored_video_per_row(
    kandinsky_emulator: Any, credentials: KandinskyCredentials, tmp_path: Path
) -> None:
    """Six rows: six submits, six MP4s, a table row each, thumbnails and a full progress bar."""
    manifest = write_manifest(tmp_path / "catalogue.csv", catalogue(kandinsky_emulator, 6))
    state = await run_batch(manifest, credentials, tmp_path, max_concurrency=3)
    result: BatchResult = await state.result()

    assert result.complete and {"stored": 6} == result.counts
    assert 6 == kandinsky_emulator.state.count("submit")
    assert 6 == kandinsky_emulator.state.count("media")
    files = sorted((tmp_path / "videos").glob("*.mp4"))
    assert 6 == len(files)
    assert 25 == probe_video(files[0].read_bytes()).frames

    found = await artifacts_of(state.state_details.flow_run_id)
    data = found[batch_key(manifest, "")].data
    table = json.loads(data) if isinstance(data, str) else data
    assert [f"sku-{n}" for n in range(1, 7)] == [row["row"] for row in table]
    assert {"stored"} == {row["status"] for row in table}
    assert all(row["stored at"].endswith(".mp4") and row["request id"] for row in table)
    summary = str(found[batch_key(manifest, "summary")].data)
    assert "**6 of 6 rows stored**" in summary
    assert 6 == summary.count("data:image/jpeg;base64,")
    assert 100.0 == found["unkeyed-progress"].data


async def test_the_table_says_unknown_for_a_row_without_a_documented_price(
    kandinsky_emulator: Any, credentials: KandinskyCredentials, tmp_path: Path
) -> None:
    """256P has no documented price: its cost reads unknown, not $0.00; seconds have one decimal."""
    rows = catalogue(kandinsky_emulator, 2)
    rows[1]["resolution"] = "512P"
    manifest = write_manifest(tmp_path / "mixed.csv", rows)
    state = await run_batch(manifest, credentials, tmp_path)
    result: BatchResult = await state.result()
    assert Decimal("0.04") == result.charged_usd
    assert 1 == result.unpriced_rows
    assert "charged $0.04 plus 1 row without a documented price (unknown) in all" in (
        result.summary()
    )

    data = (await artifacts_of(state.state_details.flow_run_id))[batch_key(manifest, "")].data
    table = json.loads(data) if isinstance(data, str) else data
    assert ["unknown (no documented price)", "$0.04"] == [row["cost"] for row in table]
    assert all(re.fullmatch(r"\d+\.\d", row["seconds"]) for row in table), table


async def test_bad_rows_are_all_reported_and_nothing_is_paid(
    kandinsky_emulator: Any, credentials: KandinskyCredentials, tmp_path: Path
) -> None:
    """Every bad row at once, with line, field and value: no submit."""
    rows = catalogue(kandinsky_emulator, 4)
    rows[1]["resolution"] = "720P"
    rows[3]["duration"] = "11s"
    manifest = write_manifest(tmp_path / "bad.csv", rows)
    state = await run_batch(manifest, credentials, tmp_path)
    assert state.is_failed()
    with pytest.raises(KandinskyManifestError) as caught:
        await state.result()
    message = str(caught.value)
    assert "line 3 (id sku-2): resolution: resolution must be one of 256P, 512P, 1024P" in message
    assert "line 5 (id sku-4): duration: duration must be whole seconds" in message
    assert 0 == kandinsky_emulator.state.count("submit")


async def test_a_bad_image_refuses_the_whole_batch_before_paying(
    kandinsky_emulator: Any, credentials: KandinskyCredentials, tmp_path: Path
) -> None:
    """One row's image answers 404: the batch names it and submits nothing."""
    rows = catalogue(kandinsky_emulator, 3)
    rows[2]["image"] = kandinsky_emulator.cdn_url + "/samples/missing.png"
    manifest = write_manifest(tmp_path / "images.csv", rows)
    state = await run_batch(manifest, credentials, tmp_path)
    with pytest.raises(KandinskyManifestError, match=r"line 4 \(id sku-3\): image: .*404"):
        await state.result()
    assert 0 == kandinsky_emulator.state.count("submit")


async def test_over_budget_is_refused_with_a_breakdown(
    kandinsky_emulator: Any, credentials: KandinskyCredentials, tmp_path: Path
) -> None:
    """$0.60 of 512P rows against a $0.50 budget: refused, with the price lines, unpaid."""
    rows = catalogue(kandinsky_emulator, 3, resolution="512P", duration="5s")
    rows.append({**catalogue(kandinsky_emulator, 4)[3], "resolution": "256P", "duration": "1s"})
    manifest = write_manifest(tmp_path / "budget.csv", rows)
    state = await run_batch(manifest, credentials, tmp_path, max_cost_usd=0.5)
    with pytest.raises(KandinskyBudgetError) as caught:
        await state.result()
    message = str(caught.value)
    assert "would cost $0.60" in message and "over max_cost_usd $0.50" in message
    assert "512P 5s: 3 rows x $0.20 = $0.60" in message
    assert "256P 1s: 1 row" in message and "no documented price" in message
    assert 0 == kandinsky_emulator.state.count("submit")


async def test_failed_and_error_rows_never_stop_the_others(
    kandinsky_emulator: Any, credentials: KandinskyCredentials, tmp_path: Path
) -> None:
    """A FAILED row (charged) and an ERROR row (not): the rest are stored; re-runs finish it."""
    kandinsky_emulator.state.plan_outcome("FAILED", "moderation rejected the prompt")
    kandinsky_emulator.state.plan_outcome("ERROR", "GPU node lost")
    manifest = write_manifest(
        tmp_path / "mixed.csv", catalogue(kandinsky_emulator, 4, resolution="512P", duration="1s")
    )
    state = await run_batch(manifest, credentials, tmp_path, max_concurrency=1)
    with pytest.raises(KandinskyBatchIncompleteError) as caught:
        await state.result()
    result: BatchResult = caught.value.result
    assert {"stored": 2, "failed": 1, "error": 1} == result.counts
    assert Decimal("0.12") == result.charged_usd, "two stored and the FAILED row at $0.04"
    assert Decimal("0.16") - Decimal("0.04") == Decimal("10") - kandinsky_emulator.state.balance

    found = await artifacts_of(state.state_details.flow_run_id)
    table = str(found[batch_key(manifest, "")].data)
    assert "moderation rejected the prompt" in table and "GPU node lost" in table

    again = await run_batch(manifest, credentials, tmp_path)
    with pytest.raises(KandinskyBatchIncompleteError) as caught:
        await again.result()
    assert {"stored": 3, "failed": 1} == caught.value.result.counts
    assert 5 == kandinsky_emulator.state.count("submit"), "only the ERROR row went again"

    last = await run_batch(manifest, credentials, tmp_path, retry_failed=True)
    assert {"stored": 4} == (await last.result()).counts
    assert 6 == kandinsky_emulator.state.count("submit")


async def test_a_finished_batch_runs_again_for_free(
    kandinsky_emulator: Any, credentials: KandinskyCredentials, tmp_path: Path
) -> None:
    """Run twice: the second run submits nothing and downloads nothing."""
    manifest = write_manifest(tmp_path / "again.csv", catalogue(kandinsky_emulator, 3))
    first = await run_batch(manifest, credentials, tmp_path)
    assert (await first.result()).complete
    submits, downloads = (kandinsky_emulator.state.count(k) for k in ("submit", "media"))
    second = await run_batch(manifest, credentials, tmp_path)
    assert (await second.result()).complete
    assert (3, 3) == (submits, downloads)
    assert (submits, downloads) == tuple(
        kandinsky_emulator.state.count(k) for k in ("submit", "media")
    )


async def test_rows_in_memory_with_ids_need_a_batch_id(
    kandinsky_emulator: Any, credentials: KandinskyCredentials, tmp_path: Path
) -> None:
    """Ids say nothing across lists: a list with ids is refused without a batch_id."""
    rows = catalogue(kandinsky_emulator, 2)
    state = await run_batch(rows, credentials, tmp_path)
    with pytest.raises(ValueError, match="need a batch_id"):
        await state.result()
    named = await run_batch(rows, credentials, tmp_path, batch_id="catalogue-2026-11")
    assert (await named.result()).complete
    assert 2 == kandinsky_emulator.state.count("submit")


async def test_private_inputs_and_outputs_go_through_s3(
    kandinsky_emulator: Any,
    credentials: KandinskyCredentials,
    tmp_path: Path,
    s3_bucket: Any,
    s3_client: Any,
) -> None:
    """Local and s3:// images are presigned from moto, fetched by the emulator, stored on S3."""
    from prefect_kandinsky.assets import sample_image_bytes

    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "local.png").write_bytes(sample_image_bytes())
    s3_client.put_object(
        Bucket=s3_bucket.bucket_name, Key="inbox/remote.png", Body=sample_image_bytes()
    )
    rows = [
        {
            "id": "local",
            "prompt": "The lamp flickers.",
            "image": "images/local.png",
            "resolution": "256P",
            "duration": "1s",
        },
        {
            "id": "remote",
            "prompt": "The lamp glows.",
            "image": f"s3://{s3_bucket.bucket_name}/inbox/remote.png",
            "resolution": "256P",
            "duration": "1s",
        },
    ]
    manifest = write_manifest(tmp_path / "private.csv", rows)
    state = await run_batch(
        manifest, credentials, tmp_path, input_bucket=s3_bucket, destination=s3_bucket
    )
    result: BatchResult = await state.result()

    assert {"stored": 2} == result.counts
    jobs = kandinsky_emulator.state.jobs()
    assert all(job.image_url.startswith("http://127.0.0.1:") for job in jobs)
    assert not any(kandinsky_emulator.base_url in job.image_url for job in jobs)
    for record in result.rows:
        assert record.uri and record.uri.startswith(f"s3://{s3_bucket.bucket_name}/")
        assert record.public_url
        assert 25 == probe_video(httpx.get(record.public_url).content).frames
    assert not any(r.key_present for r in kandinsky_emulator.state.requests(origin="cdn"))


async def test_a_file_already_at_a_rows_filename_is_refused_before_any_submit(
    kandinsky_emulator: Any, credentials: KandinskyCredentials, tmp_path: Path
) -> None:
    """Another file at a row's filename: a row problem before paying; overwrite=True replaces it."""
    rows = catalogue(kandinsky_emulator, 2)
    for row in rows:
        row["filename"] = f"{row['id']}.mp4"
    manifest = write_manifest(tmp_path / "named.csv", rows)
    (tmp_path / "videos").mkdir()
    last_year = b"\x00\x00\x00\x18ftypisom" + b"last year's video"
    (tmp_path / "videos" / "sku-2.mp4").write_bytes(last_year)

    state = await run_batch(manifest, credentials, tmp_path)
    with pytest.raises(
        KandinskyManifestError,
        match=r"line 3 \(id sku-2\): filename: .*sku-2\.mp4 already exists.*overwrite=True",
    ):
        await state.result()
    assert 0 == kandinsky_emulator.state.count("submit")

    replaced = await run_batch(manifest, credentials, tmp_path, overwrite=True)
    assert {"stored": 2} == (await replaced.result()).counts
    assert 25 == probe_video((tmp_path / "videos" / "sku-2.mp4").read_bytes()).frames


async def test_overwrite_never_pays_for_a_row_whose_file_is_not_a_video(
    kandinsky_emulator: Any, credentials: KandinskyCredentials, tmp_path: Path
) -> None:
    """overwrite=True still refuses, before paying, a row whose filename holds a non-video."""
    rows = catalogue(kandinsky_emulator, 1)
    rows[0]["filename"] = "notes.mp4"
    manifest = write_manifest(tmp_path / "notes.csv", rows)
    (tmp_path / "videos").mkdir()
    (tmp_path / "videos" / "notes.mp4").write_bytes(b"meeting notes, not a video")

    state = await run_batch(manifest, credentials, tmp_path, overwrite=True)
    with pytest.raises(
        KandinskyManifestError, match=r"notes\.mp4 already exists and is not a video"
    ):
        await state.result()
    assert 0 == kandinsky_emulator.state.count("submit")
    assert b"meeting notes, not a video" == (tmp_path / "videos" / "notes.mp4").read_bytes()


async def test_an_over_long_filename_is_refused_before_any_submit(
    kandinsky_emulator: Any, credentials: KandinskyCredentials, tmp_path: Path
) -> None:
    """A 300-character file name: a row problem naming the limit; nothing paid."""
    rows = catalogue(kandinsky_emulator, 2)
    rows[0]["filename"] = "x" * 296 + ".mp4"
    rows[1]["filename"] = "short.mp4"
    manifest = write_manifest(tmp_path / "long.csv", rows)
    state = await run_batch(manifest, credentials, tmp_path)
    with pytest.raises(
        KandinskyManifestError, match=r"line 2 \(id sku-1\): filename: .*at most 255 bytes"
    ):
        await state.result()
    assert 0 == kandinsky_emulator.state.count("submit")


def _break_the_wait(server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first status read of the run raises an error nobody planned for."""
    from prefect_kandinsky.batch import runner
    from prefect_kandinsky.progress import StatusRead

    real = runner.report

    def report(event: Any) -> None:
        if isinstance(event, StatusRead):
            monkeypatch.setattr(runner, "report", real)
            raise RuntimeError("the progress display broke")
        real(event)

    monkeypatch.setattr(runner, "report", report)


def _break_the_download(server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CDN answers 500 to every download of the run."""
    server.state.inject_fault("media", status_code=500, times=100)


def _break_the_store(server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file sits where the row's folder should be: the store fails with an OSError."""
    (tmp_path / "videos").mkdir()
    (tmp_path / "videos" / "clips").write_bytes(b"in the way")


@pytest.mark.parametrize(
    "step", [_break_the_wait, _break_the_download, _break_the_store], ids=lambda f: f.__name__
)
async def test_a_row_that_fails_after_its_submit_is_resumed_not_paid_again(
    kandinsky_emulator: Any,
    credentials: KandinskyCredentials,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    step: Any,
) -> None:
    """An error after the submit (waiting, downloading, storing): the re-run finishes that job."""
    rows = catalogue(kandinsky_emulator, 1, resolution="512P", destination="clips")
    manifest = write_manifest(tmp_path / "once.csv", rows)
    step(kandinsky_emulator, tmp_path, monkeypatch)

    # No retries of a refused download: the error is the point, not the seconds of backoff.
    first = await run_batch(manifest, credentials.model_copy(update={"max_retries": 0}), tmp_path)
    with pytest.raises(KandinskyBatchIncompleteError) as caught:
        await first.result()
    (row,) = caught.value.result.rows
    assert row.request_id and row.state in ("submitted", "completed"), row
    assert row.error

    kandinsky_emulator.state.clear_faults()
    monkeypatch.undo()
    (tmp_path / "videos" / "clips").unlink(missing_ok=True)
    again = await run_batch(manifest, credentials, tmp_path)
    result: BatchResult = await again.result()

    assert {"stored": 1} == result.counts
    assert 1 == kandinsky_emulator.state.count("submit")
    assert Decimal("10") - kandinsky_emulator.state.balance == result.charged_usd
    assert Decimal("0.04") == result.charged_usd


async def test_a_wait_outlasts_refused_status_reads_and_the_row_is_stored(
    kandinsky_emulator: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Eight status reads refused (503, 429, dropped) past the client's retries: stored anyway."""
    state = kandinsky_emulator.state
    state.inject_fault("status", status_code=503, times=3)
    state.inject_fault("status", status_code=429, retry_after=0.1, times=3)
    state.inject_fault("status", action="drop", times=2)
    creds = KandinskyCredentials(
        api_key=kandinsky_emulator.api_key, base_url=kandinsky_emulator.base_url, max_retries=1
    )
    manifest = write_manifest(tmp_path / "patient.csv", catalogue(kandinsky_emulator, 1))

    result: BatchResult = await (await run_batch(manifest, creds, tmp_path)).result()

    assert {"stored": 1} == result.counts
    assert 1 == state.count("submit")
    assert [] == state.faults, "every refusal was met"
    failures = [
        r for r in caplog.records if "failed" in r.getMessage() and "in a row" in r.getMessage()
    ]
    assert 4 == len(failures), "one warning per failed status read, after the client's retry"
    assert all(r.levelname == "WARNING" for r in failures)


async def test_the_nightly_flow_fails_a_refusal_at_once_and_retries_what_can_pass(
    kandinsky_emulator: Any, credentials: KandinskyCredentials, tmp_path: Path
) -> None:
    """A 404 image fails the night at once (one attempt); an ERROR row is retried and stored."""
    from flows.batch import nightly_batch

    rows = catalogue(kandinsky_emulator, 2)
    rows[1]["image"] = kandinsky_emulator.cdn_url + "/samples/missing.png"
    refused = write_manifest(tmp_path / "refused.csv", rows)
    options = {
        "credentials": credentials,
        "destination": str(tmp_path / "videos"),
        "slot": "2026-05-22T02:00:00Z",
        "retries": 1,
        "retry_delay_seconds": 0,
    }
    state = await nightly_batch(refused, **options, return_state=True)  # type: ignore[call-overload]
    with pytest.raises(KandinskyManifestError, match=r"line 3 \(id sku-2\): image: .*404"):
        await state.result()
    async with get_client() as client:
        runs = await client.read_flow_runs()
    attempts = [r for r in runs if r.parent_task_run_id and r.name.startswith("generate-videos-")]
    assert 1 == len([r for r in attempts if "refused" in r.name]), "no second attempt"

    kandinsky_emulator.state.plan_outcome("ERROR", "GPU node lost")
    passing = write_manifest(tmp_path / "passing.csv", catalogue(kandinsky_emulator, 2))
    result: BatchResult = await nightly_batch(passing, **options)  # type: ignore[call-overload]
    assert {"stored": 2} == result.counts
    assert 3 == kandinsky_emulator.state.count("submit"), "the ERROR row once more, unpaid"
