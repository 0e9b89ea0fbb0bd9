"""Benchmark 6: three ways to wait for a render (poll, events, suspend), through deployment runs.

The same videos on the same gateway double, measured the same way for the three modes:
deployment runs of ``generate-video/on-demand`` on a Prefect server of their own, picked up by
one process worker, with ``wait=poll``, ``wait=events`` or ``wait=suspend`` (the latter two
with ``webhook_base_url`` = the receiver of ``prefect-kandinsky webhooks serve``, over https).
The processes are those of ``waits_stack.py``; the gateway is the emulator in its own
process, its jobs QUEUED for 0.2 s then PROCESSING for T seconds.

The modes run one after the other; inside a mode, one video at a time (the next run is
created once the previous one is Completed and its processes are gone), after one warm-up
video (T = 1 s, not counted) that loads the flow's imports into the page cache and, for
suspend, creates the resume automation. Per video:

* **Latency**: from the job's ``completed_at`` (``GET /_emulator/jobs/{id}``: the moment the
  gateway marked it COMPLETED, stamped when it was due, to the microsecond) to the MP4's
  mtime in the destination (the last write of the download; ``persist_media`` then fsyncs,
  probes and renames it). The ``persist-video`` task run's end time (Prefect API) is kept too.
* **Status reads**: ``GET /_emulator/requests?kind=status&request_id=...``. Reads between
  ``completed_at`` and the receiver's "Emitted kandinsky.video.completed" log line are the
  receiver's confirmation read; the rest are the flow run's. Reads made while no process of
  the run was alive are counted separately (a cross-check: for suspend, that is the receiver).
* **Worker-seconds held**: the seconds a flow-run process of the video was alive, from
  ``waits_sampler.py`` (the worker's descendants every 0.1 s, attributed to their flow run by
  ``PREFECT__FLOW_RUN_ID`` in ``/proc/<pid>/environ``; start from ``/proc/<pid>/stat``). For
  suspend there are two processes per run (before the suspend, after the resume): their
  lifetimes are summed.
* **Wall**: from the flow run's creation to its Completed state (both server timestamps).

Run alone: ``python benchmarks/waits_bench.py [--videos 5] [--processing-seconds 20]
[--modes poll,events,suspend] [--worker-query-seconds 1] [--verbose]`` (``--verbose`` prints
every video's timeline: states, task runs, status reads, media requests, processes);
``run.py --waits`` runs the default set (about 9 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import signal
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from markdown_table import Table
from waits_sampler import CLOCK_TICKS, ProcessSampler, tree_cpu
from waits_stack import QUEUE_SECONDS, Stack, stack, until

MODES = ("poll", "events", "suspend")
VIDEOS = 5
PROCESSING_SECONDS = 20.0
WARMUP_PROCESSING_SECONDS = 1.0
WORKER_QUERY_SECONDS = 1.0
SAMPLE_INTERVAL = 0.1
RUN_TIMEOUT_EXTRA = 240.0
"""A run must be done this long after its job's processing time, or the benchmark fails."""
PROCESS_EXIT_TIMEOUT = 60.0
STALL_SECONDS = 1.0
"""A task run that takes longer than this from Pending to Running counts as stalled."""
TERMINAL_STATES = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
_EMITTED_RE = re.compile(
    r"^(?P<at>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \S+ prefect_kandinsky\.webhooks: "
    r"Emitted kandinsky\.video\.(?P<status>\w+) for (?P<request_id>\S+)",
    re.M,
)


