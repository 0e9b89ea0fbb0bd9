"""The deployments of ``deployments/prefect.yaml``: they match their flows, and they run.

The fast tests read the YAML the way ``prefect deploy`` does and hold it against the flows it
names. The end-to-end tests follow the README walkthrough on the suite's Prefect server (a
server process on loopback), two process workers started once for all of them, and the
gateway emulator, and open the MP4s that land on disk. The last of them kills a worker.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from uuid import uuid4

import av
import httpx
import pytest
import yaml
from prefect import Flow
from prefect.cli.deploy._models import DeploymentConfig, PrefectYamlModel, RawScheduleConfig
from prefect.flows import load_flow_from_entrypoint
from prefect.server.schemas.schedules import CronSchedule
from prefect.utilities.importtools import load_script_as_module
from prefect.utilities.templating import apply_values
from prefect.workers.process import ProcessWorker

from prefect_kandinsky import KandinskyCredentials
from prefect_kandinsky.artifacts import markdown_code
from prefect_kandinsky.emulator import EmulatorServer

REPO = Path(__file__).resolve().parents[1]
PREFECT_FILE = REPO / "deployments" / "prefect.yaml"
PREFECT = shutil.which("prefect", path=str(Path(sys.executable).parent)) or "prefect"
WORK_POOL = "kandinsky-process"
CREDENTIALS_BLOCK = "kandinsky"
GIVEN_AT_TRIGGER_TIME: dict[str, dict[str, Any]] = {
    "on-demand": {"prompt": "Waves roll in.", "image_url": "https://example.com/image.png"},
    "chunks": {"rows": [], "batch_id": "catalogue"},
}
"""Required flow parameters a deployment leaves to the run's trigger, with example values."""
EXPECTED = {
    "on-demand": ("flows/generate.py:generate", "generate-video"),
    "daily": ("flows/scheduled.py:scheduled_video", "scheduled-video"),
    "nightly": ("flows/batch.py:nightly_batch", "nightly-videos"),
    "chunks": ("flows/batch.py:chunk", "generate-videos-chunk"),
    "every-5-minutes": ("flows/sweep.py:sweep", "sweep-videos"),
}
SCHEDULED = {"daily": ("0 6 * * *", 6), "nightly": ("0 2 * * *", 2)}
"""Deployments with a (paused) cron schedule, and the UTC hour it fires."""
NOT_RUN_BY_HAND = {"chunks", "every-5-minutes"}
"""Deployments started by flows (run_deployment) or by their schedule: the walkthrough does not
run them by hand."""


def _prefect_yaml() -> dict[str, Any]:
    with PREFECT_FILE.open() as file:
        loaded: dict[str, Any] = yaml.safe_load(file)
    return loaded


def _deployments() -> list[dict[str, Any]]:
    deployments: list[dict[str, Any]] = _prefect_yaml()["deployments"]
    return deployments


def _deployment(name: str) -> dict[str, Any]:
    return next(d for d in _deployments() if d["name"] == name)


def _flow(entrypoint: str) -> Flow[..., Any]:
    path, name = entrypoint.rsplit(":", 1)
    return load_flow_from_entrypoint(f"{REPO / path}:{name}")


def _scheduled_module() -> Any:
    return load_script_as_module(str(REPO / "flows" / "scheduled.py"))


# -- the YAML, against the flows it names ------------------------------------------------


