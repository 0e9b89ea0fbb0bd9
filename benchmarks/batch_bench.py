"""Benchmark 5: a batch of videos. ``generate_videos`` against a plain script and today's fan-out.

One run starts three processes of its own on 127.0.0.1, each in its own session:

* the gateway emulator, ``python -m prefect_kandinsky.emulator --port 0 --cdn-port 0
  --queue-seconds 0.1 --processing-seconds 5 --balance 100000`` (the ports it chose are read
  from its banner; ``POST /_emulator/reset`` between contenders, request counts from
  ``GET /_emulator/requests``);
* a Prefect server, ``prefect server start`` with a temporary ``PREFECT_HOME`` (SQLite in it),
  analytics and UI off;
* each contender, in a fresh process (``batch_child.py``): ``plain`` (asyncio + httpx, no
  Prefect), ``fanout`` (one flow gathering ``submit_video -> await_video -> persist_video`` per
  row, the README's pattern before batches) and ``batch`` (``generate_videos``).

For each contender it records the child's wall and CPU time of the work (imports excluded,
Prefect's pending logs and events delivered), its whole-process CPU (``os.wait4``), peak RSS
(``VmHWM``) and open files; the CPU time of the Prefect server's and the emulator's process
trees (``/proc/<pid>/stat`` of each process and its descendants, from the child's start until
the server has persisted the contender's events); the task runs and flow runs the server
recorded, the events it stored, and the Prefect API requests the child sent; the emulator's
submits, status reads and media downloads; the files on disk. "Other CPU s" is the machine's
busy time (``/proc/stat``) not spent by these processes: work of someone else on the cores.

Run alone: ``python benchmarks/batch_bench.py [--rows 200] [--repeats 2] [--rows-2000]``;
``run.py --batch`` runs the 200-row comparison once.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
from markdown_table import Table

HERE = Path(__file__).resolve().parent
CHILD = HERE / "batch_child.py"
PYTHON = sys.executable
PREFECT = str(Path(sys.executable).with_name("prefect"))
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
MIB = 1024 * 1024

QUEUE_SECONDS = 0.1
PROCESSING_SECONDS = 5.0
ROWS = 200
CONCURRENCY = 200
LONG_ROWS = 2000
WALL_TARGET = 1.3
CPU_TARGET = 2.0
SETTLE_QUIET_SECONDS = 6.0
"""The server's counts must stay still this long before a contender is done (the event
persister flushes every 5 s)."""
SETTLE_MAX_SECONDS = 90.0
QUIET_WINDOW = 3.0
QUIET_SHARE = 0.1
QUIET_MAX_SECONDS = 300.0
IDLE_SECONDS = 10.0
"""How long the idle Prefect server's CPU is measured before the first contender."""


