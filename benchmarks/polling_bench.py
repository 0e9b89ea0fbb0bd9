"""Benchmark 2: what waiting for a job costs, in status requests and detection latency.

No real time passes: the client gets a fake clock and a fake ``sleep`` that advances it, and
its HTTP goes to an ``httpx.MockTransport`` that answers QUEUED, PROCESSING or COMPLETED from
that clock. Each trial draws a queue time (uniform 0 to 10 s, from a seeded ``Random``) so
that the completion moment falls anywhere in the poll cycle, and seeds the module ``random``
the client's jitter reads. Same seeds for every strategy.
"""

from __future__ import annotations

import asyncio
import math
import random
import statistics
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import httpx
from markdown_table import Table

from prefect_kandinsky.gateway.client import KandinskyClient
from prefect_kandinsky.gateway.constants import (
    DEFAULT_MAX_POLL_INTERVAL,
    DEFAULT_POLL_BACKOFF,
    DEFAULT_POLL_INTERVAL,
)
from prefect_kandinsky.gateway.models import JobStatus

REQUEST_ID = "kandinsky-5-0-pro-953-bench"
MAX_QUEUE_SECONDS = 10.0


class FakeTime:
    """A monotonic clock that only moves when someone sleeps; it keeps every sleep."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += max(seconds, 0.0)


@dataclass
class FakeJob:
    """A job submitted at t=0: QUEUED until ``started_at``, COMPLETED from ``completes_at``."""

    time: FakeTime
    started_at: float
    completes_at: float
    requests: int = 0

    def status(self) -> JobStatus:
        if self.time.now >= self.completes_at:
            return JobStatus.COMPLETED
        if self.time.now >= self.started_at:
            return JobStatus.PROCESSING
        return JobStatus.QUEUED

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests += 1
        status = self.status()
        body: dict[str, object] = {"request_id": REQUEST_ID, "status": status.value}
        if status is JobStatus.COMPLETED:
            body["output"] = {"media_url": ["https://cdn.example/out.mp4"]}
        return httpx.Response(200, json=body)


@dataclass(frozen=True)
class Strategy:
    """A way to wait, and the sleep it would take before its k-th next read without jitter."""

    label: str
    wait: Callable[[KandinskyClient, FakeTime], Awaitable[object]]
    nominal: Callable[[int], float]


def _client_wait(client: KandinskyClient, time: FakeTime) -> Awaitable[object]:
    return client.wait(REQUEST_ID)


def _backoff_nominal(k: int) -> float:
    return min(DEFAULT_POLL_INTERVAL * DEFAULT_POLL_BACKOFF**k, DEFAULT_MAX_POLL_INTERVAL)


def fixed(interval: float, label: str) -> Strategy:
    """A plain loop: read the status, sleep ``interval``, until it is terminal."""

    async def wait(client: KandinskyClient, time: FakeTime) -> None:
        while not (await client.get_status(REQUEST_ID)).status.is_terminal:
            await time.sleep(interval)

    return Strategy(label, wait, lambda k: interval)


STRATEGIES = [
    Strategy(
        f"client default: {DEFAULT_POLL_INTERVAL:g} s x{DEFAULT_POLL_BACKOFF:g} + jitter, "
        f"cap {DEFAULT_MAX_POLL_INTERVAL:g} s",
        _client_wait,
        _backoff_nominal,
    ),
    fixed(1.0, "naive fixed 1 s"),
    fixed(5.0, "documented fixed 5 s"),
]


@dataclass(frozen=True)
class Trial:
    requests: int
    latency: float
    sleeps: int
    jittered: int


async def _trial(strategy: Strategy, processing: float, seed: int) -> Trial:
    queue = random.Random(f"queue-{seed}").uniform(0.0, MAX_QUEUE_SECONDS)
    random.seed(seed)  # the client's jitter
    time = FakeTime()
    job = FakeJob(time, started_at=queue, completes_at=queue + processing)
    async with KandinskyClient(
        api_key="bench-key",
        base_url="https://gateway.bench",
        transport=httpx.MockTransport(job.handle),
        sleep=time.sleep,
        clock=time.clock,
    ) as client:
        await strategy.wait(client, time)
    jittered = sum(
        abs(seconds - strategy.nominal(k)) > 1e-9 for k, seconds in enumerate(time.sleeps)
    )
    return Trial(
        requests=job.requests,
        latency=time.now - job.completes_at,
        sleeps=len(time.sleeps),
        jittered=jittered,
    )


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


async def _measure(lengths: list[float], trials: int) -> Table:
    table = Table(
        "2. Polling cost per job (fake clock)",
        [
            "Processing",
            "Strategy",
            "Status requests, mean",
            "Requests per minute",
            "Detection latency mean (s)",
            "p95 (s)",
            "max (s)",
            "Sleeps with jitter",
        ],
    )
    for processing in lengths:
        for strategy in STRATEGIES:
            results = [await _trial(strategy, processing, seed) for seed in range(trials)]
            latencies = [r.latency for r in results]
            requests = statistics.fmean(r.requests for r in results)
            job_minutes = (processing + MAX_QUEUE_SECONDS / 2) / 60
            jittered = sum(r.jittered for r in results) / sum(r.sleeps for r in results)
            table.add(
                f"{processing:g} s",
                strategy.label,
                f"{requests:.1f}",
                f"{requests / job_minutes:.1f}",
                f"{statistics.fmean(latencies):.2f}",
                f"{_percentile(latencies, 0.95):.2f}",
                f"{max(latencies):.2f}",
                f"{jittered:.0%}",
            )
    table.notes += [
        f"{trials} seeded trials per cell. A job is QUEUED for a uniform 0-10 s, then "
        "PROCESSING for the stated time, then COMPLETED; the wait starts at submission (t=0). "
        "Requests per minute divide by the mean job time (processing + 5 s of queue).",
        "Detection latency: time from the job reaching COMPLETED to the waiter returning. "
        "Requests take no fake time, so it is pure polling delay.",
        "The fixed loops read the status first, then sleep, like `KandinskyClient.wait` "
        "(whose first read is immediate).",
        "Sleeps with jitter: share of sleeps that differ from the un-jittered schedule "
        f"({DEFAULT_POLL_INTERVAL:g}, {DEFAULT_POLL_INTERVAL * DEFAULT_POLL_BACKOFF:g}, ... "
        f"capped at {DEFAULT_MAX_POLL_INTERVAL:g} s). The client shortens every wait by up to "
        "a quarter at random, also at the cap, so waiters that start together drift apart.",
    ]
    return table


def run(*, lengths: list[float], trials: int) -> list[Table]:
    """Run every strategy over every job length; return the table."""
    return [asyncio.run(_measure(lengths, trials))]
