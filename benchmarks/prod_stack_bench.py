"""Benchmark 7: a batch on a production-like Prefect stack, with two workers killed mid-chunk.

One run starts, all on 127.0.0.1 and each in its own session, stopped at the end:

* PostgreSQL (Debian's package; ``apt-get install -y postgresql`` if missing): a throwaway
  cluster (``initdb`` + ``pg_ctl``, run as the ``postgres`` user when this runs as root) in
  a temporary folder, on a free port;
* a Prefect server on it (``PREFECT_API_DATABASE_CONNECTION_URL=postgresql+asyncpg://...``);
* a moto S3 server holding the batch's ledger (an ``S3Bucket`` block: conditional puts for
  the leases);
* the gateway emulator with short renders (256P, 1 s);
* one global concurrency limit with slot decay, the batch's ``rate_limit``;
* the ``chunks`` deployment of ``deployments/prefect.yaml`` and two process workers.

Then ``generate_videos`` runs the rows in chunks over the deployment; at 25% and at 60% of
the submits one worker is SIGKILLed with its flow-run processes (mid-chunk: its chunks hold
submitted rows) and started again. Afterwards it checks that every row is stored once
(the emulator's submit log and jobs, the ledger's records on S3, the files), the peak submit
rate against the limit, and counts API errors in the server's log and 5xx answers in the
clients' logs. Last, the same rows run as one batch in one process (no chunks, the same
limit and rows in flight) for wall and CPU.

Run: ``python benchmarks/prod_stack_bench.py [--rows 2000] [--chunk-size 100]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import boto3
import httpx
from batch_bench import busy_cpu, tree_cpu
from markdown_table import Table

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PYTHON = sys.executable
BIN = Path(sys.executable).parent
PREFECT = str(BIN / "prefect")
POOL = "kandinsky-process"
DEPLOYMENT = "generate-videos-chunk/chunks"
LEDGER_BLOCK = "bench-ledger"
AWS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_CONFIG_FILE": "/nonexistent/aws-config",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials",
    "AWS_EC2_METADATA_DISABLED": "true",
}
KILL_AT = (0.25, 0.60)
"""Shares of the rows submitted at which a worker is SIGKILLed (alternating workers)."""
API_ERROR = re.compile(r"\| ERROR |Traceback|Internal Server Error|\b50[0-9] ")
CLIENT_ERROR = re.compile(
    r"HTTPStatusError|Server error '5|ReadTimeout|ConnectError|RemoteProtocolError|"
    r"Crash detected|Traceback"
)

SETUP = """
import json, os, sys
from prefect_aws import AwsCredentials, S3Bucket
from prefect_kandinsky import KandinskyCredentials

moto, bucket, api_key, base_url = sys.argv[1:5]
KandinskyCredentials(api_key=api_key, base_url=base_url).save("kandinsky", overwrite=True)
S3Bucket(
    bucket_name=bucket,
    credentials=AwsCredentials(
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
        aws_client_parameters={"endpoint_url": moto},
    ),
).save(os.environ["LEDGER_BLOCK"], overwrite=True)
"""

BATCH = """
import asyncio, json, sys, time
from prefect_kandinsky.batch import generate_videos

options = json.loads(open(sys.argv[1]).read())
started = time.monotonic()
result = asyncio.run(generate_videos(options.pop("rows"), **options))
print("WALL", time.monotonic() - started)
print("COUNTS", json.dumps(result.counts), flush=True)
"""


# -- processes ------------------------------------------------------------------------------------


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, pending = [], [pid]
    while pending:
        for child in children.get(pending.pop(), []):
            found.append(child)
            pending.append(child)
    return found


class Stack:
    """The processes of one run, their logs, and their certain end."""

    def __init__(self, workdir: Path, env: dict[str, str]) -> None:
        self.workdir = workdir
        self.env = env
        self.started: list[subprocess.Popen[bytes]] = []

    def log(self, name: str) -> Path:
        return self.workdir / f"{name}.log"

    def file(self, name: str, options: dict[str, Any]) -> str:
        """Write a batch's options (2,000 rows are too long for one argument)."""
        path = self.workdir / f"{name}.json"
        path.write_text(json.dumps(options))
        return str(path)

    def start(self, name: str, args: list[str], **env: str) -> subprocess.Popen[bytes]:
        with self.log(name).open("ab") as out:
            process = subprocess.Popen(
                args,
                cwd=REPO,
                env={**self.env, **env},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.started.append(process)
        return process

    def run(self, name: str, args: list[str], timeout: float = 300, **env: str) -> str:
        process = self.start(name, args, **env)
        code = process.wait(timeout)
        output = self.log(name).read_text(errors="replace")
        if code != 0:
            raise RuntimeError(f"`{name}` exited {code}:\n{output[-3000:]}")
        return output

    def stop_all(self) -> None:
        for process in reversed(self.started):
            if process.poll() is not None:
                continue
            family = _descendants(process.pid)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)
            for pid in family:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def _wait_for(url: str, process: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url}: its process ended ({process.returncode})")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f} s")


