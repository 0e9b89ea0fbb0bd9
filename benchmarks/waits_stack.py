"""The processes of the waits benchmark, all on 127.0.0.1, and their certain end.

``stack()`` starts, each in a session of its own and logging to a file of the work folder:

1. the gateway emulator, ``python -m prefect_kandinsky.emulator --port 0 --cdn-port 0
   --queue-seconds 0.2 --processing-seconds T --webhook-ca-file ca.pem`` (ports, key and
   sample image read from its banner; it trusts the test CA for its https callbacks);
2. a Prefect server, ``prefect server start`` with its own ``PREFECT_HOME`` (SQLite in it),
   UI and analytics off;
3. the README walkthrough: the ``kandinsky`` credentials block (with a webhook secret), the
   ``kandinsky-process`` pool, and ``prefect deploy --prefect-file deployments/prefect.yaml
   --name on-demand`` (only that deployment: the sweep's 5-minute schedule would add flow
   runs and status reads of its own);
4. the webhook receiver, ``prefect-kandinsky webhooks serve --credentials kandinsky
   --certfile receiver.pem`` over https with a trustme certificate for 127.0.0.1;
5. one process worker, ``prefect worker start --pool kandinsky-process``.

Leaving the ``with`` block, also on an error or Ctrl-C, stops them in reverse order: SIGTERM
to the process group, SIGKILL after a grace period, and SIGKILL to every descendant seen
before (flow-run processes live in sessions of their own, so no group signal reaches them).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from waits_sampler import descendants

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
BIN = Path(sys.executable).parent
PREFECT = str(BIN / "prefect")
PREFECT_KANDINSKY = str(BIN / "prefect-kandinsky")
WORK_POOL = "kandinsky-process"
CREDENTIALS_BLOCK = "kandinsky"
DEPLOYMENT = "generate-video/on-demand"
WEBHOOK_SECRET = "waits-bench-webhook-secret"
QUEUE_SECONDS = 0.2
START_TIMEOUT = 120.0
COMMAND_TIMEOUT = 180.0
STOP_GRACE = 15.0

SAVE_BLOCK = """\
import os
from prefect_kandinsky import KandinskyCredentials

KandinskyCredentials(
    api_key=os.environ["KANDINSKY_API_KEY"],
    base_url=os.environ["KANDINSKY_BASE_URL"],
    webhook_secret=os.environ["KANDINSKY_WEBHOOK_SECRET"],
).save("kandinsky", overwrite=True)
"""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Processes:
    """The subprocesses started so far, their logs, and their stop."""

    def __init__(self, logs: Path, env: dict[str, str]) -> None:
        self.logs = logs
        self.env = env
        self.started: dict[str, subprocess.Popen[bytes]] = {}
        logs.mkdir(parents=True, exist_ok=True)

    def start(self, name: str, args: list[str], **env: str | None) -> subprocess.Popen[bytes]:
        """Start ``args`` in the repository, in a new session; ``env`` adds or removes (None)."""
        merged = {**self.env, **env}
        with (self.logs / f"{name}.log").open("wb") as log:
            process = subprocess.Popen(
                args,
                cwd=REPO,
                env={k: v for k, v in merged.items() if v is not None},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.started[name] = process
        return process

    def output(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")

    def wait_ok(self, *names: str, timeout: float = COMMAND_TIMEOUT) -> None:
        for name in names:
            code = self.started[name].wait(timeout=timeout)
            if code != 0:
                raise RuntimeError(f"`{name}` exited {code}:\n{self.output(name)[-3000:]}")

    def stop(self, name: str) -> None:
        process = self.started[name]
        if process.poll() is not None:
            return
        family = descendants(process.pid)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=STOP_GRACE)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        for pid in family:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def stop_all(self) -> None:
        for name in reversed(list(self.started)):
            try:
                self.stop(name)
            except Exception as exc:  # keep stopping the others
                print(f"could not stop {name}: {exc}", file=sys.stderr)


class RetryingTransport(httpx.HTTPTransport):
    """Resends a request the Prefect server answered 503 (its SQLite database was locked),
    as Prefect's own client does: up to ``attempts`` times, 0.5 s doubling in between."""

    def __init__(self, attempts: int = 6) -> None:
        super().__init__()
        self.attempts = attempts
        self.retried = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        for attempt in range(self.attempts):
            response = super().handle_request(request)
            if response.status_code != 503 or attempt == self.attempts - 1:
                return response
            response.read()
            response.close()
            self.retried += 1
            time.sleep(0.5 * 2**attempt)
        raise AssertionError("unreachable")


