"""A batch in the Prefect UI: a progress artifact while rows finish, then a table of every row
and a markdown summary (counts, spend, where the files are, thumbnails of the stored rows).

The table leads with what a reader scans (row, status, stored at) and fits an 830 px panel:
long values are shortened (a stored file is named relative to the folder the summary gives;
a request id by its end, the ledger holds it whole) and a column that is empty in every row
is left out. Every value a run received (row ids, prompts, errors, the batch id) is written
through the one-video artifacts' escaping helpers (:mod:`prefect_kandinsky.artifacts`).
"""

from __future__ import annotations

import hashlib
import time
from typing import TYPE_CHECKING
from uuid import UUID

from prefect.artifacts import (
    acreate_markdown_artifact,
    acreate_progress_artifact,
    acreate_table_artifact,
    aupdate_progress_artifact,
)

from prefect_kandinsky.artifacts import (
    KEY_UNSAFE,
    data_image,
    describe,
    in_run,
    markdown_code,
    markdown_text,
    short_prompt,
    shorten,
)
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
THUMBS_PER_ROW = 6
"""Thumbnails side by side in a batch summary: six of `THUMB_WIDTH` fit an 830 px panel."""
CELL_LENGTH = 48
"""Most characters of a table cell; longer values are shortened with an ellipsis."""
STORED_AT_LENGTH = 20
"""Most characters of a stored file's name in the table: its end, where names differ."""
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


def _row_name(record: RowRecord) -> str:
    return record.row_id or f"line {record.line}"


def stored_folder(result: BatchResult) -> str | None:
    """The folder every stored row's file is under, when they share one."""
    folders = [r.uri.split("/")[:-1] for r in result.rows if r.uri]
    common: list[str] = []
    for parts in zip(*folders, strict=False):
        if len(set(parts)) != 1:
            break
        common.append(parts[0])
    return "/".join(common) or None if folders else None


def _cell(text: str, limit: int = CELL_LENGTH) -> str:
    """One line, at most ``limit`` characters."""
    return shorten(" ".join(text.split()), limit)


def _tail(text: str, limit: int) -> str:
    """The end of ``text`` (where ids and file names differ), at most ``limit`` characters."""
    return text if len(text) <= limit else "…" + text[-(limit - 1) :]


def batch_table(result: BatchResult) -> list[dict[str, object]]:
    """One row per video: row, status, stored at, error, cost, seconds, prompt, request id.

    A file is named relative to `stored_folder` (the summary gives the folder); a column
    empty in every row is left out.
    """
    folder = stored_folder(result)

    def stored_at(uri: str | None) -> str:
        if not uri:
            return ""
        if folder and uri.startswith(folder):
            uri = uri[len(folder) :].lstrip("/")
        return _tail(uri, STORED_AT_LENGTH)

    rows: list[dict[str, object]] = [
        {
            "row": _cell(_row_name(record), 24),
            "status": f"{record.state}, {ADOPTED_NOTE}" if record.adopted else record.state,
            "stored at": stored_at(record.uri),
            "error": _cell(record.error or "", 32),
            "cost": _row_cost(record),
            "seconds": f"{record.seconds:.1f}" if record.seconds is not None else "",
            "prompt": _cell(record.prompt, 20),
            "request id": _tail(record.request_id or "", 13),
        }
        for record in result.rows
    ]
    used = {name for row in rows for name, value in row.items() if value not in ("", None)}
    return [{name: value for name, value in row.items() if name in used} for row in rows]


def batch_markdown(result: BatchResult) -> str:
    """Counts, spend, where the files are, a thumbnail per stored row, what went wrong."""
    counts = result.counts
    stored = [r for r in result.rows if r.done]
    lines = [
        f"## {markdown_text(short_prompt(result.batch_id, 120))}",
        "",
        f"**{len(stored)} of {len(result.rows)} rows stored**"
        + ("." if result.complete else "; run the batch again to finish the rest, unpaid."),
        "",
        "| State | Rows |",
        "|---|---|",
        *[f"| {markdown_text(state)} | {n} |" for state, n in sorted(counts.items())],
        "",
        "| Spend | USD |",
        "|---|---|",
        f"| estimated for this run | {_money(result.estimated_cost_usd)} |",
        f"| charged (all runs, by the documented prices) | {result.charged_label} |",
        f"| charged by this run | {result.charged_this_run_label} |",
    ]
    if result.ambiguous_attempts:
        lines.append(
            f"| may also have cost: {result.ambiguous_attempts} ambiguous submits (job unknown) "
            f"| up to {_money(result.ambiguous_usd)} |"
        )
    if result.unknown_cost_rows:
        lines.append(f"| rows without a documented price (256P) | {result.unknown_cost_rows} |")
    lines.append("")
    folder = stored_folder(result)
    if folder:
        lines += [f"Stored under {markdown_code(folder)} (the table names files from here).", ""]
    lines += [
        f"Ledger: {markdown_code(result.ledger)} (every row whole: request ids, files, errors).",
        "",
    ]
    pictures = [r for r in stored if r.thumbnail][:BATCH_THUMBNAILS]
    cells = [
        data_image(
            r.thumbnail,
            width=THUMB_WIDTH,
            alt=_row_name(r),
            title=f"{_row_name(r)}: {short_prompt(r.prompt, 60)}",
        )
        for r in pictures
    ]
    cells = [cell for cell in cells if cell]
    if cells:
        more = len(stored) - len(cells)
        # A table: the new UI shows images one under the other outside one.
        grid = [cells[i : i + THUMBS_PER_ROW] for i in range(0, len(cells), THUMBS_PER_ROW)]
        width = len(grid[0])
        lines += ["### Stored", "", "|" + "   |" * width, "|" + "---|" * width]
        lines += ["| " + " | ".join(row + [""] * (width - len(row))) + " |" for row in grid]
        lines.append("")
        if more > 0:
            lines += [f"*And {more} more: see the table artifact.*", ""]
    troubled = [r for r in result.rows if not r.done][:BATCH_ERRORS]
    if troubled:
        lines += ["### Not stored", ""]
        lines += [
            f"- **{markdown_text(_row_name(r))}** ({markdown_text(r.state)}): "
            f"{markdown_text(r.error or 'no error given', 300)}"
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
            description=describe(result.batch_id, f"{what}, {result.charged_label} charged"),
        ),
    ]
