"""One run of a batch at a time: a lease kept next to the batch's ledger.

Two runs of one batch at once (a nightly run retried while a manual run of the same night
still works) would both see the same rows as new and pay for them twice. So a run takes the
batch's lease before it reads the ledger, renews it while it lives, and gives it back at the
end. A second run is refused at once, before anything is paid, with an error naming the run
that holds the lease and when it expires: refusing, not waiting, because a waiting run would
hold a worker for hours only to find the rows done, and a nightly schedule that overlaps
itself is a problem to see, not to hide.

```
ledger folder/lease.json      {"holder": "flow run 'generate-videos-...' (id) pid 4242 on host-a",
                               "token": "...", "expires_at": "..."}
```

The lease is taken atomically where the ledger is:

- on a local disk, by an exclusive create of ``lease.json``; an expired lease is taken over
  by whoever first creates ``lease.json.takeover-<its token>`` (also exclusive);
- on S3 (an ``S3Bucket`` ledger), by a conditional put: ``If-None-Match: *`` to take a free
  lease, ``If-Match: <etag>`` to take over an expired one or to renew one's own;
- in any other storage block, by a plain write (not atomic: a warning says so).

A lease expires ``DEFAULT_LEASE_SECONDS`` after its last renewal (every third of that). A
holder on this machine whose process is gone (killed) loses it at once; a holder elsewhere
only when it expires.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import anyio
from pydantic import BaseModel, Field

from prefect_kandinsky.batch.ledger import Ledger
from prefect_kandinsky.gateway.exceptions import KandinskyError
from prefect_kandinsky.media.storage import call_block, is_missing_file

DEFAULT_LEASE_SECONDS = 120.0
"""How long a batch's lease lasts after its last renewal."""
LEASE_NAME = "lease.json"
"""The lease's file name in the ledger's folder."""

_logger = logging.getLogger("prefect_kandinsky.batch.lease")


class KandinskyBatchBusyError(KandinskyError):
    """Another run of the same batch holds its lease; nothing was submitted."""

    def __init__(self, message: str, *, holder: str, expires_at: datetime) -> None:
        super().__init__(message)
        self.holder = holder
        self.expires_at = expires_at


