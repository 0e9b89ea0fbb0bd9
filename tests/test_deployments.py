"""The deployments of ``deployments/prefect.yaml``: they match their flows, and they run.

The fast tests read the YAML the way ``prefect deploy`` does and hold it against the flows it
names. The end-to-end tests follow the README walkthrough on the suite's Prefect server (a
server process on loopback), two process workers and the gateway emulator (``deployed``, from
``deployment_fixtures``), and open the MP4s that land on disk. The chunked batches' end-to-end
tests are in ``test_deployments_batches.py``, which runs beside this file.
"""

from __future__ import annotations

import contextlib
import inspect
import re
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from uuid import uuid4

import httpx
import pytest
import yaml
from deployment_fixtures import (
    CREDENTIALS_BLOCK,
    FINAL,
    PREFECT,
    REPO,
    RUN_TIMEOUT,
    WEBHOOK_SECRET,
    WORK_POOL,
    Deployed,
    Processes,
    Workers,
    create_flow_run,
    descendants,
    flow_run_state,
    frames,
    free_port,
    prefect_api,
    run_deployment,
    until,
)
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

PREFECT_FILE = REPO / "deployments" / "prefect.yaml"
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


# -- end to end: deployed, run by process workers -------------------------------------


@pytest.mark.e2e
def test_deployments_run_on_a_process_worker(
    deployed: Deployed, workers: Workers, kandinsky_emulator: EmulatorServer, tmp_path: Path
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
    processes = Processes(tmp_path / "logs", deployed.env)
    since = workers.mark()
    passed = False
    try:
        processes.start(
            "on-demand",
            run_deployment(
                "generate-video/on-demand",
                prompt="The sun rises over the hills, the camera pushes in.",
                destination=str(videos),
                **small,
            ),
        )
        daily = {"slot": "2026-05-22T06:00:00Z", "destination": str(daily_videos), **small}
        processes.start("daily-slot", run_deployment("scheduled-video/daily", **daily))
        # At once, a re-trigger of the same slot (through the API: one CLI process is enough).
        again = create_flow_run(
            api_url, "scheduled-video/daily", **{**daily, "poll_interval_seconds": 0.05}
        )
        processes.wait_ok("on-demand", "daily-slot", timeout=RUN_TIMEOUT + 30)
        again_state = until(
            "the re-triggered slot's run ends",
            lambda: (state := flow_run_state(api_url, again))["type"] in FINAL and state,
        )
        assert "COMPLETED" == again_state["type"], again_state

        match = re.search(r"UUID: ([0-9a-f-]{36})", processes.output("on-demand"))
        assert match, processes.output("on-demand")
        with prefect_api(api_url) as api:
            flow_run = api.get(f"/flow_runs/{match.group(1)}").json()
            deployment = api.get("/deployments/name/generate-video/on-demand").json()
            daily = api.get("/deployments/name/scheduled-video/daily").json()
            artifacts = api.post(
                "/artifacts/filter", json={"flow_runs": {"id": {"any_": [flow_run["id"]]}}}
            ).json()

        assert "COMPLETED" == flow_run["state"]["type"]
        stored_videos = sorted(videos.glob("*.mp4"))
        assert 1 == len(stored_videos)
        assert 25 == frames(stored_videos[0])
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


def _started_run(processes: Processes, name: str) -> str:
    processes.wait_ok(name)
    match = re.search(r"UUID: ([0-9a-f-]{36})", processes.output(name))
    assert match, processes.output(name)
    return match.group(1)


@pytest.mark.e2e
def test_a_suspended_run_holds_nothing_until_its_video_is_done(
    deployed: Deployed, workers: Workers, kandinsky_emulator: EmulatorServer, tmp_path: Path
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
    port = free_port()
    receiver_url = f"https://127.0.0.1:{port}"
    videos = tmp_path / "videos"
    processes = Processes(tmp_path / "logs", deployed.env)
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
        until(
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
        prompt = "The hot-air balloon rises over the valley."
        processes.start(
            "run", [*trigger, *_params(small, prompt=prompt, webhook_base_url=receiver_url)]
        )
        # The same command, whose callback URL leads nowhere (through the API: one CLI is enough).
        lost_id = create_flow_run(
            deployed.api_url,
            "generate-video/on-demand",
            **{**small, "poll_interval_seconds": 0.05},
            prompt="The kite climbs over the dunes.",
            webhook_base_url=f"https://127.0.0.1:{free_port()}",
        )
        run_id = _started_run(processes, "run")
        for job in emulated.wait_for_jobs(2, timeout=RUN_TIMEOUT):
            emulated.advance(job.request_id, "PROCESSING")

        states = until(
            "both runs are suspended",
            lambda: _all_in(deployed, ("PAUSED",), run_id, lost_id),
        )
        assert ["Suspended", "Suspended"] == [s["name"] for s in states]
        until(
            "the flow-run processes exit",
            lambda: not any(descendants(workers.popen(label).pid) for label in workers.names),
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
        until(
            "the completion event resumes the first run",
            lambda: _states(deployed, run_id)[0]["type"] != "PAUSED",
        )
        emulated.advance(lost_job, "COMPLETED")
        emulated.wait_for_status(lost_job, timeout=60)
        assert "PAUSED" == _states(deployed, lost_id)[0]["type"], "no event came"
        sweep = create_flow_run(deployed.api_url, "sweep-videos/every-5-minutes", after_seconds=0)
        finals = until(
            "the event finishes the first run and the sweep the second",
            lambda: _all_in(deployed, FINAL, run_id, lost_id, sweep),
        )
        assert ["COMPLETED"] * 3 == [s["type"] for s in finals], finals
        assert 2 == kandinsky_emulator.state.count("submit")
        stored = sorted(videos.glob("*.mp4"))
        assert 2 == len(stored)
        assert [25, 25] == [frames(path) for path in stored]
        assert WEBHOOK_SECRET not in processes.output("receiver")
        assert kandinsky_emulator.api_key not in processes.output("receiver")
        passed = True
    finally:
        processes.stop_all()
        if not passed:
            processes.dump()
            workers.dump(since)


def _states(deployed: Deployed, *flow_run_ids: str) -> list[dict[str, Any]]:
    return [flow_run_state(deployed.api_url, run_id) for run_id in flow_run_ids]


def _all_in(
    deployed: Deployed, types: tuple[str, ...], *flow_run_ids: str
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
