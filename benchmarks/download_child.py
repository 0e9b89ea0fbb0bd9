"""One download in a fresh process, measured: ``python download_child.py METHOD URL DIR``.

METHOD is ``persist`` (:func:`prefect_kandinsky.media.storage.persist_media` into DIR) or ``naive``
(``httpx.get(url).content`` then ``Path.write_bytes``, re-downloading from scratch on any
error). Prints one JSON object: wall seconds, bytes, attempts, and memory.

Memory: after the imports the process resets the kernel's peak-RSS mark of its address space
(``5 > /proc/self/clear_refs``) and reads its current RSS (``VmRSS``); after the download it
reads the peak (``VmHWM``). The figure is the difference: the peak resident memory the download
added on top of the imported interpreter. ``VmHWM`` is the counter ``ru_maxrss`` is built
from, but ``ru_maxrss`` also keeps the peak of the address space the process had before
``exec`` (the parent's, copied by ``fork``), which can exceed everything the child does.
Without ``/proc`` it falls back to ``ru_maxrss`` minus ``ru_maxrss`` after the imports.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import resource
import sys
import time
from pathlib import Path
from typing import Any

import httpx


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise OSError(f"no {field} in /proc/self/status")


def _maxrss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


def _baseline() -> tuple[int, str]:
    """Reset the peak mark if allowed; the RSS the download's peak is measured from."""
    gc.collect()
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return _status_kib("VmRSS"), "VmHWM"
    except OSError:
        return _maxrss_kib(), "ru_maxrss"


def _peak(how: str) -> int:
    return _status_kib("VmHWM") if how == "VmHWM" else _maxrss_kib()


def naive(url: str, directory: Path) -> dict[str, Any]:
    """``httpx.get(url).content`` then ``write_bytes``; retry the whole thing on any error."""
    target = directory / "naive.mp4"
    attempts = 0
    while True:
        attempts += 1
        try:
            content = httpx.get(url, timeout=120).raise_for_status().content
        except Exception:
            if attempts >= 5:
                raise
            continue
        target.write_bytes(content)
        return {"path": str(target), "bytes": len(content), "attempts": attempts}


async def persist(url: str, directory: Path) -> dict[str, Any]:
    """``persist_media`` with a media-only client (no key), as ``persist_video`` does."""
    from prefect_kandinsky.gateway.client import KandinskyClient
    from prefect_kandinsky.gateway.models import CompletedVideo, JobStatus, StatusResponse
    from prefect_kandinsky.media.storage import persist_media

    request_id = "kandinsky-bench-" + url.rsplit("/", 1)[-1].removesuffix(".mp4")
    video = CompletedVideo(
        request_id=request_id,
        status=StatusResponse(request_id=request_id, status=JobStatus.COMPLETED),
        media_urls=[url],
        media_type="video/mp4",
    )
    async with KandinskyClient(api_key=None) as client:
        stored = await persist_media(client, video, directory)
    return {
        "path": stored.uri,
        "bytes": stored.size_bytes,
        "sha256": stored.sha256,
        "attempts": 1,
    }


def main() -> None:
    method, url, directory = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    logging.basicConfig(level=logging.ERROR)
    if method == "persist":
        # Imported before the baseline: persist_media probes the file with PyAV, whose
        # shared libraries would otherwise count as download memory.
        import prefect_kandinsky.media.storage  # noqa: F401

        with contextlib.suppress(ImportError):
            import av  # noqa: F401
    baseline, how = _baseline()
    started = time.perf_counter()
    if method == "persist":
        result = asyncio.run(persist(url, directory))
    elif method == "naive":
        result = naive(url, directory)
    else:
        raise SystemExit(f"unknown method {method!r}; use persist or naive")
    seconds = time.perf_counter() - started
    peak = _peak(how)
    result.update(
        seconds=seconds,
        baseline_kib=baseline,
        peak_kib=peak,
        added_kib=peak - baseline,
        memory_method=how,
        ru_maxrss_kib=_maxrss_kib(),
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