class LeaseRecord(BaseModel):
    """Who holds a batch's lease, and until when."""

    holder: str = Field(description="The run holding the lease, for people.")
    token: str = Field(description="A random token of this holding.")
    host: str = Field(description="The machine of the holding process.")
    pid: int = Field(description="The holding process's id.")
    acquired_at: datetime = Field(description="When the lease was taken (UTC).")
    expires_at: datetime = Field(description="When it expires unless renewed (UTC).")
    run_id: str | None = Field(default=None, description="The holding Prefect flow run's id.")

    def expired(self, now: datetime) -> bool:
        """Whether the lease is free to take: expired, or its process on this host is gone."""
        if now >= self.expires_at:
            return True
        return self.host == socket.gethostname() and not _alive(self.pid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def describe_holder() -> str:
    """This process, named by its Prefect flow run where there is one."""
    from prefect.runtime import flow_run

    where = f"pid {os.getpid()} on {socket.gethostname()}"
    if flow_run.id:
        return f"flow run {flow_run.name!r} ({flow_run.id}), {where}"
    return where


class _Busy(Exception):
    def __init__(self, record: LeaseRecord) -> None:
        self.record = record


class BatchLease:
    """The lease of one batch, held for the life of an ``async with`` block.

    Example:
        ```python
        async with BatchLease(ledger):
            ...  # read the ledger, submit, wait, store
        ```
    """

    def __init__(
        self,
        ledger: Ledger,
        *,
        holder: str | None = None,
        seconds: float = DEFAULT_LEASE_SECONDS,
        logger: logging.Logger | logging.LoggerAdapter[Any] | None = None,
        name: str = LEASE_NAME,
        wait_seconds: float = 0,
    ) -> None:
        if seconds <= 0:
            raise ValueError(f"seconds must be positive; got {seconds!r}")
        self.ledger = ledger
        self.holder = holder or describe_holder()
        self.seconds = seconds
        self.name = name
        self.wait_seconds = wait_seconds
        self.lost: str | None = None
        self._log = logger or _logger
        self._etag: str | None = None
        self._renewer: asyncio.Task[None] | None = None
        self._record: LeaseRecord | None = None

    @property
    def where(self) -> str:
        """Where the lease is, for people."""
        return f"{self.ledger.where}/{self.name}"

    def _new_record(self) -> LeaseRecord:
        from prefect.runtime import flow_run

        now = datetime.now(timezone.utc)
        return LeaseRecord(
            holder=self.holder,
            token=self._record.token if self._record else secrets.token_hex(16),
            host=socket.gethostname(),
            pid=os.getpid(),
            acquired_at=self._record.acquired_at if self._record else now,
            expires_at=now + timedelta(seconds=self.seconds),
            run_id=str(flow_run.id) if flow_run.id else None,
        )

    async def __aenter__(self) -> BatchLease:
        await self.acquire_within(self.wait_seconds)
        self._renewer = asyncio.create_task(self._renew_forever())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
        with contextlib.suppress(Exception):
            await self.release()

    async def read(self) -> LeaseRecord | None:
        """The lease as it is now (whoever holds it), None if nobody does."""
        current = await self._read()
        return current[0] if current is not None else None

    async def acquire_within(self, seconds: float) -> None:
        """Take the lease, waiting up to ``seconds`` for a holder that died to let it expire.

        For a run that takes over the work of a killed one: on another machine its lease
        only frees once it expires. Raises :class:`KandinskyBatchBusyError` after that
        (at once for ``seconds=0``).
        """
        deadline = asyncio.get_running_loop().time() + seconds
        while True:
            try:
                await self.acquire()
                return
            except KandinskyBatchBusyError as busy:
                left = deadline - asyncio.get_running_loop().time()
                if left <= 0:
                    raise
                self._log.info("Waiting for the lease %s: held by %s", self.where, busy.holder)
                await asyncio.sleep(min(left, max(0.5, self.seconds / 6)))

    async def check_free(self) -> None:
        """Raise :class:`KandinskyBatchBusyError` if a live run holds the lease now.

        A look, not a hold: for a caller that refuses a batch before starting its run.
        """
        current = await self._read()
        if current is not None and not current[0].expired(datetime.now(timezone.utc)):
            raise self._busy(current[0])

    def _busy(self, held: LeaseRecord) -> KandinskyBatchBusyError:
        return KandinskyBatchBusyError(
            f"Batch {self.ledger.batch_id!r} is being run by {held.holder} (its lease "
            f"{self.where} expires at {held.expires_at:%Y-%m-%d %H:%M:%S} UTC unless "
            "renewed); nothing was submitted: let that run finish (a run of the same "
            "batch at once would pay twice for the rows both see as new), or, if it is "
            "gone, run again once its lease expired",
            holder=held.holder,
            expires_at=held.expires_at,
        )

    async def acquire(self) -> None:
        """Take the lease, or raise :class:`KandinskyBatchBusyError` naming its holder."""
        record = self._new_record()
        try:
            await self._take(record)
        except _Busy as busy:
            raise self._busy(busy.record) from None
        self._record = record

    async def renew(self) -> None:
        """Push the expiry back; marks the lease lost if another run took it over."""
        record = self._new_record()
        if not await self._put_own(record):
            self.lost = (
                f"the lease {self.where} of batch {self.ledger.batch_id!r} was taken over by "
                "another run (this run did not renew it in time): nothing more is submitted"
            )
            self._log.error("%s", self.lost)
            return
        self._record = record

    async def release(self) -> None:
        """Give the lease back (only if this run still holds it)."""
        if self._record is None or self.lost:
            return
        current = await self._read()
        if current is not None and current[0].token == self._record.token:
            await self._delete(current[1])
        self._record = None

    async def _renew_forever(self) -> None:
        while self.lost is None:
            await asyncio.sleep(self.seconds / 3)
            try:
                await self.renew()
            except Exception as exc:  # storage hiccup: try again at the next turn
                self._log.warning("Could not renew the lease %s: %s", self.where, exc)

    # -- storage ------------------------------------------------------------------------------

    async def _take(self, record: LeaseRecord) -> None:
        folder = self.ledger.local_folder
        if folder is not None:
            await anyio.to_thread.run_sync(_take_local, folder, record, self.name)
            return
        bucket = _s3(self.ledger)
        if bucket is not None:
            self._etag = await anyio.to_thread.run_sync(_take_s3, bucket, self._key(), record)
            return
        current = await self._read()
        if current is not None and not current[0].expired(datetime.now(timezone.utc)):
            raise _Busy(current[0])
        self._log.warning(
            "The ledger's storage (%s) has no atomic create: two runs started at the same "
            "moment could both take the lease %s",
            self.ledger.where,
            self.where,
        )
        await call_block(
            self.ledger.block_storage, "write_path", self._path(), record.model_dump_json().encode()
        )

    async def _put_own(self, record: LeaseRecord) -> bool:
        folder = self.ledger.local_folder
        if folder is not None:
            return await anyio.to_thread.run_sync(_renew_local, folder, record, self.name)
        bucket = _s3(self.ledger)
        if bucket is not None:
            etag = await anyio.to_thread.run_sync(_put_s3, bucket, self._key(), record, self._etag)
            if etag is None:
                return False
            self._etag = etag
            return True
        current = await self._read()
        if current is None or current[0].token != record.token:
            return False
        await call_block(
            self.ledger.block_storage, "write_path", self._path(), record.model_dump_json().encode()
        )
        return True

    async def _read(self) -> tuple[LeaseRecord, str | None] | None:
        folder = self.ledger.local_folder
        if folder is not None:
            return await anyio.to_thread.run_sync(_read_local, folder, self.name)
        bucket = _s3(self.ledger)
        if bucket is not None:
            return await anyio.to_thread.run_sync(_read_s3, bucket, self._key())
        try:
            data = await call_block(self.ledger.block_storage, "read_path", self._path())
        except Exception as exc:
            if is_missing_file(exc):
                return None
            raise
        return LeaseRecord.model_validate_json(bytes(data)), None

    async def _delete(self, etag: str | None) -> None:
        folder = self.ledger.local_folder
        if folder is not None:
            with contextlib.suppress(FileNotFoundError):
                await anyio.Path(folder / self.name).unlink()
            return
        bucket = _s3(self.ledger)
        if bucket is not None:
            await anyio.to_thread.run_sync(_delete_s3, bucket, self._key())
        # other blocks have no delete: the lease expires by itself

    def _path(self) -> str:
        return f"{self.ledger.folder}/{self.name}"

    def _key(self) -> str:
        bucket = _s3(self.ledger)
        assert bucket is not None
        return "/".join(p for p in (bucket.bucket_folder.strip("/"), self._path()) if p)


# -- local disk ---------------------------------------------------------------------------------


def _read_local(folder: Path, name: str) -> tuple[LeaseRecord, str | None] | None:
    try:
        data = (folder / name).read_bytes()
    except FileNotFoundError:
        return None
    return LeaseRecord.model_validate_json(data), None


def _create_exclusive(path: Path, data: bytes) -> bool:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    return True


def _replace(folder: Path, name: str, data: bytes) -> None:
    temp = folder / f".{name}.{secrets.token_hex(4)}.tmp"
    with temp.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temp, folder / name)


