"""Benchmark 1: persisting a large media file, streamed (persist_media) versus read whole.

Each download runs in a fresh subprocess (``download_child.py``) against a local
:class:`~media_server.MediaServer`, so one method's heap never inflates the other's peak. The
parent verifies every output file against the body's known SHA-256 and reads, from the
server's own counters, how many requests and bytes each method needed.
"""

from __future__ import annotations

import hashlib
import json
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from markdown_table import Table
from media_server import MediaServer

MIB = 1024 * 1024
_CHILD = Path(__file__).with_name("download_child.py")
_LABELS = {
    "naive": "naive: `httpx.get(url).content` + `write_bytes`",
    "persist": "`persist_media` (streamed, 1 MiB chunks)",
}


@dataclass(frozen=True)
class Download:
    """One measured download."""

    method: str
    size: int
    seconds: float
    added_kib: int
    memory_method: str
    attempts: int
    requests: int
    range_requests: int
    bytes_sent: int
    sha256_ok: bool


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(4 * MIB):
            digest.update(block)
    return digest.hexdigest()


def _download(server: MediaServer, method: str, kind: str, name: str, expected: str) -> Download:
    with tempfile.TemporaryDirectory(prefix="kandinsky-bench-") as directory:
        done = subprocess.run(
            [sys.executable, str(_CHILD), method, server.url(kind, name), directory],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"{method} download of {name} failed:\n{done.stderr[-3000:]}")
        result = json.loads(done.stdout.strip().splitlines()[-1])
        sha_ok = _file_sha256(Path(result["path"])) == expected
    stats = server.stats(name)
    return Download(
        method=method,
        size=result["bytes"],
        seconds=result["seconds"],
        added_kib=result["added_kib"],
        memory_method=result["memory_method"],
        attempts=result["attempts"],
        requests=stats.requests,
        range_requests=stats.range_requests,
        bytes_sent=stats.bytes_sent,
        sha256_ok=sha_ok,
    )


def _repeat(
    server: MediaServer, method: str, kind: str, tag: str, repeats: int, expected: str
) -> list[Download]:
    return [
        _download(server, method, kind, f"{tag}-{method}-{n}", expected) for n in range(repeats)
    ]


def _mib(n: float) -> str:
    return f"{n / MIB:.1f}"


def _summary(runs: list[Download]) -> tuple[float, float, str]:
    """(median seconds, max peak added in MiB, min-max seconds)."""
    times = [run.seconds for run in runs]
    peak = max(run.added_kib for run in runs) / 1024
    spread = f"{min(times):.2f}-{max(times):.2f}"
    return statistics.median(times), peak, spread


def run(*, size: int, small_size: int, repeats: int) -> list[Table]:
    """Measure both methods on a whole and a cut-once body; return the two tables."""
    memory = Table(
        "1a. Persist a large media file: peak memory and time",
        [
            "Method",
            "File",
            "Peak RSS added (MiB)",
            "Wall time, median (s)",
            "Range of runs (s)",
            "Throughput (MB/s)",
            "fsync",
            "sha256 ok",
        ],
    )
    resumed = Table(
        "1b. Download cut once at 50%: bytes transferred",
        [
            "Method",
            "File",
            "HTTP requests",
            "Range resumes",
            "Bytes transferred (MiB)",
            "x file size",
            "Wall time, median (s)",
            "Peak RSS added (MiB)",
            "sha256 ok",
        ],
    )
    memory_method = ""
    for file_size, reps in ((small_size, 1), (size, repeats)):
        with MediaServer(file_size) as server:
            expected = server.expected_sha256()
            for method in ("naive", "persist"):
                runs = _repeat(server, method, "media", f"whole{file_size}", reps, expected)
                median, peak, spread = _summary(runs)
                memory_method = runs[0].memory_method
                memory.add(
                    _LABELS[method],
                    f"{_mib(file_size)} MiB",
                    f"{peak:.1f}",
                    f"{median:.2f}",
                    spread if reps > 1 else "(1 run)",
                    f"{file_size / 1e6 / median:.0f}",
                    "yes" if method == "persist" else "no",
                    "yes" if all(r.sha256_ok for r in runs) else "NO",
                )
    with MediaServer(size) as server:
        expected = server.expected_sha256()
        for method in ("naive", "persist"):
            runs = _repeat(server, method, "cut-once", "cut", repeats, expected)
            median, peak, _ = _summary(runs)
            first = runs[0]
            counts = {(r.requests, r.range_requests, r.bytes_sent) for r in runs}
            if len(counts) > 1:
                raise RuntimeError(f"{method}: request counts differ between repeats: {runs}")
            resumed.add(
                _LABELS[method],
                f"{_mib(size)} MiB",
                first.requests,
                first.range_requests,
                _mib(first.bytes_sent),
                f"{first.bytes_sent / size:.2f}",
                f"{median:.2f}",
                f"{peak:.1f}",
                "yes" if all(r.sha256_ok for r in runs) else "NO",
            )
    how = (
        "`VmHWM` (peak RSS, reset after the imports with `5 > /proc/self/clear_refs`)"
        if memory_method == "VmHWM"
        else "`ru_maxrss`"
    )
    memory.notes += [
        f"Each download runs in a fresh subprocess. Peak RSS added = {how} minus the RSS "
        "right after the imports (httpx, prefect_kandinsky.media.storage and PyAV are imported "
        "first), so the figure is what the download itself added. `ru_maxrss` is not used "
        "directly: in a child it also holds the parent's RSS copied at fork, before exec.",
        f"Wall time is the median of {repeats} runs for the large file (1 run for the small "
        "one), from the start of the call to its return, including `persist_media`'s fsync, "
        "PyAV probe (which gives up on these non-MP4 bytes) and rename. MB = 10^6 bytes.",
        "Served by a `ThreadingHTTPServer` on 127.0.0.1 in the parent process; temp files on "
        "the local disk (not tmpfs). Every output is hashed by the parent and compared with "
        "the body's SHA-256.",
    ]
    resumed.notes += [
        "The server declares the full Content-Length, sends half the body, and closes the "
        "connection, once per file; later requests are served in full. Bytes transferred and "
        "requests are the server's own counters.",
        "The naive baseline retries the whole `httpx.get` on any exception; `persist_media` "
        "resumes with `Range: bytes=<received>-` and checks the total length.",
    ]
    return [memory, resumed]
