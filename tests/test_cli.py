"""The command line: the README's main job (`make demo`) and `generate` on a local image."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import av
import pytest

from prefect_kandinsky import cli
from prefect_kandinsky.emulator import SAMPLE_IMAGE_PATH

ROOT = Path(__file__).resolve().parents[1]


def test_make_demo_writes_a_playable_mp4(tmp_path: Path) -> None:
    """`make demo` on a fresh machine: no Prefect server, a new PREFECT_HOME, no choice made
    about telemetry. It runs the flow on the built-in emulator, says where the MP4 is and how
    to browse the run, and prints no traceback, error or telemetry line on the way."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PREFECT_", "KANDINSKY_")) and k != "DO_NOT_TRACK"
    }
    result = subprocess.run(
        [
            "make",
            "--no-print-directory",
            "-C",
            str(ROOT),
            "demo",
            f"OUTPUT={tmp_path / 'out'}",
            f"DEMO_PREFECT_HOME={tmp_path / 'prefect-home'}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert 0 == result.returncode, result.stdout + result.stderr
    video = re.search(r"^Video:\s+(\S+\.mp4)$", result.stdout, re.MULTILINE)
    assert video, result.stdout
    path = Path(video.group(1))
    assert tmp_path / "out" == path.parent
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert (73, 768, 512) == (
            sum(1 for _ in container.decode(stream)),
            stream.width,
            stream.height,
        )
    assert re.search(r"^Request id:\s+kandinsky-5-0-pro-953_\S+$", result.stdout, re.MULTILINE)
    assert "Cost:        $0.12" in result.stdout
    assert "kandinsky-summary-" in result.stdout
    assert str(tmp_path / "prefect-home") in result.stdout
    assert re.search(
        r"PREFECT_HOME=\S+ PREFECT_SERVER_ANALYTICS_ENABLED=false \S+ server start", result.stdout
    )
    assert "Traceback" not in result.stderr
    assert "telemetry" not in result.stderr.lower()
    assert "Error" not in result.stderr


@pytest.mark.usefixtures("prefect_api")
def test_generate_animates_a_local_file_on_the_emulator(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A local image is uploaded to the emulator and animated; the report names the file."""
    code = cli.main(
        [
            "generate",
            "--prompt",
            "The clouds drift to the right.",
            "--image",
            str(SAMPLE_IMAGE_PATH),
            "--emulator",
            "--resolution",
            "256P",
            "--duration",
            "1",
            "--poll-interval",
            "0.02",
            "--output",
            str(tmp_path),
        ]
    )
    out = capsys.readouterr().out
    assert 0 == code
    video = re.search(r"^Video:\s+(\S+)$", out, re.MULTILINE)
    assert video and Path(video.group(1)).is_file()
    assert "Cost:        unknown" in out


def test_a_local_file_that_is_not_an_image_is_not_uploaded(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With --emulator, a local file that is no image is refused in one line, never shown."""
    secret = tmp_path / "id_rsa.png"
    secret.write_bytes(b"-----BEGIN OPENSSH PRIVATE KEY-----\n")

    code = cli.main(["generate", "--prompt", "p", "--image", str(secret), "--emulator"])

    err = capsys.readouterr().err
    assert 2 == code
    assert f"--image {str(secret)!r} is not an image (36 bytes of something else)" in err
    assert "BEGIN" not in err


def test_local_image_needs_the_emulator(capsys: pytest.CaptureFixture[str]) -> None:
    """A local file cannot go to the real gateway; one line says what to do."""
    code = cli.main(["generate", "--prompt", "p", "--image", str(SAMPLE_IMAGE_PATH)])
    err = capsys.readouterr().err
    assert 2 == code
    assert 1 == len(err.splitlines())
    assert "needs a public http(s) URL (or add --emulator" in err


# -- mistakes are one line, exit code 2, and no flow run ------------------------------------


async def flow_run_count() -> int:
    """Every flow run the API holds, counted by the server (a read of runs stops at 200)."""
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        return await client.count_flow_runs()


def run_cli(*args: str, api_url: str, **env: str) -> subprocess.CompletedProcess[str]:
    """The installed command in a fresh process, on the test's Prefect API."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "KANDINSKY_"))}
    clean.update(PREFECT_API_URL=api_url, PREFECT_SERVER_ANALYTICS_ENABLED="false", **env)
    return subprocess.run(
        [str(Path(sys.executable).with_name("prefect-kandinsky")), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=clean,
    )


@pytest.mark.usefixtures("prefect_api")
@pytest.mark.parametrize(
    ("args", "says"),
    [
        (
            ["--image", "https://example.com/beach.png"],
            "no gateway API key: pass --credentials NAME (a saved KandinskyCredentials block), "
            "set KANDINSKY_API_KEY, or add --emulator",
        ),
        (
            ["--image", "https://example.com/beach.png", "--duration", "11s"],
            "argument --duration: duration must be whole seconds from 1s to 10s",
        ),
        (
            ["--image", "https://example.com/beach.png", "--resolution", "720P"],
            "argument --resolution: resolution must be one of 256P, 512P, 1024P; got '720P'",
        ),
        (
            ["--image", "https://example.com/beach.png", "--credentials", "no-such-block"],
            "--credentials 'no-such-block': no KandinskyCredentials block of that name",
        ),
        (["--image", "beach.png"], "--image 'beach.png' is a local file"),
    ],
)
async def test_mistakes_are_one_line_and_run_nothing(args: list[str], says: str) -> None:
    """A missing key or a bad argument: one line on stderr, exit 2, no flow run created."""
    from prefect.settings import PREFECT_API_URL

    before = await flow_run_count()
    result = run_cli(
        "generate", "--prompt", "Waves roll in.", *args, api_url=PREFECT_API_URL.value()
    )
    assert 2 == result.returncode
    assert [f"prefect-kandinsky: {says}"] == [
        line[: len(f"prefect-kandinsky: {says}")] for line in result.stderr.splitlines()
    ]
    assert "Traceback" not in result.stderr + result.stdout
    assert before == await flow_run_count()


@pytest.mark.usefixtures("prefect_api")
async def test_a_bad_image_url_is_refused_before_paying(kandinsky_emulator: Any) -> None:
    """With a real key, a 404 image is one line and exit 2: no flow run, no submit."""
    from prefect.settings import PREFECT_API_URL

    from prefect_kandinsky import KandinskyCredentials

    await KandinskyCredentials(
        api_key=kandinsky_emulator.api_key, base_url=kandinsky_emulator.base_url
    ).save("cli-emulator", overwrite=True)
    before = await flow_run_count()
    missing = kandinsky_emulator.cdn_url + "/samples/beach.png"
    result = run_cli(
        "generate",
        "--prompt",
        "Waves roll in.",
        "--image",
        missing,
        "--credentials",
        "cli-emulator",
        api_url=PREFECT_API_URL.value(),
    )
    assert 2 == result.returncode, result.stderr
    (line,) = result.stderr.splitlines()
    assert f"image_url {missing} answered 404 Not Found" in line
    assert line.endswith("(or pass --no-check-image)")
    assert before == await flow_run_count()
    assert 0 == kandinsky_emulator.state.count("submit")


def step_after_each_read(state: Any) -> None:
    """Move the first job one status further each time the client has read it (a thread)."""
    deadline = time.monotonic() + 60
    while not state.jobs():
        assert time.monotonic() < deadline
        time.sleep(0.01)
    request_id = state.jobs()[0].request_id
    for target in ("PROCESSING", "COMPLETED"):
        reads = state.count("status", request_id=request_id)
        while state.count("status", request_id=request_id) == reads:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        state.advance(request_id, target)


@pytest.mark.usefixtures("prefect_api")
async def test_generate_shows_progress_and_where_the_video_is(
    kandinsky_emulator: Any, tmp_path: Path
) -> None:
    """A saved block by name, "1s" as duration: status lines, then the video's path."""
    from prefect.settings import PREFECT_API_URL

    from prefect_kandinsky import KandinskyCredentials

    await KandinskyCredentials(
        api_key=kandinsky_emulator.api_key, base_url=kandinsky_emulator.base_url
    ).save("cli-emulator", overwrite=True)
    kandinsky_emulator.configure(manual=True)
    stepper = threading.Thread(target=step_after_each_read, args=(kandinsky_emulator.state,))
    stepper.start()
    result = run_cli(
        "generate",
        "--prompt",
        "Waves roll in.",
        "--image",
        kandinsky_emulator.sample_image_url,
        "--credentials",
        "cli-emulator",
        "--resolution",
        "256p",
        "--duration",
        "1s",
        "--poll-interval",
        "0.1",
        "--output",
        str(tmp_path),
        api_url=PREFECT_API_URL.value(),
    )
    stepper.join(timeout=10)
    assert 0 == result.returncode, result.stderr
    statuses = [line.split()[0] for line in result.stderr.splitlines() if line.strip()]
    assert ["QUEUED", "PROCESSING", "COMPLETED"] == statuses
    video = re.search(r"^Video:\s+(\S+)$", result.stdout, re.MULTILINE)
    assert video and Path(video.group(1)).is_file()
    assert re.search(r"^Artifacts:\s+kandinsky-summary-\S+ \[markdown\]$", result.stdout, re.M)
    assert re.search(
        r"^Open:\s+http://127\.0\.0\.1:\d+/runs/flow-run/[0-9a-f-]{36}$", result.stdout, re.M
    )
    assert 1 == kandinsky_emulator.state.count("submit")


@pytest.mark.usefixtures("prefect_api")
def test_batch_runs_a_manifest_of_local_images_on_the_emulator(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`batch` on the emulator: rows stored, spend and artifacts printed; again: nothing new."""
    (tmp_path / "photo.png").write_bytes(SAMPLE_IMAGE_PATH.read_bytes())
    manifest = tmp_path / "rows.csv"
    manifest.write_text(
        "id,prompt,image,resolution,duration\n"
        "a,The kite climbs.,photo.png,256P,1s\n"
        "b,The boat drifts.,photo.png,512P,1s\n"
    )
    arguments = [
        "batch",
        str(manifest),
        "--emulator",
        "--output",
        str(tmp_path / "videos"),
        "--ledger",
        str(tmp_path / "ledger"),
        "--poll-interval",
        "0.05",
    ]
    assert 0 == cli.main(arguments)
    out = capsys.readouterr().out
    assert re.search(r"^Stored:\s+2 of 2 rows$", out, re.MULTILINE)
    assert re.search(r"^Charged:\s+\$0\.04 ", out, re.MULTILINE), "512P 1 s; 256P is unpriced"
    assert re.search(r"^Artifacts:\s+kandinsky-batch-rows-csv-\w+ \[table\]$", out, re.MULTILINE)
    assert 2 == len(list((tmp_path / "videos").glob("*.mp4")))

    assert 0 == cli.main(arguments), "a second run finds every row stored"
    assert 2 == len(list((tmp_path / "videos").glob("*.mp4")))


def test_batch_reports_every_bad_row_and_runs_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A manifest with mistakes: exit 2, one line per problem, no flow run."""
    manifest = tmp_path / "rows.csv"
    manifest.write_text(
        "id,prompt,image,resolution\n"
        "a,The kite climbs.,https://example.com/a.png,720P\n"
        "b,,https://example.com/b.png,256P\n"
    )
    assert 2 == cli.main(["batch", str(manifest), "--emulator"])
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith(f"prefect-kandinsky: {manifest}: 2 problems in 2 rows")
    assert [
        "  line 2 (id a): resolution: resolution must be one of 256P, 512P, 1024P; got '720P'",
        "  line 3 (id b): prompt: prompt must be a non-empty description of the motion; got ''",
    ] == err[1:3]


@pytest.mark.usefixtures("prefect_api")
def test_an_incomplete_batch_still_prints_its_summary_and_the_way_out(
    kandinsky_emulator: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A FAILED row: exit 1, the spend and rows are printed, and the line says to run again."""
    from prefect_kandinsky import KandinskyCredentials

    KandinskyCredentials(
        api_key=kandinsky_emulator.api_key, base_url=kandinsky_emulator.base_url
    ).save("cli-batch-emulator", overwrite=True)
    kandinsky_emulator.state.plan_outcome("FAILED", "moderation rejected the prompt")
    image = kandinsky_emulator.sample_image_url
    manifest = tmp_path / "rows.csv"
    manifest.write_text(
        "id,prompt,image,resolution,duration\n"
        f"a,The kite climbs.,{image},512P,1s\n"
        f"b,The boat drifts.,{image},512P,1s\n"
    )
    code = cli.main(
        [
            "batch",
            str(manifest),
            "--credentials",
            "cli-batch-emulator",
            "--output",
            str(tmp_path / "videos"),
            "--ledger",
            str(tmp_path / "ledger"),
            "--max-concurrency",
            "1",
            "--poll-interval",
            "0.05",
        ]
    )
    captured = capsys.readouterr()
    assert 1 == code, captured.err
    assert re.search(r"^Stored:\s+1 of 2 rows$", captured.out, re.MULTILINE), captured.out
    assert re.search(r"^Charged:\s+\$0\.08 ", captured.out, re.MULTILINE), "FAILED is charged"
    assert re.search(r"^Rows:\s+1 failed, 1 stored$", captured.out, re.MULTILINE)
    assert (
        "1 row is not stored (failed: moderation rejected the prompt); pass --retry-failed"
        in captured.err
    )


# -- the first hour: quiet output, a version, help on every option, the UI's address -------


@pytest.mark.usefixtures("prefect_api")
def test_generate_on_a_fresh_profile_prints_no_telemetry_noise(tmp_path: Path) -> None:
    """A first `generate` with a new PREFECT_HOME and no choice made about telemetry: no
    traceback, error or telemetry line on stderr; the report says where to open the run.

    It runs on the suite's Prefect server; `test_make_demo_writes_a_playable_mp4` covers the
    first run without one (the temporary server a fresh machine starts).
    """
    from prefect.settings import PREFECT_API_URL

    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PREFECT_", "KANDINSKY_")) and k != "DO_NOT_TRACK"
    }
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")
    env["PREFECT_API_URL"] = str(PREFECT_API_URL.value())
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "prefect_kandinsky.cli",
            "generate",
            "--emulator",
            "--prompt",
            "The clouds drift to the right.",
            "--image",
            str(SAMPLE_IMAGE_PATH),
            "--resolution",
            "256P",
            "--duration",
            "1",
            "--output",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert 0 == result.returncode, result.stderr
    assert "Traceback" not in result.stderr
    assert "telemetry" not in result.stderr.lower()
    assert "Error" not in result.stderr
    assert re.search(r"^Video:\s+\S+\.mp4$", result.stdout, re.M)
    assert re.search(
        r"^Open:\s+http://127\.0\.0\.1:\d+/runs/flow-run/[0-9a-f-]{36}$", result.stdout, re.M
    )


def test_telemetry_is_left_alone_once_the_user_chose() -> None:
    """A user's PREFECT_SERVER_ANALYTICS_ENABLED, DO_NOT_TRACK or PREFECT_API_URL wins."""
    for chosen in ({"PREFECT_SERVER_ANALYTICS_ENABLED": "true"}, {"DO_NOT_TRACK": "0"}):
        environ = dict(chosen)
        assert not cli.quiet_telemetry(environ)
        assert chosen == environ
    environ = {}
    assert cli.quiet_telemetry(environ)
    assert {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"} == environ


def test_the_temporary_server_gets_time_to_start_unless_the_user_chose() -> None:
    """A first start migrates a new database: the CLI allows 120 s, or the user's own value."""
    environ: dict[str, str] = {}
    cli.patient_server_start(environ)
    assert {"PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120"} == environ
    environ = {"PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "15"}
    cli.patient_server_start(environ)
    assert {"PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "15"} == environ


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    """`--version` prints the installed version and exits 0."""
    from importlib.metadata import version

    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert 0 == exit_info.value.code
    assert f"prefect-kandinsky {version('prefect-kandinsky')}\n" == capsys.readouterr().out


def test_every_option_has_help() -> None:
    """Every option and argument of every subcommand says what it is in --help."""

    def missing(parser: Any, path: str) -> list[str]:
        found = []
        for action in parser._actions:
            if action.choices and isinstance(action.choices, dict):  # subcommands
                for name, sub in action.choices.items():
                    found += missing(sub, f"{path} {name}")
            elif not action.help:
                found.append(f"{path} {'/'.join(action.option_strings) or action.dest}")
        return found

    assert [] == missing(cli.build_parser(), "prefect-kandinsky")


def test_ui_address_follows_prefects_settings() -> None:
    """The printed address is Prefect's UI URL, or where `prefect server start` would serve."""
    from uuid import UUID

    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_SERVER_API_PORT,
        PREFECT_UI_URL,
        temporary_settings,
    )

    run = UUID("01234567-89ab-cdef-0123-456789abcdef")
    with temporary_settings(
        {PREFECT_API_URL: "http://10.0.0.5:4300/api", PREFECT_UI_URL: "https://ui.example.test"}
    ):
        assert [f"Open:        https://ui.example.test/runs/flow-run/{run}"] == cli._ui_hint(run)
    with temporary_settings({PREFECT_API_URL: "http://10.0.0.5:4300/api"}):
        assert [f"Open:        http://10.0.0.5:4300/runs/flow-run/{run}"] == cli._ui_hint(run)
    with temporary_settings({PREFECT_SERVER_API_PORT: 4321}, restore_defaults={PREFECT_API_URL}):
        hint = cli._ui_hint(run)
    assert f"             and open http://127.0.0.1:4321/runs/flow-run/{run}" == hint[-1]


@pytest.mark.usefixtures("prefect_api")
async def test_show_prints_a_summary_without_its_pictures_bytes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`show KEY` prints the summary's text; each embedded picture is a one-line note."""
    import asyncio

    from prefect import flow
    from prefect.artifacts import acreate_markdown_artifact

    from prefect_kandinsky.artifacts import summary_markdown
    from prefect_kandinsky.gateway.models import EmbeddedPreview, PersistedVideo

    picture = "data:image/jpeg;base64," + "A" * 4000
    moving = "data:image/webp;base64," + "B" * 40000
    persisted = PersistedVideo(
        request_id="kandinsky-5-0-pro-953_01a24df7-c201-73be-b634-b2e4cfbef7b2",
        uri="/data/videos/r1.mp4",
        size_bytes=10,
        sha256="0" * 64,
        source_url="http://127.0.0.1:1/r1.mp4",
        preview=EmbeddedPreview(
            width=256,
            height=170,
            poster=picture,
            strip=[picture] * 5,
            strip_seconds=[0.0, 0.25, 0.5, 0.75, 1.0],
            clip=moving,
        ),
    )

    @flow
    async def publish() -> None:
        await acreate_markdown_artifact(
            markdown=summary_markdown(persisted, None), key="kandinsky-summary-show-test"
        )

    await publish()

    code = await asyncio.to_thread(cli.main, ["show", "kandinsky-summary-show-test"])

    out = capsys.readouterr().out
    assert 0 == code
    assert "base64" not in out
    assert 1 == out.count("[picture: moving preview of the video, image/webp, 30.0 KB]")
    assert 5 == out.count("[picture: frame at ")
    assert "<code>/data/videos/r1.mp4</code>" in out
    assert len(out) < 3000
