"""Benchmark 7: peak memory of reading a 1,000,000-row manifest, streamed against whole.

One CSV of ``--rows`` rows (http(s) images, so no file is looked at) is written once to a
temporary folder; each method then runs in a fresh interpreter, which reports its own peak RSS
(``ru_maxrss``), the RSS right after imports, and its wall time:

- baseline, whole file: ``read_text`` + ``parse_manifest`` + ``load_manifest`` of the parsed
  rows, the shape of the loader before it streamed (text, parsed dicts and rows all held at
  once, the same validation, keys and digest);
- ``load_manifest`` with the default row limit (100,000): reading stops past the limit and the
  manifest is refused with one problem;
- ``load_manifest(max_rows=rows)``: every row read as a stream; what is held is the validated
  rows, not the text.

Run alone with ``python benchmarks/manifest_memory.py [--rows N]``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from markdown_table import Table

ROWS = 1_000_000

_CHILD = r"""
import asyncio, json, resource, sys, time
from pathlib import Path
from prefect_kandinsky.batch.manifests import load_manifest, parse_manifest
from prefect_kandinsky.gateway.exceptions import KandinskyManifestError

def rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

method, path, rows = sys.argv[1], sys.argv[2], int(sys.argv[3])
base = rss_mib()
start = time.perf_counter()
outcome = ""
async def load():
    # The same work either way (validation, keys, digest); only the reading differs.
    if method == "whole":
        text = Path(path).read_text(encoding="utf-8")
        parsed = [values for _, values in parse_manifest(text, format="csv")]
        return len((await load_manifest(parsed, max_rows=rows)).rows)
    limit = None if method == "default" else rows
    return len((await load_manifest(path, max_rows=limit)).rows)

try:
    outcome = f"{asyncio.run(load())} rows"
except KandinskyManifestError as exc:
    outcome = "refused: " + exc.problems[-1].message.partition(";")[0]
print(json.dumps({"base": base, "peak": rss_mib(), "seconds": time.perf_counter() - start,
                  "outcome": outcome}))
"""

METHODS = [
    ("whole", "baseline: whole text, parsed, then validated"),
    ("default", "`load_manifest`, default limit (100,000 rows)"),
    ("all", "`load_manifest(max_rows=rows)`, streamed"),
]


def _write_manifest(path: Path, rows: int) -> None:
    with path.open("w", encoding="utf-8") as out:
        out.write("id,prompt,image,resolution,duration\n")
        for i in range(rows):
            out.write(
                f"sku-{i},The product {i} turns slowly on the table.,"
                f"https://images.example.com/catalogue/{i}.png,512P,5s\n"
            )


def run(rows: int = ROWS) -> Table:
    """Measure every method on one manifest of ``rows`` rows."""
    table = Table(
        f"7. Read a {rows:,}-row CSV manifest: peak memory",
        ["Method", "File", "Peak RSS (MiB)", "Added over imports (MiB)", "Wall (s)", "Outcome"],
    )
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "big.csv"
        _write_manifest(path, rows)
        size = f"{path.stat().st_size / 2**20:.0f} MiB"
        for method, label in METHODS:
            done = subprocess.run(
                [sys.executable, "-c", _CHILD, method, str(path), str(rows)],
                capture_output=True,
                text=True,
                check=True,
            )
            figures = json.loads(done.stdout.strip().splitlines()[-1])
            table.add(
                label,
                size,
                f"{figures['peak']:.0f}",
                f"{figures['peak'] - figures['base']:.0f}",
                f"{figures['seconds']:.1f}",
                figures["outcome"],
            )
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=ROWS)
    print(run(parser.parse_args().rows).to_markdown())


if __name__ == "__main__":
    main()
