"""The flow-run processes under a worker, sampled from /proc: when each lived, and its CPU.

A thread scans ``/proc`` every ``interval`` seconds for the descendants of the worker (by
parent pid, recursively: flow runs start in a session of their own but stay the worker's
children), reads each new one's ``/proc/<pid>/environ`` for ``PREFECT__FLOW_RUN_ID`` (again
on later scans while it has none: a process caught between fork and exec still holds the
worker's environment), and keeps, per process, its start (``starttime`` of
``/proc/<pid>/stat``, in clock ticks of ``CLOCK_BOOTTIME``, turned into epoch seconds with
the offset measured at the start, so exact to 10 ms whatever the sampling), the last scan
that saw it, and its CPU time at that scan. A process ends half an interval after the last
scan that saw it.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
FLOW_RUN_ID_VARIABLE = b"PREFECT__FLOW_RUN_ID="


def boot_time() -> float:
    """The epoch time of boot, to the microsecond: ``time.time() - CLOCK_BOOTTIME``.

    Not ``btime`` of ``/proc/stat``: it is rounded to whole seconds, which put process
    starts up to a second early.
    """
    best: tuple[float, float] | None = None
    for _ in range(5):  # the pair read closest together
        before = time.time()
        boot = time.clock_gettime(time.CLOCK_BOOTTIME)
        after = time.time()
        if best is None or after - before < best[0]:
            best = (after - before, (before + after) / 2 - boot)
    assert best is not None
    return best[1]


def _stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name (field 3 is index 0)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()


def process_table() -> dict[int, list[str]]:
    """Every process's stat fields, by pid."""
    table: dict[int, list[str]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if fields is not None:
                table[int(entry.name)] = fields
    return table


def descendants(pid: int, table: dict[int, list[str]] | None = None) -> list[int]:
    """Child processes of ``pid``, recursively."""
    table = process_table() if table is None else table
    children: dict[int, list[int]] = {}
    for child, fields in table.items():
        children.setdefault(int(fields[1]), []).append(child)
    found: list[int] = []
    pending = [pid]
    while pending:
        for child in children.get(pending.pop(), []):
            found.append(child)
            pending.append(child)
    return found


def cpu_seconds(fields: list[str], *, reaped_children: bool = False) -> float:
    """User + system CPU of a process; with ``reaped_children``, also of its waited-for children."""
    ticks = int(fields[11]) + int(fields[12])
    if reaped_children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / CLOCK_TICKS


def tree_cpu(pid: int, table: dict[int, list[str]] | None = None) -> float:
    """CPU seconds of ``pid``, of its children it reaped, and of its live descendants."""
    table = process_table() if table is None else table
    if pid not in table:
        return 0.0
    total = cpu_seconds(table[pid], reaped_children=True)
    for child in descendants(pid, table):
        if child in table:
            total += cpu_seconds(table[child], reaped_children=True)
    return total


def _flow_run_id(pid: int) -> str | None:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return None
    for item in environ.split(b"\0"):
        if item.startswith(FLOW_RUN_ID_VARIABLE):
            return item[len(FLOW_RUN_ID_VARIABLE) :].decode()
    return None


@dataclass
class Lifetime:
    """One process seen under the worker."""

    pid: int
    parent: int
    started: float
    last_seen: float
    flow_run_id: str | None
    cpu: float
    command: str

    def end(self, interval: float) -> float:
        """When it ended: half a scan interval after the last scan that saw it."""
        return self.last_seen + interval / 2


class ProcessSampler:
    """Scans the worker's descendants every ``interval`` seconds from a daemon thread."""

    def __init__(self, worker_pid: int, *, interval: float = 0.1) -> None:
        self.worker_pid = worker_pid
        self.interval = interval
        self.scans = 0
        self.slowest_scan = 0.0
        self._boot = boot_time()
        self._seen: dict[tuple[int, str], Lifetime] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="waits-sampler", daemon=True)

    def __enter__(self) -> ProcessSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.is_set():
            began = time.monotonic()
            with contextlib.suppress(Exception):  # a vanished process mid-scan: next scan
                self._scan()
            took = time.monotonic() - began
            self.slowest_scan = max(self.slowest_scan, took)
            self._stop.wait(max(0.0, self.interval - took))

    def _scan(self) -> None:
        table = process_table()
        now = time.time()
        with self._lock:
            self.scans += 1
            for pid in descendants(self.worker_pid, table):
                fields = table.get(pid)
                if fields is None:
                    continue
                key = (pid, fields[19])  # starttime: a reused pid is another process
                seen = self._seen.get(key)
                if seen is None:
                    try:
                        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
                    except OSError:
                        command = b""
                    seen = Lifetime(
                        pid=pid,
                        parent=int(fields[1]),
                        started=self._boot + int(fields[19]) / CLOCK_TICKS,
                        last_seen=now,
                        flow_run_id=None,
                        cpu=0.0,
                        command=command.decode(errors="replace").strip()[:200],
                    )
                    self._seen[key] = seen
                if seen.flow_run_id is None:
                    seen.flow_run_id = _flow_run_id(pid)
                    if seen.flow_run_id is not None:  # exec'd since: its own command line
                        with contextlib.suppress(OSError):
                            command = Path(f"/proc/{pid}/cmdline").read_bytes()
                            seen.command = command.replace(b"\0", b" ").decode(errors="replace")
                            seen.command = seen.command.strip()[:200]
                seen.last_seen = now
                seen.cpu = cpu_seconds(fields)

    def processes(self, flow_run_id: str | None = None) -> list[Lifetime]:
        """Processes seen so far (of one flow run, when given), by start time."""
        with self._lock:
            found = [
                Lifetime(**vars(p))
                for p in self._seen.values()
                if flow_run_id is None or p.flow_run_id == flow_run_id
            ]
        return sorted(found, key=lambda p: p.started)

    def alive(self, flow_run_id: str, *, within: float | None = None) -> bool:
        """Whether a process of the flow run was seen by the last scans."""
        window = within if within is not None else 3 * self.interval
        now = time.time()
        return any(now - p.last_seen <= window for p in self.processes(flow_run_id))

    def held(self, flow_run_id: str) -> tuple[float, int, float, list[tuple[float, float]]]:
        """Seconds some process of the run was alive, its top-level processes, their CPU, and
        the merged alive intervals.

        Nested processes of one run (a process that starts another) count once: the
        intervals are merged before they are summed.
        """
        own = self.processes(flow_run_id)
        pids = {p.pid for p in own}
        top = [p for p in own if p.parent not in pids]
        intervals = sorted((p.started, p.end(self.interval)) for p in own)
        merged: list[tuple[float, float]] = []
        for start, end in intervals:
            if merged and start <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], end))
            else:
                merged.append((start, end))
        seconds = sum(end - start for start, end in merged)
        return seconds, len(top), sum(p.cpu for p in own), merged
