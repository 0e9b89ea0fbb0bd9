"""`prefect-kandinsky batch` as a user runs it: s3:// manifests, refusals before any flow run,
spend that never reads $0.00 for an unknown price, the phase, and where the videos are."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pytest
from prefect.client.orchestration import get_client

from prefect_kandinsky import KandinskyCredentials, cli
from prefect_kandinsky.emulator import SAMPLE_IMAGE_PATH

pytestmark = pytest.mark.usefixtures("prefect_api")


def flow_runs() -> int:
    async def count() -> int:
        async with get_client() as client:
            return len(await client.read_flow_runs())

    return asyncio.run(count())


@pytest.fixture
def saved_credentials(kandinsky_emulator: Any) -> str:
    KandinskyCredentials(
        api_key=kandinsky_emulator.api_key, base_url=kandinsky_emulator.base_url
    ).save("cli-batch-edges", overwrite=True)
    return "cli-batch-edges"


def arguments(manifest: str, tmp_path: Path, *more: str) -> list[str]:
    return [
        "batch",
        manifest,
        "--output",
        str(tmp_path / "videos"),
        "--ledger",
        str(tmp_path / "ledger"),
        "--poll-interval",
        "0.05",
        *more,
    ]


def test_an_s3_manifest_runs_with_input_bucket(
    kandinsky_emulator: Any,
    saved_credentials: str,
    s3_bucket: Any,
    s3_client: Any,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`batch s3://bucket/rows.csv --input-bucket NAME` reads the manifest through the block."""
    s3_bucket.save("cli-inputs", overwrite=True)
    image = kandinsky_emulator.sample_image_url
    s3_client.put_object(
        Bucket=s3_bucket.bucket_name,
        Key="manifests/rows.csv",
        Body=f"id,prompt,image,resolution,duration\na,The kite climbs.,{image},512P,1s\n",
    )
    uri = f"s3://{s3_bucket.bucket_name}/manifests/rows.csv"
    more = ("--credentials", saved_credentials, "--input-bucket", "cli-inputs")

    assert 0 == cli.main(arguments(uri, tmp_path, *more)), capsys.readouterr().err
    out = capsys.readouterr().out
    assert re.search(r"^Stored:\s+1 of 1 row$", out, re.MULTILINE), out
    assert re.search(rf"^Videos:\s+{re.escape(str(tmp_path / 'videos'))}$", out, re.MULTILINE)
    assert 1 == kandinsky_emulator.state.count("submit")


def test_local_images_without_a_bucket_are_one_problem_naming_the_flag(
    kandinsky_emulator: Any, saved_credentials: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Three local images and no --input-bucket: exit 2, one line naming the flag, no flow run."""
    (tmp_path / "photo.png").write_bytes(SAMPLE_IMAGE_PATH.read_bytes())
    manifest = tmp_path / "rows.csv"
    manifest.write_text(
        "id,prompt,image,resolution,duration\n"
        + "".join(f"{n},Scene {n}.,photo.png,512P,1s\n" for n in "abc")
    )
    before = flow_runs()
    code = cli.main(arguments(str(manifest), tmp_path, "--credentials", saved_credentials))
    err = capsys.readouterr().err
    assert 2 == code, err
    assert "3 rows (lines 2, 3, 4) name a local file or an s3:// object" in err
    assert 1 == err.count("--input-bucket") and 1 == err.count("input_bucket,")
    assert before == flow_runs()
    assert 0 == kandinsky_emulator.state.count("submit")


@pytest.mark.parametrize("refusal", ["image", "budget"])
def test_image_and_budget_refusals_exit_2_before_any_flow_run(
    refusal: str,
    kandinsky_emulator: Any,
    saved_credentials: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A 404 image, or a batch over --max-cost: exit 2 with the reason; no flow run is made."""
    image = kandinsky_emulator.sample_image_url
    missing = kandinsky_emulator.cdn_url + "/samples/missing.png"
    manifest = tmp_path / "rows.csv"
    manifest.write_text(
        "id,prompt,image,resolution,duration\n"
        f"a,The kite climbs.,{image},512P,5s\n"
        f"b,The boat drifts.,{missing if refusal == 'image' else image},512P,5s\n"
    )
    more = ["--credentials", saved_credentials]
    if refusal == "budget":
        more += ["--max-cost", "0.30"]
    before = flow_runs()
    code = cli.main(arguments(str(manifest), tmp_path, *more))
    err = capsys.readouterr().err
    assert 2 == code, err
    expected = r"line 3 \(id b\): image: .*404" if refusal == "image" else r"over max_cost_usd"
    assert re.search(expected, err), err
    assert before == flow_runs()
    assert 0 == kandinsky_emulator.state.count("submit")


def test_spend_says_unknown_and_a_free_rerun_says_no_new_charges(
    kandinsky_emulator: Any, saved_credentials: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A 256P row is charged at an unknown price, never $0.00; a rerun paid nothing new."""
    image = kandinsky_emulator.sample_image_url
    manifest = tmp_path / "rows.csv"
    manifest.write_text(
        "id,prompt,image,resolution,duration\n"
        f"a,The kite climbs.,{image},256P,1s\n"
        f"b,The boat drifts.,{image},512P,1s\n"
    )
    command = arguments(str(manifest), tmp_path, "--credentials", saved_credentials)

    assert 0 == cli.main(command)
    first = capsys.readouterr()
    charged = "$0.04 plus 1 row without a documented price (unknown)"
    assert f"Charged:     {charged} in all, by the documented prices; this run: {charged}" in (
        first.out
    ), first.out
    assert "checking rows...\nchecking images...\n" in first.err, "the phases, off a terminal"

    assert 0 == cli.main(command)
    again = capsys.readouterr().out
    assert f"Charged:     {charged} in all, by the documented prices; this run: no new " in again


def test_a_batch_another_run_holds_exits_2_naming_it(
    kandinsky_emulator: Any, saved_credentials: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """The batch's lease is held by a live run elsewhere: exit 2 naming it, no flow run."""
    from datetime import datetime, timedelta, timezone

    from prefect_kandinsky.batch.lease import LEASE_NAME, LeaseRecord
    from prefect_kandinsky.batch.ledger import Ledger

    manifest = tmp_path / "rows.csv"
    manifest.write_text(
        "id,prompt,image,resolution,duration\n"
        f"a,The kite climbs.,{kandinsky_emulator.sample_image_url},512P,1s\n"
    )
    folder = Ledger(tmp_path / "ledger", str(manifest)).local_folder
    assert folder is not None
    folder.mkdir(parents=True)
    now = datetime.now(timezone.utc)
    (folder / LEASE_NAME).write_text(
        LeaseRecord(
            holder="flow run 'generate-videos-rows-csv' on host-b",
            token="t",
            host="host-b",
            pid=1,
            acquired_at=now,
            expires_at=now + timedelta(minutes=2),
        ).model_dump_json()
    )
    before = flow_runs()
    code = cli.main(arguments(str(manifest), tmp_path, "--credentials", saved_credentials))
    err = capsys.readouterr().err
    assert 2 == code, err
    assert "is being run by flow run 'generate-videos-rows-csv' on host-b" in err
    assert before == flow_runs()
    assert 0 == kandinsky_emulator.state.count("submit")
