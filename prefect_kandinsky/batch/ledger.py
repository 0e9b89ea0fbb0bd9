"""The batch ledger: one durable record per row, so that a re-run never pays twice.

Every row of a batch is one paid video. Its record is written at each step that matters for
money, before the next step starts:

```
pending ─> submitting ─> submitted ─> completed ─> stored
 (intent, before the     (request id,   (COMPLETED,   (file written,
  submit is sent)         durable)       media URL)    checksum)
              ├─> uncertain   the submit's answer was lost: the job may exist and be billed
              └─> refused     the gateway refused it (4xx): nothing was charged
                          ├─> failed      FAILED: charged
                          └─> error       ERROR: not charged, submitted again on a re-run
```

A re-run reads the records first: a stored row is done; a submitted or completed row is
waited for or downloaded by its request id, never submitted again; a row whose record says
``submitting`` or ``uncertain`` was (maybe) sent when the process died or the answer was lost,
so it is not submitted again unless asked (``resubmit_uncertain=True``).

Records live in Prefect's result storage by default (``PREFECT_RESULTS_LOCAL_STORAGE_PATH``,
or the block named by ``PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK``), so workers that share
results share the ledger. On local disk a record is written to a temporary file and renamed
into place; the records that protect money (``submitting``, ``submitted``) are also fsynced,
so they survive a power loss as well as a killed process. Other storage blocks write each
record as one object.

A download cut short (the process died) is kept as a partial file in the ledger's folder,
``partial/<hash of the request id>.part`` (for a ledger in a storage block, in
``<temp dir>/prefect-kandinsky-partials/<batch folder>/``), never in the destination; the next
run resumes it with a Range request, and removes the partial files of rows stored since or
no longer waiting for a download.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
import tempfile
from collections.abc import Iterable
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Literal

import anyio
from prefect.filesystems import LocalFileSystem, WritableFileSystem
from pydantic import BaseModel, ConfigDict, Field

from prefect_kandinsky.media.storage import call_block, is_missing_file

PARTIALS_FOLDER = "partial"
"""The folder of partial downloads inside a ledger's folder."""
LEDGER_FOLDER = "kandinsky-ledger"
"""The folder of the ledgers inside the result storage."""
READ_CONCURRENCY = 32
"""Records read at once when a batch starts."""

RowState = Literal[
    "pending",
    "submitting",
    "uncertain",
    "refused",
    "submitted",
    "completed",
    "failed",
    "error",
    "stored",
]
DURABLE_STATES = frozenset({"submitting", "submitted"})
"""States whose record is fsynced: losing them could mean paying twice."""


class Attempt(BaseModel):
    """One submit of a row."""

    submitted_at: datetime = Field(description="When the submit was sent (UTC).")
    request_id: str | None = Field(
        default=None, description="The gateway's id; None while unknown (answer not seen)."
    )
    status: str | None = Field(
        default=None, description="The last known status: QUEUED ... COMPLETED, FAILED, ERROR."
    )
    charged_usd: Decimal | None = Field(
        default=None,
        description="What the gateway charged by the documented prices: the price for "
        "COMPLETED and FAILED, 0 for ERROR and refusals; None while unknown.",
    )
    callback_nonce: str | None = Field(
        default=None,
        description="The nonce of the submit's callback URL, recorded with the intent before "
        "the submit is sent: if its answer is lost, the job is found by its callback's event.",
    )
    adopted: bool = Field(
        default=False,
        description="True when the answer was lost and the job adopted from its callback.",
    )


