"""Waiting without polling: gateway callbacks become Prefect events.

``tokens`` signs and checks callback URLs and names the events, ``receiver`` is the web app
that takes the gateway's callbacks and emits one Prefect event per status, ``server`` serves
it (``prefect-kandinsky webhooks serve``), ``waits`` waits on those events (or suspends a
flow run until one comes) and ``sweep`` is the flow that finishes what a lost callback left.

Built on ``gateway``, ``media`` and the credentials block; the one-video tasks and flows, and
the batches, use it. uvicorn loads only where a receiver starts.
"""
