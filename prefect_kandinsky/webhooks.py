"""Old path, kept importing for now; import from its new modules instead:

:mod:`prefect_kandinsky.events.tokens`
:mod:`prefect_kandinsky.events.receiver`
:mod:`prefect_kandinsky.events.server`
"""

from typing import TYPE_CHECKING

from prefect_kandinsky.lazy import moved_module

if not TYPE_CHECKING:
    __getattr__, __dir__ = moved_module(
        globals(),
        (
            "prefect_kandinsky.events.tokens",
            "prefect_kandinsky.events.receiver",
            "prefect_kandinsky.events.server",
        ),
    )