class RowRecord(BaseModel):
    """What is known of one row of a batch: its state, its attempts, its stored file."""

    model_config = ConfigDict(validate_assignment=True)

    key: str = Field(description="The row's idempotency key: batch id and row id or content.")
    row_id: str | None = Field(default=None, description="The row's id in the manifest.")
    line: int = Field(description="The row's line in the manifest (1-based).")
    prompt: str = Field(default="", description="The row's prompt.")
    state: RowState = Field(default="pending", description="Where the row is; see the module.")
    request_id: str | None = Field(default=None, description="The current generation's id.")
    attempts: list[Attempt] = Field(default_factory=list, description="Every submit, oldest first.")
    estimated_cost_usd: Decimal | None = Field(
        default=None, description="The documented price of one attempt; None where unknown."
    )
    media_url: str | None = Field(default=None, description="The CDN URL of the output.")
    uri: str | None = Field(default=None, description="Where the video was stored.")
    public_url: str | None = Field(default=None, description="An https link to the stored copy.")
    sha256: str | None = Field(default=None, description="Hex SHA-256 of the stored file.")
    size_bytes: int | None = Field(default=None, description="Bytes stored.")
    thumbnail: str | None = Field(
        default=None, description="A small poster frame of the video, as a data: URI."
    )
    error: str | None = Field(default=None, description="Why the row is not stored.")
    seconds: float | None = Field(
        default=None, description="Seconds from the first submit to the stored file."
    )
    updated_at: datetime = Field(
        default_factory=lambda: datetime.now(timezone.utc), description="Last change (UTC)."
    )

    @property
    def charged_usd(self) -> Decimal:
        """What every attempt was charged, by the documented prices (unknowns count 0)."""
        return sum((a.charged_usd or Decimal(0) for a in self.attempts), Decimal(0))

    @property
    def charge_unknown(self) -> bool:
        """Whether an attempt was charged at a price the documentation does not give."""
        return any(
            a.status in ("COMPLETED", "FAILED") and a.charged_usd is None for a in self.attempts
        )

    @property
    def ambiguous_usd(self) -> Decimal:
        """What submits whose answer was lost and whose job is unknown may have cost."""
        price = self.estimated_cost_usd or Decimal(0)
        return sum(
            (price for a in self.attempts if a.request_id is None and a.charged_usd is None),
            Decimal(0),
        )

    @property
    def ambiguous_attempts(self) -> int:
        """Submits whose answer was lost and whose job is unknown (not adopted)."""
        return sum(a.request_id is None and a.charged_usd is None for a in self.attempts)

    @property
    def adopted(self) -> bool:
        """Whether the current job was adopted from its callback."""
        return bool(self.attempts) and self.attempts[-1].adopted

    @property
    def done(self) -> bool:
        """Whether the row's video is stored."""
        return self.state == "stored"


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class Ledger:
    """The records of one batch, in a local folder or a storage block.

    Example:
        ```python
        ledger = await Ledger.open(None, batch_id="s3://catalogue/manifests/2026-11.csv")
        known = await ledger.read_all(keys)
        await ledger.write(record.model_copy(update={"state": "submitting"}))
        ```
    """

    def __init__(self, location: Path | WritableFileSystem, batch_id: str) -> None:
        self.batch_id = batch_id
        self.folder = f"{LEDGER_FOLDER}/{_digest(batch_id)[:24]}"
        if isinstance(location, LocalFileSystem):
            location = Path(location.basepath or os.getcwd())
        if isinstance(location, Path):
            location = Path(os.path.abspath(os.path.expanduser(location)))
        self._root = location / self.folder if isinstance(location, Path) else None
        self._block = None if isinstance(location, Path) else location

    @classmethod
    async def open(
        cls, location: str | os.PathLike[str] | WritableFileSystem | None, batch_id: str
    ) -> Ledger:
        """The ledger of ``batch_id`` in ``location``, or in Prefect's result storage."""
        if location is None:
            from prefect.results import aget_default_result_storage

            storage = await aget_default_result_storage()
            return cls(storage, batch_id)
        if isinstance(location, WritableFileSystem):
            return cls(location, batch_id)
        return cls(Path(location), batch_id)

    @property
    def where(self) -> str:
        """Where the records are, for people."""
        if self._root is not None:
            return str(self._root)
        return f"{type(self._storage()).get_block_type_slug()}:{self.folder}"

    @property
    def partials(self) -> Path:
        """The local folder of this batch's partial downloads."""
        if self._root is not None:
            return self._root / PARTIALS_FOLDER
        return Path(tempfile.gettempdir()) / "prefect-kandinsky-partials" / self.folder

    def partial_path(self, request_id: str) -> Path:
        """Where the download of ``request_id`` is kept until it is stored."""
        return self.partials / f"{_digest(request_id)[:32]}.part"

    async def remove_partials(self, keep: Iterable[str]) -> int:
        """Remove partial downloads but those of the request ids in ``keep``; how many."""
        wanted = {self.partial_path(request_id).name for request_id in keep}
        return await anyio.to_thread.run_sync(_remove_partials, self.partials, wanted)

    @property
    def local_folder(self) -> Path | None:
        """The folder of the records on local disk; None in a storage block."""
        return self._root

    @property
    def block(self) -> WritableFileSystem | None:
        """The storage block of the records; None on local disk."""
        return self._block

    @property
    def block_storage(self) -> WritableFileSystem:
        """The storage block of the records (a ledger on local disk has none)."""
        return self._storage()

    def _storage(self) -> WritableFileSystem:
        assert self._block is not None, "a ledger on local disk has no storage block"
        return self._block

    def _name(self, key: str) -> str:
        return f"{_digest(key)}.json"

    async def read(self, key: str) -> RowRecord | None:
        """The record of ``key``, or None if the row was never started."""
        data = await self._read(self._name(key))
        return None if data is None else RowRecord.model_validate_json(data)

    async def read_all(self, keys: Iterable[str]) -> dict[str, RowRecord]:
        """The records of every key that has one."""
        found: dict[str, RowRecord] = {}
        limit = asyncio.Semaphore(READ_CONCURRENCY)

        async def one(key: str) -> None:
            async with limit:
                record = await self.read(key)
            if record is not None:
                found[key] = record

        await asyncio.gather(*(one(key) for key in keys))
        return found

    async def write(self, record: RowRecord) -> RowRecord:
        """Store ``record`` (stamped now) and return it."""
        record = record.model_copy(update={"updated_at": datetime.now(timezone.utc)})
        data = record.model_dump_json().encode()
        name = self._name(record.key)
        if self._root is not None:
            durable = record.state in DURABLE_STATES
            await anyio.to_thread.run_sync(_write_file, self._root, name, data, durable)
        else:
            await call_block(self._storage(), "write_path", f"{self.folder}/{name}", data)
        return record

    async def _read(self, name: str) -> bytes | None:
        if self._root is not None:
            path = self._root / name
            try:
                return await anyio.Path(path).read_bytes()
            except FileNotFoundError:
                return None
        try:
            content = await call_block(self._storage(), "read_path", f"{self.folder}/{name}")
        except Exception as exc:
            if is_missing_file(exc):
                return None
            raise
        return bytes(content) if content is not None else None


def _write_file(root: Path, name: str, data: bytes, durable: bool) -> None:
    root.mkdir(parents=True, exist_ok=True)
    temp = root / f".{name}.{secrets.token_hex(4)}.tmp"
    with temp.open("wb") as handle:
        handle.write(data)
        if durable:
            handle.flush()
            os.fsync(handle.fileno())
    os.replace(temp, root / name)


def _remove_partials(folder: Path, wanted: set[str]) -> int:
    removed = 0
    try:
        found = list(folder.iterdir())
    except FileNotFoundError:
        return 0
    for path in found:
        if path.name.endswith(".part") and path.name not in wanted:
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def summarize(records: Iterable[RowRecord]) -> dict[str, int]:
    """How many rows are in each state."""
    counts: dict[str, int] = {}
    for record in records:
        counts[record.state] = counts.get(record.state, 0) + 1
    return counts