def test_prefect_yaml_is_what_prefect_deploy_reads() -> None:
    """The file passes ``prefect deploy``'s schema and holds exactly the two deployments."""
    raw = _prefect_yaml()
    model = PrefectYamlModel.model_validate(raw)
    assert sorted(EXPECTED) == sorted(d.name for d in model.deployments if d.name)
    known = set(DeploymentConfig.model_fields)
    for deployment in raw["deployments"]:
        # prefect deploy silently drops keys it does not know: a typo would vanish.
        assert set() == set(deployment) - known, deployment["name"]
        assert EXPECTED[deployment["name"]][0] == deployment["entrypoint"]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_entrypoint_is_the_named_prefect_flow(name: str) -> None:
    """Each entrypoint imports from the repo root and is a Prefect flow with the expected name."""
    flow = _flow(_deployment(name)["entrypoint"])
    assert isinstance(flow, Flow)
    assert EXPECTED[name][1] == flow.name


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_parameters_are_valid_for_the_flow_signature(name: str) -> None:
    """Every YAML parameter is a flow parameter of a valid value, and no required one is missing."""
    deployment = _deployment(name)
    flow = _flow(deployment["entrypoint"])
    signature = inspect.signature(flow.fn)
    parameters: dict[str, Any] = deployment.get("parameters") or {}
    assert set() == set(parameters) - set(signature.parameters)
    required = {
        p.name for p in signature.parameters.values() if p.default is inspect.Parameter.empty
    }
    trigger_values = GIVEN_AT_TRIGGER_TIME.get(name, {})
    assert set() == required - set(parameters) - set(trigger_values)
    assert set() == set(trigger_values) & set(parameters)
    if name not in NOT_RUN_BY_HAND:
        assert CREDENTIALS_BLOCK == parameters["credentials"]
    assert deployment["enforce_parameter_schema"] is True
    validated = flow.validate_parameters({**parameters, **trigger_values})
    assert parameters == {k: validated[k] for k in parameters}


@pytest.mark.parametrize("name", sorted(EXPECTED))
async def test_schedules_are_valid_crons(name: str) -> None:
    """Scheduled deployments have one valid, paused cron; the others say they have none."""
    deployment = _deployment(name)
    if name == "every-5-minutes":  # only runs that suspend need it: paused until resumed
        (spec,) = deployment["schedules"]
        RawScheduleConfig.model_validate(spec)
        assert (300, False) == (spec["interval"], spec["active"])
        return
    if name not in SCHEDULED:
        assert [] == deployment["schedules"], "an absent key makes prefect deploy ask"
        return
    schedules = deployment["schedules"]
    cron, hour = SCHEDULED[name]
    assert 1 == len(schedules)
    (spec,) = schedules
    RawScheduleConfig.model_validate(spec)
    assert cron == spec["cron"]
    schedule = CronSchedule(cron=spec["cron"], timezone=spec["timezone"])
    start = datetime(2026, 5, 22, 12, 0, tzinfo=timezone.utc)
    fires = [d.astimezone(timezone.utc) for d in await schedule.get_dates(2, start=start)]
    assert [
        datetime(2026, 5, 23, hour, 0, tzinfo=timezone.utc),
        datetime(2026, 5, 24, hour, 0, tzinfo=timezone.utc),
    ] == fires
    assert spec["active"] is False  # deploying must not start paying


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_work_pool_is_the_process_pool(name: str) -> None:
    """Each deployment targets the process pool, with job variables a process worker knows."""
    work_pool = _deployment(name)["work_pool"]
    assert WORK_POOL == work_pool["name"]
    template = ProcessWorker.get_default_base_job_template()
    assert set() == set(work_pool.get("job_variables") or {}) - set(
        template["variables"]["properties"]
    )