# -- processes ------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _proc_table() -> dict[int, tuple[int, float]]:
    """Every process: pid -> (parent pid, CPU seconds incl. reaped children)."""
    table: dict[int, tuple[int, float]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                data = handle.read()
        except OSError:
            continue
        fields = data[data.rindex(")") + 2 :].split()
        # fields[0] is the state (field 3); utime, stime, cutime, cstime are fields 14-17.
        ticks = sum(int(value) for value in fields[11:15])
        table[int(entry)] = (int(fields[1]), ticks / CLOCK_TICKS)
    return table


def tree_cpu(pid: int, table: dict[int, tuple[int, float]] | None = None) -> float:
    """CPU seconds of ``pid`` and every live descendant (reaped ones are in their parent's)."""
    table = table if table is not None else _proc_table()
    children: dict[int, list[int]] = {}
    for child, (parent, _) in table.items():
        children.setdefault(parent, []).append(child)
    total, stack = 0.0, [pid]
    while stack:
        current = stack.pop()
        if current in table:
            total += table[current][1]
        stack += children.get(current, [])
    return total


def busy_cpu() -> float:
    """Busy CPU seconds of the whole machine since boot (all cores)."""
    with open("/proc/stat") as handle:
        values = [int(v) for v in handle.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = values[:8]
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


def _stop(process: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    """Stop a process this benchmark started, with its session: SIGTERM, then SIGKILL."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _wait_for(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"{url}: the process ended ({process.returncode}):\n{log.read_text()}"
            )
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f} s:\n{log.read_text()}")


@dataclass
class Emulator:
    """The gateway emulator in its own process."""

    process: subprocess.Popen[bytes]
    gateway: str
    cdn: str

    @property
    def sample_image(self) -> str:
        return f"{self.cdn}/samples/sample.png"

    def reset(self) -> None:
        httpx.post(f"{self.gateway}/_emulator/reset", timeout=30.0).raise_for_status()

    def counts(self) -> dict[str, int]:
        """Requests received since the reset, by kind (submit, status, media, asset, ...)."""
        answer = httpx.get(
            f"{self.gateway}/_emulator/requests", params={"kind": "other"}, timeout=60.0
        )
        answer.raise_for_status()
        counts: dict[str, int] = answer.json()["counts"]
        return counts

    def cpu(self) -> float:
        return tree_cpu(self.process.pid)

    def timeline(self) -> dict[str, float]:
        """Epoch seconds of the first and last submit, the last job completed, the last
        media download; from the emulator's job list and request log."""
        jobs = httpx.get(f"{self.gateway}/_emulator/jobs", timeout=60.0).json()["jobs"]
        media = httpx.get(
            f"{self.gateway}/_emulator/requests", params={"kind": "media"}, timeout=60.0
        ).json()["requests"]
        created = [_epoch(job["created_at"]) for job in jobs]
        completed = [_epoch(job["completed_at"]) for job in jobs if job["completed_at"]]
        downloads = [_epoch(record["at"]) for record in media]
        found: dict[str, float] = {}
        if created:
            found.update(first_submit=min(created), last_submit=max(created))
        if completed:
            found["last_completed"] = max(completed)
        if downloads:
            found["last_download"] = max(downloads)
        return found


def _epoch(text: str) -> float:
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


@contextlib.contextmanager
def emulator(workdir: Path) -> Iterator[Emulator]:
    log = workdir / "emulator.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                PYTHON,
                "-m",
                "prefect_kandinsky.emulator",
                "--port",
                "0",
                "--cdn-port",
                "0",
                "--queue-seconds",
                str(QUEUE_SECONDS),
                "--processing-seconds",
                str(PROCESSING_SECONDS),
                "--balance",
                "100000",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=workdir,
        )
    try:
        deadline = time.monotonic() + 60
        urls: dict[str, str] = {}
        while len(urls) < 2:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the emulator did not start:\n{log.read_text()}")
            urls = dict(re.findall(r"^\s+(gateway|cdn):\s+(\S+)$", log.read_text(), re.M))
            time.sleep(0.1)
        _wait_for(f"{urls['gateway']}/_emulator/health", process, log, 30)
        yield Emulator(process, urls["gateway"], urls["cdn"])
    finally:
        _stop(process)


@dataclass
class PrefectServer:
    """A Prefect server in its own process, on a temporary PREFECT_HOME."""

    process: subprocess.Popen[bytes]
    api_url: str
    home: Path

    def cpu(self) -> float:
        return tree_cpu(self.process.pid)

    def _post(self, path: str, body: dict[str, Any]) -> Any:
        answer = httpx.post(f"{self.api_url}{path}", json=body, timeout=60.0)
        answer.raise_for_status()
        return answer.json()

    def task_runs(self) -> int:
        return int(self._post("/task_runs/count", {}))

    def flow_runs(self) -> int:
        return int(self._post("/flow_runs/count", {}))

    def events(self, since: datetime) -> int:
        page = self._post(
            "/events/filter", {"filter": {"occurred": {"since": since.isoformat()}}, "limit": 1}
        )
        return int(page["total"])

    def events_by_type(self, since: datetime, until: datetime) -> dict[str, int]:
        counts = self._post(
            "/events/count-by/event",
            {"filter": {"occurred": {"since": since.isoformat(), "until": until.isoformat()}}},
        )
        return {item["value"]: int(item["count"]) for item in counts}


@contextlib.contextmanager
def prefect_server(workdir: Path) -> Iterator[PrefectServer]:
    home = workdir / "server-home"
    home.mkdir()
    port = _free_port()
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home / 'prefect.db'}",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_UI_ENABLED": "false",
    }
    env.pop("PREFECT_API_URL", None)
    log = workdir / "server.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
            cwd=workdir,
        )
    try:
        api_url = f"http://127.0.0.1:{port}/api"
        _wait_for(f"{api_url}/health", process, log, 120)
        yield PrefectServer(process, api_url, home)
    finally:
        _stop(process)