# -- the stack ------------------------------------------------------------------------------------


def _pg_bin() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    if not found:
        subprocess.run(["apt-get", "install", "-y", "postgresql"], check=True)
        found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    return found[-1].parent


def _as_postgres(args: list[str]) -> list[str]:
    """Run ``args`` as the ``postgres`` user when root (PostgreSQL refuses to run as root)."""
    return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else args


@contextlib.contextmanager
def postgres(workdir: Path) -> Iterator[str]:
    """A throwaway PostgreSQL cluster on 127.0.0.1; its asyncpg connection URL."""
    pg = _pg_bin()
    data, sockets = workdir / "pg-data", workdir / "pg-sockets"
    for folder in (data, sockets):
        folder.mkdir()
        if os.geteuid() == 0:
            shutil.chown(folder, "postgres", "postgres")
    port = _free_port()
    log = workdir / "postgres.log"
    if os.geteuid() == 0:
        log.touch()
        shutil.chown(log, "postgres", "postgres")
    subprocess.run(
        _as_postgres([str(pg / "initdb"), "-D", str(data), "-U", "prefect", "--auth=trust"]),
        check=True,
        stdout=subprocess.DEVNULL,
    )
    options = f"-h 127.0.0.1 -p {port} -k {sockets} -c max_connections=200"
    subprocess.run(
        _as_postgres(
            [str(pg / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(log), "-w", "start"]
        ),
        check=True,
        stdout=subprocess.DEVNULL,
    )
    try:
        yield f"postgresql+asyncpg://prefect@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            _as_postgres([str(pg / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]),
            check=False,
            stdout=subprocess.DEVNULL,
        )


@dataclass
class Services:
    """URLs and processes of the running stack."""

    api_url: str
    moto: str
    bucket: str
    gateway: str
    cdn: str
    server: subprocess.Popen[bytes]
    emulator: subprocess.Popen[bytes]
    moto_process: subprocess.Popen[bytes]
    limit: str
    env: dict[str, str] = field(default_factory=dict)

    def submits(self) -> list[dict[str, Any]]:
        answer = httpx.get(
            f"{self.gateway}/_emulator/requests", params={"kind": "submit"}, timeout=60
        )
        records: list[dict[str, Any]] = answer.json()["requests"]
        return records

    def jobs(self) -> list[dict[str, Any]]:
        jobs: list[dict[str, Any]] = httpx.get(f"{self.gateway}/_emulator/jobs", timeout=60).json()[
            "jobs"
        ]
        return jobs

    def reset(self) -> None:
        httpx.post(f"{self.gateway}/_emulator/reset", timeout=60).raise_for_status()


