"""Run every benchmark, print a markdown table per benchmark, write them to results.md.

Usage: ``python benchmarks/run.py [--quick] [--batch]`` (``make bench`` runs the full set).

1. Persisting a large media file: ``persist_media`` versus ``httpx.get(url).content``, for
   peak memory, time and throughput, and the bytes a download cut at 50 % costs each.
2. Polling: status requests and detection latency of the client's backoff versus fixed
   1 s and 5 s polling, on a fake clock.
3. Never paying twice: jobs billed by the emulator when submits meet ambiguous faults, for a
   naive retry loop versus ``KandinskyClient.submit``.
4. Imports: wall time of ``import prefect_kandinsky`` and its first uses in fresh interpreters,
   against ``import prefect``, and the heavy modules each import loads.
5. Batches (only with ``--batch``, about 2 minutes): ``generate_videos`` against a plain
   asyncio + httpx script and a fan-out of three tasks per row, on the emulator and a Prefect
   server of its own; ``batch_bench.py`` alone runs it more often and on 2,000 rows.
6. Waits (only with ``--waits``, about 10 minutes): ``wait=poll``, ``events`` and ``suspend``
   through deployment runs on a process worker: latency after the job completes, status
   reads, worker-seconds held and wall time per video (``waits_bench.py`` alone takes options).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import batch_bench
import billing_bench
import import_bench
import persist_bench
import polling_bench
import waits_bench
from markdown_table import Table

RESULTS = Path(__file__).with_name("results.md")
MIB = 1024 * 1024


@dataclass(frozen=True)
class Settings:
    """How big each benchmark runs."""

    size: int
    small_size: int
    repeats: int
    poll_lengths: tuple[float, ...]
    poll_trials: int
    submits: int
    fault_rate: float
    extra_seeds: int
    import_repeats: int
    batch_rows: int


FULL = Settings(
    size=200 * MIB,
    small_size=50 * MIB,
    repeats=5,
    poll_lengths=(30.0, 120.0, 600.0),
    poll_trials=100,
    submits=20,
    fault_rate=0.10,
    extra_seeds=25,
    import_repeats=7,
    batch_rows=200,
)
QUICK = Settings(
    size=32 * MIB,
    small_size=8 * MIB,
    repeats=1,
    poll_lengths=(30.0, 120.0, 600.0),
    poll_trials=10,
    submits=20,
    fault_rate=0.10,
    extra_seeds=5,
    import_repeats=3,
    batch_rows=50,
)


def _machine() -> str:
    cores = os.cpu_count()
    try:
        with open("/proc/meminfo") as meminfo:
            kib = int(meminfo.readline().split()[1])
        memory = f"{kib / 1024 / 1024:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        memory = "unknown RAM"
    return (
        f"{cores} cores, {memory}, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}"
    )


def _section(name: str, tables: list[Table], started: float) -> list[Table]:
    for table in tables:
        print(table.to_markdown(), flush=True)
    print(f"({name}: {time.perf_counter() - started:.1f} s)\n", flush=True)
    return tables


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller files and fewer trials")
    parser.add_argument(
        "--batch",
        action="store_true",
        help="also run the batch benchmark (a Prefect server and the emulator; ~2 min)",
    )
    parser.add_argument(
        "--waits",
        action="store_true",
        help="also run the wait-modes benchmark (deployment runs on a worker; ~10 min)",
    )
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else FULL
    began = time.perf_counter()
    header = (
        f"# Benchmark results ({'quick' if args.quick else 'full'} run)\n\n"
        f"Machine: {_machine()}. Run {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC by "
        "`benchmarks/run.py`"
        + (" --quick" if args.quick else "")
        + (" --batch" if args.batch else "")
        + (" --waits" if args.waits else "")
        + "; this file is overwritten on each run.\n"
    )
    print(header, flush=True)
    tables: list[Table] = []
    started = time.perf_counter()
    tables += _section(
        "persist",
        persist_bench.run(
            size=settings.size, small_size=settings.small_size, repeats=settings.repeats
        ),
        started,
    )
    started = time.perf_counter()
    tables += _section(
        "polling",
        polling_bench.run(lengths=list(settings.poll_lengths), trials=settings.poll_trials),
        started,
    )
    started = time.perf_counter()
    tables += _section(
        "billing",
        billing_bench.run(
            n=settings.submits, rate=settings.fault_rate, seed=0, extra_seeds=settings.extra_seeds
        ),
        started,
    )
    started = time.perf_counter()
    tables += _section("imports", import_bench.run(repeats=settings.import_repeats), started)
    if args.batch:
        started = time.perf_counter()
        tables += _section(
            "batch",
            batch_bench.run(rows=settings.batch_rows, concurrency=settings.batch_rows),
            started,
        )
    if args.waits:
        started = time.perf_counter()
        tables += _section("waits", waits_bench.run(videos=2 if args.quick else 5), started)
    total = time.perf_counter() - began
    RESULTS.write_text(
        header
        + "\n"
        + "\n".join(table.to_markdown() for table in tables)
        + f"\nTotal run time: {total:.0f} s.\n"
    )
    print(f"Total run time: {total:.0f} s; tables written to {RESULTS}")


if __name__ == "__main__":
    main()