# -- one contender ----------------------------------------------------------------------------


@dataclass
class Measure:
    """What one contender cost."""

    contender: str
    rows: int
    concurrency: int
    repeat: int
    child: dict[str, Any] = field(default_factory=dict)
    returncode: int = 0
    process_wall: float = 0.0
    process_cpu: float = 0.0
    server_cpu: float = 0.0
    emulator_cpu: float = 0.0
    other_cpu: float = 0.0
    settle_wall: float = 0.0
    gateway: dict[str, int] = field(default_factory=dict)
    task_runs: int = 0
    flow_runs: int = 0
    events: int = 0
    event_types: dict[str, int] = field(default_factory=dict)
    files: int = 0
    file_bytes: int = 0
    timeline: dict[str, float] = field(default_factory=dict)
    stderr_tail: str = ""

    @property
    def wall(self) -> float:
        return float(self.child.get("work_wall", self.process_wall))

    @property
    def cpu(self) -> float:
        return float(self.child.get("work_cpu", self.process_cpu))

    @property
    def stored(self) -> int:
        outcomes: dict[str, int] = self.child.get("outcomes") or {}
        return sum(n for state, n in outcomes.items() if state.lower() in ("stored",))

    @property
    def errors(self) -> int:
        return self.rows - self.stored

    @property
    def error_text(self) -> str:
        parts = []
        if self.child.get("error"):
            parts.append(str(self.child["error"]))
        outcomes: dict[str, int] = self.child.get("outcomes") or {}
        parts += [f"{n} x {state}" for state, n in outcomes.items() if state.lower() != "stored"]
        parts += [f"{n} x {text}" for text, n in (self.child.get("row_errors") or {}).items()]
        if self.returncode:
            parts.append(f"exit code {self.returncode}")
        return "; ".join(parts)


def _settle(server: PrefectServer, since: datetime) -> tuple[int, int, int]:
    """Wait until the server's task runs, flow runs and events stop changing; return them."""
    deadline = time.monotonic() + SETTLE_MAX_SECONDS
    last: tuple[int, int, int] | None = None
    still_since = time.monotonic()
    while True:
        now = (server.task_runs(), server.flow_runs(), server.events(since))
        if now != last:
            last, still_since = now, time.monotonic()
        elif time.monotonic() - still_since >= SETTLE_QUIET_SECONDS:
            return now
        if time.monotonic() > deadline:
            return now
        time.sleep(0.5)


def _files(folder: Path) -> tuple[int, int]:
    count = size = 0
    for path in folder.rglob("*.mp4"):
        if not path.name.startswith(".") and path.is_file():
            count += 1
            size += path.stat().st_size
    return count, size


def wait_for_quiet(emu: Emulator, server: PrefectServer) -> float:
    """Wait (up to ``QUIET_MAX_SECONDS``) until the cores are idle but for our own processes:
    the busy CPU of others stays under ``QUIET_SHARE`` of one core for ``QUIET_WINDOW`` s.
    Return the seconds waited."""
    began = time.monotonic()
    while time.monotonic() - began < QUIET_MAX_SECONDS:
        table = _proc_table()
        ours = tree_cpu(emu.process.pid, table) + tree_cpu(server.process.pid, table)
        busy = busy_cpu()
        time.sleep(QUIET_WINDOW)
        table = _proc_table()
        ours = tree_cpu(emu.process.pid, table) + tree_cpu(server.process.pid, table) - ours
        if busy_cpu() - busy - ours < QUIET_SHARE * QUIET_WINDOW:
            break
    return time.monotonic() - began


