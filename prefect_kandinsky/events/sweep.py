"""The safety net of event-driven waits: the ``sweep-videos`` flow.

A flow run suspended until its video is done is resumed by the completion event. If that event
never comes (a lost callback, a receiver that was down), this flow, run every few minutes,
reads the status of each suspended run's job and resumes the runs whose job ended. Status
reads are free, so the sweep costs nothing at the gateway.
"""

from __future__ import annotations

import time
from typing import Any

from prefect import flow
from prefect.logging import get_run_logger

from prefect_kandinsky.credentials import KandinskyCredentials
from prefect_kandinsky.events.waits import (
    DEFAULT_SWEEP_AFTER_SECONDS,
    PAGE_SIZE,
    SUSPEND_KEY_PREFIX,
)
from prefect_kandinsky.gateway.exceptions import KandinskyError


@flow(name="sweep-videos")
async def sweep_videos(
    credentials: KandinskyCredentials | str | None = None,
    after_seconds: float = DEFAULT_SWEEP_AFTER_SECONDS,
    limit: int = 500,
) -> dict[str, int]:
    """Resume suspended runs whose video is done but whose completion event never came.

    A lost callback (the receiver was down, the network failed, the gateway gave up) leaves a
    flow run suspended although its job ended. This flow reads the status of the job of every
    run suspended for longer than ``after_seconds`` and resumes those that ended; the resumed
    run reads the status itself and stores the video (or fails with the job's error).

    Args:
        credentials: A ``KandinskyCredentials`` block or its name; ``KANDINSKY_API_KEY`` when
            omitted.
        after_seconds: Leave alone runs suspended more recently than this.
        limit: At most this many suspended runs per sweep.

    Returns:
        How many suspended runs were seen, resumed, left running, or could not be read.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.flow_runs import aresume_flow_run

    from prefect_kandinsky.blocks import load_credentials

    logger = get_run_logger()
    creds = await load_credentials(credentials)
    counts = {"suspended": 0, "resumed": 0, "running": 0, "unreadable": 0}
    paused = FlowRunFilter(
        state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED]))
    )
    runs: list[Any] = []
    async with get_client() as prefect:
        while len(runs) < limit:
            page = await prefect.read_flow_runs(
                flow_run_filter=paused, limit=min(PAGE_SIZE, limit - len(runs)), offset=len(runs)
            )
            runs += page
            if len(page) < PAGE_SIZE:
                break
    async with creds.get_client(logger=logger) as client:
        for run in runs:
            state = run.state
            key = (state.state_details.pause_key or "") if state else ""
            if not key.startswith(SUSPEND_KEY_PREFIX) or state is None:
                continue
            if state.timestamp and ((time.time() - state.timestamp.timestamp()) < after_seconds):
                continue
            counts["suspended"] += 1
            request_id = key.removeprefix(SUSPEND_KEY_PREFIX).partition("#")[0]
            try:
                status = await client.get_status(request_id)
            except KandinskyError as exc:
                counts["unreadable"] += 1
                logger.warning("Could not read %s of flow run %s: %s", request_id, run.id, exc)
                continue
            if not status.status.is_terminal:
                counts["running"] += 1
                continue
            logger.info(
                "Resuming flow run %s: generation %s is %s and no event resumed it",
                run.name,
                request_id,
                status.status.value,
            )
            await aresume_flow_run(run.id)
            counts["resumed"] += 1
    return counts
