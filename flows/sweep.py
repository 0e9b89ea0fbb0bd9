"""The safety net of event-driven waits, the entrypoint ``flows/sweep.py:sweep``.

A flow run suspended until its video is done is resumed by the completion event. If that
event never comes (a lost callback, a receiver that was down), this flow, run every few
minutes, reads the status of each suspended run's job and resumes the runs whose job ended.
Status reads are free, so the sweep costs nothing at the gateway.
"""

from __future__ import annotations

from prefect_kandinsky.events.sweep import sweep_videos

sweep = sweep_videos
"""The ``sweep-videos`` flow of ``prefect_kandinsky.events.sweep``, re-exported for deployment."""

__all__ = ["sweep"]
