"""Callback URLs and event names.

The tokens that sign a callback URL, and the names and ids of the events a callback becomes.

A callback URL is ``<base_url>/kandinsky/callbacks/<flow_run_id or "none">/<nonce>/<token>``, the
token an HMAC of the flow run and the nonce with the receiver's secret. Pure functions: no
HTTP, no Prefect.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit
from uuid import UUID, uuid5

from pydantic import SecretStr

from prefect_kandinsky.gateway.models import JobStatus

if TYPE_CHECKING:
    # Imported only where a server starts: every flow imports this module (through waits).
    pass

EVENT_ID_NAMESPACE = UUID("fd783b2e-810f-4745-91e9-70eb87dba462")
"""Namespace of the deterministic event ids: ``uuid5(EVENT_ID_NAMESPACE, "<request_id>:<STATUS>")``.

Never change it: the ids of events already emitted (and automations that dedupe on them)
depend on it."""
EVENT_PREFIX = "kandinsky.video."
"""Prefix of every event name: ``kandinsky.video.completed``, ``kandinsky.video.failed``, ..."""
RESOURCE_PREFIX = "kandinsky.request."
"""Prefix of the primary resource id of every event: ``kandinsky.request.<request_id>``."""
CALLBACK_PATH = "/kandinsky/callbacks"
"""Path of the callbacks, after any prefix of the receiver's base URL."""
NO_FLOW_RUN = "none"
"""The flow run segment of a callback URL made without a flow run id."""
TOKEN_VERSION = "v1"
"""Version tag inside the signed message, so the token scheme can change later."""
TOKEN_LENGTH = 43
"""Characters of a token: base64url of an HMAC-SHA256, without padding."""
NONCE_BYTES = 12
"""Random bytes of a generated nonce (16 URL-safe characters)."""

_NONCE_RE = re.compile(r"^[A-Za-z0-9_-]{8,64}$")

# --------------------------------------------------------------------------------------------
# Names, ids, tokens and URLs
# --------------------------------------------------------------------------------------------


def as_status(value: JobStatus | str) -> JobStatus:
    """A status given as a ``JobStatus`` or its name, in any case."""
    if isinstance(value, JobStatus):
        return value
    return JobStatus(str(value).strip().upper())


def event_name(status: JobStatus | str) -> str:
    """The event name of a status: ``kandinsky.video.completed`` for COMPLETED."""
    return f"{EVENT_PREFIX}{as_status(status).value.lower()}"


def resource_id(request_id: str) -> str:
    """The primary resource id of a generation's events: ``kandinsky.request.<request_id>``."""
    return f"{RESOURCE_PREFIX}{request_id}"


def event_id(request_id: str, status: JobStatus | str) -> UUID:
    """The deterministic id of the event for ``request_id`` entering ``status``.

    ``uuid5(EVENT_ID_NAMESPACE, f"{request_id}:{STATUS}")`` with the status in capitals, so a
    callback delivered twice, or by two receivers, yields the same event id.
    """
    return uuid5(EVENT_ID_NAMESPACE, f"{request_id}:{as_status(status).value}")


def flow_run_segment(flow_run_id: UUID | str | None) -> str:
    """The flow run part of a callback URL: the canonical UUID, or ``none`` without one."""
    if flow_run_id is None:
        return NO_FLOW_RUN
    if isinstance(flow_run_id, UUID):
        return str(flow_run_id)
    text = str(flow_run_id).strip()
    if text.lower() == NO_FLOW_RUN:
        return NO_FLOW_RUN
    try:
        return str(UUID(text))
    except ValueError:
        raise ValueError(f"flow_run_id must be a UUID or None; got {flow_run_id!r}") from None


def _secret_bytes(secret: SecretStr | str) -> bytes:
    text = secret.get_secret_value() if isinstance(secret, SecretStr) else secret
    if not isinstance(text, str) or not text.strip():
        raise ValueError(
            "the webhook secret is empty: set webhook_secret on the KandinskyCredentials block "
            '(e.g. python -c "import secrets; print(secrets.token_urlsafe(32))")'
        )
    return text.encode("utf-8")


