"""One TLS context per process, shared by every HTTPS client the package opens.

A new ``httpx.AsyncClient`` builds its own TLS context and loads the whole CA bundle into it: about
30 ms of CPU on every client, before a byte is sent. The tasks open a client each (the submit with
its image check, the wait, the download), so a flow that fans the three tasks out over a thousand
rows spent one and a half to two minutes of CPU loading the same certificates (``generate_videos``
opens one client per run and was not affected). The context is built once, the first time a client
asks for it, the way httpx builds its default (``SSL_CERT_FILE`` or ``SSL_CERT_DIR`` when set,
certifi's bundle otherwise), and reused: an ``ssl.SSLContext`` is safe to share between clients,
threads and event loops as long as nobody changes it, and nothing here does.
"""

from __future__ import annotations

import functools
import ssl

import httpx


@functools.cache
def default_tls_context() -> ssl.SSLContext:
    """The process's verifying TLS context, built by the first caller and shared after that
    (two threads calling first at once may each build one; either serves).

    Do not modify it: pass your own ``ssl.SSLContext`` where a client needs other settings.
    """
    return httpx.create_ssl_context()