def test_pull_step_enters_the_checkout_it_was_deployed_from(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The pull step's ``{{ $PWD }}`` becomes the directory ``prefect deploy`` ran in."""
    pull = _prefect_yaml()["pull"]
    monkeypatch.setenv("PWD", str(REPO))
    resolved = apply_values(pull, {}, remove_notset=False)
    assert [
        {"prefect.deployments.steps.set_working_directory": {"directory": str(REPO)}}
    ] == resolved


def test_every_deployment_is_in_the_readme_tables_saying_how_it_runs() -> None:
    """Both READMEs list every deployment; those with a schedule say they run by themselves."""
    text = (REPO / "README.md").read_text()
    readme = text[text.index("## Run it as deployments") : text.index("## The emulator")]
    short = (REPO / "deployments" / "README.md").read_text()
    for deployment in _deployments():
        full = f"{EXPECTED[deployment['name']][1]}/{deployment['name']}"
        for table in (readme, short):
            (line,) = [ln for ln in table.splitlines() if ln.startswith(f"| `{full}` |")]
            if deployment["schedules"]:
                assert "by itself" in line and "ships paused" in line, line


def test_walkthrough_names_what_the_yaml_declares() -> None:
    """The README walkthrough's commands name the YAML's pool, deployments and block."""
    text = (REPO / "README.md").read_text()
    readme = text[text.index("## Run it as deployments") : text.index("## The emulator")]
    flows = {name: EXPECTED[name][1] for name in EXPECTED}
    declared = {
        f"{flows[d['name']]}/{d['name']}"
        for d in _deployments()
        if d["name"] not in NOT_RUN_BY_HAND
    }
    assert declared == set(re.findall(r"prefect deployment run (\S+)", readme))
    assert {WORK_POOL} == set(re.findall(r"(?:--pool|work-pool create) (\S+)", readme))
    assert {"deployments/prefect.yaml"} == set(re.findall(r"--prefect-file (\S+)", readme))
    assert set(SCHEDULED) == set(re.findall(r"--prefect-file \S+ --name (\S+)", readme))
    assert {CREDENTIALS_BLOCK} == set(re.findall(r'\.save\(\s*"([^"]+)"', readme))


# -- the scheduled flow: one paid video per slot ----------------------------------------


def test_slot_key_is_one_per_deployment_and_instant() -> None:
    """The same instant in any zone gives one key; another slot or deployment another key."""
    slot_key = _scheduled_module().slot_key
    utc = datetime(2026, 5, 22, 6, 0, tzinfo=timezone.utc)
    berlin = utc.astimezone(timezone(timedelta(hours=2)))
    assert "scheduled-video/daily@2026-05-22T06:00:00+00:00" == slot_key("daily", utc)
    assert slot_key("daily", utc) == slot_key("daily", berlin)
    assert slot_key("daily", utc) == slot_key("daily", utc.replace(tzinfo=None))
    assert slot_key("daily", utc) != slot_key("daily", utc + timedelta(days=1))
    assert slot_key("daily", utc) != slot_key("hourly", utc)
    assert "scheduled-video/no-deployment@2026-05-22T06:00:00+00:00" == slot_key(None, utc)


async def test_scheduled_video_pays_once_per_slot(
    prefect_api: None,
    kandinsky_emulator: EmulatorServer,
    credentials: KandinskyCredentials,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two runs for one slot submit once and store one file; the next slot submits again."""
    monkeypatch.setenv("PREFECT__RUNTIME__DEPLOYMENT__NAME", f"test-{uuid4().hex[:8]}")
    flow = _flow(EXPECTED["daily"][0]).with_options(retries=0)
    slot = datetime(2026, 5, 22, 6, 0, tzinfo=timezone.utc)
    parameters: dict[str, Any] = {
        "prompt": "The lighthouse beam sweeps over a calm sea.",
        "image_url": kandinsky_emulator.sample_image_url,
        "resolution": "256P",
        "duration": 1,
        "destination": str(tmp_path),
        "credentials": credentials,
        "poll_interval_seconds": 0.05,
    }

    first = await flow(**parameters, slot=slot)
    again = await flow(**parameters, slot=slot.astimezone(timezone(timedelta(hours=2))))

    assert 1 == kandinsky_emulator.state.count("submit")
    assert first.request_id == again.request_id
    assert [Path(first.uri).name] == [p.name for p in tmp_path.glob("*.mp4")]

    following = await flow(**parameters, slot=slot + timedelta(days=1))

    assert 2 == kandinsky_emulator.state.count("submit")
    assert following.request_id != first.request_id


# -- end to end: server, deploy, worker, run ---------------------------------------------

WEBHOOK_SECRET = "e2e-webhook-secret"
COMMAND_TIMEOUT = 120.0
RUN_TIMEOUT = 180


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _descendants(pid: int) -> list[int]:
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


class _Processes:
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
            family = _descendants(process.pid)
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


def _isolated_env(home: Path, api_url: str) -> dict[str, str]:
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


def _frames(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


def _run_deployment(name: str, **parameters: str) -> list[str]:
    params = [arg for k, v in parameters.items() for arg in ("--param", f"{k}={v}")]
    watch = ["--watch", "--watch-timeout", str(RUN_TIMEOUT)]
    return [PREFECT, "deployment", "run", name, *params, *watch]


@dataclass
class _Deployed:
    """The suite's Prefect server with the block, the pool and every deployment."""

    api_url: str
    env: dict[str, str]
    deploy_output: str


@pytest.fixture(scope="module")
def deployed(
    prefect_api: None,
    kandinsky_emulator_server: EmulatorServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[_Deployed]:
    """The README walkthrough's steps 3 to 5, once for the module's end-to-end tests.

    The server is the suite's own (``prefect_api``, a Prefect server in a process of its
    own on loopback), so the end-to-end tests do not start one more. The block is saved as
    step 3 shows; the work pool and the deployments are made by the CLI commands of steps 4
    and 5, from a new user's shell.
    """
    from prefect.settings import PREFECT_API_URL

    home = tmp_path_factory.mktemp("e2e")
    api_url = str(PREFECT_API_URL.value())
    env = _isolated_env(home / "prefect-home", api_url)
    processes = _Processes(home / "logs", env)
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
        # In a terminal, as a user runs it: a question would hang until the timeout, and
        # accepting prompt defaults must never schedule the paid on-demand deployment.
        deploy = f"{PREFECT} deploy --prefect-file deployments/prefect.yaml --all"
        processes.start("deploy", ["script", "-qec", deploy, "/dev/null"], PREFECT_CLI_PROMPT=None)
        processes.wait_ok("deploy")
        ready = True
        yield _Deployed(api_url, env, processes.output("deploy"))
    finally:
        processes.stop_all()
        if not ready:
            processes.dump()


@dataclass
class _Workers:
    """Two process workers polling the pool, shared by the module's end-to-end tests."""

    processes: _Processes
    names: dict[str, str]
    """Each worker's label (its log's name) and its name in the pool."""

    def popen(self, label: str) -> subprocess.Popen[bytes]:
        return self.processes.started[label]

    def mark(self) -> dict[str, int]:
        """Where each worker's log ends now: what a test reads starts there."""
        return {label: len(self.processes.output(label)) for label in self.names}

    def output(self, label: str, since: dict[str, int]) -> str:
        return self.processes.output(label)[since[label] :]

    def dump(self, since: dict[str, int]) -> None:
        for label in self.names:
            print(f"\n===== {label} (since the test began) =====")
            print("\n".join(self.output(label, since).splitlines()[-200:]))


@pytest.fixture(scope="module")
def workers(deployed: _Deployed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Workers]:
    """Two process workers, started once (each start costs seconds of CPU): every end-to-end
    test runs its flow runs on them, and the last one kills a worker."""
    processes = _Processes(tmp_path_factory.mktemp("workers"), deployed.env)
    names = {label: f"{label}-{uuid4().hex[:8]}" for label in ("worker-a", "worker-b")}
    try:
        for label, name in names.items():
            processes.start(
                label, [PREFECT, "worker", "start", "--pool", WORK_POOL, "--name", name]
            )
        yield _Workers(processes, names)
    finally:
        processes.stop_all()


@pytest.mark.e2e
def test_deployments_run_on_a_process_worker(
    deployed: _Deployed, workers: _Workers, kandinsky_emulator: EmulatorServer, tmp_path: Path
) -> None:
    """Deployed from the YAML, on-demand stores a 25-frame MP4; two runs of one slot pay once."""
    api_url = deployed.api_url
    videos = tmp_path / "videos"
    daily_videos = tmp_path / "daily"
    small = {
        "image_url": kandinsky_emulator.sample_image_url,
        "resolution": "256P",
        "duration": "1s",
        "poll_interval_seconds": "0.05",
    }
    processes = _Processes(tmp_path / "logs", deployed.env)
    since = workers.mark()
    passed = False
    try:
        processes.start(
            "on-demand",
            _run_deployment(
                "generate-video/on-demand",
                prompt="The sun rises over the hills, the camera pushes in.",
                destination=str(videos),
                **small,
            ),
        )
        for run in ("daily-slot", "daily-slot-again"):  # at once: a re-trigger of one slot
            processes.start(
                run,
                _run_deployment(
                    "scheduled-video/daily",
                    slot="2026-05-22T06:00:00Z",
                    destination=str(daily_videos),
                    **small,
                ),
            )
        processes.wait_ok("on-demand", "daily-slot", "daily-slot-again", timeout=RUN_TIMEOUT + 30)

        match = re.search(r"UUID: ([0-9a-f-]{36})", processes.output("on-demand"))
        assert match, processes.output("on-demand")
        with httpx.Client(base_url=api_url, timeout=10) as api:
            flow_run = api.get(f"/flow_runs/{match.group(1)}").json()
            deployment = api.get("/deployments/name/generate-video/on-demand").json()
            daily = api.get("/deployments/name/scheduled-video/daily").json()
            artifacts = api.post(
                "/artifacts/filter", json={"flow_runs": {"id": {"any_": [flow_run["id"]]}}}
            ).json()

        assert "COMPLETED" == flow_run["state"]["type"]
        stored_videos = sorted(videos.glob("*.mp4"))
        assert 1 == len(stored_videos)
        assert 25 == _frames(stored_videos[0])
        assert 1 == len(list(daily_videos.glob("*.mp4")))
        assert 2 == kandinsky_emulator.state.count("submit")  # on-demand, and the slot once
        assert [
            {"prefect.deployments.steps.set_working_directory": {"directory": str(REPO)}}
        ] == deployment["pull_steps"]
        assert [(False, "0 6 * * *")] == [
            (s["active"], s["schedule"]["cron"]) for s in daily["schedules"]
        ]
        assert [] == deployment["schedules"]
        assert "Would you like" not in deployed.deploy_output, "prefect deploy asked"
        (summary,) = [a["data"] for a in artifacts if a["type"] == "markdown"]
        assert markdown_code(stored_videos[0]) in summary and "file://" not in summary
        assert "25 frames at 24 fps" in summary
        assert summary.count("data:image/jpeg;base64,") >= 6, "poster and frames are embedded"
        passed = True
    finally:
        processes.stop_all()
        if not passed:
            processes.dump()
            workers.dump(since)


RUN_BATCH = """
import asyncio, json, sys
from prefect_kandinsky.batch import generate_videos

options = json.loads(sys.argv[1])
result = asyncio.run(generate_videos(options.pop("rows"), **options))
print("COUNTS", json.dumps(result.counts))
"""


@pytest.mark.e2e
def test_a_batch_shared_by_two_workers_pays_each_row_once(
    deployed: _Deployed, workers: _Workers, kandinsky_emulator: EmulatorServer, tmp_path: Path
) -> None:
    """Two chunks of four rows on two process workers: each row paid once, within the limit.

    Which worker takes which chunk is the server's choice (one may take both): the test
    asserts what is guaranteed, that each row was submitted once, that each chunk completed
    after one of the two workers took it up, and that both polled the pool.
    """
    limit = f"kandinsky-submits-{uuid4().hex[:8]}"
    with httpx.Client(base_url=deployed.api_url, timeout=10) as api:
        created = api.post(
            "/v2/concurrency_limits/",
            json={"name": limit, "limit": 2, "slot_decay_per_second": 2.0},
        )
        assert created.status_code in (200, 201), created.text
    # Submits take 0.3 s at the gateway, so submits let through at once would overlap there.
    kandinsky_emulator.configure(submit_latency_seconds=0.3)
    rows = [
        {
            "id": f"row-{n}",
            "prompt": f"Scene {n}: the waves roll in.",
            "image": kandinsky_emulator.sample_image_url,
            "resolution": "256P",
            "duration": "1s",
        }
        for n in range(1, 9)
    ]
    options = {
        "rows": rows,
        "batch_id": f"e2e-{uuid4().hex[:8]}",
        "credentials": CREDENTIALS_BLOCK,
        "destination": str(tmp_path / "videos"),
        "ledger": str(tmp_path / "ledger"),
        "chunk_size": 4,
        "chunk_deployment": "generate-videos-chunk/chunks",
        "rate_limit": limit,
        "max_concurrency": 4,  # without the limit, four submits per chunk would overlap
        "poll_interval_seconds": 0.05,
        "max_poll_interval_seconds": 0.2,
    }
    processes = _Processes(tmp_path / "logs", deployed.env)
    since = workers.mark()
    passed = False
    try:
        processes.start("batch", [sys.executable, "-c", RUN_BATCH, json.dumps(options)])
        processes.wait_ok("batch", timeout=RUN_TIMEOUT)

        assert 'COUNTS {"stored": 8}' in processes.output("batch")
        assert 8 == kandinsky_emulator.state.count("submit")
        prompts = sorted(job.prompt for job in kandinsky_emulator.state.jobs())
        assert sorted(row["prompt"] for row in rows) == prompts, "each row submitted once"
        assert 1 <= kandinsky_emulator.state.max_submits_in_flight <= 2
        assert 8 == len(list((tmp_path / "videos").glob("*.mp4")))
        ran = {
            label: re.findall(
                r"submitting flow run '([0-9a-f-]{36})'", workers.output(label, since)
            )
            for label in workers.names
        }
        with httpx.Client(base_url=deployed.api_url, timeout=10) as api:
            chunks = api.get("/deployments/name/generate-videos-chunk/chunks").json()
            chunk_runs = [
                run
                for run in api.post(
                    "/flow_runs/filter",
                    json={"deployments": {"id": {"any_": [chunks["id"]]}}, "limit": 200},
                ).json()
                if run["parameters"].get("batch_id") == options["batch_id"]
            ]
            polled = api.post(f"/work_pools/{WORK_POOL}/workers/filter", json={}).json()
        assert ["COMPLETED", "COMPLETED"] == [run["state"]["type"] for run in chunk_runs]
        # A worker logs "submitting" before it claims the run: when both take up the same run,
        # one is turned away, so a run may show in both logs; each must show in one at least.
        assert {run["id"] for run in chunk_runs} <= {*ran["worker-a"], *ran["worker-b"]}, ran
        assert set(workers.names.values()) <= {worker["name"] for worker in polled}, polled
        passed = True
    finally:
        processes.stop_all()
        if not passed:
            processes.dump()
            workers.dump(since)


def _ledger_records(folder: Path) -> dict[str, dict[str, Any]]:
    """The rows' ledger records under ``folder``, by row id (leases left out)."""
    records: dict[str, dict[str, Any]] = {}
    for path in folder.rglob("*.json"):
        with contextlib.suppress(OSError, ValueError):
            data = json.loads(path.read_text())
            if "row_id" in data:
                records[data["row_id"]] = data
    return records


def _chunk_working(ledger: Path, label: str, row_ids: list[str]) -> dict[str, Any] | None:
    """The lease of chunk ``label`` once all its rows are submitted (rendering), else None."""
    leases = list(ledger.rglob(f"chunk-{label}.lease.json"))
    records = _ledger_records(ledger)
    if not leases or any(records.get(i, {}).get("state") != "submitted" for i in row_ids):
        return None
    with contextlib.suppress(OSError, ValueError):
        lease: dict[str, Any] = json.loads(leases[0].read_text())
        return lease
    return None


def _flow_run_state(api_url: str, flow_run_id: str) -> dict[str, Any]:
    with httpx.Client(base_url=api_url, timeout=10) as api:
        state: dict[str, Any] = api.get(f"/flow_runs/{flow_run_id}").json()["state"]
        return state


def _until(what: str, check: Any, timeout: float = RUN_TIMEOUT) -> Any:
    deadline = time.monotonic() + timeout
    while not (found := check()):
        assert time.monotonic() < deadline, f"not within {timeout}s: {what}"
        time.sleep(0.2)
    return found


def _started_run(processes: _Processes, name: str) -> str:
    processes.wait_ok(name)
    match = re.search(r"UUID: ([0-9a-f-]{36})", processes.output(name))
    assert match, processes.output(name)
    return match.group(1)


@pytest.mark.e2e
def test_a_suspended_run_holds_nothing_until_its_video_is_done(
    deployed: _Deployed, workers: _Workers, kandinsky_emulator: EmulatorServer, tmp_path: Path
) -> None:
    """Submit, suspend with no process left, resume on the completion event; a lost one is swept.

    Two runs at once: one whose callback reaches the receiver, one whose callback URL leads
    nowhere. Both suspend while their videos render; the event resumes the first, the sweep
    deployment the second.
    """
    import trustme

    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(
        str(tmp_path / "receiver.pem")
    )
    # Jobs move only when the test moves them: the videos render while the runs are suspended,
    # for exactly as long as the test needs, and not a second longer.
    kandinsky_emulator.configure(webhook_ca_file=str(tmp_path / "ca.pem"), manual=True)
    emulated = kandinsky_emulator.state
    port = _free_port()
    receiver_url = f"https://127.0.0.1:{port}"
    videos = tmp_path / "videos"
    processes = _Processes(tmp_path / "logs", deployed.env)
    since = workers.mark()
    passed = False
    try:
        processes.start(
            "receiver",
            [
                str(Path(sys.executable).with_name("prefect-kandinsky")),
                "webhooks",
                "serve",
                "--credentials",
                CREDENTIALS_BLOCK,
                "--certfile",
                str(tmp_path / "receiver.pem"),
                "--port",
                str(port),
            ],
        )
        _until(
            "the receiver answers",
            lambda: _healthy(f"{receiver_url}/healthz", str(tmp_path / "ca.pem")),
            timeout=60,
        )
        small = {
            "image_url": kandinsky_emulator.sample_image_url,
            "resolution": "256P",
            "duration": "1s",
            "destination": str(videos),
            "wait": "suspend",
            "poll_interval_seconds": "0.05",
        }
        trigger = [PREFECT, "deployment", "run", "generate-video/on-demand"]
        lost_port = _free_port()
        for name, prompt, base in (
            ("run", "The hot-air balloon rises over the valley.", receiver_url),
            ("lost", "The kite climbs over the dunes.", f"https://127.0.0.1:{lost_port}"),
        ):
            processes.start(name, [*trigger, *_params(small, prompt=prompt, webhook_base_url=base)])
        run_id, lost_id = _started_run(processes, "run"), _started_run(processes, "lost")
        for job in emulated.wait_for_jobs(2, timeout=RUN_TIMEOUT):
            emulated.advance(job.request_id, "PROCESSING")

        states = _until(
            "both runs are suspended",
            lambda: _all_in(deployed, ("PAUSED",), run_id, lost_id),
        )
        assert ["Suspended", "Suspended"] == [s["name"] for s in states]
        _until(
            "the flow-run processes exit",
            lambda: not any(_descendants(workers.popen(label).pid) for label in workers.names),
            timeout=15,
        )
        assert ["PROCESSING", "PROCESSING"] == [
            kandinsky_emulator.state.job(job.request_id).status.value
            for job in kandinsky_emulator.state.jobs()
        ], "no flow-run process is alive while the videos render"
        by_prompt = {job.prompt: job.request_id for job in kandinsky_emulator.state.jobs()}
        lost_job = by_prompt["The kite climbs over the dunes."]

        # The first run leaves PAUSED once its event came; the lost one's never comes.
        emulated.advance(by_prompt["The hot-air balloon rises over the valley."], "COMPLETED")
        _until(
            "the completion event resumes the first run",
            lambda: _states(deployed, run_id)[0]["type"] != "PAUSED",
        )
        emulated.advance(lost_job, "COMPLETED")
        emulated.wait_for_status(lost_job, timeout=60)
        assert "PAUSED" == _states(deployed, lost_id)[0]["type"], "no event came"
        processes.start(
            "sweep",
            _run_deployment("sweep-videos/every-5-minutes", after_seconds="0"),
        )
        finals = _until(
            "the event finishes the first run and the sweep the second",
            lambda: _all_in(deployed, ("COMPLETED", "FAILED", "CRASHED"), run_id, lost_id),
        )
        processes.wait_ok("sweep", timeout=RUN_TIMEOUT)
        assert ["COMPLETED", "COMPLETED"] == [s["type"] for s in finals], finals
        assert 2 == kandinsky_emulator.state.count("submit")
        stored = sorted(videos.glob("*.mp4"))
        assert 2 == len(stored)
        assert [25, 25] == [_frames(path) for path in stored]
        assert WEBHOOK_SECRET not in processes.output("receiver")
        assert kandinsky_emulator.api_key not in processes.output("receiver")
        passed = True
    finally:
        processes.stop_all()
        if not passed:
            processes.dump()
            workers.dump(since)


def _states(deployed: _Deployed, *flow_run_ids: str) -> list[dict[str, Any]]:
    return [_flow_run_state(deployed.api_url, run_id) for run_id in flow_run_ids]


def _all_in(
    deployed: _Deployed, types: tuple[str, ...], *flow_run_ids: str
) -> list[dict[str, Any]] | None:
    """The runs' states if every one is of one of ``types``, else None."""
    states = _states(deployed, *flow_run_ids)
    return states if all(state["type"] in types for state in states) else None


def _params(values: dict[str, str], **more: str) -> list[str]:
    return [arg for k, v in {**values, **more}.items() for arg in ("--param", f"{k}={v}")]


def _healthy(url: str, ca_file: str) -> bool:
    with contextlib.suppress(httpx.HTTPError):
        return httpx.get(url, verify=ca_file, timeout=2).status_code == 200
    return False


@pytest.mark.e2e
def test_a_chunk_killed_with_its_worker_is_finished_by_the_other_without_paying_twice(
    deployed: _Deployed, workers: _Workers, kandinsky_emulator: EmulatorServer, tmp_path: Path
) -> None:
    """SIGKILL of a worker and its chunk mid-render: another worker finishes it, one submit
    per row, and the batch's run ends Completed.

    The last test of the module: it kills one of the shared workers."""
    kandinsky_emulator.configure(processing_seconds=2.0)
    rows = [
        {
            "id": f"row-{n}",
            "prompt": f"Scene {n}: the tide goes out.",
            "image": kandinsky_emulator.sample_image_url,
            "resolution": "256P",
            "duration": "1s",
        }
        for n in range(1, 7)
    ]
    ledger = tmp_path / "ledger"
    options = {
        "rows": rows,
        "batch_id": f"e2e-{uuid4().hex[:8]}",
        "credentials": CREDENTIALS_BLOCK,
        "destination": str(tmp_path / "videos"),
        "ledger": str(ledger),
        "chunk_size": 3,
        "chunk_deployment": "generate-videos-chunk/chunks",
        "chunk_lease_seconds": 6,
        "max_concurrency": 3,
        "poll_interval_seconds": 0.05,
        "max_poll_interval_seconds": 0.2,
    }
    processes = _Processes(tmp_path / "logs", deployed.env)
    since = workers.mark()
    passed = False
    try:
        processes.start("batch", [sys.executable, "-c", RUN_BATCH, json.dumps(options)])
        lease = _until(
            "chunk 1 renders its rows",
            lambda: _chunk_working(ledger, "1-of-2", ["row-1", "row-2", "row-3"]),
        )
        chunk_pid = int(lease["pid"])
        victim = next(
            label for label in workers.names if chunk_pid in _descendants(workers.popen(label).pid)
        )
        for pid in (workers.popen(victim).pid, *_descendants(workers.popen(victim).pid)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        workers.popen(victim).wait(timeout=10)
        processes.wait_ok("batch", timeout=RUN_TIMEOUT)

        assert 'COUNTS {"stored": 6}' in processes.output("batch")
        assert 6 == kandinsky_emulator.state.count("submit"), "one submit per row"
        prompts = sorted(job.prompt for job in kandinsky_emulator.state.jobs())
        assert sorted(row["prompt"] for row in rows) == prompts, "each row submitted once"
        assert 6 == len(list((tmp_path / "videos").glob("*.mp4")))
        assert "Chunk 1-of-2 lost its process (attempt 1 of 3" in processes.output("batch")
        survivor = next(label for label in workers.names if label != victim)
        assert "generate-videos-chunk-1-of-2" in workers.output(survivor, since)
        passed = True
    finally:
        processes.stop_all()
        if not passed:
            processes.dump()
            workers.dump(since)
