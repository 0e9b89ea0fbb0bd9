"""Three ways to wait for a render, one result: poll, the event stream, or suspend.

```
                 ┌──────── poll ──────── status reads every 2 s, growing to 8 s (holds a worker)
submit ──> job ──┼──────── events ────── waits on Prefect's event stream for the job's
                 │                       kandinsky.video.* event; slow status reads as a safety
                 │                       net (holds a process, almost no requests)
                 └──────── suspend ───── the flow run suspends and its process exits; the
                                         completion event resumes it through an automation;
                                         it runs again from the start, its submit cached, and
                                         stores the video (holds nothing while it renders)

gateway ──https callback──> receiver (webhooks.py) ──confirm by a status read──> Prefect event
```

The events come from the package's webhook receiver (``prefect-kandinsky webhooks serve``):
the submit names it as the job's callback, and it turns each confirmed status into an event
``kandinsky.video.<status>`` about the resource ``kandinsky.request.<request id>``, related
to the waiting flow run. Waiting on events or suspending needs that receiver reachable by the
gateway over https; polling needs nothing.

A callback can be lost. The event wait reads the status itself every
``safety_poll_seconds``; a suspended run whose event never came is resumed by the
``sweep-videos`` flow (:func:`sweep_videos`), which reads the status of every suspended run's
job and resumes those that ended. Schedule it (see ``deployments/prefect.yaml``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import timedelta
from typing import Any, Literal
from uuid import UUID

from prefect.logging import get_run_logger

from prefect_kandinsky.events.tokens import EVENT_PREFIX, event_name, resource_id
from prefect_kandinsky.gateway.client import KandinskyClient, StatusCallback
from prefect_kandinsky.gateway.constants import DEFAULT_WAIT_TIMEOUT_SECONDS
from prefect_kandinsky.gateway.models import JobStatus, StatusResponse

WaitMode = Literal["poll", "events", "suspend"]
"""How a flow waits for a render: status reads, Prefect events, or a suspended flow run."""

RESUME_AUTOMATION_NAME = "kandinsky-resume-on-video-done"
"""The automation that resumes a suspended flow run when its video's job ends."""
SUSPEND_KEY_PREFIX = "kandinsky-wait-"
"""Suspended flow runs waiting for a video carry this pause key, then the request id."""
DEFAULT_SAFETY_POLL_SECONDS = 60.0
"""While waiting on events, the status is read this often anyway, in case a callback is lost."""
DEFAULT_SWEEP_AFTER_SECONDS = 120.0
"""The sweep leaves alone flow runs suspended more recently than this."""
PAGE_SIZE = 200
"""Flow runs read per request (the most the Prefect API returns at once)."""
TERMINAL_EVENTS = frozenset(event_name(status) for status in JobStatus if status.is_terminal)

_logger = logging.getLogger("prefect_kandinsky.events.waits")


def suspend_key(request_id: str, repeat: int = 0) -> str:
    """The pause key of a flow run suspended until ``request_id`` ends (``repeat`` times
    suspended again before, after a resume that came while the job still ran)."""
    key = f"{SUSPEND_KEY_PREFIX}{request_id}"
    return key if repeat == 0 else f"{key}#{repeat}"


# -- the event stream ----------------------------------------------------------------------


