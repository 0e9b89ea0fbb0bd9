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
import ipaddress
import re
import secrets
from collections.abc import Iterable
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
CALLBACK_RESOURCE_PREFIX = "kandinsky.callback."
"""Prefix of the related resource that names a callback URL's nonce: ``kandinsky.callback.<nonce>``.

The submitting side chooses the nonce before the submit and records it, so that the event of
a job whose submit answer was lost can be found again by it (an orphan adopted)."""
CALLBACK_ROLE = "callback"
"""Role of the ``kandinsky.callback.<nonce>`` related resource."""
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


def callback_resource_id(nonce: str) -> str:
    """The related resource id that names a callback URL's nonce: ``kandinsky.callback.<nonce>``."""
    return f"{CALLBACK_RESOURCE_PREFIX}{nonce}"


def new_nonce() -> str:
    """A fresh random nonce for one callback URL (16 URL-safe characters)."""
    return secrets.token_urlsafe(NONCE_BYTES)


def event_id(
    request_id: str,
    status: JobStatus | str,
    *,
    flow_run_id: UUID | str | None = None,
    nonce: str | None = None,
) -> UUID:
    """The deterministic id of the event for ``request_id`` entering ``status`` on one URL.

    ``uuid5(EVENT_ID_NAMESPACE, f"{request_id}:{STATUS}:{flow run}:{nonce}")`` with the status
    in capitals, so a callback delivered twice, or by two receivers, yields the same event id,
    while the same status reported on another job's URL is another event (it names another
    flow run and nonce, and must not be collapsed with the job's own). Without a flow run and
    a nonce: ``uuid5(EVENT_ID_NAMESPACE, f"{request_id}:{STATUS}")``.
    """
    name = f"{request_id}:{as_status(status).value}"
    if flow_run_id is not None or nonce is not None:
        name = f"{name}:{flow_run_segment(flow_run_id)}:{nonce or ''}"
    return uuid5(EVENT_ID_NAMESPACE, name)


def is_loopback_http(base_url: str) -> bool:
    """Whether ``base_url`` is plain http to a loopback address (127.0.0.0/8 or ::1).

    The host is parsed as an IP address: ``http://127.0.0.1.evil.example`` is not loopback.
    """
    parts = urlsplit(base_url.strip())
    if parts.scheme != "http":
        return False
    try:
        host = parts.hostname
    except ValueError:
        return False
    if not host:
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def redacted_callback_url(url: str) -> str:
    """A callback URL safe to show: its origin, with the path (flow run, nonce, token) hidden."""
    parts = urlsplit(url.strip())
    return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], "/<redacted>", "", ""))


def callback_nonce(url: str) -> str | None:
    """The nonce of a callback URL made by :func:`callback_url`, or None for another URL."""
    parts = urlsplit(url).path.rstrip("/").split("/")
    if len(parts) < 5 or f"/{parts[-5]}/{parts[-4]}" != CALLBACK_PATH:
        return None
    nonce = parts[-2]
    return nonce if _NONCE_RE.match(nonce) else None


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
    secret: SecretStr | str | Iterable[SecretStr | str],
    token: str,
    *,
    flow_run_id: UUID | str | None,
    nonce: str,
) -> bool:
    """Whether ``token`` was made with ``secret`` for this flow run id and nonce (constant time).

    ``secret`` may be several secrets (the current one and previous ones, while the secret is
    rotated): the token verifies if any of them made it. Every secret is tried, so the time
    taken does not tell which one matched. A malformed flow run id or nonce, or an empty
    secret, verifies nothing.
    """
    candidates = [secret] if isinstance(secret, SecretStr | str) else list(secret)
    given = token.encode("utf-8", "replace")
    verified = False
    for candidate in candidates:
        try:
            expected = callback_token(candidate, flow_run_id=flow_run_id, nonce=nonce)
        except ValueError:
            continue
        verified |= hmac.compare_digest(expected.encode("ascii"), given)
    return verified


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
        nonce = new_nonce()
    segment = flow_run_segment(flow_run_id)
    token = callback_token(secret, flow_run_id=segment, nonce=nonce)
    path = f"{parts.path.rstrip('/')}{CALLBACK_PATH}/{segment}/{nonce}/{token}"
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def run_callback_url(
    base_url: str,
    secret: SecretStr | None,
    *,
    flow_run_id: UUID | str | None,
    nonce: str | None = None,
) -> str:
    """The callback URL of ``flow_run_id`` for one submit, or a ValueError naming the way out.

    ``nonce`` is the one recorded with the submit's intent (a fresh one when not given). An
    ``http://`` base URL is accepted for a receiver on this machine only: a loopback IP address
    (127.0.0.0/8, ::1), decided by parsing the host, not by its spelling.

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
        nonce=nonce,
        allow_http=is_loopback_http(base_url),
    )
