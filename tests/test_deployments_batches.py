"""A batch split into chunks over the process workers of a deployment, end to end.

Two chunked batches on the deployments of ``deployments/prefect.yaml`` (``deployed``, from
``deployment_fixtures``): one shared by two workers within one rate limit, one whose worker is
SIGKILLed mid-chunk. Each row is paid once either way.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sys
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
from deployment_fixtures import (
    CREDENTIALS_BLOCK,
    RUN_TIMEOUT,
    WORK_POOL,
    Deployed,
    Processes,
    Workers,
    descendants,
    prefect_api,
    until,
)

from prefect_kandinsky.emulator import EmulatorServer

RUN_BATCH = """
import asyncio, json, sys
from prefect_kandinsky.batch import generate_videos

options = json.loads(sys.argv[1])
result = asyncio.run(generate_videos(options.pop("rows"), **options))
print("COUNTS", json.dumps(result.counts))
"""


@pytest.mark.e2e
def test_a_batch_shared_by_two_workers_pays_each_row_once(
    deployed: Deployed, workers: Workers, kandinsky_emulator: EmulatorServer, tmp_path: Path
) -> None:
    """Two chunks of four rows on two process workers: each row paid once, within the limit.

    Which worker takes which chunk is the server's choice (one may take both): the test
    asserts what is guaranteed, that each row was submitted once, that each chunk completed
    after one of the two workers took it up, and that both polled the pool.
    """
    limit = f"kandinsky-submits-{uuid4().hex[:8]}"
    with prefect_api(deployed.api_url) as api:
        created = api.post(
            "/v2/concurrency_limits/",
            json={"name": limit, "limit": 2, "slot_decay_per_second": 2.0},
        )
        assert created.status_code in (200, 201), created.text
    # Submits take 0.3 s at the gateway, so submits let through at once would overlap there.
    kandinsky_emulator.configure(submit_latency_seconds=0.3)
    rows = [
        {
            "id": f"row-{n}",
            "prompt": f"Scene {n}: the waves roll in.",
            "image": kandinsky_emulator.sample_image_url,
            "resolution": "256P",
            "duration": "1s",
        }
        for n in range(1, 9)
    ]
    options = {
        "rows": rows,
        "batch_id": f"e2e-{uuid4().hex[:8]}",
        "credentials": CREDENTIALS_BLOCK,
        "destination": str(tmp_path / "videos"),
        "ledger": str(tmp_path / "ledger"),
        "chunk_size": 4,
        "chunk_deployment": "generate-videos-chunk/chunks",
        "rate_limit": limit,
        "max_concurrency": 4,  # without the limit, four submits per chunk would overlap
        "poll_interval_seconds": 0.05,
        "max_poll_interval_seconds": 0.2,
    }
    processes = Processes(tmp_path / "logs", deployed.env)
    since = workers.mark()
    passed = False
    try:
        processes.start("batch", [sys.executable, "-c", RUN_BATCH, json.dumps(options)])
        processes.wait_ok("batch", timeout=RUN_TIMEOUT)

        assert 'COUNTS {"stored": 8}' in processes.output("batch")
        assert 8 == kandinsky_emulator.state.count("submit")
        prompts = sorted(job.prompt for job in kandinsky_emulator.state.jobs())
        assert sorted(row["prompt"] for row in rows) == prompts, "each row submitted once"
        assert 1 <= kandinsky_emulator.state.max_submits_in_flight <= 2
        assert 8 == len(list((tmp_path / "videos").glob("*.mp4")))
        ran = {
            label: re.findall(
                r"submitting flow run '([0-9a-f-]{36})'", workers.output(label, since)
            )
            for label in workers.names
        }
        with prefect_api(deployed.api_url) as api:
            chunks = api.get("/deployments/name/generate-videos-chunk/chunks").json()
            chunk_runs = [
                run
                for run in api.post(
                    "/flow_runs/filter",
                    json={"deployments": {"id": {"any_": [chunks["id"]]}}, "limit": 200},
                ).json()
                if run["parameters"].get("batch_id") == options["batch_id"]
            ]
            polled = api.post(f"/work_pools/{WORK_POOL}/workers/filter", json={}).json()
        assert ["COMPLETED", "COMPLETED"] == [run["state"]["type"] for run in chunk_runs]
        # A worker logs "submitting" before it claims the run: when both take up the same run,
        # one is turned away, so a run may show in both logs; each must show in one at least.
        assert {run["id"] for run in chunk_runs} <= {*ran["worker-a"], *ran["worker-b"]}, ran
        assert set(workers.names.values()) <= {worker["name"] for worker in polled}, polled
        passed = True
    finally:
        processes.stop_all()
        if not passed:
            processes.dump()
            workers.dump(since)


def _ledger_records(folder: Path) -> dict[str, dict[str, Any]]:
    """The rows' ledger records under ``folder``, by row id (leases left out)."""
    records: dict[str, dict[str, Any]] = {}
    for path in folder.rglob("*.json"):
        with contextlib.suppress(OSError, ValueError):
            data = json.loads(path.read_text())
            if "row_id" in data:
                records[data["row_id"]] = data
    return records