def _epoch(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def _log_epoch(text: str) -> float:
    """A ``logging`` asctime (local time, milliseconds) as epoch seconds."""
    whole, millis = text.split(",")
    return time.mktime(time.strptime(whole, "%Y-%m-%d %H:%M:%S")) + int(millis) / 1000


@dataclass
class Video:
    """What one video's deployment run did."""

    mode: str
    flow_run_id: str
    request_id: str
    state: str
    wall: float
    latency_file: float
    latency_task: float | None
    reads: int
    receiver_reads: int
    reads_without_process: int
    held: float
    processes: int
    cpu: float
    jobs: int
    callback_answered: float | None
    event_emitted: float | None
    run_resumed: float | None
    resumed_process: float | None
    detected: float | None
    start_waits: float
    stalls: int
    tasks: int


def _busy_cpu() -> float:
    with open("/proc/stat") as stat:
        fields = [int(v) for v in stat.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


def _own_cpu(bench: Stack) -> float:
    times = os.times()
    total = times.user + times.system
    for process in bench.processes.started.values():
        if process.poll() is None:
            total += tree_cpu(process.pid)
    return total


class Measurement:
    """Runs videos through the deployment and reads what they did."""

    def __init__(self, bench: Stack, sampler: ProcessSampler, processing_seconds: float) -> None:
        self.bench = bench
        self.sampler = sampler
        self.processing_seconds = processing_seconds
        self.tag = uuid.uuid4().hex[:6]
        self.verbose = False

    def configure(self, processing_seconds: float) -> None:
        answer = self.bench.gateway.put(
            "/_emulator/config", json={"processing_seconds": processing_seconds}
        )
        answer.raise_for_status()

    def run_video(self, mode: str, number: int, destination: Path) -> Video:
        """Create one deployment run, wait for it and its processes, and measure it."""
        bench = self.bench
        prompt = f"Waits benchmark {self.tag}, {mode} video {number}: the waves roll in."
        parameters: dict[str, Any] = {
            "prompt": prompt,
            "image_url": bench.sample_image_url,
            "resolution": "256P",
            "duration": 1,
            "destination": str(destination),
            "wait": mode,
        }
        if mode != "poll":
            parameters["webhook_base_url"] = bench.receiver_url
        created = bench.api.post(
            f"/deployments/{bench.deployment_id}/create_flow_run",
            json={"parameters": parameters},
        )
        created.raise_for_status()
        run_id: str = created.json()["id"]

        def finished() -> dict[str, Any] | None:
            if bench.worker.poll() is not None:
                raise RuntimeError(f"the worker exited:\n{bench.processes.output('worker')}")
            run: dict[str, Any] = bench.api.get(f"/flow_runs/{run_id}").json()
            return run if run["state"]["type"] in TERMINAL_STATES else None

        timeout = self.processing_seconds + RUN_TIMEOUT_EXTRA
        run = until(f"flow run {run_id} ({mode}) ends", finished, timeout, interval=0.25)
        until(
            f"the processes of flow run {run_id} exit",
            lambda: not self.sampler.alive(run_id),
            PROCESS_EXIT_TIMEOUT,
        )
        if run["state"]["type"] != "COMPLETED":
            raise RuntimeError(
                f"flow run {run_id} ({mode}) ended {run['state']['name']}: "
                f"{run['state'].get('message')}\n{bench.processes.output('worker')[-4000:]}"
            )
        return self._measure(mode, run, prompt, destination)

    def _measure(self, mode: str, run: dict[str, Any], prompt: str, destination: Path) -> Video:
        bench = self.bench
        run_id = run["id"]
        jobs = [
            j for j in bench.gateway.get("/_emulator/jobs").json()["jobs"] if j["prompt"] == prompt
        ]
        if not jobs:
            raise RuntimeError(f"no job at the gateway for flow run {run_id}")
        job = jobs[-1]
        request_id = job["request_id"]
        if job["status"] != "COMPLETED" or not job["completed_at"]:
            raise RuntimeError(f"job {request_id} is {job['status']}")
        completed = _epoch(job["completed_at"])
        (mp4,) = destination.glob(f"{request_id}*.mp4")
        written = mp4.stat().st_mtime

        task_runs = bench.api.post(
            "/task_runs/filter", json={"flow_runs": {"id": {"any_": [run_id]}}}
        ).json()
        task_states = {
            t["id"]: self._states("/task_run_states/", task_run_id=t["id"]) for t in task_runs
        }
        persist = [t for t in task_runs if t["name"].startswith("persist-video")]
        persist_end = max(
            (_epoch(t["end_time"]) for t in persist if t.get("end_time")), default=None
        )
        stalls = sum(
            1 for states in task_states.values() if _pending_to_running(states) > STALL_SECONDS
        )
        start_waits = sum(
            _pending_to_running(states)
            for states in task_states.values()
            if states and states[0][0] >= completed
        )
        flow_states = self._states("/flow_run_states/", flow_run_id=run_id)
        resuming = [at for at, _, name in flow_states if name == "Resuming"]

        reads = sorted(
            _epoch(r["at"])
            for r in bench.gateway.get(
                "/_emulator/requests", params={"kind": "status", "request_id": request_id}
            ).json()["requests"]
        )
        emitted = [
            _log_epoch(m["at"])
            for m in _EMITTED_RE.finditer(bench.receiver_log())
            if m["request_id"] == request_id and m["status"] == "completed"
        ]
        receiver: list[float] = []
        if mode != "poll":
            if emitted:
                # The log's clock has milliseconds, truncated; the read precedes the line.
                receiver = [r for r in reads if completed <= r <= emitted[0] + 0.001]
            else:
                receiver = [r for r in reads if r >= completed][:1]
        flow_reads = [r for r in reads if r not in receiver]

        held, processes, cpu, intervals = self.sampler.held(run_id)
        without = sum(1 for r in reads if not any(a <= r <= b for a, b in intervals))
        deliveries = [
            _epoch(d["at"])
            for d in bench.gateway.get("/_emulator/webhooks").json()["deliveries"]
            if d["request_id"] == request_id and d["terminal"]
        ]
        if self.verbose:
            self._trace(run_id, request_id, completed, flow_states, task_runs, task_states, reads)
        starts = [a for a, _ in intervals]
        resumed = starts[-1] if mode == "suspend" and len(starts) > 1 else None
        detected = next((r for r in flow_reads if r >= completed), None)

        def after(moment: float | None) -> float | None:
            return moment - completed if moment is not None else None

        return Video(
            mode=mode,
            flow_run_id=run_id,
            request_id=request_id,
            state=run["state"]["type"],
            wall=_epoch(run["state"]["timestamp"]) - _epoch(run["created"]),
            latency_file=written - completed,
            latency_task=after(persist_end),
            reads=len(reads),
            receiver_reads=len(receiver),
            reads_without_process=without,
            held=held,
            processes=processes,
            cpu=cpu,
            jobs=len(jobs),
            callback_answered=after(deliveries[0] if deliveries else None),
            event_emitted=after(emitted[0] if emitted else None),
            run_resumed=after(resuming[0] if resuming else None),
            resumed_process=after(resumed),
            detected=after(detected),
            start_waits=start_waits,
            stalls=stalls,
            tasks=len(task_runs),
        )

    def _states(self, path: str, **params: str) -> list[tuple[float, str, str]]:
        """A run's states as (timestamp, type, name), oldest first."""
        answer = self.bench.api.get(path, params=params)
        answer.raise_for_status()
        return sorted((_epoch(s["timestamp"]), s["type"], s["name"]) for s in answer.json())

    def _trace(
        self,
        run_id: str,
        request_id: str,
        completed: float,
        flow_states: list[tuple[float, str, str]],
        task_runs: list[dict[str, Any]],
        task_states: dict[str, list[tuple[float, str, str]]],
        reads: list[float],
    ) -> None:
        """Print one video's timeline, in seconds after the job's COMPLETED."""
        bench = self.bench
        lines: list[tuple[float, str]] = [(at, f"flow run {name}") for at, _, name in flow_states]
        for task_run in task_runs:
            lines += [
                (at, f"{task_run['name'][:24]} {name}")
                for at, _, name in task_states[task_run["id"]]
            ]
        lines += [(read, "status read") for read in reads]
        media = bench.gateway.get(
            "/_emulator/requests", params={"kind": "media", "request_id": request_id}
        ).json()["requests"]
        lines += [(_epoch(r["at"]), f"media {r['method']} answered") for r in media]
        for process in self.sampler.processes(run_id):
            lines.append((process.started, f"process {process.pid} starts: {process.command[:70]}"))
            lines.append(
                (
                    process.end(self.sampler.interval),
                    f"process {process.pid} ends ({process.cpu:.1f} CPU-s)",
                )
            )
        for at, what in sorted(lines):
            print(f"    {at - completed:+7.2f} s  {what}", flush=True)


def _pending_to_running(states: list[tuple[float, str, str]]) -> float:
    """Seconds from the last Pending before the first Running; 0 without both."""
    running = next((at for at, kind, _ in states if kind == "RUNNING"), None)
    pending = [at for at, kind, _ in states if kind == "PENDING" and running and at <= running]
    return running - pending[-1] if running is not None and pending else 0.0


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.fmean(present) if present else None


def _s(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _range(values: list[float]) -> str:
    return f"{min(values):.1f}-{max(values):.1f}"


@dataclass
class ModeResult:
    mode: str
    videos: list[Video]
    seconds: float
    own_cpu: float
    busy_cpu: float


def _tables(
    results: list[ModeResult], processing_seconds: float, worker_query_seconds: float, machine: str
) -> list[Table]:
    summary = Table(
        f"6a. Three ways to wait: deployment runs on one process worker, T = "
        f"{processing_seconds:g} s",
        [
            "Mode",
            "Videos",
            "T (s)",
            "Latency mean (s)",
            "Latency max (s)",
            "Status reads per video",
            "of them the receiver's",
            "Worker-seconds held per video",
            "Flow-run processes per video",
            "Flow-run CPU s per video",
            "Wall per video (s)",
        ],
    )
    breakdown = Table(
        "6b. Where the latency goes: mean seconds after the gateway marked the job COMPLETED",
        [
            "Mode",
            "Callback answered",
            "Event emitted (receiver)",
            "Run resumed (automation)",
            "Resumed process started",
            "Flow run's read that saw COMPLETED",
            "Tasks' Pending to Running (sum)",
            "MP4 written (latency)",
            "`persist-video` ended",
            "Range of MP4 written",
        ],
    )
    for result in results:
        videos = result.videos
        n = len(videos)
        summary.add(
            result.mode,
            n,
            f"{processing_seconds:g}",
            _s(_mean([v.latency_file for v in videos]), 2),
            _s(max(v.latency_file for v in videos), 2),
            _s(_mean([v.reads for v in videos])),
            _s(_mean([v.receiver_reads for v in videos])),
            _s(_mean([v.held for v in videos])),
            _s(_mean([v.processes for v in videos])),
            _s(_mean([v.cpu for v in videos])),
            _s(_mean([v.wall for v in videos])),
        )
        breakdown.add(
            result.mode,
            _s(_mean([v.callback_answered for v in videos]), 2),
            _s(_mean([v.event_emitted for v in videos]), 2),
            _s(_mean([v.run_resumed for v in videos]), 2),
            _s(_mean([v.resumed_process for v in videos]), 2),
            _s(_mean([v.detected for v in videos]), 2),
            _s(_mean([v.start_waits for v in videos]), 2),
            _s(_mean([v.latency_file for v in videos]), 2),
            _s(_mean([v.latency_task for v in videos]), 2),
            _range([v.latency_file for v in videos]),
        )
    all_videos = [v for r in results for v in r.videos]
    without = {r.mode: _s(_mean([v.reads_without_process for v in r.videos])) for r in results}
    other = ", ".join(
        f"{r.mode} {max(0.0, r.busy_cpu - r.own_cpu):.0f} CPU-s in {r.seconds:.0f} s"
        for r in results
    )
    summary.notes += [
        f"Machine: {machine}. Everything on 127.0.0.1: the emulator in its own process (jobs "
        f"QUEUED {QUEUE_SECONDS:g} s, then PROCESSING {processing_seconds:g} s; 256P, 1 s "
        "videos), a Prefect server (SQLite), `prefect deploy --name on-demand` of "
        "`deployments/prefect.yaml`, the receiver (`prefect-kandinsky webhooks serve`, https, "
        "trustme certificate trusted by the emulator) and one `prefect worker start --pool "
        f"kandinsky-process` with `PREFECT_WORKER_QUERY_SECONDS` = "
        f"{worker_query_seconds:g} s (Prefect's default is 10 s).",
        "One video at a time, modes one after the other, each after one uncounted warm-up "
        "video. `wait_timeout_seconds` and the poll intervals are the flow's defaults (first "
        "read at once, then 2 s growing x1.5 to 8 s, with jitter).",
        "Latency: the job's `completed_at` (`GET /_emulator/jobs/{id}`) to the MP4's mtime in "
        "the destination. Status reads: the emulator's request log for the job; the receiver's "
        'are those between `completed_at` and its "Emitted kandinsky.video.completed" log '
        "line. Worker-seconds: the lifetimes of the flow-run processes under the worker "
        "(/proc every 0.1 s, by `PREFECT__FLOW_RUN_ID`), summed. Wall: the flow run's "
        "creation to its Completed state.",
        "Status reads made while no flow-run process of the video was alive, per video: "
        + ", ".join(f"{mode} {value}" for mode, value in without.items())
        + ".",
        "Task runs that took over "
        f"{STALL_SECONDS:g} s from Pending to Running (inside the flow-run process, before the "
        "task's code runs), per mode: "
        + ", ".join(f"{r.mode} {sum(v.stalls for v in r.videos)}" for r in results)
        + f" (of {sum(v.tasks for v in all_videos)} task runs in all).",
        f"Every video was one job at the gateway (jobs per video: "
        f"{sorted({v.jobs for v in all_videos})}); every run ended COMPLETED.",
        f"CPU of other processes on the machine during each mode (busy CPU from /proc/stat "
        f"minus this benchmark's process trees): {other}.",
    ]
    return [summary, breakdown]


def per_video_table(results: list[ModeResult]) -> Table:
    """Every video's figures, for the console."""
    table = Table(
        "Per video",
        [
            "Mode",
            "Request id",
            "Latency (s)",
            "Reads",
            "Receiver reads",
            "Reads w/o process",
            "Held (s)",
            "Processes",
            "CPU (s)",
            "Wall (s)",
            "Event (s)",
            "Resumed (s)",
            "New process (s)",
            "Detected (s)",
            "Task start waits (s)",
            "Stalled tasks",
        ],
    )
    for result in results:
        for v in result.videos:
            table.add(
                v.mode,
                v.request_id[-12:],
                _s(v.latency_file, 2),
                v.reads,
                v.receiver_reads,
                v.reads_without_process,
                _s(v.held),
                v.processes,
                _s(v.cpu),
                _s(v.wall),
                _s(v.event_emitted, 2),
                _s(v.run_resumed, 2),
                _s(v.resumed_process, 2),
                _s(v.detected, 2),
                _s(v.start_waits, 2),
                v.stalls,
            )
    return table


def machine() -> str:
    """Cores, memory, system, Python and Prefect of this machine."""
    import prefect

    with open("/proc/meminfo") as meminfo:
        kib = int(meminfo.readline().split()[1])
    return (
        f"{os.cpu_count()} cores, {kib / 1024 / 1024:.0f} GiB RAM, {platform.system()} "
        f"{platform.release()}, Python {platform.python_version()}, Prefect {prefect.__version__}"
    )


def measure(
    *,
    videos: int = VIDEOS,
    processing_seconds: float = PROCESSING_SECONDS,
    modes: tuple[str, ...] = MODES,
    worker_query_seconds: float = WORKER_QUERY_SECONDS,
    progress: bool = True,
    verbose: bool = False,
) -> tuple[list[Table], Table]:
    """Run the modes one after the other; the summary tables and the per-video table."""
    results: list[ModeResult] = []
    with tempfile.TemporaryDirectory(prefix="waits-bench-") as tmp:
        workdir = Path(tmp)
        with (
            stack(
                workdir,
                processing_seconds=processing_seconds,
                worker_query_seconds=worker_query_seconds,
            ) as bench,
            ProcessSampler(bench.worker.pid, interval=SAMPLE_INTERVAL) as sampler,
        ):
            measurement = Measurement(bench, sampler, processing_seconds)
            measurement.verbose = verbose
            try:
                for mode in modes:
                    destination = workdir / "videos" / mode
                    measurement.configure(WARMUP_PROCESSING_SECONDS)
                    measurement.run_video(mode, 0, workdir / "videos" / f"warmup-{mode}")
                    measurement.configure(processing_seconds)
                    began, own, busy = time.monotonic(), _own_cpu(bench), _busy_cpu()
                    done: list[Video] = []
                    for number in range(1, videos + 1):
                        video = measurement.run_video(mode, number, destination)
                        done.append(video)
                        if progress:
                            print(
                                f"  {mode} {number}/{videos}: latency {video.latency_file:.2f} s, "
                                f"{video.reads} reads ({video.receiver_reads} receiver), held "
                                f"{video.held:.1f} s in {video.processes} process(es), wall "
                                f"{video.wall:.1f} s",
                                flush=True,
                            )
                    results.append(
                        ModeResult(
                            mode=mode,
                            videos=done,
                            seconds=time.monotonic() - began,
                            own_cpu=_own_cpu(bench) - own,
                            busy_cpu=_busy_cpu() - busy,
                        )
                    )
            except BaseException:
                print(f"(logs of the failed run were in {workdir / 'logs'})", file=sys.stderr)
                for name in ("worker", "receiver"):
                    print(f"===== {name} (last 60 lines) =====", file=sys.stderr)
                    lines = bench.processes.output(name).splitlines()[-60:]
                    print("\n".join(lines), file=sys.stderr)
                raise
            api_retries = bench.api_transport.retried
            if progress:
                print(
                    f"  (sampler: {sampler.scans} scans, "
                    f"slowest {sampler.slowest_scan * 1000:.0f} ms)",
                    flush=True,
                )
    tables = _tables(results, processing_seconds, worker_query_seconds, machine())
    tables[0].notes.append(
        "This benchmark's own requests to the Prefect API (create the runs, read their states) "
        f"were answered 503 (SQLite database locked) {api_retries} times, and sent again."
    )
    return tables, per_video_table(results)


def run(*, videos: int = VIDEOS, processing_seconds: float = PROCESSING_SECONDS) -> list[Table]:
    """The three modes with ``videos`` videos each; the tables for ``run.py``."""
    tables, _ = measure(videos=videos, processing_seconds=processing_seconds)
    return tables


def _terminate_as_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=VIDEOS, help="videos per mode")
    parser.add_argument(
        "--processing-seconds", type=float, default=PROCESSING_SECONDS, help="T, per job"
    )
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated wait modes")
    parser.add_argument(
        "--worker-query-seconds",
        type=float,
        default=WORKER_QUERY_SECONDS,
        help="PREFECT_WORKER_QUERY_SECONDS of the worker",
    )
    parser.add_argument(
        "--verbose", action="store_true", help="print every flow-run process of every video"
    )
    args = parser.parse_args(argv)
    modes = tuple(m.strip() for m in args.modes.split(",") if m.strip())
    unknown = set(modes) - set(MODES)
    if unknown:
        parser.error(f"unknown mode(s) {', '.join(sorted(unknown))}; known: {', '.join(MODES)}")
    signal.signal(signal.SIGTERM, _terminate_as_interrupt)
    began = time.perf_counter()
    tables, videos = measure(
        videos=args.videos,
        processing_seconds=args.processing_seconds,
        modes=modes,
        worker_query_seconds=args.worker_query_seconds,
        verbose=args.verbose,
    )
    print()
    for table in [*tables, videos]:
        print(table.to_markdown())
    print(f"(waits: {time.perf_counter() - began:.0f} s)")


if __name__ == "__main__":
    main()
