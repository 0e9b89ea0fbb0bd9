"""A batch killed at each point, then run again: no row is submitted or downloaded twice.

The first run is a real process, killed with SIGKILL at the moment the emulator shows the
point was reached; the second run reads the same ledger. The emulator's request log is the
witness: it counts submits and downloads per request id.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from prefect_kandinsky import KandinskyCredentials
from prefect_kandinsky.batch.flows import generate_videos, stuck_before_running
from prefect_kandinsky.batch.lease import BatchLease, KandinskyBatchBusyError
from prefect_kandinsky.batch.ledger import Ledger
from prefect_kandinsky.batch.result import BatchResult
from prefect_kandinsky.gateway.exceptions import KandinskyBatchIncompleteError

pytestmark = pytest.mark.usefixtures("prefect_api")

RUN_BATCH = """
import asyncio, json, sys
from prefect_kandinsky import KandinskyCredentials
from prefect_kandinsky.batch import generate_videos

settings = json.loads(sys.argv[1])
key, url = settings.pop("api_key"), settings.pop("base_url")
credentials = KandinskyCredentials(api_key=key, base_url=url)
asyncio.run(generate_videos(settings.pop("manifest"), credentials=credentials, **settings))
"""
KILL_TIMEOUT = 60.0


def write_manifest(path: Path, server: Any, count: int, order: Sequence[int] | None = None) -> str:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "prompt", "image", "resolution", "duration"])
        for n in order or range(1, count + 1):
            writer.writerow(
                [f"row-{n}", f"Scene {n}: the leaves fall.", server.sample_image_url, "256P", "1s"]
            )
    return str(path)


def settings(server: Any, manifest: str, tmp_path: Path, **changes: Any) -> dict[str, Any]:
    return {
        "manifest": manifest,
        "destination": str(tmp_path / "videos"),
        "ledger": str(tmp_path / "ledger"),
        "max_concurrency": 1,
        "poll_interval_seconds": 0.05,
        "max_poll_interval_seconds": 0.1,
        "check_image": False,
        **changes,
    }


@pytest.fixture
def killed_run(kandinsky_emulator: Any) -> Iterator[Callable[..., None]]:
    """Start the batch in a process and SIGKILL it once ``reached()`` is true.

    With ``kill=False`` the process is left running (and killed at the end of the test).
    """
    from prefect.settings import PREFECT_API_URL

    started: list[subprocess.Popen[bytes]] = []

    def run(
        options: dict[str, Any], reached: Callable[[], bool], kill: bool = True
    ) -> subprocess.Popen[bytes]:
        argument = json.dumps(
            {
                **options,
                "api_key": kandinsky_emulator.api_key,
                "base_url": kandinsky_emulator.base_url,
            }
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env.update(
            PREFECT_API_URL=str(PREFECT_API_URL.value()), PREFECT_SERVER_ANALYTICS_ENABLED="false"
        )
        process = subprocess.Popen(
            [sys.executable, "-c", RUN_BATCH, argument],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        started.append(process)
        deadline = time.monotonic() + KILL_TIMEOUT
        while not reached():
            if process.poll() is not None:
                raise AssertionError(
                    f"the batch ended before the kill: {process.stderr.read().decode()[-3000:]}"
                )  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "the point to kill at was never reached"
            time.sleep(0.02)
        if kill:
            process.kill()
            process.wait(timeout=10)
        return process

    yield run
    for process in started:
        if process.poll() is None:
            process.kill()
        if process.stderr is not None:
            process.stderr.close()


async def run_again(server: Any, options: dict[str, Any], **changes: Any) -> BatchResult:
    options = {**options, **changes}
    credentials = KandinskyCredentials(api_key=server.api_key, base_url=server.base_url)
    try:
        result: BatchResult = await generate_videos(
            options.pop("manifest"), credentials=credentials, **options
        )
    except KandinskyBatchIncompleteError as exc:
        return exc.result  # type: ignore[no-any-return]
    return result


def peak_active_jobs(state: Any) -> int:
    """The most jobs active at the gateway at once: from each job's creation to its end."""
    moments = []
    for job in state.jobs():
        moments.append((job.created_at, 1))
        if job.completed_at is not None:
            moments.append((job.completed_at, -1))
    peak = active = 0
    for _, change in sorted(moments, key=lambda m: (m[0], m[1])):
        active += change
        peak = max(peak, active)
    return peak


def full_downloads(state: Any) -> dict[str, int]:
    """Completed media downloads per request id (a stalled one does not count)."""
    counts: dict[str, int] = {}
    for record in state.requests("media"):
        if record.status_code in (200, 206) and record.fault is None:
            counts[record.request_id] = counts.get(record.request_id, 0) + 1
    return counts