class EventSignals:
    """One subscription to Prefect's event stream that wakes the waits of many jobs.

    Each ``kandinsky.video.*`` event sets the signal of its request; a wait clears it, reads
    the status, and waits for the next one. Open it before the submits, so that no event is
    missed, with ``request_id`` for one job or ``flow_run_id`` for every job whose callback
    names that flow run (a batch).
    """

    def __init__(self, *, request_id: str | None = None, flow_run_id: str | None = None) -> None:
        from prefect.events.filters import (
            EventFilter,
            EventNameFilter,
            EventRelatedFilter,
            EventResourceFilter,
        )

        if (request_id is None) == (flow_run_id is None):
            raise ValueError("give request_id or flow_run_id")
        self.filter = EventFilter(
            event=EventNameFilter(prefix=[EVENT_PREFIX]),
            resource=EventResourceFilter(id=[resource_id(request_id)]) if request_id else None,
            related=EventRelatedFilter(id=[f"prefect.flow-run.{flow_run_id}"])
            if flow_run_id
            else None,
        )
        self._signals: dict[str, asyncio.Event] = {}
        self._reader: asyncio.Task[None] | None = None
        self._subscriber: Any = None

    def _signal(self, request_id: str) -> asyncio.Event:
        return self._signals.setdefault(request_id, asyncio.Event())

    async def __aenter__(self) -> EventSignals:
        from prefect.events.clients import get_events_subscriber

        self._subscriber = get_events_subscriber(filter=self.filter)
        await self._subscriber.__aenter__()
        self._reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
        if self._subscriber is not None:
            await self._subscriber.__aexit__(None, None, None)

    async def _read(self) -> None:
        try:
            async for event in self._subscriber:
                request_id = event.resource.get("prefect.resource.name") or ""
                _logger.debug("Event %s for %s", event.event, request_id)
                self._signal(request_id).set()
        except Exception:  # the safety reads go on without events
            _logger.warning("The event stream ended; waits fall back to slow status reads")

    async def wait(self, request_id: str, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for an event about ``request_id``."""
        signal = self._signal(request_id)
        try:
            await asyncio.wait_for(signal.wait(), timeout=timeout)
        except asyncio.TimeoutError:
            return False
        signal.clear()
        return True


async def wait_with_signals(
    client: KandinskyClient,
    request_id: str,
    signals: EventSignals,
    *,
    timeout: float = DEFAULT_WAIT_TIMEOUT_SECONDS,
    safety_poll_seconds: float = DEFAULT_SAFETY_POLL_SECONDS,
    on_change: StatusCallback | None = None,
    on_poll: StatusCallback | None = None,
) -> StatusResponse:
    """Read the status, then again on each event about the job (or every safety interval).

    Returns the final status like ``KandinskyClient.wait(raise_on_failure=False)``.

    Raises:
        KandinskyWaitTimeoutError: the deadline passed while the job still runs.
    """
    if safety_poll_seconds <= 0:
        raise ValueError(f"safety_poll_seconds must be positive; got {safety_poll_seconds!r}")

    async def until_event(remaining: float) -> bool:
        return await signals.wait(request_id, min(safety_poll_seconds, remaining))

    return await client.wait(
        request_id,
        timeout=timeout,
        on_change=on_change,
        on_poll=on_poll,
        raise_on_failure=False,
        idle=until_event,
    )


async def wait_for_event(
    client: KandinskyClient,
    request_id: str,
    *,
    timeout: float = DEFAULT_WAIT_TIMEOUT_SECONDS,
    safety_poll_seconds: float = DEFAULT_SAFETY_POLL_SECONDS,
    on_change: StatusCallback | None = None,
    on_poll: StatusCallback | None = None,
) -> StatusResponse:
    """Wait for one job's end on Prefect's event stream; read the status when an event comes.

    The subscription starts before the first status read, so an event that comes in between
    is not missed. Every event is confirmed (and its media links refreshed) by a status
    read; without events the status is read every ``safety_poll_seconds``.

    Raises:
        KandinskyWaitTimeoutError: the deadline passed while the job still runs.
    """
    async with EventSignals(request_id=request_id) as signals:
        return await wait_with_signals(
            client,
            request_id,
            signals,
            timeout=timeout,
            safety_poll_seconds=safety_poll_seconds,
            on_change=on_change,
            on_poll=on_poll,
        )


# -- suspending ---------------------------------------------------------------------------


async def ensure_resume_automation() -> UUID:
    """Create (once) the automation that resumes suspended runs when their video ends.

    It reacts to ``kandinsky.video.completed``, ``.failed`` and ``.error`` about any
    ``kandinsky.request.*`` resource, one bucket per request, and resumes the flow run the
    event names as related resource. Returns its id.
    """
    from prefect.automations import Automation
    from prefect.events.actions import ResumeFlowRun
    from prefect.events.schemas.automations import EventTrigger, Posture

    try:
        existing = await Automation.aread(name=RESUME_AUTOMATION_NAME)
    except ValueError:
        existing = None
    if existing is not None and existing.id is not None:
        return existing.id
    automation = Automation(
        name=RESUME_AUTOMATION_NAME,
        description=(
            "Resumes a flow run suspended until its Kandinsky video is done, when the "
            "webhook receiver reports the job's end (prefect-kandinsky)."
        ),
        trigger=EventTrigger(
            expect=set(TERMINAL_EVENTS),
            match={"prefect.resource.id": f"{resource_id('')}*"},
            match_related={"prefect.resource.role": "flow-run"},
            for_each={"prefect.resource.id"},
            posture=Posture.Reactive,
            threshold=1,
            within=timedelta(0),
        ),
        actions=[ResumeFlowRun()],
    )
    created = await automation.acreate()
    assert created.id is not None
    return created.id


async def suspend_until_done(
    client: KandinskyClient, request_id: str, *, timeout_seconds: float
) -> None:
    """Suspend this flow run until the job ends; return at once if it already has.

    The process exits here (Prefect's ``suspend_flow_run``); the completion event resumes
    the run, which starts again from the top and comes back here. The job's status decides,
    not the event that resumed the run: a run resumed while its job still runs (an event of
    another job naming it, a resume by hand) says so in its log and suspends again, under a
    new key (a suspend with a key already fired is not made twice). Needs a deployment run
    that is not a subflow.
    """
    from prefect.flow_runs import asuspend_flow_run

    check_can_suspend()
    await ensure_resume_automation()
    status = await client.get_status(request_id)
    if status.status.is_terminal:
        return
    fired = await _fired_suspends(request_id)
    logger = get_run_logger()
    if fired:
        logger.warning(
            "Resumed, but generation %s is not done (it is %s): suspending again until its "
            "own completion event (suspend %d)",
            request_id,
            status.status.value,
            fired + 1,
        )
    else:
        logger.info(
            "Suspending until generation %s is done (it is %s); nothing runs meanwhile",
            request_id,
            status.status.value,
        )
    await asuspend_flow_run(key=suspend_key(request_id, fired), timeout=int(timeout_seconds))


async def _fired_suspends(request_id: str) -> int:
    """How many suspends of this flow run for ``request_id`` have already fired."""
    from prefect.client.orchestration import get_client
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    if context is None or context.flow_run is None:
        return 0
    async with get_client() as prefect:
        run = await prefect.read_flow_run(context.flow_run.id)
    keys = run.empirical_policy.pause_keys or set()
    count = 0
    while suspend_key(request_id, count) in keys:
        count += 1
    return count


def check_can_suspend() -> None:
    """Refuse, before anything is paid, to suspend what cannot be resumed by its worker."""
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    run = context.flow_run if context is not None else None
    if run is None or run.deployment_id is None:  # a subflow has no deployment of its own
        raise ValueError(
            "wait='suspend' needs a flow run of a deployment that is not a subflow: its worker "
            "starts it again when the video is done; here use wait='events' or wait='poll'"
        )
