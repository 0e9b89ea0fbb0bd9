"""Soak: a batch under chaos and kills, with and without callbacks: rows paid twice.

One batch of N rows (256P, 1 s) through ``generate_videos`` in a child process, against the
emulator under continuous chaos (a share of status reads answered 500/502/503, bursts of 429,
one submit in 25 answered 500 after the job was committed and charged, one download in 6 cut
halfway), the child SIGKILLed K times at random moments, then run again until it ends. Then,
as the README told users before callbacks could adopt, once more with
``resubmit_uncertain=True``. The emulator's job list is the witness: a row with two jobs was
paid twice.

Two contenders, measured in the same run, each on a fresh emulator and ledger:

* ``callbacks off``: today's behaviour without callbacks (the baseline);
* ``callbacks on``: ``webhook_base_url`` to the package's receiver over https (a throwaway
  certificate the emulator trusts), ``webhook_mode="sync"``: lost submits are adopted.

Usage::

    python benchmarks/orphans_soak.py --rows 1000 --kills 5 [--seed 7] [--out results.md]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

CHILD = """
import asyncio, json, sys
from prefect_kandinsky import KandinskyCredentials
from prefect_kandinsky.batch import generate_videos
from prefect_kandinsky.gateway.exceptions import KandinskyBatchIncompleteError

settings = json.loads(open(sys.argv[1]).read())
credentials = KandinskyCredentials(**settings.pop("credentials"))
try:
    result = asyncio.run(generate_videos(settings.pop("rows"), credentials=credentials, **settings))
except KandinskyBatchIncompleteError as exc:
    result = exc.result
print("SOAK_RESULT " + json.dumps({
    "counts": result.counts,
    "adopted": result.adopted_rows,
    "ambiguous": result.ambiguous_attempts,
    "charged": str(result.charged_usd),
    "ambiguous_usd": str(result.ambiguous_usd),
    "errors": sorted({
        (r.error or "")[:160] for r in result.rows if r.state not in ("stored", "uncertain")
    })[:3],
}))
"""
SECRET = "soak-secret-for-callbacks"
STATUS_FAULT_SHARE = 0.25
SUBMIT_LOST_EVERY = 25
DOWNLOAD_CUT_EVERY = 6
BURST_429_EVERY_SECONDS = 5.0
MAX_RERUNS = 5
"""Runs again at most this often after the last kill (waits cut short by the chaos)."""


class Chaos:
    """Keeps faults queued in the emulator at the soak's rates, from a thread."""

    def __init__(self, state: Any, seed: int) -> None:
        self.state = state
        self.random = random.Random(seed)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="soak-chaos", daemon=True)
        self.injected: Counter[str] = Counter()

    def __enter__(self) -> Chaos:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.state.clear_faults()

    def _pending(self, route: str) -> int:
        return sum(f.times for f in self.state.faults if f.route == route)

    def _run(self) -> None:
        seen = {"status": 0, "submit": 0, "media": 0}
        last_burst = time.monotonic()
        while not self._stop.wait(0.01):
            counts = {kind: self.state.count(kind) for kind in seen}
            for _ in range(counts["status"] - seen["status"]):
                if self.random.random() < STATUS_FAULT_SHARE and self._pending("status") < 4:
                    code = self.random.choice((500, 502, 503))
                    self.state.inject_fault("status", status_code=code)
                    self.injected[f"status {code}"] += 1
            for n in range(seen["submit"] + 1, counts["submit"] + 1):
                if n % SUBMIT_LOST_EVERY == 0 and not self._pending("submit"):
                    self.state.inject_fault("submit", status_code=500, after_queue=True)
                    self.injected["submit 500 after commit"] += 1
            for n in range(seen["media"] + 1, counts["media"] + 1):
                if n % DOWNLOAD_CUT_EVERY == 0 and not self._pending("media"):
                    self.state.inject_fault("media", action="truncate")
                    self.injected["download cut halfway"] += 1
            if time.monotonic() - last_burst > BURST_429_EVERY_SECONDS:
                last_burst = time.monotonic()
                self.state.inject_fault("status", status_code=429, retry_after=0.2, times=3)
                self.injected["status 429 (burst of 3)"] += 3
            seen = counts


def _faults_seen(state: Any) -> int:
    return sum(1 for record in state.requests() if record.fault is not None)


@contextlib.contextmanager
def _receiver(emulator: Any, folder: Path) -> Iterator[str]:
    from prefect_kandinsky import KandinskyCredentials
    from prefect_kandinsky.events.certificates import throwaway_certificate
    from prefect_kandinsky.events.server import WebhookServer

    ca_file, server_pem = throwaway_certificate(folder / "tls")
    emulator.configure(webhook_ca_file=str(ca_file))
    credentials = KandinskyCredentials(
        api_key=emulator.api_key, base_url=emulator.base_url, webhook_secret=SECRET
    )
    with WebhookServer(credentials, certfile=str(server_pem)) as server:
        yield server.url


def _child(settings: dict[str, Any], env: dict[str, str]) -> subprocess.Popen[str]:
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump(settings, handle)  # a thousand rows are too long for one argument
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, handle.name],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )


