"""The command line: the README's main job (`make demo`) and `generate` on a local image."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import av
import pytest

from prefect_kandinsky import cli
from prefect_kandinsky.emulator import SAMPLE_IMAGE_PATH

ROOT = Path(__file__).resolve().parents[1]


def test_make_demo_writes_a_playable_mp4(tmp_path: Path) -> None:
    """`make demo` runs the flow on the built-in emulator and says where the MP4 is."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
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


def test_local_image_needs_the_emulator() -> None:
    """A local file cannot go to the real gateway; the message says what to do."""
    with pytest.raises(SystemExit, match="needs a public http\\(s\\) URL.*--emulator"):
        cli.main(["generate", "--prompt", "p", "--image", str(SAMPLE_IMAGE_PATH)])
