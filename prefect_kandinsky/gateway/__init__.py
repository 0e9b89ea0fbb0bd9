"""The gateway's HTTP API, without Prefect: the lowest layer of the package.

``constants`` (timeouts, retry limits, header names), ``models`` (requests, responses, the
annotated field types), ``prices`` (the documented price table and batch estimates),
``exceptions`` (the error tree, a leaf: it imports nothing from the package), ``tls`` (the one
TLS context every HTTPS client of the package shares) and ``client`` (the async
``KandinskyClient``, the only code that speaks HTTP to the gateway).

Nothing here imports Prefect or any other layer of the package; import each name from its
module (the public names are re-exported by ``prefect_kandinsky`` itself).
"""