def run_contender(
    contender: str,
    *,
    rows: int,
    concurrency: int,
    repeat: int,
    emu: Emulator,
    server: PrefectServer,
    workdir: Path,
    since: datetime,
    profile: Path | None = None,
    py_spy: tuple[str, Path] | None = None,
) -> Measure:
    """Run one contender in a fresh process against a freshly reset emulator; measure it."""
    emu.reset()
    waited = wait_for_quiet(emu, server)
    if waited > QUIET_WINDOW * 1.5:
        print(f"  (waited {waited:.0f} s for the cores to be quiet)", file=sys.stderr, flush=True)
    tag = f"{contender}-{rows}-{repeat}"
    out = workdir / f"videos-{tag}"
    home = workdir / f"home-{tag}"
    home.mkdir()
    command = [
        PYTHON,
        str(CHILD),
        contender,
        "--rows",
        str(rows),
        "--concurrency",
        str(concurrency),
        "--gateway",
        emu.gateway,
        "--image",
        emu.sample_image,
        "--out",
        str(out),
        "--ledger",
        str(workdir / f"ledger-{tag}"),
        "--batch-id",
        f"batch-bench-{uuid.uuid4().hex[:12]}",
    ]
    if profile is not None:
        command += ["--profile", str(profile / f"{tag}.prof")]
    if py_spy is not None:
        # py-spy samples every thread of the child (100 Hz, idle threads left out) and writes
        # collapsed stacks; the child is then py-spy's, so its timings are inflated.
        command = [
            py_spy[0],
            "record",
            "--rate",
            "100",
            "--format",
            "raw",
            "--threads",
            "--nonblocking",
            "--output",
            str(py_spy[1] / f"{tag}.txt"),
            "--",
            *command,
        ]
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": server.api_url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PYTHONPATH": os.pathsep.join(
            p for p in (str(HERE), os.environ.get("PYTHONPATH", "")) if p
        ),
    }
    measure = Measure(contender, rows, concurrency, repeat)
    tasks_before, flows_before = server.task_runs(), server.flow_runs()
    events_before = server.events(since)
    table = _proc_table()
    server_before, emu_before = (
        tree_cpu(server.process.pid, table),
        tree_cpu(emu.process.pid, table),
    )
    busy_before = busy_cpu()
    self_before = resource.getrusage(resource.RUSAGE_SELF)
    started_at = datetime.now(timezone.utc)
    stdout_path, stderr_path = workdir / f"{tag}.out", workdir / f"{tag}.err"
    with stdout_path.open("wb") as stdout, stderr_path.open("wb") as stderr:
        started = time.perf_counter()
        process = subprocess.Popen(
            command,
            stdout=stdout,
            stderr=stderr,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=workdir,
            start_new_session=True,
        )
        try:
            _, status, usage = os.wait4(process.pid, 0)
            process.returncode = os.waitstatus_to_exitcode(status)
        finally:
            _stop(process)
        measure.process_wall = time.perf_counter() - started
    measure.returncode = process.returncode
    measure.process_cpu = usage.ru_utime + usage.ru_stime
    ended = time.perf_counter()
    measure.task_runs, measure.flow_runs, events_after = _settle(server, since)
    measure.settle_wall = time.perf_counter() - ended
    measure.task_runs -= tasks_before
    measure.flow_runs -= flows_before
    measure.events = events_after - events_before
    table = _proc_table()
    measure.server_cpu = tree_cpu(server.process.pid, table) - server_before
    measure.emulator_cpu = tree_cpu(emu.process.pid, table) - emu_before
    self_after = resource.getrusage(resource.RUSAGE_SELF)
    own = (self_after.ru_utime + self_after.ru_stime) - (
        self_before.ru_utime + self_before.ru_stime
    )
    measure.other_cpu = max(
        0.0,
        busy_cpu()
        - busy_before
        - measure.process_cpu
        - measure.server_cpu
        - measure.emulator_cpu
        - own,
    )
    measure.event_types = server.events_by_type(started_at, datetime.now(timezone.utc))
    measure.gateway = emu.counts()
    measure.timeline = emu.timeline()
    measure.files, measure.file_bytes = _files(out)
    for line in stdout_path.read_text(errors="replace").splitlines():
        if line.startswith("BATCH_CHILD_RESULT "):
            measure.child = json.loads(line.removeprefix("BATCH_CHILD_RESULT "))
    measure.stderr_tail = stderr_path.read_text(errors="replace")[-3000:]
    if not measure.child:
        measure.child = {"error": f"no result line; stderr: {measure.stderr_tail[-500:]}"}
    shutil.rmtree(out, ignore_errors=True)  # keep the temp folder small during long runs
    return measure


# -- tables -------------------------------------------------------------------------------------

