"""Benchmark 4: what importing prefect-kandinsky costs, against ``import prefect``.

It also times what a flow imports (the three tasks, ``generate_video``, ``generate_videos``)
against ``from prefect import flow, task``, what any flow imports anyway.

Every figure comes from fresh interpreters (``python -c ...`` in a subprocess): one warm-up
round, then ``repeats`` rounds that run every case once in turn, reported as median, min and
max wall time, interpreter start included. ``import prefect`` is the baseline: a user of this
integration has Prefect loaded anyway, so "over prefect" is what the integration itself adds,
the median of the differences within a round (a case and its baseline ran seconds apart).
CPU time (user + system) is reported beside wall time: other work on shared cores disturbs it
much less. A second table lists which heavy modules each import leaves in ``sys.modules``.

Run alone with ``python benchmarks/import_bench.py [--repeats N]``, or through ``run.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from markdown_table import Table

REPEATS = 7
HEAVY = [
    "prefect_aws",
    "boto3",
    "botocore",
    "prefect.artifacts",
    "uvicorn",
    "starlette",
    "httpx",
    "av",
]
"""Modules whose presence after an import the second table reports."""


@dataclass(frozen=True)
class Case:
    """One thing to time in a fresh process."""

    label: str
    command: list[str]


FLOW_BASELINE = "from prefect import flow, task"
TASKS = "from prefect_kandinsky import submit_video, await_video, persist_video"
FLOW_CASES = frozenset(
    {
        "`from prefect_kandinsky import submit_video, await_video, persist_video`",
        "`from prefect_kandinsky import generate_video` (first use)",
        "`from prefect_kandinsky import generate_videos`",
    }
)
"""The cases compared with ``from prefect import flow, task`` as well."""


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def _cli() -> list[str] | None:
    script = Path(sys.executable).with_name("prefect-kandinsky")
    if script.exists():
        return [str(script)]
    found = shutil.which("prefect-kandinsky")
    return [found] if found else None


def _environment() -> dict[str, str]:
    """The environment of every timed process: this one's, but writing bytecode.

    ``pip install`` compiles an installed package to bytecode; an editable install (or a
    checkout) gets it on its first import, unless ``PYTHONDONTWRITEBYTECODE`` is set, in which
    case every import compiles the package's sources again (about 50 ms here) while Prefect's
    own modules keep their compiled copies. The warm-up round writes the bytecode, so every
    timed round measures what an installed package costs.
    """
    environment = dict(os.environ)
    environment.pop("PYTHONDONTWRITEBYTECODE", None)
    return environment


def _time(command: list[str]) -> tuple[float, float]:
    """Wall time and CPU time (user + system, from ``os.wait4``) of one run of ``command``."""
    started = time.perf_counter()
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_environment()
    )
    _pid, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        raise subprocess.CalledProcessError(process.returncode, command)
    return wall, usage.ru_utime + usage.ru_stime


def _time_rounds(cases: list[Case], repeats: int) -> dict[str, list[tuple[float, float]]]:
    """Wall times of every case: one untimed warm-up round, then ``repeats`` rounds, each
    running every case once in turn, so that a case and its baseline share the machine's
    load of the moment (on shared cores it drifts by seconds within a minute)."""
    for case in cases:
        _time(case.command)  # also writes the bytecode of the package's modules
    times: dict[str, list[tuple[float, float]]] = {case.label: [] for case in cases}
    for _ in range(repeats):
        for case in cases:
            times[case.label].append(_time(case.command))
    return times


def _paired_over(times: list[float], baseline: list[float]) -> float:
    """The median over rounds of (case - baseline) in the same round."""
    return statistics.median(t - b for t, b in zip(times, baseline, strict=True))


def _wall(rounds: list[tuple[float, float]]) -> list[float]:
    return [wall for wall, _cpu in rounds]


def _cpu(rounds: list[tuple[float, float]]) -> list[float]:
    return [cpu for _wall, cpu in rounds]


def _loaded(code: str) -> list[str]:
    """The modules of ``HEAVY`` in ``sys.modules`` after running ``code`` in a fresh process."""
    report = f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    probe = f"import json, sys\n{code}\n{report}"
    result = subprocess.run(_python(probe), check=True, capture_output=True, text=True)
    loaded: list[str] = json.loads(result.stdout.splitlines()[-1])
    return loaded


def run(repeats: int = REPEATS) -> list[Table]:
    """Time each import in fresh interpreters; list the heavy modules each one loads."""
    flow_base = Case("`from prefect import flow, task` (a flow's baseline)", _python(FLOW_BASELINE))
    cases = [
        Case("`import prefect` (baseline)", _python("import prefect")),
        Case("`import prefect_kandinsky`", _python("import prefect_kandinsky")),
        Case(
            "`from prefect_kandinsky import KandinskyCredentials`",
            _python("from prefect_kandinsky import KandinskyCredentials"),
        ),
        flow_base,
        Case(f"`{TASKS}`", _python(TASKS)),
        Case(
            "`from prefect_kandinsky import generate_video` (first use)",
            _python("from prefect_kandinsky import generate_video"),
        ),
        Case(
            "`from prefect_kandinsky import generate_videos`",
            _python("from prefect_kandinsky import generate_videos"),
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
        [
            "What runs",
            "Median (s)",
            "Min-max (s)",
            "Over `import prefect`, median (s)",
            "Over `from prefect import flow, task`, median (s)",
            "CPU, median (s)",
            "CPU over `from prefect import flow, task`, median (s)",
        ],
    )
    rounds = _time_rounds(cases, repeats)
    for case in cases:
        times, cpu = _wall(rounds[case.label]), _cpu(rounds[case.label])
        over = "-"
        if case is not cases[0]:
            over = f"{_paired_over(times, _wall(rounds[cases[0].label])):+.2f}"
        over_flow = cpu_over_flow = "-"
        if case.label in FLOW_CASES:
            over_flow = f"{_paired_over(times, _wall(rounds[flow_base.label])):+.2f}"
            cpu_over_flow = f"{_paired_over(cpu, _cpu(rounds[flow_base.label])):+.2f}"
        timings.add(
            case.label,
            f"{statistics.median(times):.2f}",
            f"{min(times):.2f}-{max(times):.2f}",
            over,
            over_flow,
            f"{statistics.median(cpu):.2f}",
            cpu_over_flow,
        )
    timings.notes += [
        f"Wall time of `{Path(sys.executable).name} -c ...` (or the console script) from "
        f"spawn to exit, interpreter start included; one warm-up round, then {repeats} "
        "rounds that run every case once in turn, one after the other, never in parallel. "
        "Bytecode is written (as `pip install` does), even under `PYTHONDONTWRITEBYTECODE`.",
        "Over `import prefect`: the median over rounds of the case's time minus the "
        "baseline's in the same round, i.e. what the integration adds for a user who imports "
        "Prefect anyway. The pytest plugin and `--help` do not import Prefect, so they can "
        "come out below it.",
        "Over `from prefect import flow, task`: the same, against what any flow imports: what "
        "a flow pays for the names it takes from the package (the budget for the three tasks "
        "is +0.15 s). CPU: user plus system time of the process, which other work on the "
        "machine disturbs much less than wall time. Defining a flow makes "
        "Prefect build its parameter schema (pydantic.v1 included, about 0.2 s) and "
        "`generate_video` offers an `S3Bucket` block in its form, so it loads prefect-aws.",
    ]
    if cli is None:
        timings.notes.append("`prefect-kandinsky` is not installed here: `--help` not timed.")

    imports = {
        "`import prefect_kandinsky`": "import prefect_kandinsky",
        "pytest plugin": "import prefect_kandinsky.emulator.pytest_plugin",
        "`from prefect_kandinsky import KandinskyCredentials`": (
            "from prefect_kandinsky import KandinskyCredentials"
        ),
        "the three tasks": TASKS,
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
