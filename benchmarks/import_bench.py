"""Benchmark 4: what importing prefect-kandinsky costs, against ``import prefect``.

Every figure comes from fresh interpreters (``python -c ...`` in a subprocess): one warm-up
run, then ``repeats`` timed runs, reported as median, min and max wall time, interpreter start
included. ``import prefect`` is the baseline: a user of this integration has Prefect loaded
anyway, so "over prefect" is what the integration itself adds. A second table lists which
heavy modules each import leaves in ``sys.modules``.

Run alone with ``python benchmarks/import_bench.py [--repeats N]``, or through ``run.py``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from markdown_table import Table

REPEATS = 7
HEAVY = ["prefect_aws", "boto3", "prefect.artifacts", "uvicorn", "starlette", "httpx", "av"]
"""Modules whose presence after an import the second table reports."""


@dataclass(frozen=True)
class Case:
    """One thing to time in a fresh process."""

    label: str
    command: list[str]


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def _cli() -> list[str] | None:
    script = Path(sys.executable).with_name("prefect-kandinsky")
    if script.exists():
        return [str(script)]
    found = shutil.which("prefect-kandinsky")
    return [found] if found else None


def _time(command: list[str], repeats: int) -> list[float]:
    """Wall time of ``command``, ``repeats`` times after one untimed warm-up run."""
    times: list[float] = []
    for i in range(repeats + 1):
        started = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if i:
            times.append(time.perf_counter() - started)
    return times


def _loaded(code: str) -> list[str]:
    """The modules of ``HEAVY`` in ``sys.modules`` after running ``code`` in a fresh process."""
    report = f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    probe = f"import json, sys\n{code}\n{report}"
    result = subprocess.run(_python(probe), check=True, capture_output=True, text=True)
    loaded: list[str] = json.loads(result.stdout.splitlines()[-1])
    return loaded


def run(repeats: int = REPEATS) -> list[Table]:
    """Time each import in fresh interpreters; list the heavy modules each one loads."""
    cases = [
        Case("`import prefect` (baseline)", _python("import prefect")),
        Case("`import prefect_kandinsky`", _python("import prefect_kandinsky")),
        Case(
            "`from prefect_kandinsky import KandinskyCredentials`",
            _python("from prefect_kandinsky import KandinskyCredentials"),
        ),
        Case(
            "`from prefect_kandinsky import generate_video` (first use)",
            _python("from prefect_kandinsky import generate_video"),
        ),
        Case(
            "`import prefect_kandinsky.emulator.pytest_plugin`",
            _python("import prefect_kandinsky.emulator.pytest_plugin"),
        ),
    ]
    cli = _cli()
    if cli is not None:
        cases.append(Case("`prefect-kandinsky --help`", [*cli, "--help"]))
    cases.append(Case("`python -c pass` (interpreter start)", _python("pass")))

    timings = Table(
        f"4a. Import time in fresh interpreters ({repeats} runs each)",
        ["What runs", "Median (s)", "Min-max (s)", "Over `import prefect`, median (s)"],
    )
    baseline: float | None = None
    for case in cases:
        times = _time(case.command, repeats)
        median = statistics.median(times)
        if baseline is None:
            baseline = median
        over = "-" if case is cases[0] else f"{median - baseline:+.2f}"
        timings.add(case.label, f"{median:.2f}", f"{min(times):.2f}-{max(times):.2f}", over)
    timings.notes += [
        f"Wall time of `{Path(sys.executable).name} -c ...` (or the console script) from "
        f"spawn to exit, interpreter start included; one warm-up run, then {repeats} timed "
        "runs, median reported. Run one after the other, never in parallel.",
        "Over `import prefect`: median minus the baseline's median, i.e. what the integration "
        "adds for a user who imports Prefect anyway. The pytest plugin and `--help` do not "
        "import Prefect, so they can come out below it.",
    ]
    if cli is None:
        timings.notes.append("`prefect-kandinsky` is not installed here: `--help` not timed.")

    imports = {
        "`import prefect_kandinsky`": "import prefect_kandinsky",
        "pytest plugin": "import prefect_kandinsky.emulator.pytest_plugin",
        "`from prefect_kandinsky import KandinskyCredentials`": (
            "from prefect_kandinsky import KandinskyCredentials"
        ),
        "`from prefect_kandinsky import generate_video`": (
            "from prefect_kandinsky import generate_video"
        ),
    }
    loaded = {label: _loaded(code) for label, code in imports.items()}
    modules = Table("4b. Heavy modules in `sys.modules` after each import", ["Module", *imports])
    for name in HEAVY:
        modules.add(f"`{name}`", *("loaded" if name in loaded[label] else "-" for label in imports))
    modules.notes.append(
        "One fresh interpreter per column. `prefect_aws` brings boto3 and its ECS worker; "
        "uvicorn is the emulator's server; `av` is PyAV. `import prefect` itself loads "
        "starlette and httpx, hence their presence once a Prefect module is imported."
    )
    return [timings, modules]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=REPEATS, help="timed runs per case")
    args = parser.parse_args(argv)
    for table in run(repeats=args.repeats):
        print(table.to_markdown(), flush=True)


if __name__ == "__main__":
    main()