HEADERS = [
    "Contender",
    "Rows (in flight)",
    "Wall s",
    "x plain",
    "Client CPU s",
    "x plain",
    "Client CPU s, process",
    "Server CPU s",
    "Emulator CPU s",
    "Status reads / video",
    "Task runs / row",
    "API calls / row",
    "Events / row",
    "Peak RSS MiB",
    "Peak open fds",
    "Stored / errors",
    "Other CPU s",
]

LABELS = {
    "plain": "plain asyncio + httpx",
    "fanout": "fan-out of 3 tasks per row (today)",
    "batch": "`generate_videos`",
}


def _ratio(value: float, base: Measure | None, attribute: str) -> str:
    if base is None or getattr(base, attribute) <= 0:
        return "-"
    return f"{value / getattr(base, attribute):.2f}"


def _add(table: Table, measure: Measure, plain: Measure | None, label: str = "") -> None:
    n = measure.rows
    rss = measure.child.get("vm_hwm_kib")
    table.add(
        label or LABELS[measure.contender],
        f"{n} ({measure.concurrency})",
        f"{measure.wall:.1f}",
        _ratio(measure.wall, plain, "wall"),
        f"{measure.cpu:.1f}",
        _ratio(measure.cpu, plain, "cpu"),
        f"{measure.process_cpu:.1f}",
        f"{measure.server_cpu:.1f}",
        f"{measure.emulator_cpu:.1f}",
        f"{measure.gateway.get('status', 0) / n:.2f}",
        f"{measure.task_runs / n:.2f}",
        f"{measure.child.get('api_calls', 0) / n:.2f}",
        f"{measure.events / n:.2f}",
        f"{rss / 1024:.0f}" if rss else "-",
        measure.child.get("max_fds", "-"),
        f"{measure.files} / {measure.errors}",
        f"{measure.other_cpu:.1f}",
    )


def _verdicts(batch: Measure, plain: Measure) -> list[str]:
    wall = batch.wall / plain.wall
    cpu = batch.cpu / plain.cpu
    wall_verdict = "met" if wall <= WALL_TARGET else "MISSED"
    cpu_verdict = "met" if cpu <= CPU_TARGET else "MISSED"
    return [
        f"`generate_videos` wall {batch.wall:.1f} s against {plain.wall:.1f} s plain: "
        f"{wall:.2f}x (target at most {WALL_TARGET}x): {wall_verdict}",
        f"`generate_videos` client CPU {batch.cpu:.1f} s against {plain.cpu:.1f} s plain: "
        f"{cpu:.2f}x (target at most {CPU_TARGET}x): {cpu_verdict}",
    ]


def _timeline(measures: list[Measure], number: str = "5b") -> Table:
    """When things happened in each run, in seconds from the start of the work."""
    table = Table(
        f"{number}. Timeline of each run, in seconds from the start of the work "
        f"({measures[0].rows} rows)",
        [
            "Contender",
            "First submit",
            "Last submit",
            "Last video rendered",
            "Last download",
            "End of work",
            "Tail after last render",
        ],
    )
    for measure in measures:
        start = measure.child.get("work_started_epoch")
        line = measure.timeline
        if start is None or not line:
            continue

        def at(name: str, start: float = start, line: dict[str, float] = line) -> str:
            return f"{line[name] - start:.1f}" if name in line else "-"

        tail = (
            f"{start + measure.wall - line['last_completed']:.1f}"
            if "last_completed" in line
            else "-"
        )
        table.add(
            f"{LABELS[measure.contender]}, run {measure.repeat}",
            at("first_submit"),
            at("last_submit"),
            at("last_completed"),
            at("last_download"),
            f"{measure.wall:.1f}",
            tail,
        )
    table.notes.append(
        "From the emulator's job list (`created_at`, `completed_at`) and request log (media "
        "downloads), against the child's clock (same machine). A job completes once "
        f"{QUEUE_SECONDS + PROCESSING_SECONDS:g} s have passed and its MP4 is rendered (2 "
        "render threads on the same 2 cores as the client); the tail after the last render is "
        "polling delay (the client's schedule reads at about 0, 2, 4.5, 8.3, 14 s after a "
        "submit, each wait up to 25% shorter) plus the client's own latency. A render that "
        "lands just after a read is seen up to one interval later, so single wall times jump "
        "by several seconds between runs."
    )
    return table