def isolated_env(home: Path, api_url: str, *, worker_query_seconds: float) -> dict[str, str]:
    """A new user's shell: its own Prefect home and API, no prompts, no KANDINSKY_* leaking in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "KANDINSKY_"))}
    env.update(
        {
            "PREFECT_HOME": str(home),
            "PREFECT_API_URL": api_url,
            "PREFECT_SERVER_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home}/prefect.db",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_SERVER_UI_ENABLED": "false",
            "PREFECT_CLI_PROMPT": "false",
            "PREFECT_WORKER_QUERY_SECONDS": f"{worker_query_seconds:g}",
            "PREFECT_WORKER_PREFETCH_SECONDS": f"{worker_query_seconds:g}",
            "PWD": str(REPO),
            "COLUMNS": "200",
        }
    )
    return env


def until(what: str, check: Any, timeout: float, interval: float = 0.2) -> Any:
    """Call ``check`` until it returns something true; raise after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not (found := check()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {timeout:.0f}s: {what}")
        time.sleep(interval)
    return found


@dataclass
class Stack:
    """Everything a measurement needs to reach."""

    workdir: Path
    processes: Processes
    api_url: str
    gateway_url: str
    api_key: str
    sample_image_url: str
    receiver_url: str
    ca_file: Path
    deployment_id: str
    worker: subprocess.Popen[bytes]
    api_transport: RetryingTransport = field(repr=False)
    api: httpx.Client = field(repr=False)
    gateway: httpx.Client = field(repr=False)

    def receiver_log(self) -> str:
        return self.processes.output("receiver")


def _emulator_banner(processes: Processes) -> dict[str, str]:
    def parsed() -> dict[str, str] | None:
        process = processes.started["emulator"]
        if process.poll() is not None:
            raise RuntimeError(f"the emulator exited:\n{processes.output('emulator')}")
        found = dict(
            re.findall(
                r"^\s+(gateway|cdn|api key|sample):\s+(\S+)", processes.output("emulator"), re.M
            )
        )
        return found if len(found) == 4 else None

    banner: dict[str, str] = until("the emulator prints its banner", parsed, START_TIMEOUT)
    return banner


def _healthy(url: str, **kwargs: Any) -> bool:
    with contextlib.suppress(httpx.HTTPError):
        return httpx.get(url, timeout=2, **kwargs).status_code == 200
    return False


@contextlib.contextmanager
def stack(
    workdir: Path, *, processing_seconds: float, worker_query_seconds: float = 1.0
) -> Iterator[Stack]:
    """Start the emulator, the Prefect server, the deployment, the receiver and one worker."""
    import trustme

    ca = trustme.CA()
    ca_file = workdir / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    receiver_pem = workdir / "receiver.pem"
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(receiver_pem))

    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = isolated_env(workdir / "prefect-home", api_url, worker_query_seconds=worker_query_seconds)
    processes = Processes(workdir / "logs", env)
    clients: list[httpx.Client] = []
    try:
        processes.start(
            "emulator",
            [
                PYTHON,
                "-m",
                "prefect_kandinsky.emulator",
                "--port",
                "0",
                "--cdn-port",
                "0",
                "--queue-seconds",
                f"{QUEUE_SECONDS:g}",
                "--processing-seconds",
                f"{processing_seconds:g}",
                "--balance",
                "100000",
                "--webhook-ca-file",
                str(ca_file),
            ],
        )
        server = processes.start(
            "server", [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)]
        )
        banner = _emulator_banner(processes)

        def server_up() -> bool:
            if server.poll() is not None:
                raise RuntimeError(f"the Prefect server exited:\n{processes.output('server')}")
            return _healthy(f"{api_url}/health")

        until("the Prefect server answers", server_up, START_TIMEOUT)
        processes.start(
            "save-block",
            [PYTHON, "-c", SAVE_BLOCK],
            KANDINSKY_API_KEY=banner["api key"],
            KANDINSKY_BASE_URL=banner["gateway"],
            KANDINSKY_WEBHOOK_SECRET=WEBHOOK_SECRET,
        )
        processes.start(
            "work-pool", [PREFECT, "work-pool", "create", WORK_POOL, "--type", "process"]
        )
        processes.wait_ok("save-block", "work-pool")
        processes.start(
            "deploy",
            [
                PREFECT,
                "deploy",
                "--prefect-file",
                "deployments/prefect.yaml",
                "--name",
                "on-demand",
            ],
        )
        processes.wait_ok("deploy")

        receiver_port = free_port()
        receiver_url = f"https://127.0.0.1:{receiver_port}"
        processes.start(
            "receiver",
            [
                PREFECT_KANDINSKY,
                "webhooks",
                "serve",
                "--credentials",
                CREDENTIALS_BLOCK,
                "--certfile",
                str(receiver_pem),
                "--port",
                str(receiver_port),
            ],
        )

        def receiver_up() -> bool:
            if processes.started["receiver"].poll() is not None:
                raise RuntimeError(f"the receiver exited:\n{processes.output('receiver')}")
            return _healthy(f"{receiver_url}/healthz", verify=str(ca_file))

        until("the receiver answers", receiver_up, START_TIMEOUT)
        worker = processes.start("worker", [PREFECT, "worker", "start", "--pool", WORK_POOL])
        api_transport = RetryingTransport()
        api = httpx.Client(base_url=api_url, timeout=30, transport=api_transport)
        clients.append(api)
        gateway = httpx.Client(base_url=banner["gateway"], timeout=30)
        clients.append(gateway)

        def worker_online() -> bool:
            if worker.poll() is not None:
                raise RuntimeError(f"the worker exited:\n{processes.output('worker')}")
            answer = api.post(f"/work_pools/{WORK_POOL}/workers/filter", json={})
            return answer.status_code == 200 and bool(answer.json())

        until("the worker reports to the server", worker_online, START_TIMEOUT)
        deployment = api.get(f"/deployments/name/{DEPLOYMENT}")
        deployment.raise_for_status()
        yield Stack(
            workdir=workdir,
            processes=processes,
            api_url=api_url,
            gateway_url=banner["gateway"],
            api_key=banner["api key"],
            sample_image_url=banner["sample"],
            receiver_url=receiver_url,
            ca_file=ca_file,
            deployment_id=deployment.json()["id"],
            worker=worker,
            api_transport=api_transport,
            api=api,
            gateway=gateway,
        )
    finally:
        for client in clients:
            client.close()
        processes.stop_all()
