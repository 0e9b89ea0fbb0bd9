"""One contender of the batch benchmark, in a fresh process; prints its figures as JSON.

Usage (``batch_bench.py`` runs it; by hand only to profile one contender)::

    python benchmarks/batch_child.py {plain,fanout,batch} --rows 200 --concurrency 200 \\
        --gateway http://127.0.0.1:PORT --image http://127.0.0.1:CDN/samples/sample.png \\
        --out /tmp/videos [--ledger /tmp/ledger] [--batch-id ID] [--profile out.prof]

Contenders:

* ``plain``: ``batch_plain.run`` (asyncio + httpx; Prefect is never imported).
* ``fanout``: one async ``@flow`` that gathers ``submit_video -> await_video ->
  persist_video`` per row, as the README's "Compose it into your own flows" shows (the
  baseline of today). ``check_image=False`` on submit, like the other contenders.
* ``batch``: ``generate_videos(rows, ...)`` with a ledger folder and ``check_image=False``.

The last line of stdout is ``BATCH_CHILD_RESULT {json}``: wall and CPU time of the work
(imports excluded; CPU of every thread, from ``time.process_time``), of the imports, the
outcome of each row, the error if any, the Prefect API requests this process sent (counted by
wrapping ``PrefectHttpxAsyncClient.send`` and ``PrefectHttpxSyncClient.send``) by route, the
peak RSS (``VmHWM``), and the peak of open file descriptors and threads (sampled every 0.2 s).
"""

from __future__ import annotations

import time

STARTED_WALL = time.perf_counter()
STARTED_CPU = time.process_time()

import argparse  # noqa: E402
import asyncio  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
from collections import Counter  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

MARKER = "BATCH_CHILD_RESULT "
API_KEY = "emulator-key"
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def make_rows(n: int, image_url: str) -> list[dict[str, Any]]:
    """N distinct rows (the prompt names the row), all on one image, 256P, 1 s."""
    return [
        {
            "id": f"row-{i:05d}",
            "prompt": f"Slow push-in on product {i:05d}, soft studio light.",
            "image_url": image_url,
            "resolution": "256P",
            "duration": "1s",
        }
        for i in range(n)
    ]


class Sampler:
    """Samples open file descriptors and threads of this process every ``interval`` s."""

    def __init__(self, interval: float = 0.2) -> None:
        self.interval = interval
        self.max_fds = 0
        self.max_threads = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bench-sampler", daemon=True)

    def _loop(self) -> None:
        while True:
            self.sample()
            if self._stop.wait(self.interval):
                return

    def sample(self) -> None:
        with contextlib.suppress(OSError):
            self.max_fds = max(self.max_fds, len(os.listdir("/proc/self/fd")))
        self.max_threads = max(self.max_threads, threading.active_count())

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


def _vm_hwm_kib() -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def thread_cpu() -> dict[str, float]:
    """CPU seconds of this process by thread name (numbered names grouped), from
    ``/proc/self/task``; "exited threads" holds what threads that ended used."""
    names = {thread.native_id: thread.name for thread in threading.enumerate()}
    ticks = os.sysconf("SC_CLK_TCK")
    found: dict[str, float] = {}
    total = time.process_time()
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as handle:
                data = handle.read()
        except OSError:
            continue
        fields = data[data.rindex(")") + 2 :].split()
        cpu = (int(fields[11]) + int(fields[12])) / ticks
        name = re.sub(r"\d+", "N", names.get(int(tid), "native thread"))
        found[name] = found.get(name, 0.0) + cpu
    found["exited threads"] = max(0.0, total - sum(found.values()))
    return found


