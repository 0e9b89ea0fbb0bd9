"""Orphans adopted: the job of a submit whose answer was lost, found again by its callback.

A submit whose answer is lost (a 5xx after the gateway committed the job, a connection cut
after sending, a process killed mid-submit) may have created a paid job whose id nobody
knows, and the gateway has no API to list jobs. But a submit that named a callback URL told
the gateway where to report that job, and the URL carries a nonce chosen (and recorded)
before the submit:

```
choose nonce ─> record it ─> submit(webhook_url=.../<flow run>/<nonce>/<token>) ─> answer lost
                                        │
                gateway ── job ends (or, in sync mode, each poll cycle) ──> receiver
                                        │
                                        ▼
           Prefect event kandinsky.video.<status>, related kandinsky.callback.<nonce>
                                        │
   CallbackWatch.request_id(nonce): the event store first (a past callback), then the event
   stream (bounded by the wait timeout) ──> the request id: the job is adopted, waited for,
   stored and charged as if its answer had arrived
```

No event within the timeout: the submit stays uncertain (never resent silently). Two
different request ids for one nonce: refused, the submit stays uncertain.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import datetime, timedelta, timezone
from typing import Any

from prefect_kandinsky.events.tokens import (
    CALLBACK_RESOURCE_PREFIX,
    CALLBACK_ROLE,
    EVENT_PREFIX,
    callback_resource_id,
)

STORE_LOOKBACK = timedelta(days=7)
"""How far back the event store is searched: Prefect's default event retention."""
STORE_RECHECK_SECONDS = 10.0
"""While waiting on the stream, the event store is read again this often (the stream may
drop, and the store is written in batches)."""
ADOPTED_NOTE = "adopted from its callback"
"""What the log, the batch table and the result say of a job found by its callback."""

_logger = logging.getLogger("prefect_kandinsky.events.adoption")


class AmbiguousCallbackError(Exception):
    """The events of one nonce name more than one request id: none is adopted."""


def _request_id_of(event: Any) -> str | None:
    name = event.resource.get("prefect.resource.name")
    payload_id = event.payload.get("request_id") if isinstance(event.payload, dict) else None
    if not isinstance(name, str) or not name or (payload_id not in (None, name)):
        return None
    return name


def _nonce_of(event: Any) -> str | None:
    for related in event.related:
        resource = related.id
        if related.role == CALLBACK_ROLE and resource.startswith(CALLBACK_RESOURCE_PREFIX):
            return str(resource.removeprefix(CALLBACK_RESOURCE_PREFIX))
    return None


def _one_request_id(nonce: str, request_ids: set[str]) -> str | None:
    if len(request_ids) > 1:
        raise AmbiguousCallbackError(
            f"the callbacks of nonce {nonce} name {len(request_ids)} request ids "
            f"({', '.join(sorted(request_ids))}): not adopting any; check them on the gateway"
        )
    return next(iter(request_ids), None)


async def find_in_store(nonce: str) -> str | None:
    """The request id named by a stored event of callback ``nonce``, or None.

    Raises:
        AmbiguousCallbackError: the stored events of the nonce name several request ids.
    """
    from prefect.client.orchestration import get_client
    from prefect.events.filters import (
        EventFilter,
        EventNameFilter,
        EventOccurredFilter,
        EventRelatedFilter,
    )

    event_filter = EventFilter(
        occurred=EventOccurredFilter(since=datetime.now(timezone.utc) - STORE_LOOKBACK),
        event=EventNameFilter(prefix=[EVENT_PREFIX]),
        related=EventRelatedFilter(id=[callback_resource_id(nonce)]),
    )
    async with get_client() as client:
        page = await client.read_events(filter=event_filter, limit=50)
    found = {rid for rid in (_request_id_of(event) for event in page.events) if rid}
    return _one_request_id(nonce, found)


class CallbackWatch:
    """One subscription to the receiver's callback events, answering by nonce.

    Open it before looking for a nonce, so that an event that comes between the store read
    and the wait is not missed. ``nonces`` narrows the subscription to those nonces (one
    submit); without it every callback event is seen (a batch, whose rows' nonces are not
    all known when it opens).
    """

    def __init__(self, nonces: list[str] | None = None) -> None:
        from prefect.events.filters import EventFilter, EventNameFilter, EventRelatedFilter

        related = (
            EventRelatedFilter(id=[callback_resource_id(n) for n in nonces])
            if nonces
            else EventRelatedFilter(role=[CALLBACK_ROLE])
        )
        self.filter = EventFilter(event=EventNameFilter(prefix=[EVENT_PREFIX]), related=related)
        self._seen: dict[str, set[str]] = {}
        self._signals: dict[str, asyncio.Event] = {}
        self._reader: asyncio.Task[None] | None = None
        self._subscriber: Any = None

    async def __aenter__(self) -> CallbackWatch:
        from prefect.events.clients import get_events_subscriber

        try:
            subscriber = get_events_subscriber(filter=self.filter)
            await subscriber.__aenter__()
        except Exception as exc:  # the store rechecks go on without the stream
            _logger.warning("No event stream for callbacks (%s); reading the event store", exc)
            return self
        self._subscriber = subscriber
        self._reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
        if self._subscriber is not None:
            with contextlib.suppress(Exception):
                await self._subscriber.__aexit__(None, None, None)

    def _signal(self, nonce: str) -> asyncio.Event:
        return self._signals.setdefault(nonce, asyncio.Event())

    async def _read(self) -> None:
        try:
            async for event in self._subscriber:
                nonce, request_id = _nonce_of(event), _request_id_of(event)
                if nonce and request_id:
                    self._seen.setdefault(nonce, set()).add(request_id)
                    self._signal(nonce).set()
        except Exception:
            _logger.warning("The callback event stream ended; reading the event store instead")

    async def request_id(self, nonce: str, *, timeout: float) -> str | None:
        """The request id that callback ``nonce`` reported, waiting up to ``timeout`` seconds.

        Raises:
            AmbiguousCallbackError: the nonce's events name several request ids.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(timeout, 0.0)
        while True:
            seen = self._seen.get(nonce, set())
            if seen:
                return _one_request_id(nonce, seen)
            stored = await find_in_store(nonce)
            if stored is not None:
                return stored
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            signal = self._signal(nonce)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(signal.wait(), min(remaining, STORE_RECHECK_SECONDS))
            signal.clear()


async def adopt(nonce: str, *, timeout: float) -> str | None:
    """The request id of the job whose callback URL carried ``nonce``, or None in time.

    Raises:
        AmbiguousCallbackError: the nonce's events name several request ids.
    """
    async with CallbackWatch([nonce]) as watch:
        return await watch.request_id(nonce, timeout=timeout)


__all__ = [
    "ADOPTED_NOTE",
    "AmbiguousCallbackError",
    "CallbackWatch",
    "adopt",
    "find_in_store",
]