def start_services(stack: Stack, database_url: str, args: argparse.Namespace) -> Services:
    """Prefect server on PostgreSQL, moto, the emulator, blocks, limit, pool, deployment."""
    moto_port, api_port = _free_port(), _free_port()
    moto = stack.start("moto", [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(moto_port)])
    emulator = stack.start(
        "emulator",
        [
            *(PYTHON, "-m", "prefect_kandinsky.emulator", "--port", "0", "--cdn-port", "0"),
            *("--queue-seconds", "0.1", "--processing-seconds", str(args.render_seconds)),
            *("--balance", "1000000"),
        ],
    )
    server = stack.start(
        "server",
        [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(api_port)],
        PREFECT_API_DATABASE_CONNECTION_URL=database_url,
    )
    api_url = f"http://127.0.0.1:{api_port}/api"
    moto_url = f"http://127.0.0.1:{moto_port}"
    deadline = time.monotonic() + 60
    urls: dict[str, str] = {}
    while len(urls) < 3:
        if time.monotonic() > deadline:
            raise RuntimeError("the emulator did not start")
        text = stack.log("emulator").read_text(errors="replace")
        urls = dict(re.findall(r"^\s+(gateway|cdn|api key):\s+(\S+)$", text, re.M))
        time.sleep(0.1)
    _wait_for(f"{urls['gateway']}/_emulator/health", emulator, 60)
    _wait_for(f"{moto_url}/moto-api/", moto, 60)
    _wait_for(f"{api_url}/health", server, 180)
    stack.env["PREFECT_API_URL"] = api_url
    bucket = f"ledger-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=moto_url, region_name="us-east-1").create_bucket(Bucket=bucket)
    api_key = urls["api key"]
    stack.run("setup", [PYTHON, "-c", SETUP, moto_url, bucket, api_key, urls["gateway"]])
    limit = f"kandinsky-submits-{uuid.uuid4().hex[:6]}"
    httpx.post(
        f"{api_url}/v2/concurrency_limits/",
        json={"name": limit, "limit": args.limit, "slot_decay_per_second": args.rate},
        timeout=30,
    ).raise_for_status()
    stack.run("work-pool", [PREFECT, "work-pool", "create", POOL, "--type", "process"])
    stack.run(
        "deploy",
        [PREFECT, "deploy", "--prefect-file", "deployments/prefect.yaml", "--name", "chunks"],
    )
    return Services(
        api_url, moto_url, bucket, urls["gateway"], urls["cdn"], server, emulator, moto, limit
    )


# -- the runs -------------------------------------------------------------------------------------


@dataclass
class Workers:
    """The two process workers, started again after each kill; their CPU, kills included."""

    stack: Stack
    limit: int
    live: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    cpu_of_dead: float = 0.0
    kills: list[str] = field(default_factory=list)

    def start(self, name: str) -> None:
        self.live[name] = self.stack.start(
            name, [PREFECT, "worker", "start", "--pool", POOL, "--limit", str(self.limit)]
        )

    def kill(self, name: str) -> None:
        """SIGKILL worker ``name`` and its flow-run processes, then start it again."""
        worker = self.live[name]
        family = [worker.pid, *_descendants(worker.pid)]
        self.cpu_of_dead += tree_cpu(worker.pid)
        for pid in family:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        worker.wait(10)
        self.kills.append(f"{name}: {len(family) - 1} flow-run processes")
        self.start(name)

    def cpu(self) -> float:
        return self.cpu_of_dead + sum(tree_cpu(w.pid) for w in self.live.values())

    def busy(self, name: str) -> bool:
        """Whether worker ``name`` runs a chunk now (a flow-run process under it)."""
        return bool(_descendants(self.live[name].pid))


def rows_of(count: int, sample: str, tag: str) -> list[dict[str, Any]]:
    return [
        {
            "id": f"row-{n:05d}",
            "prompt": f"{tag} scene {n}: the waves roll in.",
            "image": sample,
            "resolution": "256P",
            "duration": "1s",
        }
        for n in range(1, count + 1)
    ]


def batch_options(
    services: Services, rows: list[dict[str, Any]], out: Path, args: argparse.Namespace, **more: Any
) -> dict[str, Any]:
    return {
        "rows": rows,
        "batch_id": f"bench-{uuid.uuid4().hex[:8]}",
        "credentials": "kandinsky",
        "destination": str(out),
        "ledger": f"s3-bucket/{LEDGER_BLOCK}",
        "rate_limit": services.limit,
        "check_image": False,
        "poll_interval_seconds": 0.5,
        "max_poll_interval_seconds": 2.0,
        "allow_failures": True,  # print the counts of an incomplete batch too
        **more,
    }


@dataclass
class RunResult:
    name: str
    wall: float
    client_cpu: float
    server_cpu: float
    machine_cpu: float
    counts: str
    output: str


