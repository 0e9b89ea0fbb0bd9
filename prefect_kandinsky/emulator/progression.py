"""How jobs move: QUEUED -> PROCESSING -> COMPLETED | FAILED | ERROR, by the clock or by hand.

:class:`JobProgression` holds the emulator's moving part: a tick that moves every job along by
the clock, ``advance`` for ``manual=True``, waiting for a status, entering a status (a refund
for ERROR, the callbacks it triggers) and the render hand-off to the engine. It is one part of
:class:`~prefect_kandinsky.emulator.state.EmulatorState`, which owns the data it reads (jobs,
configuration, wallet, render queue) and calls it under one lock.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterable

from prefect_kandinsky.gateway.models import JobStatus

from .config import EmulatorConfig
from .errors import InvalidTransition, NotFound
from .faults import Outcome
from .jobs import STATUS_ORDER, TERMINAL_STATUSES, Clock, Job
from .records import JobView, RenderTask, utc
from .wallet import Wallet


class JobProgression:
    """The progression of jobs, mixed into :class:`EmulatorState` (which sets these fields)."""

    _lock: threading.RLock
    _changed: threading.Condition
    _clock: Clock
    _config: EmulatorConfig
    _jobs: dict[str, Job]
    _wallet: Wallet
    _render_queue: deque[RenderTask]
    _generation: int

    def _post_webhook(self, job: Job, *, terminal: bool) -> None:
        """Queue a callback for ``job`` (the state's outbox)."""
        raise NotImplementedError

    def _job(self, request_id: str) -> Job:
        job = self._jobs.get(request_id)
        if job is None:
            raise NotFound(f"Request '{request_id}' not found")
        return job

    def _view(self, job: Job) -> JobView:
        request = job.request
        return JobView(
            request_id=job.request_id,
            model_id=job.model_id,
            status=job.status,
            error=job.error,
            prompt=request.prompt,
            image_url=request.image_url,
            resolution=request.resolution,
            duration_seconds=request.duration_seconds,
            num_inference_steps=request.num_inference_steps,
            acceleration=request.acceleration,
            created_at=utc(job.created_at),
            updated_at=utc(job.updated_at),
            completed_at=utc(job.completed_at) if job.completed_at is not None else None,
            charged_usd=job.charged_usd,
            refunded=job.refunded,
            webhook_url=job.webhook_url,
            webhook_mode=job.webhook_mode,
            media_size=len(job.media) if job.media is not None else None,
            history=tuple(job.history),
        )

    # -- progression ---------------------------------------------------------------------

    def tick(self) -> None:
        """Move every job along by the clock: status changes, sync callbacks, finished renders."""
        with self._lock:
            self._tick_locked()

    def _tick_locked(self) -> None:
        now = self._clock()
        for job in self._jobs.values():
            if job.status not in TERMINAL_STATUSES:
                self._progress(job, now)

    def advance(
        self, request_id: str, to: JobStatus | str | None = None, *, error: str | None = None
    ) -> JobView:
        """Move a job one step (``to=None``) or straight to ``to``; works in any mode.

        One step is QUEUED -> PROCESSING, then PROCESSING -> its planned outcome (COMPLETED by
        default). COMPLETED needs the MP4: until the render lands the job stays PROCESSING and
        completes as soon as it does. ``error`` is the message of a FAILED or ERROR.

        Raises:
            NotFound: no such request.
            InvalidTransition: the job is already terminal, or ``to`` is not ahead of it.
        """
        with self._lock:
            job = self._job(request_id)
            now = self._clock()
            self._progress(job, now)
            if job.status in TERMINAL_STATUSES:
                raise InvalidTransition(
                    f"Request '{request_id}' is already {job.status.value}; it cannot move"
                )
            target = JobStatus(to) if to is not None else None
            if target is not None and STATUS_ORDER[target] <= STATUS_ORDER[job.status]:
                raise InvalidTransition(
                    f"Request '{request_id}' is {job.status.value}; it cannot move to "
                    f"{target.value} (QUEUED -> PROCESSING -> COMPLETED | FAILED | ERROR)"
                )
            if target is None:
                if job.status is JobStatus.QUEUED:
                    target = JobStatus.PROCESSING
                elif job.render == "failed":
                    target = job.render_error_status
                else:
                    target = job.outcome.status if job.outcome else JobStatus.COMPLETED
            if target is JobStatus.PROCESSING:
                self._enter(job, JobStatus.PROCESSING, now)
            elif target is JobStatus.COMPLETED:
                if job.status is JobStatus.QUEUED:
                    self._enter(job, JobStatus.PROCESSING, now)
                self._queue_render(job)
                job.target = JobStatus.COMPLETED
                job.target_at = now
                self._resolve_target(job, now)
            else:
                message = error or (
                    job.render_error
                    if job.render == "failed" and target is job.render_error_status
                    else None
                )
                if message is None and job.outcome and job.outcome.status is target:
                    message = job.outcome.error_text
                if message is None:
                    message = Outcome(status=target).error_text
                self._enter(job, target, now, error=message)
            return self._view(job)

    def wait_for_jobs(self, count: int = 1, *, timeout: float = 10.0) -> list[JobView]:
        """Block until at least ``count`` jobs were submitted; snapshots of every job.

        Call it from a thread, not from an event loop that serves the emulator.

        Raises:
            TimeoutError: ``timeout`` (real seconds) passed first; the message has the count.
        """
        deadline = time.monotonic() + timeout
        with self._lock:
            while len(self._jobs) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(
                        f"{len(self._jobs)} of {count} job(s) submitted after {timeout}s"
                    )
                self._changed.wait(remaining)
            self._tick_locked()
            return [self._view(job) for job in self._jobs.values()]

    def wait_for_status(
        self,
        request_id: str,
        statuses: Iterable[JobStatus | str] | None = None,
        *,
        timeout: float = 10.0,
    ) -> JobView:
        """Block until the job reaches one of ``statuses`` (default: any terminal one).

        Call it from a thread, not from an event loop that serves the emulator.

        Raises:
            TimeoutError: ``timeout`` (real seconds) passed first; the message has the status.
        """
        wanted = (
            {JobStatus(s) for s in statuses} if statuses is not None else set(TERMINAL_STATUSES)
        )
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                job = self._job(request_id)
                self._progress(job, self._clock())
                if job.status in wanted:
                    return self._view(job)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    names = ", ".join(sorted(s.value for s in wanted))
                    raise TimeoutError(
                        f"Request '{request_id}' is still {job.status.value} after {timeout}s "
                        f"(waiting for {names})"
                    )
                self._changed.wait(min(remaining, 0.01))

    def _progress(self, job: Job, now: float) -> None:
        # Status changes are stamped with when they were due, not when a tick noticed them.
        if job.status in TERMINAL_STATUSES:
            return
        config = self._config
        if not config.manual:
            due = job.phase_started_at + config.queue_seconds
            if job.status is JobStatus.QUEUED and now >= due:
                self._enter(job, JobStatus.PROCESSING, due)
            due = job.phase_started_at + config.processing_seconds
            if job.status is JobStatus.PROCESSING:
                if job.render == "failed":
                    self._enter(
                        job, job.render_error_status, self._rendered_at(job), error=job.render_error
                    )
                elif now >= due:
                    outcome = job.outcome
                    if outcome is not None and outcome.status is not JobStatus.COMPLETED:
                        self._enter(job, outcome.status, due, error=outcome.error_text)
                    else:
                        job.target = JobStatus.COMPLETED
                        job.target_at = due
        self._resolve_target(job, now)
        if (
            job.status not in TERMINAL_STATUSES
            and job.next_sync_at is not None
            and now >= job.next_sync_at
        ):
            self._post_webhook(job, terminal=False)
            job.next_sync_at = now + config.sync_interval_seconds

    def _rendered_at(self, job: Job, after: float | None = None) -> float:
        finished = job.rendered_at if job.rendered_at is not None else self._clock()
        return max(finished, job.phase_started_at, after if after is not None else finished)

    def _resolve_target(self, job: Job, now: float) -> None:
        if job.target is not JobStatus.COMPLETED or job.status in TERMINAL_STATUSES:
            return
        if job.render == "done":
            self._enter(job, JobStatus.COMPLETED, self._rendered_at(job, job.target_at))
        elif job.render == "failed":
            self._enter(
                job,
                job.render_error_status,
                self._rendered_at(job, job.target_at),
                error=job.render_error,
            )

    def _enter(self, job: Job, status: JobStatus, now: float, *, error: str | None = None) -> None:
        job.status = status
        job.updated_at = now
        job.phase_started_at = now
        job.history.append(status)
        if status is JobStatus.PROCESSING:
            outcome = job.outcome
            if outcome is None or outcome.status is JobStatus.COMPLETED:
                self._queue_render(job)
        if status in TERMINAL_STATUSES:
            job.completed_at = now
            job.error = error if status is not JobStatus.COMPLETED else None
            job.target = None
            if status is JobStatus.ERROR and job.charged_usd and not job.refunded:
                job.refunded = True
                self._wallet.refund(job.charged_usd, utc(now), job.request_id)
            if job.webhook_url:
                for _ in range(1 + self._config.duplicate_webhooks):
                    self._post_webhook(job, terminal=True)
        elif job.next_sync_at is not None:
            self._post_webhook(job, terminal=False)
            job.next_sync_at = now + self._config.sync_interval_seconds
        self._changed.notify_all()

    # -- rendering (driven by the engine) ------------------------------------------------

    def _queue_render(self, job: Job) -> None:
        if job.render != "idle":
            return
        job.render = "queued"
        height = int(job.request.resolution.rstrip("Pp"))
        self._render_queue.append(
            RenderTask(
                request_id=job.request_id,
                image_url=job.request.image_url,
                height=height,
                seconds=job.request.duration_seconds,
                generation=self._generation,
            )
        )

    def take_render_tasks(self) -> list[RenderTask]:
        """Hand out the renders waiting to run (each only once)."""
        with self._lock:
            tasks = list(self._render_queue)
            self._render_queue.clear()
            for task in tasks:
                job = self._jobs.get(task.request_id)
                if job is not None and job.render == "queued":
                    job.render = "running"
            return tasks

    def finish_render(
        self, request_id: str, media: bytes, *, generation: int | None = None
    ) -> None:
        """Store a job's MP4; the job completes as soon as its timing allows."""
        with self._lock:
            job = self._render_job(request_id, generation)
            if job is None:
                return
            job.render = "done"
            job.media = media
            job.rendered_at = self._clock()
            self._progress(job, self._clock())
            self._changed.notify_all()

    def fail_render(
        self,
        request_id: str,
        error: str,
        *,
        status: JobStatus = JobStatus.FAILED,
        generation: int | None = None,
    ) -> None:
        """Record that a job's MP4 cannot be made: the job ends ``status`` with ``error``.

        FAILED is for bad input (an unreachable or undecodable image); ERROR for a crash.
        """
        with self._lock:
            job = self._render_job(request_id, generation)
            if job is None:
                return
            job.render = "failed"
            job.render_error = error
            job.rendered_at = self._clock()
            job.render_error_status = status
            self._progress(job, self._clock())
            self._changed.notify_all()

    def _render_job(self, request_id: str, generation: int | None) -> Job | None:
        if generation is not None and generation != self._generation:
            return None
        return self._jobs.get(request_id)

    @property
    def generation(self) -> int:
        """Bumped by :meth:`reset`; late results of older generations are ignored."""
        with self._lock:
            return self._generation
