"""On-demand video generation, the entrypoint ``flows/generate.py:generate``.

The deployment runs the package's ``generate-video`` flow as is: one video per flow run,
parameterized at trigger time, for example::

    prefect deployment run generate-video/on-demand \
        --param prompt="Slow push-in, soft light." --param image_url=https://...
"""

from __future__ import annotations

from prefect_kandinsky.flows import generate_video

generate = generate_video
"""The ``generate-video`` flow of ``prefect_kandinsky.flows``, re-exported for deployment."""

__all__ = ["generate"]