def count_prefect_requests() -> Counter[str]:
    """Count every request Prefect's API clients send from now on, by method and route."""
    from prefect.client.base import PrefectHttpxAsyncClient, PrefectHttpxSyncClient

    calls: Counter[str] = Counter()
    lock = threading.Lock()

    def route(request: Any) -> str:
        path = _UUID.sub("{id}", request.url.path)
        return f"{request.method} {path}"

    async_send = PrefectHttpxAsyncClient.send
    sync_send = PrefectHttpxSyncClient.send

    async def counted_async(self: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
        with lock:
            calls[route(request)] += 1
        return await async_send(self, request, *args, **kwargs)

    def counted_sync(self: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
        with lock:
            calls[route(request)] += 1
        return sync_send(self, request, *args, **kwargs)

    PrefectHttpxAsyncClient.send = counted_async  # type: ignore[method-assign]
    PrefectHttpxSyncClient.send = counted_sync  # type: ignore[method-assign]
    return calls


def drain_prefect_services(timeout: float = 120.0) -> None:
    """Send the logs and events Prefect's background workers still hold, and stop them."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=timeout)
    EventsWorker.drain_all(timeout=timeout)


# -- contenders ---------------------------------------------------------------------------------


def prepare_plain(args: argparse.Namespace, rows: list[dict[str, Any]]) -> Any:
    import batch_plain

    async def work() -> dict[str, Any]:
        counts = await batch_plain.run(
            rows,
            gateway=args.gateway,
            api_key=API_KEY,
            out_dir=Path(args.out),
            concurrency=args.concurrency,
        )
        return {"outcomes": counts}

    return work


def prepare_fanout(args: argparse.Namespace, rows: list[dict[str, Any]]) -> Any:
    from prefect import flow

    from prefect_kandinsky import KandinskyCredentials, await_video, persist_video, submit_video

    @flow(name="fanout-baseline")
    async def fanout(rows: list[dict[str, Any]], gateway: str, destination: str) -> dict[str, int]:
        credentials = KandinskyCredentials(api_key=API_KEY, base_url=gateway)

        async def one(row: dict[str, Any]) -> Any:
            job = await submit_video(
                prompt=row["prompt"],
                image_url=row["image_url"],
                resolution=row["resolution"],
                duration=row["duration"],
                credentials=credentials,
                check_image=False,
            )
            video = await await_video(job, credentials)
            return await persist_video(video, credentials, destination)

        outcomes = await asyncio.gather(*(one(row) for row in rows), return_exceptions=True)
        counts: dict[str, int] = {}
        for outcome in outcomes:
            label = (
                "stored"
                if not isinstance(outcome, BaseException)
                else f"{type(outcome).__name__}: {outcome}"[:200]
            )
            counts[label] = counts.get(label, 0) + 1
        return counts

    async def work() -> dict[str, Any]:
        counts = await fanout(rows, args.gateway, args.out)
        return {"outcomes": counts}

    return work


def prepare_batch(args: argparse.Namespace, rows: list[dict[str, Any]]) -> Any:
    from prefect_kandinsky import KandinskyCredentials
    from prefect_kandinsky.batch.flows import generate_videos
    from prefect_kandinsky.gateway.exceptions import KandinskyBatchIncompleteError

    batch_rows = [
        {
            "id": row["id"],
            "prompt": row["prompt"],
            "image": row["image_url"],
            "resolution": row["resolution"],
            "duration": row["duration"],
        }
        for row in rows
    ]

    async def work() -> dict[str, Any]:
        try:
            result = await generate_videos(
                batch_rows,
                credentials=KandinskyCredentials(api_key=API_KEY, base_url=args.gateway),
                destination=args.out,
                ledger=args.ledger,
                batch_id=args.batch_id,
                max_concurrency=args.concurrency,
                check_image=False,
            )
        except KandinskyBatchIncompleteError as exc:
            result = exc.result
        errors = Counter((record.error or "")[:200] for record in result.rows if not record.done)
        return {"outcomes": result.counts, "row_errors": dict(errors.most_common(5))}

    return work


async def _with_thread_cpu(work: Any, snapshots: list[dict[str, float]]) -> dict[str, Any]:
    result: dict[str, Any] = await work()
    snapshots.append(thread_cpu())
    return result


CONTENDERS = {"plain": prepare_plain, "fanout": prepare_fanout, "batch": prepare_batch}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("contender", choices=sorted(CONTENDERS))
    parser.add_argument("--rows", type=int, required=True)
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--gateway", required=True)
    parser.add_argument("--image", required=True, help="the image URL of every row")
    parser.add_argument("--out", required=True, help="the folder the videos go to")
    parser.add_argument("--ledger", help="the batch's ledger folder (batch only)")
    parser.add_argument("--batch-id", default="batch-bench", help="batch only")
    parser.add_argument(
        "--profile", help="write a cProfile of the work here (CPU time of the main thread)"
    )
    args = parser.parse_args(argv)

    rows = make_rows(args.rows, args.image)
    calls: Counter[str] | None = None
    work = CONTENDERS[args.contender](args, rows)
    if args.contender != "plain":
        calls = count_prefect_requests()
    imports_wall = time.perf_counter() - STARTED_WALL
    imports_cpu = time.process_time() - STARTED_CPU

    profiler = None
    if args.profile:
        import cProfile

        profiler = cProfile.Profile(time.thread_time)  # CPU of the event loop thread
    report: dict[str, Any] = {"contender": args.contender, "rows": args.rows, "error": None}
    with Sampler() as sampler:
        before = thread_cpu()
        snapshots: list[dict[str, float]] = []
        report["work_started_epoch"] = time.time()
        wall = time.perf_counter()
        cpu = time.process_time()
        try:
            if profiler is not None:
                profiler.enable()
            report.update(asyncio.run(_with_thread_cpu(work, snapshots)))
        except BaseException as exc:  # the figures are still worth printing
            report["error"] = f"{type(exc).__name__}: {exc}"[:1000]
        finally:
            if profiler is not None:
                profiler.disable()
        if calls is not None:
            # Deliver what Prefect still holds (logs, events) now rather than at exit, so that
            # it is counted and timed with the work.
            drained = time.perf_counter()
            drain_prefect_services()
            report["drain_wall"] = time.perf_counter() - drained
        report["work_wall"] = time.perf_counter() - wall
        report["work_cpu"] = time.process_time() - cpu
        # Threads as the work returned (anyio's workers end with the event loop), then what
        # the drain and the loop's shutdown took.
        inner = snapshots[0] if snapshots else thread_cpu()
        spent = {name: cpu - before.get(name, 0.0) for name, cpu in inner.items()}
        spent["after the work: drain, shutdown"] = time.process_time() - sum(inner.values())
        report["thread_cpu"] = {
            name: round(cpu, 3) for name, cpu in sorted(spent.items(), key=lambda kv: -kv[1])
        }
    if profiler is not None:
        profiler.dump_stats(args.profile)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    report.update(
        imports_wall=imports_wall,
        imports_cpu=imports_cpu,
        api_calls=sum(calls.values()) if calls is not None else 0,
        api_routes=dict(calls.most_common()) if calls is not None else {},
        vm_hwm_kib=_vm_hwm_kib(),
        max_fds=sampler.max_fds,
        max_threads=sampler.max_threads,
        fd_limit=resource.getrlimit(resource.RLIMIT_NOFILE)[0],
        self_cpu=usage.ru_utime + usage.ru_stime,
    )
    print(MARKER + json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
