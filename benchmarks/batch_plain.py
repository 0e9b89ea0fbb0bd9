"""The plain baseline of the batch benchmark: asyncio + httpx, no Prefect, no prefect_kandinsky.

What a data team writes without an orchestrator: one ``httpx.AsyncClient``, every row at once
under a semaphore, and for each row submit -> poll the status -> stream the MP4 to a file. The
polling follows the package client's schedule (``KandinskyClient.wait``): the first read is
immediate, then about 2 s, growing by half each time up to 8 s, each wait shortened by up to a
quarter at random. The constants are copied from ``prefect_kandinsky/_constants.py`` on
purpose: this module must not import the package (nor Prefect), so that it costs what a plain
script costs.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

SUBMIT_PATH = "/kandinsky-5-0-pro-953/v1/kandinsky-5-0-pro-request"
STATUS_PATH = "/v2/requests/status/{request_id}"
API_KEY_HEADER = "Ocp-Apim-Subscription-Key"
POLL_INTERVAL = 2.0  # DEFAULT_POLL_INTERVAL
POLL_BACKOFF = 1.5  # DEFAULT_POLL_BACKOFF
MAX_POLL_INTERVAL = 8.0  # DEFAULT_MAX_POLL_INTERVAL
POLL_JITTER = 0.25  # DEFAULT_RETRY_JITTER, applied to poll waits by KandinskyClient.wait
TIMEOUT = httpx.Timeout(30.0, connect=10.0)
TERMINAL = frozenset({"COMPLETED", "FAILED", "ERROR"})


async def _row(
    client: httpx.AsyncClient,
    limit: asyncio.Semaphore,
    row: dict[str, Any],
    key: dict[str, str],
    out_dir: Path,
) -> str:
    """Submit, wait and store one row; return its final status ("STORED" when on disk)."""
    async with limit:
        answer = await client.post(
            SUBMIT_PATH,
            json={
                "prompt": row["prompt"],
                "image_url": row["image_url"],
                "resolution": row["resolution"],
                "duration": row["duration"],
            },
            headers=key,
        )
        answer.raise_for_status()
        request_id = answer.json()["request_id"]
        interval = POLL_INTERVAL
        while True:
            response = await client.get(STATUS_PATH.format(request_id=request_id), headers=key)
            response.raise_for_status()
            status = response.json()
            if status["status"] in TERMINAL:
                break
            await asyncio.sleep(interval * (1 - POLL_JITTER * random.random()))
            interval = min(interval * POLL_BACKOFF, MAX_POLL_INTERVAL)
        if status["status"] != "COMPLETED":
            return str(status["status"])
        url = status["output"]["media_url"][0]
        path = out_dir / f"{request_id}.mp4"
        async with client.stream("GET", url) as media:
            media.raise_for_status()
            with path.open("wb") as handle:
                async for chunk in media.aiter_bytes(1024 * 1024):
                    handle.write(chunk)
        return "STORED"


async def run(
    rows: Sequence[dict[str, Any]],
    *,
    gateway: str,
    api_key: str,
    out_dir: Path,
    concurrency: int,
) -> dict[str, int]:
    """Work every row; return the count of rows per outcome (an exception counts by type)."""
    limit = asyncio.Semaphore(concurrency)
    key = {API_KEY_HEADER: api_key}  # sent to the gateway only, never to the CDN
    out_dir.mkdir(parents=True, exist_ok=True)
    async with httpx.AsyncClient(
        base_url=gateway,
        timeout=TIMEOUT,
        limits=httpx.Limits(max_connections=concurrency + 12),
    ) as client:
        outcomes = await asyncio.gather(
            *(_row(client, limit, row, key, out_dir) for row in rows), return_exceptions=True
        )
    counts: dict[str, int] = {}
    for outcome in outcomes:
        label = outcome if isinstance(outcome, str) else f"{type(outcome).__name__}: {outcome}"
        counts[label[:200]] = counts.get(label[:200], 0) + 1
    return counts
