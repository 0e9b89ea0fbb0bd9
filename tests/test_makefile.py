"""The Makefile: `make demo` installs only what the demo needs, `make test` the rest."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def planned(folder: Path, target: str) -> str:
    """The commands `make -n <target>` would run in ``folder``."""
    result = subprocess.run(
        ["make", "--no-print-directory", "-n", "-C", str(folder), target],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return result.stdout


def test_demo_installs_the_emulator_extra_only_and_test_adds_dev(tmp_path: Path) -> None:
    """A fresh `make demo` installs `.[emulator]`; `make test` after it installs `.[dev]`."""
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy(ROOT / name, tmp_path / name)

    demo = planned(tmp_path, "demo")
    assert '-e ".[emulator]"' in demo
    assert "[dev]" not in demo

    # What the demo's install leaves behind: the venv and its stamp.
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    (tmp_path / ".venv" / "bin" / "python").touch()
    (tmp_path / ".venv" / ".installed-emulator").touch()
    assert "pip install" not in planned(tmp_path, "demo")
    test = planned(tmp_path, "test")
    assert '-e ".[dev]"' in test
    assert "-m venv" not in test
