"""Where each row's video will be stored, checked before anything is paid.

A row that names its file (``filename``, under ``folder`` and its ``destination``) would be
paid for and then refused at the end if a file of that name is already there: the new video
is never silently written over another. So every row about to be submitted has its target
looked up first, and an existing file is a row problem, reported with the others before the
first submit, unless the batch is told to overwrite. Rows without a ``filename`` are stored
under their request id, which no file can hold yet.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
from prefect.filesystems import LocalFileSystem, WritableFileSystem

from prefect_kandinsky.batch.manifests import BatchRow
from prefect_kandinsky.batch.problems import RowProblem
from prefect_kandinsky.media.storage import (
    Destination,
    call_block,
    is_missing_file,
    is_s3_bucket,
    is_video_file,
)

if TYPE_CHECKING:
    from prefect_aws import S3Bucket

LOOKUP_CONCURRENCY = 16
"""Targets looked up at once."""


def row_target(row: BatchRow, folder: str | None) -> str | None:
    """``folder/destination/filename`` of a row under the batch's destination; None unnamed."""
    if row.filename is None:
        return None
    return "/".join(part.strip("/") for part in (folder, row.destination, row.filename) if part)


async def target_problems(
    rows: Sequence[BatchRow],
    destination: Destination,
    folder: str | None,
    *,
    overwrite: bool,
) -> list[RowProblem]:
    """A problem for each row whose named file already exists at the destination.

    With ``overwrite`` only a local file that is not a video is a problem: storing would refuse
    to replace it (``overwrite`` replaces an earlier video, never another kind of file).
    """
    named = [(row, target) for row in rows if (target := row_target(row, folder)) is not None]
    if not named:
        return []
    limit = asyncio.Semaphore(LOOKUP_CONCURRENCY)

    async def one(row: BatchRow, target: str) -> RowProblem | None:
        async with limit:
            where = await existing(destination, target)
        if where is None:
            return None
        if not overwrite:
            message = (
                f"{where} already exists, and a new video never replaces another file: pass "
                "overwrite=True (CLI: --overwrite) to replace it, or give the row another filename"
            )
        elif await anyio.to_thread.run_sync(_local_non_video, where):
            message = (
                f"{where} already exists and is not a video, which overwrite=True never "
                "replaces (it replaces only an earlier video): give the row another filename"
            )
        else:
            return None
        return RowProblem(
            line=row.line, row_id=row.id, field="filename", value=row.filename, message=message
        )

    found = await asyncio.gather(*(one(row, target) for row, target in named))
    return [problem for problem in found if problem is not None]


async def existing(destination: Destination, target: str) -> str | None:
    """Where ``target`` is if a file is there already (for people), else None."""
    if is_s3_bucket(destination):
        return await anyio.to_thread.run_sync(_s3_existing, destination, target)
    if type(destination) is LocalFileSystem:
        return await anyio.to_thread.run_sync(_local_existing, destination.basepath, target)
    if isinstance(destination, WritableFileSystem):
        try:
            await call_block(destination, "read_path", target)
        except Exception as exc:
            if is_missing_file(exc):
                return None
            raise
        return f"block:{type(destination).get_block_type_slug()}:{target}"
    return await anyio.to_thread.run_sync(_local_existing, os.fspath(destination), target)


def _local_non_video(where: str) -> bool:
    """Whether ``where`` is a local path that holds something other than a video."""
    path = Path(where)
    if not path.is_absolute():
        return False
    return not path.is_file() or not is_video_file(path)


def _local_existing(base: str | None, target: str) -> str | None:
    root = Path(os.path.abspath(os.path.expanduser(base))) if base else Path.cwd()
    path = root.joinpath(*target.split("/"))
    return str(path) if os.path.lexists(path) else None


def _s3_existing(bucket: S3Bucket, target: str) -> str | None:
    from botocore.exceptions import ClientError

    key = "/".join(part for part in (bucket.bucket_folder.strip("/"), target) if part)
    try:
        bucket.credentials.get_s3_client().head_object(Bucket=bucket.bucket_name, Key=key)
    except ClientError as exc:
        if str(exc.response.get("Error", {}).get("Code", "")) in {"404", "NoSuchKey", "NotFound"}:
            return None
        raise
    return f"s3://{bucket.bucket_name}/{key}"