def _take_local(folder: Path, record: LeaseRecord, name: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    data = record.model_dump_json().encode()
    for _ in range(3):
        if _create_exclusive(folder / name, data):
            return
        current = _read_local(folder, name)
        if current is None:
            continue  # released in between: try the exclusive create again
        held = current[0]
        if not held.expired(datetime.now(timezone.utc)):
            raise _Busy(held)
        # One taker per expired holding: whoever creates its takeover marker first.
        marker = folder / f"{name}.takeover-{held.token}"
        if not _create_exclusive(marker, data):
            taken = _read_local(folder, name)
            raise _Busy(taken[0] if taken is not None else held)
        _replace(folder, name, data)
        with contextlib.suppress(FileNotFoundError):
            marker.unlink()
        return
    raise _Busy(record)  # pragma: no cover - three releases in a row


def _renew_local(folder: Path, record: LeaseRecord, name: str) -> bool:
    current = _read_local(folder, name)
    if current is None or current[0].token != record.token:
        return False
    _replace(folder, name, record.model_dump_json().encode())
    return True


# -- S3 -----------------------------------------------------------------------------------------


def _s3(ledger: Ledger) -> Any:
    from prefect_aws import S3Bucket

    storage = ledger.block
    return storage if isinstance(storage, S3Bucket) else None


def _precondition_failed(exc: Exception) -> bool:
    response = getattr(exc, "response", {}) or {}
    code = str(response.get("Error", {}).get("Code", ""))
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code in {"PreconditionFailed", "412", "ConditionalRequestConflict"} or status in (
        409,
        412,
    )


def _read_s3(bucket: Any, key: str) -> tuple[LeaseRecord, str | None] | None:
    from botocore.exceptions import ClientError

    try:
        answer = bucket.credentials.get_s3_client().get_object(Bucket=bucket.bucket_name, Key=key)
    except ClientError as exc:
        if is_missing_file(exc) or "NoSuchKey" in str(exc):
            return None
        raise
    return LeaseRecord.model_validate_json(answer["Body"].read()), str(answer["ETag"])


def _put_s3(bucket: Any, key: str, record: LeaseRecord, etag: str | None) -> str | None:
    """Put the lease on condition (absent, or at ``etag``); its new etag, None if refused."""
    from botocore.exceptions import ClientError

    condition = {"IfMatch": etag} if etag is not None else {"IfNoneMatch": "*"}
    try:
        answer = bucket.credentials.get_s3_client().put_object(
            Bucket=bucket.bucket_name,
            Key=key,
            Body=record.model_dump_json().encode(),
            ContentType="application/json",
            **condition,
        )
    except ClientError as exc:
        if _precondition_failed(exc):
            return None
        raise
    return str(answer["ETag"])


def _take_s3(bucket: Any, key: str, record: LeaseRecord) -> str:
    for _ in range(3):
        etag = _put_s3(bucket, key, record, None)
        if etag is not None:
            return etag
        current = _read_s3(bucket, key)
        if current is None:
            continue
        held, held_etag = current
        if not held.expired(datetime.now(timezone.utc)):
            raise _Busy(held)
        etag = _put_s3(bucket, key, record, held_etag)
        if etag is not None:
            return etag
        taken = _read_s3(bucket, key)
        raise _Busy(taken[0] if taken else held)
    raise _Busy(record)  # pragma: no cover - three releases in a row


def _delete_s3(bucket: Any, key: str) -> None:
    bucket.credentials.get_s3_client().delete_object(Bucket=bucket.bucket_name, Key=key)


__all__ = [
    "DEFAULT_LEASE_SECONDS",
    "BatchLease",
    "KandinskyBatchBusyError",
    "LeaseRecord",
    "describe_holder",
]