def callback_token(secret: SecretStr | str, *, flow_run_id: UUID | str | None, nonce: str) -> str:
    """The token of a callback URL: ``base64url(HMAC-SHA256(secret, "v1:<flow run>:<nonce>"))``.

    The flow run part is the canonical UUID, or ``none``; the result has ``TOKEN_LENGTH``
    characters (no padding).

    Raises:
        ValueError: the secret is empty, the flow run id not a UUID, or the nonce malformed.
    """
    if not _NONCE_RE.match(nonce):
        raise ValueError(f"nonce must be 8 to 64 characters of A-Z a-z 0-9 _ -; got {nonce!r}")
    message = f"{TOKEN_VERSION}:{flow_run_segment(flow_run_id)}:{nonce}".encode()
    digest = hmac.new(_secret_bytes(secret), message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode("ascii")[:TOKEN_LENGTH]


def verify_token(
    secret: SecretStr | str, token: str, *, flow_run_id: UUID | str | None, nonce: str
) -> bool:
    """Whether ``token`` was made with ``secret`` for this flow run id and nonce (constant time).

    A malformed flow run id or nonce, or an empty secret, verifies nothing.
    """
    try:
        expected = callback_token(secret, flow_run_id=flow_run_id, nonce=nonce)
    except ValueError:
        return False
    return hmac.compare_digest(expected.encode("ascii"), token.encode("utf-8", "replace"))


def callback_url(
    base_url: str,
    secret: SecretStr | str,
    *,
    flow_run_id: UUID | str | None,
    nonce: str | None = None,
    allow_http: bool = False,
) -> str:
    """The callback URL of one job, to pass as ``webhook_url`` of a submit.

    ``<base_url>/kandinsky/callbacks/<flow_run_id or "none">/<nonce>/<token>``; a path in
    ``base_url`` is kept (a receiver behind a reverse proxy at ``https://host/hooks``).

    Args:
        base_url: The receiver's public https origin, with an optional path prefix.
        secret: The receiver's secret (``KandinskyCredentials.webhook_secret``).
        flow_run_id: The flow run the job belongs to: its events name it as a related
            ``prefect.flow-run.<id>`` resource, which a ``resume-flow-run`` automation resumes.
        nonce: 8 to 64 URL-safe characters; a random one when not given. One URL per job:
            the first callback binds the URL to its request id.
        allow_http: Accept an ``http://`` base URL (local tests; the gateway calls https only).

    Raises:
        ValueError: the base URL is not absolute https, the flow run id is not a UUID, the
            nonce is malformed or the secret empty.
    """
    parts = urlsplit(base_url.strip())
    schemes = ("https", "http") if allow_http else ("https",)
    if parts.scheme not in schemes or not parts.netloc:
        raise ValueError(
            f"base_url must be an absolute https URL of the webhook receiver (the gateway only "
            f"calls https); got {base_url!r}"
            + ("" if allow_http else "; pass allow_http=True for a local test receiver")
        )
    if parts.query or parts.fragment:
        raise ValueError(f"base_url must have no query or fragment; got {base_url!r}")
    if nonce is None:
        nonce = secrets.token_urlsafe(NONCE_BYTES)
    segment = flow_run_segment(flow_run_id)
    token = callback_token(secret, flow_run_id=segment, nonce=nonce)
    path = f"{parts.path.rstrip('/')}{CALLBACK_PATH}/{segment}/{nonce}/{token}"
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def run_callback_url(
    base_url: str, secret: SecretStr | None, *, flow_run_id: UUID | str | None
) -> str:
    """A fresh callback URL of ``flow_run_id`` for one submit, or a ValueError naming the way out.

    An ``http://`` base URL is accepted for a receiver on this machine only (127.0.0.1).

    Raises:
        ValueError: no webhook secret, or a base URL :func:`callback_url` refuses.
    """
    if secret is None:
        raise ValueError(
            "webhook_base_url needs a webhook_secret on the KandinskyCredentials block (the "
            "receiver checks each callback's token with it): set one, the same the receiver "
            "uses, or KANDINSKY_WEBHOOK_SECRET"
        )
    return callback_url(
        base_url,
        secret,
        flow_run_id=flow_run_id,
        allow_http=base_url.startswith("http://127.0.0.1"),
    )
