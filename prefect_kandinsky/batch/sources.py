"""Where a manifest's text comes from: a local file, an ``s3://`` object read through an
``S3Bucket`` block, or a path inside any saved Prefect filesystem block
(``<block-slug>/<block-name>/<path>``). Each source is decoded as UTF-8 and named in every
error. A local file is read as a stream, line by line, each line at most
:data:`DEFAULT_MAX_LINE_CHARS` characters (a longer one is skipped unread and reported); an
``s3://`` object or a block's file is read whole, up to :data:`MAX_REMOTE_MANIFEST_BYTES`.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from functools import partial
from pathlib import Path
from typing import Any, TextIO, cast

import anyio

from prefect_kandinsky.batch.problems import RowProblem, manifest_error
from prefect_kandinsky.gateway.exceptions import KandinskyManifestError

KNOWN_STORAGE_BLOCK_SLUGS: frozenset[str] = frozenset(
    {
        "local-file-system",
        "remote-file-system",
        "smb",
        "s3-bucket",
        "gcs-bucket",
        "azure-blob-storage-container",
    }
)
"""Block types whose ``read_path`` can read a manifest given as ``<slug>/<block>/<path>``."""

DEFAULT_MAX_LINE_CHARS = 64 * 1024
"""The longest line of a manifest, in characters; a longer line is a row problem, skipped
without being held in memory (``load_manifest(max_line_chars=...)``)."""
MAX_REMOTE_MANIFEST_BYTES = 256 * 1024 * 1024
"""The largest ``s3://`` or block manifest read (these are read whole)."""

LineOpener = Callable[[str], AbstractContextManager[TextIO]]
"""Opens a manifest's text for reading, given the ``newline`` mode of :func:`open`."""


def bounded_lines(handle: TextIO, max_chars: int, too_long: Callable[[int], None]) -> Iterator[str]:
    """Each line of ``handle`` with its ending; a line over ``max_chars`` is read past in
    pieces, reported to ``too_long`` with its number, and given as an empty line."""
    number = 0
    while line := handle.readline(max_chars + 1):
        number += 1
        if len(line) > max_chars and line[-1] not in "\r\n":
            while (rest := handle.readline(max_chars + 1)) and rest[-1] not in "\r\n":
                pass
            too_long(number)
            yield "\n"
            continue
        yield line


def split_s3_uri(uri: str) -> tuple[str, str]:
    """Split ``s3://bucket/key`` into bucket and key; ValueError naming the shape otherwise."""
    text = uri.strip()
    if text[:5].lower() == "s3://":
        bucket, _, key = text[5:].partition("/")
        if bucket and key and not key.endswith("/") and not any(c.isspace() for c in bucket):
            return bucket, key
    raise ValueError(f"must be an s3://bucket/key URI naming one object; got {uri!r}")


async def read_manifest(name: str, s3_bucket: Any | None) -> tuple[str, str, Path | None]:
    """(source, text, folder of its relative image paths) of the manifest ``name``."""
    source, opener, base_dir = await open_manifest(name, s3_bucket)
    with opener("") as handle:
        text = await anyio.to_thread.run_sync(handle.read)
    return source, text, base_dir


async def open_manifest(name: str, s3_bucket: Any | None) -> tuple[str, LineOpener, Path | None]:
    """(source, opener of its text, folder of its relative image paths) of the manifest
    ``name``: a local file is opened when read, a remote one is fetched now."""
    if name.strip()[:5].lower() == "s3://":
        source, text = await _read_s3(name.strip(), s3_bucket)
        return source, _text_opener(text), None
    block_path = _block_path(name)
    local = await anyio.to_thread.run_sync(_check_local, name, block_path is None)
    if local is None:  # not a local file: the path in a storage block
        assert block_path is not None
        source, text, base_dir = await _read_block(*block_path)
        return source, _text_opener(text), base_dir
    return local, partial(_open_local, local), Path(local).parent


def _text_opener(text: str) -> LineOpener:
    @contextmanager
    def opener(newline: str) -> Iterator[TextIO]:
        yield io.StringIO(text.removeprefix("\ufeff"), newline=newline)

    return opener