def _medians(measures: list[Measure]) -> list[str]:
    by: dict[str, list[Measure]] = {}
    for measure in measures:
        by.setdefault(measure.contender, []).append(measure)
    if "plain" not in by or "batch" not in by or len(by["plain"]) < 2:
        return []
    plain, batch = by["plain"], by["batch"]
    wall_p = statistics.median(m.wall for m in plain)
    wall_b = statistics.median(m.wall for m in batch)
    cpu_p = statistics.median(m.cpu for m in plain)
    cpu_b = statistics.median(m.cpu for m in batch)
    return [
        f"Median of {len(plain)} runs: wall {wall_b:.1f} s `generate_videos` against "
        f"{wall_p:.1f} s plain = {wall_b / wall_p:.2f}x (target {WALL_TARGET}x); client CPU "
        f"{cpu_b:.1f} s against {cpu_p:.1f} s = {cpu_b / cpu_p:.2f}x (target {CPU_TARGET}x). "
        f"Ranges: wall plain {min(m.wall for m in plain):.1f}-{max(m.wall for m in plain):.1f}, "
        f"batch {min(m.wall for m in batch):.1f}-{max(m.wall for m in batch):.1f}; CPU plain "
        f"{min(m.cpu for m in plain):.1f}-{max(m.cpu for m in plain):.1f}, batch "
        f"{min(m.cpu for m in batch):.1f}-{max(m.cpu for m in batch):.1f}."
    ]


def _threads(measures: list[Measure], number: str) -> Table:
    """The child's CPU during the work, by thread."""
    table = Table(
        f"{number}. Client CPU by thread, in seconds ({measures[0].rows} rows)",
        ["Thread", *(LABELS[m.contender] for m in measures)],
    )
    names: dict[str, float] = {}
    for measure in measures:
        for name, cpu in (measure.child.get("thread_cpu") or {}).items():
            names[name] = names.get(name, 0.0) + cpu
    for name in sorted(names, key=lambda name: -names[name]):
        if names[name] >= 0.05:
            table.add(
                f"`{name}`",
                *(f"{(m.child.get('thread_cpu') or {}).get(name, 0.0):.2f}" for m in measures),
            )
    table.add("all (work CPU)", *(f"{m.cpu:.2f}" for m in measures))
    table.notes.append(
        "From `/proc/self/task/*/stat` when the work starts and when it returns (before the "
        "event loop closes), by Python thread name (digits shown as N); `exited threads`: "
        "threads that ended meanwhile; `after the work`: delivering Prefect's queued logs and "
        "events, and the shutdown. `AnyIO worker thread`: `anyio.to_thread` (ledger writes, "
        "video file writes and fsync, PyAV probe and poster); `GlobalEventLoopThread`, "
        "`EventsWorkerThread`, `APILogWorkerThread`: Prefect's background threads."
    )
    return table


def _breakdown(measures: list[Measure], top: int = 14) -> Table:
    """Prefect API requests and events per row, by route and by event type."""
    table = Table(
        "5c. Where the orchestration goes: Prefect API requests and events per row",
        ["Kind", "Route or event type", *(LABELS[m.contender] for m in measures)],
    )
    for kind, get in (
        ("API request", lambda m: m.child.get("api_routes") or {}),
        ("event", lambda m: m.event_types),
    ):
        totals: dict[str, int] = {}
        for measure in measures:
            for name, count in get(measure).items():
                totals[name] = totals.get(name, 0) + count
        names = sorted(totals, key=lambda name: -totals[name])
        shown, rest = names[:top], names[top:]
        for name in shown:
            table.add(
                kind,
                f"`{name}`",
                *(f"{get(m).get(name, 0) / m.rows:.3f}" for m in measures),
            )
        if rest:
            table.add(
                kind,
                f"({len(rest)} others)",
                *(f"{sum(get(m).get(n, 0) for n in rest) / m.rows:.3f}" for m in measures),
            )
    table.notes.append(
        "API requests: counted in the child by wrapping `PrefectHttpxAsyncClient.send` and "
        "`PrefectHttpxSyncClient.send` (ids shown as `{id}`); events go over the events "
        "websocket and are counted on the server (`POST /api/events/count-by/event`), the "
        "server's own events included."
    )
    return table


