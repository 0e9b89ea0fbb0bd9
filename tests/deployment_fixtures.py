"""The end-to-end tests' deployments: the suite's Prefect server with the README walkthrough's
block, work pool and deployments, two process workers, and the helpers that drive them.

Loaded by ``tests/conftest.py`` (``pytest_plugins``). ``deployed`` is module-scoped: each
end-to-end file (``test_deployments.py``, ``test_deployments_batches.py``) deploys once to the
Prefect server of the xdist worker that runs it, so the two files run side by side.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from uuid import uuid4

import httpx
import pytest

if TYPE_CHECKING:
    from prefect_kandinsky.emulator import EmulatorServer

REPO = Path(__file__).resolve().parents[1]
PREFECT = shutil.which("prefect", path=str(Path(sys.executable).parent)) or "prefect"
WORK_POOL = "kandinsky-process"
CREDENTIALS_BLOCK = "kandinsky"
FINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")
"""The state types a flow run ends in."""

WEBHOOK_SECRET = "e2e-webhook-secret"
COMMAND_TIMEOUT = 120.0
RUN_TIMEOUT = 180


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def descendants(pid: int) -> list[int]:
    """Child processes of ``pid``, recursively (flow runs start in a session of their own)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found: list[int] = []
    pending = [pid]
    while pending:
        for child in children.get(pending.pop(), []):
            found.append(child)
            pending.append(child)
    return found


