"""Batches: a manifest of rows, each one paid video, run so that no row is paid twice.

``manifests`` reads and checks a manifest (CSV or JSONL; local, ``s3://`` or any Prefect
filesystem), ``ledger`` keeps one durable record per row, ``runner`` submits, waits for and
stores the rows, ``flows`` holds the ``generate-videos`` flow and its chunks, and
``artifacts`` shows a batch in the Prefect UI. Built on the one-video layer below it.

``generate_videos`` and ``BatchResult`` are importable from here (and from
``prefect_kandinsky``); each loads on first access.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prefect_kandinsky.lazy import lazy_exports

if TYPE_CHECKING:
    from prefect_kandinsky.batch.flows import generate_videos, generate_videos_chunk
    from prefect_kandinsky.batch.result import BatchResult

_LAZY: dict[str, str] = {
    "BatchResult": "prefect_kandinsky.batch.result",
    "generate_videos": "prefect_kandinsky.batch.flows",
    "generate_videos_chunk": "prefect_kandinsky.batch.flows",
}
"""Where each public name lives: imported from that module on first access."""

__all__ = ["BatchResult", "generate_videos", "generate_videos_chunk"]

if not TYPE_CHECKING:
    __getattr__, __dir__ = lazy_exports(globals(), _LAZY)