@contextmanager
def _open_local(source: str, newline: str) -> Iterator[TextIO]:
    try:
        handle = open(source, encoding="utf-8-sig", newline=newline)  # noqa: SIM115
    except OSError as exc:
        raise _unreadable(source, f"{type(exc).__name__}: {exc}") from exc
    with handle:
        try:
            yield handle
        except UnicodeDecodeError as exc:
            raise _unreadable(
                source, f"not UTF-8 text (byte {exc.object[exc.start]:#04x}); save it as UTF-8"
            ) from exc


def _unreadable(source: str, detail: str) -> KandinskyManifestError:
    return manifest_error(
        source,
        [RowProblem(line=None, value=source, message=detail, scope="manifest")],
        message=f"Could not read manifest {source}: {detail}; nothing was submitted",
    )


def _decode(data: bytes, source: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _unreadable(
            source,
            f"not UTF-8 text (byte {data[exc.start]:#04x} at offset {exc.start}); save it as UTF-8",
        ) from exc


def _check_local(name: str, required: bool) -> str | None:
    """The absolute path of a local manifest; None if absent and not ``required``."""
    path = Path(os.path.expanduser(name))
    source = str(path.resolve())
    if not path.is_file():
        if not path.exists() and not required:
            return None
        found = "is a folder" if path.is_dir() else "does not exist"
        raise _unreadable(
            source,
            f"{source} {found}: give a CSV or JSONL file, an s3://bucket/key URI or "
            "<block-type-slug>/<block-name>/<path> (block types: "
            f"{', '.join(sorted(KNOWN_STORAGE_BLOCK_SLUGS))})",
        )
    return source


async def _read_s3(uri: str, s3_bucket: Any | None) -> tuple[str, str]:
    try:
        bucket, key = split_s3_uri(uri)
    except ValueError as exc:
        raise ValueError(f"Manifest {exc}") from None
    source = f"s3://{bucket}/{key}"
    if s3_bucket is None:
        raise ValueError(
            f"Manifest {source} is on S3: pass input_bucket, the name of a prefect-aws "
            "S3Bucket block whose credentials can read it (CLI: --input-bucket BLOCK_NAME; "
            "load_manifest: s3_bucket=S3Bucket.load('BLOCK_NAME'))"
        )

    def read() -> bytes:
        client = s3_bucket.credentials.get_s3_client()
        body = client.get_object(Bucket=bucket, Key=key)["Body"]
        try:
            data = cast(bytes, body.read(MAX_REMOTE_MANIFEST_BYTES + 1))
        finally:
            body.close()
        if len(data) > MAX_REMOTE_MANIFEST_BYTES:
            raise ValueError(
                f"over {MAX_REMOTE_MANIFEST_BYTES} bytes; split it, or copy it to a local file, "
                "which is read as a stream"
            )
        return data

    try:
        data = await anyio.to_thread.run_sync(read)
    except Exception as exc:
        raise _unreadable(source, f"{type(exc).__name__}: {exc}") from exc
    return source, _decode(data, source)


def _block_path(name: str) -> tuple[str, str, str] | None:
    parts = name.strip().split("/", 2)
    if len(parts) != 3 or parts[0] not in KNOWN_STORAGE_BLOCK_SLUGS:
        return None
    slug, block_name, path = parts
    if not block_name or not path.strip("/"):
        return None
    return slug, block_name, path


async def _read_block(slug: str, block_name: str, path: str) -> tuple[str, str, Path | None]:
    from prefect.blocks.core import Block
    from prefect.filesystems import LocalFileSystem, WritableFileSystem

    from prefect_kandinsky.media.storage import call_block

    source = f"{slug}/{block_name}/{path}"
    try:
        block: Block = await Block.aload(f"{slug}/{block_name}")
    except Exception as exc:
        raise _unreadable(
            source,
            f"could not load block {slug}/{block_name} ({type(exc).__name__}: {exc}); create "
            "it, or check its name",
        ) from exc
    try:
        data = await call_block(cast(WritableFileSystem, block), "read_path", path)
    except Exception as exc:
        raise _unreadable(source, f"{type(exc).__name__}: {exc}") from exc
    base_dir: Path | None = None
    if isinstance(block, LocalFileSystem):
        # Relative image paths are read from the manifest's folder inside the block.
        base_dir = await anyio.to_thread.run_sync(lambda: block._resolve_path(path).parent)
    return source, _decode(bytes(data), source), base_dir
