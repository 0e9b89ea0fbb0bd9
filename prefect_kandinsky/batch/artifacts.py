"""A batch in the Prefect UI: a progress artifact while rows finish, then a table of every row
and a markdown summary (counts, spend, thumbnails of the stored rows).

Built on the one-video artifacts' helpers (:mod:`prefect_kandinsky.artifacts`).
"""

from __future__ import annotations

import hashlib
import html
import time
from typing import TYPE_CHECKING
from uuid import UUID

from prefect.artifacts import (
    acreate_markdown_artifact,
    acreate_progress_artifact,
    acreate_table_artifact,
    aupdate_progress_artifact,
)

from prefect_kandinsky.artifacts import KEY_UNSAFE, describe, in_run, markdown_cell, short_prompt
from prefect_kandinsky.events.adoption import ADOPTED_NOTE

if TYPE_CHECKING:
    from prefect_kandinsky.batch.ledger import RowRecord
    from prefect_kandinsky.batch.result import BatchResult

# -- batches ------------------------------------------------------------------------------

BATCH_THUMBNAILS = 48
"""Stored rows shown as thumbnails in a batch summary; the table lists every row."""
BATCH_ERRORS = 20
"""Rows not stored whose error a batch summary quotes."""
THUMB_WIDTH = 96
"""Width of a row's thumbnail in a batch summary, in pixels."""
PROGRESS_INTERVAL_SECONDS = 1.0
"""A batch's progress artifact changes at most this often (and when the last row ends)."""


def batch_key(batch_id: str, kind: str) -> str:
    """``kandinsky-batch[-<kind>]-<name>-<hash>``: readable, and unique per batch id."""
    tail = batch_id.rstrip("/").rsplit("/", 1)[-1].lower()
    name = KEY_UNSAFE.sub("-", tail).strip("-")[:60] or "rows"
    digest = hashlib.sha256(batch_id.encode()).hexdigest()[:8]
    prefix = "kandinsky-batch" + (f"-{kind}" if kind else "")
    return f"{prefix}-{name}-{digest}"


class BatchProgress:
    """A progress artifact that follows a batch as its rows finish."""

    def __init__(self, total: int, *, title: str) -> None:
        self.total = total
        self.title = title
        self.finished = 0
        self.counts: dict[str, int] = {}
        self._artifact_id: UUID | None = None
        self._shown_at = 0.0
        self._updating = False

    async def start(self, stored_before: int = 0) -> None:
        """Show the batch at 0%, saying how many rows earlier runs stored."""
        if not in_run():
            return
        before = f"; {stored_before} stored by earlier runs" if stored_before else ""
        self._artifact_id = await acreate_progress_artifact(
            progress=0.0, description=f"{self.title}: {self.total} rows{before}"
        )
        self._shown_at = time.monotonic()

    async def row_done(self, record: RowRecord) -> None:
        """Count a finished row (stored, failed, or stopped for another reason)."""
        self.counts[record.state] = self.counts.get(record.state, 0) + 1
        await self.rows_done(1)

    async def rows_done(self, rows: int) -> None:
        """Count ``rows`` finished rows; show them if a second passed or all are done."""
        self.finished += rows
        due = time.monotonic() - self._shown_at >= PROGRESS_INTERVAL_SECONDS
        if (due or self.finished >= self.total) and not self._updating:
            await self._show()

    async def finish(self) -> None:
        """Show the final count."""
        await self._show()

    async def _show(self) -> None:
        if self._artifact_id is None:
            return
        self._updating = True
        try:
            counts = ", ".join(f"{n} {state}" for state, n in sorted(self.counts.items()))
            description = f"{self.title}: {self.finished} of {self.total} rows finished" + (
                f" ({counts})" if counts else ""
            )
            progress = 100.0 * self.finished / self.total if self.total else 100.0
            await aupdate_progress_artifact(
                self._artifact_id, progress=progress, description=description
            )
            self._shown_at = time.monotonic()
        finally:
            self._updating = False


def _money(value: object) -> str:
    return f"${value:.2f}" if value is not None else "unknown"