class Processes:
    """The subprocesses of one test, their logs, and their certain end."""

    def __init__(self, logs: Path, env: dict[str, str]) -> None:
        self.logs = logs
        self.env = env
        self.started: dict[str, subprocess.Popen[bytes]] = {}
        logs.mkdir(parents=True, exist_ok=True)

    def start(self, name: str, args: list[str], **env: str | None) -> subprocess.Popen[bytes]:
        """Start ``args``; ``env`` adds variables, or removes those set to None."""
        merged = {**self.env, **env}
        with (self.logs / f"{name}.log").open("wb") as log:
            process = subprocess.Popen(
                args,
                cwd=REPO,
                env={k: v for k, v in merged.items() if v is not None},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.started[name] = process
        return process

    def output(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")

    def wait_ok(self, *names: str, timeout: float = COMMAND_TIMEOUT) -> None:
        for name in names:
            code = self.started[name].wait(timeout=timeout)
            assert 0 == code, f"`{name}` exited {code}:\n{self.output(name)}"

    def stop_all(self) -> None:
        for process in reversed(list(self.started.values())):
            if process.poll() is not None:
                continue
            family = descendants(process.pid)
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
            for pid in family:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def dump(self) -> None:
        for name in self.started:
            lines = self.output(name).splitlines()
            print(f"\n===== {name} (last 200 lines) =====")
            print("\n".join(lines[-200:]))


def isolated_env(home: Path, api_url: str) -> dict[str, str]:
    """The environment of a new user's shell: its own Prefect home, API and no prompts."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "KANDINSKY_"))}
    env.update(
        {
            "PREFECT_HOME": str(home),
            "PREFECT_API_URL": api_url,
            "PREFECT_CLI_PROMPT": "false",
            "PREFECT_WORKER_QUERY_SECONDS": "1",
            "PREFECT_WORKER_PREFETCH_SECONDS": "1",
            "PWD": str(REPO),
            "COLUMNS": "200",
        }
    )
    return env


def frames(path: Path) -> int:
    import av

    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


def run_deployment(name: str, **parameters: str) -> list[str]:
    params = [arg for k, v in parameters.items() for arg in ("--param", f"{k}={v}")]
    watch = ["--watch", "--watch-timeout", str(RUN_TIMEOUT)]
    return [PREFECT, "deployment", "run", name, *params, *watch]


@dataclass
class Workers:
    """Two process workers polling the pool, shared by the end-to-end tests."""

    processes: Processes
    names: dict[str, str]
    """Each worker's label (its log's name) and its name in the pool."""

    def popen(self, label: str) -> subprocess.Popen[bytes]:
        return self.processes.started[label]

    def start(self) -> None:
        """Start each worker that is not running (never started, exited or killed)."""
        for label, name in self.names.items():
            process = self.processes.started.get(label)
            if process is None or process.poll() is not None:
                self.processes.start(
                    label, [PREFECT, "worker", "start", "--pool", WORK_POOL, "--name", name]
                )

    def mark(self) -> dict[str, int]:
        """Where each worker's log ends now: what a test reads starts there."""
        return {label: len(self.processes.output(label)) for label in self.names}

    def output(self, label: str, since: dict[str, int]) -> str:
        return self.processes.output(label)[since[label] :]

    def dump(self, since: dict[str, int]) -> None:
        for label in self.names:
            print(f"\n===== {label} (since the test began) =====")
            print("\n".join(self.output(label, since).splitlines()[-200:]))


@dataclass
class Deployed:
    """The suite's Prefect server with the block, the pool, every deployment and two workers."""

    api_url: str
    env: dict[str, str]
    deploy_output: str
    workers: Workers


@pytest.fixture(scope="session")
def deployed(
    prefect_api: None,
    kandinsky_emulator_server: EmulatorServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Deployed]:
    """The README walkthrough's steps 3 to 6, once per xdist worker for its end-to-end tests.

    The server is the suite's own (``prefect_api``, a Prefect server in a process of its
    own on loopback), so the end-to-end tests do not start one more. The block is saved as
    step 3 shows; the work pool and the deployments are made by the CLI commands of steps 4
    and 5, from a new user's shell; two process workers (step 6) start polling the pool while
    the deployments are made, and serve every end-to-end test (each start costs seconds of
    CPU; a test that kills one leaves the next a new one).
    """
    from prefect.settings import PREFECT_API_URL

    from prefect_kandinsky import KandinskyCredentials

    home = tmp_path_factory.mktemp("e2e")
    api_url = str(PREFECT_API_URL.value())
    env = isolated_env(home / "prefect-home", api_url)
    processes = Processes(home / "logs", env)
    workers = Workers(
        Processes(home / "workers", env),
        {label: f"{label}-{uuid4().hex[:8]}" for label in ("worker-a", "worker-b")},
    )
    ready = False
    try:
        KandinskyCredentials(
            api_key=kandinsky_emulator_server.api_key,
            base_url=kandinsky_emulator_server.base_url,
            webhook_secret=WEBHOOK_SECRET,
        ).save(CREDENTIALS_BLOCK, overwrite=True)
        processes.start(
            "work-pool",
            [PREFECT, "work-pool", "create", WORK_POOL, "--type", "process", "--overwrite"],
        )
        processes.wait_ok("work-pool")
        workers.start()
        # In a terminal, as a user runs it: a question would hang until the timeout, and
        # accepting prompt defaults must never schedule the paid on-demand deployment.
        deploy = f"{PREFECT} deploy --prefect-file deployments/prefect.yaml --all"
        processes.start("deploy", ["script", "-qec", deploy, "/dev/null"], PREFECT_CLI_PROMPT=None)
        processes.wait_ok("deploy")
        ready = True
        yield Deployed(api_url, env, processes.output("deploy"), workers)
    finally:
        workers.processes.stop_all()
        processes.stop_all()
        if not ready:
            processes.dump()
            workers.dump(dict.fromkeys(workers.names, 0))


@pytest.fixture
def workers(deployed: Deployed) -> Workers:
    """The two process workers polling the pool (see ``deployed``), both running."""
    deployed.workers.start()
    return deployed.workers


class _RetryBusy(httpx.HTTPTransport):
    """Sends a request again while the server answers 503 or 429, as Prefect's own client
    does: the server answers 503 while its SQLite database is locked by another writer."""

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        deadline = time.monotonic() + 60
        delay = 0.2
        while True:
            response = super().handle_request(request)
            if response.status_code not in (429, 503) or time.monotonic() > deadline:
                return response
            response.read()
            response.close()
            time.sleep(float(response.headers.get("Retry-After", delay)))
            delay = min(delay * 2, 2.0)


def prefect_api(api_url: str) -> httpx.Client:
    """A client of the test server's API that rides out its busy answers. It takes the
    package's one TLS context rather than loading the CA bundle again on every poll."""
    from prefect_kandinsky.gateway.tls import default_tls_context

    transport = _RetryBusy(verify=default_tls_context())
    return httpx.Client(base_url=api_url, timeout=10, transport=transport)


def create_flow_run(api_url: str, deployment: str, **parameters: object) -> str:
    """A run of ``deployment`` created through the API, as ``prefect deployment run`` creates
    it, without the seconds of CPU a CLI process costs; its id."""
    with prefect_api(api_url) as api:
        found = api.get(f"/deployments/name/{deployment}")
        assert 200 == found.status_code, found.text
        created = api.post(
            f"/deployments/{found.json()['id']}/create_flow_run", json={"parameters": parameters}
        )
        assert created.status_code in (200, 201), created.text
        flow_run_id: str = created.json()["id"]
        return flow_run_id


def flow_run_state(api_url: str, flow_run_id: str) -> dict[str, Any]:
    with prefect_api(api_url) as api:
        state: dict[str, Any] = api.get(f"/flow_runs/{flow_run_id}").json()["state"]
        return state


def until(what: str, check: Any, timeout: float = RUN_TIMEOUT) -> Any:
    deadline = time.monotonic() + timeout
    while not (found := check()):
        assert time.monotonic() < deadline, f"not within {timeout}s: {what}"
        time.sleep(0.2)
    return found
