"""In-process listeners of generation progress, for displays such as the command line's.

The tasks report every status read here, and the batch every row that finished; a display
registers a listener for the time it shows something. Listeners run in the reporting thread
and must be quick (an exception is logged and the listener dropped).

Example:
    ```python
    def show(event: object) -> None:
        if isinstance(event, StatusRead):
            print(event.request_id, event.status.status.value)

    with watching(show):
        await generate_video(...)
    ```
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from prefect_kandinsky.gateway.models import StatusResponse


@dataclass(frozen=True)
class StatusRead:
    """A status read of one generation."""

    request_id: str
    status: StatusResponse


Listener = Callable[[object], None]
"""Called with each event: a :class:`StatusRead`, or a batch row's record when it finished."""

_listeners: list[Listener] = []
_lock = threading.Lock()
_logger = logging.getLogger("prefect_kandinsky.watch")


@contextmanager
def watching(listener: Listener) -> Iterator[None]:
    """Call ``listener`` for every event reported in this process while the block runs."""
    with _lock:
        _listeners.append(listener)
    try:
        yield
    finally:
        with _lock:
            if listener in _listeners:
                _listeners.remove(listener)


def report(event: object) -> None:
    """Tell every listener about ``event``."""
    with _lock:
        listeners = list(_listeners)
    for listener in listeners:
        try:
            listener(event)
        except Exception:
            _logger.exception("A progress listener failed; it is removed")
            with _lock:
                if listener in _listeners:
                    _listeners.remove(listener)
