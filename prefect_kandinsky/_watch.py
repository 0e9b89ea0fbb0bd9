"""In-process listeners of generation progress, for displays such as the command line's.

The tasks report every status read here; a display registers a listener for the time it
shows something. Listeners run in the reporting thread and must be quick and never raise
(an exception is logged and the listener dropped).

Example:
    ```python
    with watching(lambda request_id, status: print(request_id, status.status.value)):
        await generate_video(...)
    ```
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from prefect_kandinsky.models import StatusResponse

Listener = Callable[[str, StatusResponse], None]
"""Called with the request id and the status just read."""

_listeners: list[Listener] = []
_lock = threading.Lock()
_logger = logging.getLogger("prefect_kandinsky.watch")


@contextmanager
def watching(listener: Listener) -> Iterator[None]:
    """Call ``listener`` for every status read in this process while the block runs."""
    with _lock:
        _listeners.append(listener)
    try:
        yield
    finally:
        with _lock:
            if listener in _listeners:
                _listeners.remove(listener)


def report(request_id: str, status: StatusResponse) -> None:
    """Tell every listener about a status read."""
    with _lock:
        listeners = list(_listeners)
    for listener in listeners:
        try:
            listener(request_id, status)
        except Exception:
            _logger.exception("A progress listener failed; it is removed")
            with _lock:
                if listener in _listeners:
                    _listeners.remove(listener)