def _row_cost(record: RowRecord) -> str:
    """What a row was charged; "unknown" where a charged attempt has no documented price."""
    unpriced = record.estimated_cost_usd is None and any(
        attempt.status in ("COMPLETED", "FAILED") for attempt in record.attempts
    )
    return "unknown (no documented price)" if unpriced else _money(record.charged_usd)


def batch_table(result: BatchResult) -> list[dict[str, object]]:
    """One row per video: row, status, prompt, seconds, cost, error, request id, where, link."""
    return [
        {
            "row": record.row_id or f"line {record.line}",
            "status": f"{record.state}, {ADOPTED_NOTE}" if record.adopted else record.state,
            "prompt": short_prompt(record.prompt, 60),
            "seconds": f"{record.seconds:.1f}" if record.seconds is not None else "",
            "cost": _row_cost(record),
            "error": (record.error or "")[:300],
            "request id": record.request_id or "",
            "stored at": record.uri or "",
            "link": record.public_url or "",
        }
        for record in result.rows
    ]


def batch_markdown(result: BatchResult) -> str:
    """Counts, spend, a thumbnail per stored row, and what went wrong."""
    counts = result.counts
    stored = [r for r in result.rows if r.done]
    lines = [
        f"## {markdown_cell(short_prompt(result.batch_id))}",
        "",
        f"**{len(stored)} of {len(result.rows)} rows stored**"
        + ("." if result.complete else "; run the batch again to finish the rest, unpaid."),
        "",
        "| State | Rows |",
        "|---|---|",
        *[f"| {state} | {n} |" for state, n in sorted(counts.items())],
        "",
        "| Spend | USD |",
        "|---|---|",
        f"| estimated for this run | {_money(result.estimated_cost_usd)} |",
        f"| charged (all runs, by the documented prices) | {_money(result.charged_usd)} |",
    ]
    if result.ambiguous_attempts:
        lines.append(
            f"| may also have cost: {result.ambiguous_attempts} ambiguous submits (job unknown) "
            f"| up to {_money(result.ambiguous_usd)} |"
        )
    if result.unknown_cost_rows:
        lines.append(f"| rows without a documented price (256P) | {result.unknown_cost_rows} |")
    lines += ["", f"Ledger: `{result.ledger}`", ""]
    pictures = [r for r in stored if r.thumbnail][:BATCH_THUMBNAILS]
    if pictures:
        cells = [
            f'<img src="{r.thumbnail}" width="{THUMB_WIDTH}" '
            f'title="{html.escape(r.row_id or f"line {r.line}")}: '
            f'{html.escape(short_prompt(r.prompt, 60))}">'
            for r in pictures
        ]
        more = len(stored) - len(pictures)
        lines += ["### Stored", "", " ".join(cells), ""]
        if more > 0:
            lines += [f"*And {more} more: see the table artifact.*", ""]
    troubled = [r for r in result.rows if not r.done][:BATCH_ERRORS]
    if troubled:
        lines += ["### Not stored", "", "| Row | Status | Error |", "|---|---|---|"]
        lines += [
            f"| {markdown_cell(r.row_id or f'line {r.line}')} | {r.state} | "
            f"{markdown_cell((r.error or '')[:200])} |"
            for r in troubled
        ]
        lines += [
            "",
            "ERROR rows (not charged) are submitted again when the batch runs again; FAILED "
            "rows (charged) only with `retry_failed=True`; uncertain rows (the job may exist) "
            "only with `resubmit_uncertain=True`. Submitted rows are waited for, not paid "
            "again.",
            "",
        ]
    return "\n".join(lines)


async def publish_batch_artifacts(result: BatchResult) -> list[UUID]:
    """Create the batch's table (one row per video) and its summary."""
    if not in_run():
        return []
    what = f"{len(result.rows)} rows, {result.counts.get('stored', 0)} stored"
    return [
        await acreate_table_artifact(
            table=batch_table(result),
            key=batch_key(result.batch_id, ""),
            description=describe(result.batch_id, f"{what}: every row"),
        ),
        await acreate_markdown_artifact(
            markdown=batch_markdown(result),
            key=batch_key(result.batch_id, "summary"),
            description=describe(result.batch_id, f"{what}, ${result.charged_usd:.2f} charged"),
        ),
    ]
