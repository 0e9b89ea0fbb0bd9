"""Benchmark 3: never paying twice. Jobs billed by the emulator when submits meet ambiguous faults.

The emulator (:class:`EmulatorServer`, real HTTP on loopback, jobs held QUEUED with
``manual=True`` so nothing renders) gets a ``drop`` fault with ``after_queue=True`` before
some submit attempts: it queues and bills the job, then closes the connection without
answering. Exactly ``round(rate * n)`` of the n first attempts meet one (chosen by
``Random(seed).sample``); a retry meets one with probability ``rate``, drawn from
``Random(f"{seed}:{i}:{j}")``. Both strategies see the same faults on the same attempts.
What was billed is read from the emulator's wallet ledger.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal

from markdown_table import Table

from prefect_kandinsky.emulator import EmulatorConfig, EmulatorServer
from prefect_kandinsky.gateway.client import KandinskyClient
from prefect_kandinsky.gateway.exceptions import KandinskySubmitUncertainError
from prefect_kandinsky.gateway.models import VideoRequest
from prefect_kandinsky.gateway.prices import format_cost

MAX_NAIVE_ATTEMPTS = 10


@dataclass
class Tally:
    """What one strategy did over N intended videos."""

    intended: int = 0
    faults: int = 0
    attempts: int = 0
    request_ids: int = 0
    uncertain: int = 0
    jobs: int = 0
    billed: Decimal = Decimal(0)

    def __iadd__(self, other: Tally) -> Tally:
        for name in vars(self):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        return self


Submit = Callable[[KandinskyClient, VideoRequest, Callable[[], None], Tally], Awaitable[None]]


async def naive_retry(
    client: KandinskyClient, request: VideoRequest, arm: Callable[[], None], tally: Tally
) -> None:
    """Retry ``client.submit`` on any exception until it returns a request id."""
    for _ in range(MAX_NAIVE_ATTEMPTS):
        arm()
        tally.attempts += 1
        try:
            await client.submit(request)
        except Exception:
            continue
        tally.request_ids += 1
        return
    raise RuntimeError(f"naive submit gave up after {MAX_NAIVE_ATTEMPTS} attempts")


async def client_submit(
    client: KandinskyClient, request: VideoRequest, arm: Callable[[], None], tally: Tally
) -> None:
    """``client.submit`` once; an uncertain submit is surfaced, not resent."""
    arm()
    tally.attempts += 1
    try:
        await client.submit(request)
    except KandinskySubmitUncertainError:
        tally.uncertain += 1
        return
    tally.request_ids += 1


STRATEGIES: list[tuple[str, Submit]] = [
    ("naive: retry `client.submit` on any exception", naive_retry),
    ("`KandinskyClient.submit` (raises SubmitUncertain)", client_submit),
]


async def _session(
    server: EmulatorServer, submit: Submit, *, n: int, rate: float, seed: int
) -> Tally:
    server.reset()
    state = server.state
    tally = Tally(intended=n)
    request = VideoRequest(
        prompt="A lighthouse beam sweeps over a stormy sea.",
        image_url=server.sample_image_url,
        resolution="512P",
        duration=5,
    )
    first_faults = set(random.Random(seed).sample(range(n), round(rate * n)))
    async with KandinskyClient(api_key=server.api_key, base_url=server.base_url) as client:
        for i in range(n):
            attempt = 0

            def arm(i: int = i) -> None:
                nonlocal attempt
                if attempt == 0:
                    faulted = i in first_faults
                else:
                    faulted = random.Random(f"{seed}:{i}:{attempt}").random() < rate
                if faulted:
                    state.inject_fault("submit", action="drop", after_queue=True)
                    tally.faults += 1
                attempt += 1

            await submit(client, request, arm, tally)
    if state.faults:
        raise RuntimeError(f"unused faults left: {state.faults}")
    tally.jobs = len(state.jobs())
    tally.billed = -sum(
        (entry.amount_usd for entry in state.ledger if entry.kind == "debit"), Decimal(0)
    )
    if tally.attempts != state.count("submit"):
        raise RuntimeError(f"{tally.attempts} attempts but {state.count('submit')} submits seen")
    return tally


def _row(table: Table, label: str, tally: Tally, price: Decimal) -> None:
    duplicates = tally.jobs - tally.intended
    table.add(
        label,
        tally.intended,
        tally.faults,
        tally.attempts,
        tally.jobs,
        duplicates,
        tally.uncertain,
        format_cost(tally.billed),
        format_cost(duplicates * price),
    )


async def _measure(n: int, rate: float, seed: int, extra_seeds: int) -> list[Table]:
    headers = [
        "Strategy",
        "Videos wanted",
        "Ambiguous faults hit",
        "Submit requests",
        "Jobs queued (billed)",
        "Duplicate jobs",
        "Surfaced as uncertain",
        "Billed",
        "Overpaid",
    ]
    single = Table(f"3a. Never paying twice: N={n} submits, {rate:.0%} ambiguous faults", headers)
    many = Table(
        f"3b. Same, summed over {extra_seeds} seeds ({extra_seeds * n} submits per strategy)",
        headers,
    )
    price = VideoRequest(prompt="x", image_url="https://x/y.png").estimated_cost_usd
    assert price is not None
    config = EmulatorConfig(manual=True, balance_usd=Decimal("100000"))
    with EmulatorServer(config=config) as server:
        for label, submit in STRATEGIES:
            tally = await _session(server, submit, n=n, rate=rate, seed=seed)
            _row(single, label, tally, price)
            total = Tally()
            for extra in range(extra_seeds):
                total += await _session(server, submit, n=n, rate=rate, seed=1000 + extra)
            _row(many, label, total, price)
    note = (
        f"Price {format_cost(price)} per job (512P, 5 s; the emulator debits the documented "
        "price at queue time). Fault: `state.inject_fault('submit', action='drop', "
        f"after_queue=True)` before exactly {rate:.0%} of the first attempts (seeded sample) "
        f"and before a retry with probability {rate:.0%}. Jobs and money are read from the "
        "emulator's job list and wallet ledger; submit requests from `state.count('submit')`."
    )
    single.notes += [
        note,
        f"Seed {seed}. The client raised `KandinskySubmitUncertainError` for each faulted "
        "submit: those jobs were queued and billed once, and the caller is told to look for "
        "them before submitting again. The naive loop paid for each of them a second time.",
    ]
    many.notes.append(f"Seeds 1000-{1000 + extra_seeds - 1}, otherwise as 3a.")
    return [single, many]


def run(*, n: int, rate: float, seed: int, extra_seeds: int) -> list[Table]:
    """Both strategies on one seed, then summed over ``extra_seeds`` seeds."""
    return asyncio.run(_measure(n, rate, seed, extra_seeds))