def _chunk_working(ledger: Path, label: str, row_ids: list[str]) -> dict[str, Any] | None:
    """The lease of chunk ``label`` once all its rows are submitted (rendering), else None."""
    leases = list(ledger.rglob(f"chunk-{label}.lease.json"))
    records = _ledger_records(ledger)
    if not leases or any(records.get(i, {}).get("state") != "submitted" for i in row_ids):
        return None
    with contextlib.suppress(OSError, ValueError):
        lease: dict[str, Any] = json.loads(leases[0].read_text())
        return lease
    return None


@pytest.mark.e2e
def test_a_chunk_killed_with_its_worker_is_finished_by_the_other_without_paying_twice(
    deployed: Deployed, workers: Workers, kandinsky_emulator: EmulatorServer, tmp_path: Path
) -> None:
    """SIGKILL of a worker and its chunk mid-render: another worker finishes it, one submit
    per row, and the batch's run ends Completed.

    It kills one of the shared workers: the next test that asks for them gets a new one."""
    kandinsky_emulator.configure(processing_seconds=2.0)
    rows = [
        {
            "id": f"row-{n}",
            "prompt": f"Scene {n}: the tide goes out.",
            "image": kandinsky_emulator.sample_image_url,
            "resolution": "256P",
            "duration": "1s",
        }
        for n in range(1, 7)
    ]
    ledger = tmp_path / "ledger"
    options = {
        "rows": rows,
        "batch_id": f"e2e-{uuid4().hex[:8]}",
        "credentials": CREDENTIALS_BLOCK,
        "destination": str(tmp_path / "videos"),
        "ledger": str(ledger),
        "chunk_size": 3,
        "chunk_deployment": "generate-videos-chunk/chunks",
        "chunk_lease_seconds": 6,
        "max_concurrency": 3,
        "poll_interval_seconds": 0.05,
        "max_poll_interval_seconds": 0.2,
    }
    processes = Processes(tmp_path / "logs", deployed.env)
    since = workers.mark()
    passed = False
    try:
        processes.start("batch", [sys.executable, "-c", RUN_BATCH, json.dumps(options)])
        lease = until(
            "chunk 1 renders its rows",
            lambda: _chunk_working(ledger, "1-of-2", ["row-1", "row-2", "row-3"]),
        )
        chunk_pid = int(lease["pid"])
        victim = next(
            label for label in workers.names if chunk_pid in descendants(workers.popen(label).pid)
        )
        for pid in (workers.popen(victim).pid, *descendants(workers.popen(victim).pid)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        workers.popen(victim).wait(timeout=10)
        processes.wait_ok("batch", timeout=RUN_TIMEOUT)

        assert 'COUNTS {"stored": 6}' in processes.output("batch")
        assert 6 == kandinsky_emulator.state.count("submit"), "one submit per row"
        prompts = sorted(job.prompt for job in kandinsky_emulator.state.jobs())
        assert sorted(row["prompt"] for row in rows) == prompts, "each row submitted once"
        assert 6 == len(list((tmp_path / "videos").glob("*.mp4")))
        assert "Chunk 1-of-2 lost its process (attempt 1 of 3" in processes.output("batch")
        survivor = next(label for label in workers.names if label != victim)
        assert "generate-videos-chunk-1-of-2" in workers.output(survivor, since)
        passed = True
    finally:
        processes.stop_all()
        if not passed:
            processes.dump()
            workers.dump(since)