def _result(process: subprocess.Popen[str], label: str) -> dict[str, Any]:
    out, _ = process.communicate()
    for line in out.splitlines():
        if line.startswith("SOAK_RESULT "):
            result = dict(json.loads(line.removeprefix("SOAK_RESULT ")))
            print(
                f"  {label}: run ended: {result['counts']} {result['errors']}",
                file=sys.stderr,
                flush=True,
            )
            return result
    raise RuntimeError(f"the batch printed no result (exit {process.returncode})")


def contender(
    label: str, *, rows: int, kills: int, seed: int, callbacks: bool, folder: Path
) -> dict[str, Any]:
    """One soak: chaos, kills, runs to the end, then the resubmit the README advised."""
    from prefect.settings import PREFECT_API_URL

    from prefect_kandinsky.emulator import EmulatorConfig, EmulatorServer

    rng = random.Random(seed)
    config = EmulatorConfig(
        queue_seconds=0.2,
        processing_seconds=0.6,
        sync_interval_seconds=0.3,
        submit_latency_seconds=0.05,
    )
    started = time.monotonic()
    with EmulatorServer(config=config) as emulator, contextlib.ExitStack() as stack:
        base = stack.enter_context(_receiver(emulator, folder)) if callbacks else None
        image = emulator.sample_image_url
        settings: dict[str, Any] = {
            "rows": [
                {
                    "id": f"row-{i:05d}",
                    "prompt": f"Slow push-in on product {i:05d}, soft studio light.",
                    "image_url": image,
                    "resolution": "256P",
                    "duration": "1s",
                }
                for i in range(rows)
            ],
            "batch_id": f"soak-{label}-{seed}",
            "destination": str(folder / "videos"),
            "ledger": str(folder / "ledger"),
            "check_image": False,
            "max_concurrency": 32,
            "poll_interval_seconds": 0.2,
            "max_poll_interval_seconds": 0.5,
            "wait_timeout_seconds": 120,
            "allow_failures": True,
            "credentials": {
                "api_key": emulator.api_key,
                "base_url": emulator.base_url,
                "webhook_secret": SECRET,
                "max_retries": 6,
            },
        }
        if base:
            settings.update(webhook_base_url=base, webhook_mode="sync")
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env.update(
            PREFECT_API_URL=str(PREFECT_API_URL.value()),
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            PREFECT_LOGGING_LEVEL="WARNING",
        )
        state = emulator.state
        runs = 0
        with Chaos(state, seed) as chaos:
            for _ in range(kills):
                process = _child(settings, env)
                runs += 1
                target = state.count("submit") + rng.randint(20, max(21, rows // (kills + 1)))
                while state.count("submit") < target and process.poll() is None:
                    time.sleep(0.01)
                process.send_signal(signal.SIGKILL)
                process.wait()
                print(
                    f"  {label}: killed run {runs} at {state.count('submit')} submits",
                    file=sys.stderr,
                    flush=True,
                )
            outcome = _result(_child(settings, env), label)
            runs += 1
            for _ in range(MAX_RERUNS):
                if (
                    outcome["counts"].get("stored", 0) + outcome["counts"].get("uncertain", 0)
                    == rows
                ):
                    break
                outcome = _result(_child(settings, env), label)  # waits cut short by chaos: again
                runs += 1
        before_resubmit = dict(outcome)
        uncertain = outcome["counts"].get("uncertain", 0)
        if uncertain:
            outcome = _result(_child({**settings, "resubmit_uncertain": True}, env), label)
            runs += 1
        per_row = Counter(job.prompt for job in state.jobs())
        return {
            "label": label,
            "rows": rows,
            "kills": kills,
            "runs": runs,
            "faults": _faults_seen(state),
            "injected": dict(chaos.injected),
            "stored": len(list((folder / "videos").glob("*.mp4"))),
            "jobs": len(state.jobs()),
            "paid_twice": sum(1 for n in per_row.values() if n > 1),
            "adopted": before_resubmit["adopted"],
            "uncertain": uncertain,
            "charged_before_resubmit": before_resubmit["charged"],
            "ambiguous_before_resubmit": before_resubmit["ambiguous"],
            "seconds": round(time.monotonic() - started, 1),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    home = tempfile.mkdtemp(prefix="soak-prefect-home-")
    os.environ.update(PREFECT_HOME=home, PREFECT_SERVER_ANALYTICS_ENABLED="false")
    from prefect.testing.utilities import prefect_test_harness

    figures = []
    with prefect_test_harness(server_startup_timeout=120):
        for label, callbacks in (("callbacks off", False), ("callbacks on", True)):
            with tempfile.TemporaryDirectory(prefix="soak-") as folder:
                figure = contender(
                    label,
                    rows=args.rows,
                    kills=args.kills,
                    seed=args.seed,
                    callbacks=callbacks,
                    folder=Path(folder),
                )
            print(json.dumps(figure), flush=True)
            figures.append(figure)


if __name__ == "__main__":
    main()
