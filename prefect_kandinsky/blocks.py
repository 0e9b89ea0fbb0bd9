"""Blocks given by value or by name: the credentials block and the storage a video goes to.

Flows take a block, its saved name, or nothing (then the environment): these turn what a
flow was given into the block itself, loading saved blocks by name from the Prefect API.
"""

from __future__ import annotations

import re

from prefect.blocks.core import Block
from prefect.filesystems import WritableFileSystem

from prefect_kandinsky.credentials import KandinskyCredentials
from prefect_kandinsky.media.storage import Destination

_BLOCK_REF = re.compile(r"^(?P<slug>[a-z0-9-]+)/(?P<name>[A-Za-z0-9_.-]+)$")
_STORAGE_BLOCK_SLUGS = frozenset(
    {"s3-bucket", "local-file-system", "remote-file-system", "gcs-bucket", "smb"}
)


async def load_credentials(
    credentials: KandinskyCredentials | str | None,
) -> KandinskyCredentials:
    """A credentials block as given, loaded by name, or built from ``KANDINSKY_API_KEY``."""
    if isinstance(credentials, KandinskyCredentials):
        return credentials
    if credentials:
        return await KandinskyCredentials.aload(credentials)
    return KandinskyCredentials.from_env()


async def load_destination(destination: str | Block) -> Destination:
    """A path as given, or a storage block named like ``s3-bucket/videos``."""
    if isinstance(destination, WritableFileSystem):
        return destination
    if isinstance(destination, Block):
        raise TypeError(
            f"destination must be a path, an S3Bucket or a WritableFileSystem block; "
            f"got a {type(destination).__name__}"
        )
    match = _BLOCK_REF.match(destination)
    if match and match.group("slug") in _STORAGE_BLOCK_SLUGS:
        block = await Block.aload(destination)
        if not isinstance(block, WritableFileSystem):
            raise TypeError(f"Block {destination!r} is not a storage block")
        return block
    return destination