def run_chunked(stack: Stack, services: Services, args: argparse.Namespace) -> RunResult:
    """The batch over the deployment on two workers, two of them killed mid-chunk."""
    workers = Workers(stack, args.worker_limit)
    for name in ("worker-a", "worker-b"):
        workers.start(name)
    sample = f"{services.cdn}/samples/sample.png"
    options = batch_options(
        services,
        rows_of(args.rows, sample, "chunked"),
        stack.workdir / "videos-chunked",
        args,
        max_concurrency=args.max_concurrency,
        chunk_size=args.chunk_size,
        chunk_deployment=DEPLOYMENT,
        chunk_lease_seconds=args.chunk_lease_seconds,
    )
    before, server_before, started = busy_cpu(), _server_cpu(services), time.monotonic()
    batch = stack.start("batch-chunked", [PYTHON, "-c", BATCH, stack.file("chunked", options)])
    pending = list(KILL_AT)
    victims = ["worker-a", "worker-b"]
    while True:
        pid, _, usage = os.wait4(batch.pid, os.WNOHANG)
        if pid:
            break
        time.sleep(0.5)
        if pending and len(services.submits()) >= pending[0] * args.rows:
            name = victims[0]
            if workers.busy(name):
                workers.kill(name)
                victims.reverse()
                pending.pop(0)
    wall = time.monotonic() - started
    parent_cpu = usage.ru_utime + usage.ru_stime
    client = parent_cpu + workers.cpu()
    result = RunResult(
        "chunked: 2 process workers, 2 SIGKILLs",
        wall,
        client,
        _server_cpu(services) - server_before,
        busy_cpu() - before,
        _counts(stack.log("batch-chunked")),
        "; ".join(workers.kills) + (f"; {len(pending)} kills not done" if pending else ""),
    )
    return result


def run_one_process(stack: Stack, services: Services, args: argparse.Namespace) -> RunResult:
    """The same rows as one batch in one process: same limit, same rows in flight."""
    services.reset()
    sample = f"{services.cdn}/samples/sample.png"
    in_flight = args.max_concurrency * args.worker_limit * 2
    options = batch_options(
        services,
        rows_of(args.rows, sample, "one-process"),
        stack.workdir / "videos-one",
        args,
        max_concurrency=in_flight,
    )
    before, server_before, started = busy_cpu(), _server_cpu(services), time.monotonic()
    batch = stack.start("batch-one", [PYTHON, "-c", BATCH, stack.file("one", options)])
    _, _, usage = os.wait4(batch.pid, 0)
    wall = time.monotonic() - started
    return RunResult(
        f"one process (max_concurrency={in_flight})",
        wall,
        usage.ru_utime + usage.ru_stime,
        _server_cpu(services) - server_before,
        busy_cpu() - before,
        _counts(stack.log("batch-one")),
        "",
    )


def _server_cpu(services: Services) -> float:
    """CPU of the Prefect server and PostgreSQL (all postgres processes) so far."""
    total = tree_cpu(services.server.pid)
    for stat in Path("/proc").glob("[0-9]*/comm"):
        with contextlib.suppress(OSError):
            if stat.read_text().strip() == "postgres":
                total += tree_cpu(int(stat.parent.name))
    return total


def _counts(log: Path) -> str:
    found = re.findall(r"^COUNTS (.*)$", log.read_text(errors="replace"), re.M)
    return found[-1] if found else "none (the batch failed: see its log)"


# -- checks ---------------------------------------------------------------------------------------


def _epoch(text: str) -> float:
    moment = datetime.fromisoformat(text)
    return (moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).timestamp()


def peak_rate(times: list[float], window: float) -> int:
    """The most submits in any ``window`` seconds."""
    times = sorted(times)
    best, start = 0, 0
    for end, moment in enumerate(times):
        while moment - times[start] > window:
            start += 1
        best = max(best, end - start + 1)
    return best


def ledger_records(services: Services) -> list[dict[str, Any]]:
    client = boto3.client("s3", endpoint_url=services.moto, region_name="us-east-1")
    records = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=services.bucket):
        for item in page.get("Contents", []):
            if item["Key"].endswith(".json") and "lease" not in item["Key"]:
                body = client.get_object(Bucket=services.bucket, Key=item["Key"])["Body"].read()
                data = json.loads(body)
                if "row_id" in data:
                    records.append(data)
    return records