async def test_killed_mid_submit_the_row_is_not_paid_again(
    kandinsky_emulator: Any, tmp_path: Path, killed_run: Callable[..., None]
) -> None:
    """Killed while the gateway held a submit's answer: that row is uncertain, not resent."""
    state = kandinsky_emulator.state
    state.inject_fault("submit", action="stall", after_queue=True, stall_seconds=30)
    manifest = write_manifest(tmp_path / "rows.csv", kandinsky_emulator, 3)
    options = settings(kandinsky_emulator, manifest, tmp_path)
    killed_run(options, lambda: any(r.fault == "stall" for r in state.requests("submit")))
    assert 1 == len(state.jobs()), "the gateway queued (and billed) the first row"

    result = await run_again(kandinsky_emulator, options)

    assert 3 == state.count("submit"), "rows 2 and 3 once each; row 1 not again"
    assert {"stored": 2, "uncertain": 1} == result.counts
    (uncertain,) = [r for r in result.rows if r.state == "uncertain"]
    assert "row-1" == uncertain.row_id
    assert "not submitted again" in (uncertain.error or "") or "may exist" in (
        uncertain.error or ""
    )

    forced = await run_again(kandinsky_emulator, options, resubmit_uncertain=True)
    assert forced.complete
    assert 4 == state.count("submit"), "only when asked, once"


async def test_killed_mid_wait_the_rows_are_awaited_not_resubmitted(
    kandinsky_emulator: Any, tmp_path: Path, killed_run: Callable[..., None]
) -> None:
    """Killed while three renders were in flight: the re-run waits for the same three jobs."""
    state = kandinsky_emulator.state
    kandinsky_emulator.configure(manual=True)
    manifest = write_manifest(tmp_path / "rows.csv", kandinsky_emulator, 3)
    options = settings(kandinsky_emulator, manifest, tmp_path, max_concurrency=3)

    def all_in_flight() -> bool:
        jobs = state.jobs()
        return len(jobs) == 3 and all(state.count("status", request_id=j.request_id) for j in jobs)

    killed_run(options, all_in_flight)
    kandinsky_emulator.configure(manual=False)

    result = await run_again(kandinsky_emulator, options)

    assert result.complete
    assert 3 == state.count("submit")
    assert {job.request_id for job in state.jobs()} == {r.request_id for r in result.rows}
    assert {job.request_id: 1 for job in state.jobs()} == full_downloads(state)


async def test_killed_mid_download_the_download_resumes_from_its_partial_file(
    kandinsky_emulator: Any, tmp_path: Path, killed_run: Callable[..., None]
) -> None:
    """Killed after 1000 bytes of a download: the rerun asks for the rest with a Range request.

    No new submit; the partial file sat in the ledger's folder, not in the destination, and
    is gone once the video is stored.
    """
    state = kandinsky_emulator.state
    state.inject_fault("media", action="stall", truncate_bytes=1000, stall_seconds=30)
    manifest = write_manifest(tmp_path / "rows.csv", kandinsky_emulator, 2)
    options = settings(kandinsky_emulator, manifest, tmp_path)

    def stalled_with_both_submitted() -> bool:
        # The second row submits once the first one's render is done: kill only after its
        # first status read (its request id is in the ledger), not in the middle of its submit.
        jobs = state.jobs()
        return (
            any(r.fault == "stall" for r in state.requests("media"))
            and len(jobs) == 2
            and all(state.count("status", request_id=j.request_id) for j in jobs)
            and [1000] == [p.stat().st_size for p in partials.glob("*/partial/*.part")]
        )

    partials = tmp_path / "ledger" / "kandinsky-ledger"

    killed_run(options, stalled_with_both_submitted)
    (stalled,) = [r.request_id for r in state.requests("media") if r.fault == "stall"]

    result = await run_again(kandinsky_emulator, options)

    assert result.complete
    assert 2 == state.count("submit"), "each row once, across both runs"
    downloads = full_downloads(state)
    assert 1 == downloads[stalled]
    assert {1} == set(downloads.values())
    stored = {r.request_id: r for r in result.rows}
    video = Path(str(stored[stalled].uri))
    assert video.stat().st_size == stored[stalled].size_bytes
    assert hashlib.sha256(video.read_bytes()).hexdigest() == stored[stalled].sha256
    resumed = [r for r in state.requests("media") if r.request_id == stalled and not r.fault]
    assert ["bytes=1000-"] == [r.range_header for r in resumed]
    assert [] == list(partials.glob("*/partial/*")), "the partial file is removed once stored"
    assert [] == [p.name for p in (tmp_path / "videos").rglob(".*")], "nothing hidden left"