def _common_notes(server_idle: float, measures: list[Measure]) -> list[str]:
    notes = [
        f"Emulator: a separate process, `--queue-seconds {QUEUE_SECONDS} --processing-seconds "
        f"{PROCESSING_SECONDS:g}`, 256P, 1 s videos rendered on its 2 render threads, reset "
        "before each contender. All rows use the emulator's sample image; no image check "
        "(`check_image=False`) in any contender; every contender polls on the client's "
        "schedule (first read at once, then about 2 s, x1.5, capped at 8 s, up to 25% shorter "
        "at random).",
        "Wall s and Client CPU s: the work in the child process (imports excluded; Prefect's "
        "queued logs and events delivered before the clock stops); CPU of every thread. "
        "Client CPU s, process: the whole child process, imports and start-up included "
        "(`os.wait4`). Server CPU s: the Prefect server's process tree from the child's start "
        "until the server has stored the contender's task runs and events (counts unchanged "
        f"for {SETTLE_QUIET_SECONDS:g} s); the idle server used {server_idle:.3f} CPU s per "
        "second before the first contender, included.",
        "Task runs, events and flow runs: counted by the Prefect server (a fresh one, SQLite, "
        "for this benchmark). API calls: requests the child sent to the Prefect API. Status "
        "reads: `GET /v2/requests/status/{id}` received by the emulator. Peak RSS: `VmHWM` of "
        "the child. Stored: MP4 files found on disk afterwards; errors: rows not stored.",
        "Before each contender the benchmark waits (up to "
        f"{QUIET_MAX_SECONDS:g} s) until others use under {QUIET_SHARE:.0%} of a core for "
        f"{QUIET_WINDOW:g} s; every other run takes the contenders in reverse order.",
        "Other CPU s: the machine's busy CPU time during the contender (`/proc/stat`) minus the "
        "child, the server, the emulator and this benchmark: someone else's work on the same "
        "2 cores. Above a second or two, the timings of that row are disturbed.",
    ]
    flows = {m.contender: m.flow_runs for m in measures}
    notes.append(
        "Flow runs per contender: "
        + ", ".join(f"{name} {count}" for name, count in flows.items())
        + "."
    )
    return notes


# -- the run ------------------------------------------------------------------------------------