def check_chunked(stack: Stack, services: Services, args: argparse.Namespace) -> list[str]:
    """What the chunked run left: submits, jobs, ledger, files, errors; one line each."""
    submits = [r for r in services.submits() if str(r.get("status_code", "")).startswith("2")]
    prompts = [job["prompt"] for job in services.jobs()]
    records = ledger_records(services)
    stored = [r for r in records if r["state"] == "stored"]
    files = list((stack.workdir / "videos-chunked").rglob("*.mp4"))
    times = [_epoch(r["at"]) for r in submits]
    server_errors = len(API_ERROR.findall(stack.log("server").read_text(errors="replace")))
    client_errors = sum(
        len(CLIENT_ERROR.findall(stack.log(name).read_text(errors="replace")))
        for name in ("batch-chunked", "worker-a", "worker-b")
    )
    lost = len(re.findall(r"lost its process", stack.log("batch-chunked").read_text()))
    bound_1s = args.limit + args.rate * 1
    bound_10s = args.limit + args.rate * 10
    return [
        f"rows: {args.rows}; submits accepted by the gateway: {len(submits)}; "
        f"jobs: {len(prompts)}, distinct prompts: {len(set(prompts))}",
        f"ledger records on S3: {len(records)}, by state: "
        f"{dict(Counter(r['state'] for r in records))}, distinct request ids of stored rows: "
        f"{len({r['request_id'] for r in stored})}; MP4 files: {len(files)}",
        f"chunks re-run after a kill: {lost}",
        f"peak submits in 1 s: {peak_rate(times, 1.0)} (limit allows {bound_1s:g}); in 10 s: "
        f"{peak_rate(times, 10.0)} (limit allows {bound_10s:g}); mean over the run: "
        f"{len(times) / max(1e-9, max(times) - min(times)) if len(times) > 1 else 0:.1f}/s "
        f"(slot decay {args.rate:g}/s)",
        f"API errors in the server's log: {server_errors}; errors in the clients' logs "
        f"(5xx, timeouts, tracebacks): {client_errors}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--chunk-size", type=int, default=100)
    parser.add_argument("--max-concurrency", type=int, default=25, help="per chunk")
    parser.add_argument("--worker-limit", type=int, default=2, help="chunks per worker at once")
    parser.add_argument("--limit", type=int, default=10, help="the rate limit's slots")
    parser.add_argument("--rate", type=float, default=10.0, help="its slot decay per second")
    parser.add_argument("--render-seconds", type=float, default=1.0)
    parser.add_argument("--chunk-lease-seconds", type=float, default=30.0)
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args()
    os.environ.update(AWS)  # fake keys for moto; no AWS config is read
    workdir = Path(tempfile.mkdtemp(prefix="prod-stack-"))
    workdir.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "KANDINSKY_"))}
    env.update(AWS)
    env.update(
        {
            "PREFECT_HOME": str(workdir / "prefect-home"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_SERVER_UI_ENABLED": "false",
            "PREFECT_CLI_PROMPT": "false",
            "PREFECT_WORKER_QUERY_SECONDS": "2",
            "PREFECT_WORKER_PREFETCH_SECONDS": "2",
            "PYTHONPATH": str(REPO),
            "PWD": str(REPO),  # the deployment's pull step enters $PWD
            "LEDGER_BLOCK": LEDGER_BLOCK,
        }
    )
    stack = Stack(workdir, env)
    started = time.monotonic()
    try:
        with postgres(workdir) as database_url:
            try:
                services = start_services(stack, database_url, args)
                chunked = run_chunked(stack, services, args)
                checks = check_chunked(stack, services, args)
                single = run_one_process(stack, services, args)
            finally:
                stack.stop_all()
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    table = Table(
        "7. A batch on a production stack: PostgreSQL, 2 process workers, S3 ledger",
        [
            "Run",
            "Rows",
            "Wall (s)",
            "Client CPU (s)",
            "Server+PostgreSQL CPU (s)",
            "Machine busy CPU (s)",
            "Rows by state",
        ],
    )
    for run in (chunked, single):
        table.add(
            run.name,
            args.rows,
            f"{run.wall:.1f}",
            f"{run.client_cpu:.1f}",
            f"{run.server_cpu:.1f}",
            f"{run.machine_cpu:.1f}",
            run.counts,
        )
    table.notes = [f"Kills: {chunked.output}", *checks]
    print(table.to_markdown())
    print(f"\n(whole benchmark {time.monotonic() - started:.0f} s; logs in {workdir})")


if __name__ == "__main__":
    main()