async def test_renders_left_in_flight_count_against_max_concurrency_on_the_rerun(
    kandinsky_emulator: Any, tmp_path: Path, killed_run: Callable[..., None]
) -> None:
    """Killed with 3 renders in flight (max 3); the rerun, rows reordered, never has 4 active."""
    state = kandinsky_emulator.state
    kandinsky_emulator.configure(manual=True)
    manifest = write_manifest(tmp_path / "rows.csv", kandinsky_emulator, 6)
    options = settings(kandinsky_emulator, manifest, tmp_path, max_concurrency=3)

    def three_in_flight() -> bool:
        jobs = state.jobs()
        return len(jobs) == 3 and all(state.count("status", request_id=j.request_id) for j in jobs)

    killed_run(options, three_in_flight)
    seen = {
        job.request_id: state.count("status", request_id=job.request_id) for job in state.jobs()
    }
    # The rerun reads the unsubmitted rows first: they must still wait for the old renders.
    write_manifest(tmp_path / "rows.csv", kandinsky_emulator, 6, order=[6, 5, 4, 3, 2, 1])

    async def finish_jobs_the_rerun_waits_for() -> None:
        finished: set[str] = set()
        while True:
            for job in state.jobs():
                read = state.count("status", request_id=job.request_id) > seen.get(
                    job.request_id, 0
                )
                if read and job.request_id not in finished:
                    state.advance(job.request_id, "COMPLETED")
                    finished.add(job.request_id)
            await asyncio.sleep(0.02)

    driver = asyncio.create_task(finish_jobs_the_rerun_waits_for())
    try:
        result = await run_again(kandinsky_emulator, options)
    finally:
        driver.cancel()

    assert result.complete
    assert 6 == state.count("submit")
    assert 3 == peak_active_jobs(state)


async def test_a_run_never_has_more_renders_in_flight_than_max_concurrency(
    kandinsky_emulator: Any, tmp_path: Path
) -> None:
    """Eight rows at max_concurrency=3: the gateway never sees more than 3 jobs active."""
    manifest = write_manifest(tmp_path / "rows.csv", kandinsky_emulator, 8)
    result = await run_again(
        kandinsky_emulator, settings(kandinsky_emulator, manifest, tmp_path, max_concurrency=3)
    )
    assert result.complete
    assert 3 == peak_active_jobs(kandinsky_emulator.state)


async def test_a_second_run_of_a_batch_is_refused_while_the_first_one_runs(
    kandinsky_emulator: Any, tmp_path: Path, killed_run: Callable[..., Any]
) -> None:
    """Run 2 starts while run 1 renders: refused, naming run 1, paying nothing; after it, fine."""
    state = kandinsky_emulator.state
    kandinsky_emulator.configure(manual=True)
    manifest = write_manifest(tmp_path / "rows.csv", kandinsky_emulator, 2)
    options = settings(kandinsky_emulator, manifest, tmp_path, max_concurrency=2)

    def both_in_flight() -> bool:
        jobs = state.jobs()
        return len(jobs) == 2 and all(state.count("status", request_id=j.request_id) for j in jobs)

    first = killed_run(options, both_in_flight, kill=False)
    with pytest.raises(
        KandinskyBatchBusyError,
        match=rf"is being run by flow run 'generate-videos-rows-csv' .*pid {first.pid} on "
        r".*nothing was submitted",
    ):
        await run_again(kandinsky_emulator, options)
    assert 2 == state.count("submit")

    first.kill()
    first.wait(timeout=10)
    kandinsky_emulator.configure(manual=False)
    result = await run_again(kandinsky_emulator, options)
    assert result.complete, "a holder killed on this machine gives the lease up at once"
    assert 2 == state.count("submit")


@pytest.mark.parametrize("where", ["local", "s3"])
async def test_a_lease_is_taken_once_and_taken_over_only_once_expired(
    where: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Exclusive create on disk, conditional put on S3: one holder; takeover after expiry."""
    location = tmp_path if where == "local" else request.getfixturevalue("s3_bucket")
    ledger = Ledger(location, "catalogue-2026-11")
    first = BatchLease(ledger, holder="run A", seconds=60)
    await first.acquire()
    with pytest.raises(KandinskyBatchBusyError, match=r"being run by run A \(its lease"):
        await BatchLease(ledger, holder="run B", seconds=60).acquire()

    brief = BatchLease(Ledger(location, "catalogue-2026-12"), holder="run C", seconds=1e-6)
    await brief.acquire()
    taker = BatchLease(Ledger(location, "catalogue-2026-12"), holder="run D", seconds=60)
    await taker.acquire()
    await brief.renew()
    assert brief.lost and "taken over by another run" in brief.lost
    await taker.release()
    await first.release()
    again = BatchLease(ledger, holder="run E", seconds=60)
    await again.acquire()


async def test_a_ledger_in_an_s3_bucket_reads_rows_it_has_not_seen_as_new(s3_bucket: Any) -> None:
    """A row without a record in an S3 ledger (moto answers 404 to its HEAD) reads as new."""
    ledger = Ledger(s3_bucket, "catalogue-2026-11")
    assert {} == await ledger.read_all(["catalogue-2026-11:row-1", "catalogue-2026-11:row-2"])


def test_a_chunk_taken_up_by_a_worker_that_died_before_starting_it_is_lost() -> None:
    """A child run left Pending (its worker died between taking it up and starting its
    process) counts as lost after twice the lease time, and not before; other states never."""
    from prefect.states import Pending, Running, Scheduled

    now = datetime.now(timezone.utc)
    pending_since = {age: Pending(timestamp=now - timedelta(seconds=age)) for age in (11, 13)}

    assert not stuck_before_running(pending_since[11], now, lease_seconds=6)
    assert stuck_before_running(pending_since[13], now, lease_seconds=6)
    for state in (Scheduled(), Running()):
        state.timestamp = now - timedelta(hours=1)
        assert not stuck_before_running(state, now, lease_seconds=6)