def run(
    *,
    rows: int = ROWS,
    concurrency: int = CONCURRENCY,
    repeats: int = 1,
    long_rows: int | None = None,
    contenders: tuple[str, ...] = ("plain", "batch", "fanout"),
    profile: Path | None = None,
    py_spy: tuple[str, Path] | None = None,
    keep: bool = False,
) -> list[Table]:
    """Measure the contenders ``repeats`` times on ``rows`` rows; then, optionally, plain and
    batch on ``long_rows`` rows."""
    workdir = Path(tempfile.mkdtemp(prefix="batch-bench-"))
    if profile is not None:
        profile.mkdir(parents=True, exist_ok=True)
    if py_spy is not None:
        py_spy[1].mkdir(parents=True, exist_ok=True)
    tables: list[Table] = []
    try:
        with emulator(workdir) as emu, prefect_server(workdir) as server:
            since = datetime.now(timezone.utc)
            idle_before = server.cpu()
            time.sleep(IDLE_SECONDS)
            server_idle = (server.cpu() - idle_before) / IDLE_SECONDS
            measures: list[Measure] = []
            main = Table(
                f"5a. A batch of {rows} videos: `generate_videos` against a plain script and "
                "today's fan-out of tasks",
                HEADERS,
            )
            verdicts: list[str] = []
            for repeat in range(1, repeats + 1):
                this: dict[str, Measure] = {}
                # Every other run goes in reverse order, so no contender always runs first.
                order = contenders if repeat % 2 else tuple(reversed(contenders))
                for contender in order:
                    measure = run_contender(
                        contender,
                        rows=rows,
                        concurrency=concurrency,
                        repeat=repeat,
                        emu=emu,
                        server=server,
                        workdir=workdir,
                        since=since,
                        profile=profile,
                        py_spy=py_spy,
                    )
                    _progress(measure)
                    this[contender] = measure
                    measures.append(measure)
                plain = this.get("plain")
                for contender in contenders:
                    label = LABELS[contender] + (f", run {repeat}" if repeats > 1 else "")
                    _add(main, this[contender], plain, label)
                if plain is not None and "batch" in this:
                    verdicts += [
                        f"Run {repeat}: {text}" for text in _verdicts(this["batch"], plain)
                    ]
            main.notes += verdicts + _medians(measures) + _common_notes(server_idle, measures)
            for measure in measures:
                if measure.error_text:
                    main.notes.append(
                        f"{LABELS[measure.contender]}, run {measure.repeat}: {measure.error_text}"
                    )
            if measures:
                tables += [main, _timeline(measures)]
            first = [m for m in measures if m.repeat == 1 and m.contender != "plain"]
            if first:
                tables.append(_breakdown(first))
            if measures:
                tables.append(_threads([m for m in measures if m.repeat == 1], "5d"))
            if long_rows:
                long = Table(
                    f"5e. A batch of {long_rows} videos ({concurrency} in flight)",
                    HEADERS,
                )
                done: dict[str, Measure] = {}
                for contender in ("batch", "plain"):
                    measure = run_contender(
                        contender,
                        rows=long_rows,
                        concurrency=concurrency,
                        repeat=1,
                        emu=emu,
                        server=server,
                        workdir=workdir,
                        since=since,
                        profile=profile,
                        py_spy=py_spy,
                    )
                    _progress(measure)
                    done[contender] = measure
                for contender in ("plain", "batch"):
                    _add(long, done[contender], done["plain"])
                long.notes += _verdicts(done["batch"], done["plain"])
                batch = done["batch"]
                long.notes.append(
                    f"`generate_videos`: {batch.files} of {long_rows} rows stored, outcomes "
                    f"{batch.child.get('outcomes')}, error: {batch.error_text or 'none'}; peak "
                    f"{batch.child.get('max_fds')} open fds (limit {batch.child.get('fd_limit')}), "
                    f"{batch.child.get('max_threads')} threads; process wall "
                    f"{batch.process_wall:.1f} s."
                )
                long.notes.append("Otherwise as 5a.")
                tables.append(long)
                tables.append(_timeline([done["plain"], done["batch"]], "5f"))
                tables.append(_threads([done["plain"], done["batch"]], "5g"))
    finally:
        if keep:
            print(f"(kept {workdir})", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return tables


def _progress(measure: Measure) -> None:
    print(
        f"  {measure.contender} x{measure.rows} run {measure.repeat}: wall {measure.wall:.1f} s, "
        f"CPU {measure.cpu:.1f} s (process {measure.process_cpu:.1f} s), server "
        f"{measure.server_cpu:.1f} s, emulator {measure.emulator_cpu:.1f} s, other "
        f"{measure.other_cpu:.1f} s, stored {measure.files}/{measure.rows}"
        + (f", ERRORS: {measure.error_text}" if measure.error_text else ""),
        file=sys.stderr,
        flush=True,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=ROWS, help="rows of the comparison")
    parser.add_argument("--concurrency", type=int, default=CONCURRENCY, help="rows in flight")
    parser.add_argument("--repeats", type=int, default=1, help="runs of the comparison (0: none)")
    parser.add_argument(
        "--rows-2000",
        action="store_true",
        help=f"then run batch and plain on {LONG_ROWS} rows (several minutes)",
    )
    parser.add_argument(
        "--contenders",
        default="plain,batch,fanout",
        help="comma-separated, in order (default: %(default)s)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        help="write a cProfile of each child's work into this folder (inflates its timings)",
    )
    parser.add_argument(
        "--py-spy",
        nargs=2,
        metavar=("PY_SPY", "FOLDER"),
        help="run each child under this py-spy binary; collapsed stacks go to FOLDER "
        "(inflates its timings)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp folder and logs")
    args = parser.parse_args(argv)
    tables = run(
        rows=args.rows,
        concurrency=args.concurrency,
        repeats=args.repeats,
        long_rows=LONG_ROWS if args.rows_2000 else None,
        contenders=tuple(name.strip() for name in args.contenders.split(",") if name.strip()),
        profile=args.profile,
        py_spy=(args.py_spy[0], Path(args.py_spy[1])) if args.py_spy else None,
        keep=args.keep,
    )
    for table in tables:
        print(table.to_markdown(), flush=True)


if __name__ == "__main__":
    main()
