"""Serve the gateway emulator from a shell: ``python -m prefect_kandinsky.emulator``.

Also reached as ``prefect-kandinsky emulator`` (same arguments). It prints the gateway URL,
the CDN URL and the API key, then serves until Ctrl-C::

    $ python -m prefect_kandinsky.emulator --port 8080 --cdn-port 8081
    Kandinsky 5.0 Pro gateway emulator
      gateway:  http://127.0.0.1:8080
      cdn:      http://127.0.0.1:8081
      api key:  emulator-key
      sample:   http://127.0.0.1:8081/samples/sample.png
      admin:    http://127.0.0.1:8080/_emulator/health (other routes need the api key)
    Press Ctrl-C to stop.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation

from .state import DEFAULT_BALANCE_USD, EMULATOR_API_KEY, EmulatorConfig

DEFAULT_PORT = 8080
DEFAULT_CDN_PORT = 8081


def _usd(value: str) -> Decimal:
    try:
        amount = Decimal(value)
    except InvalidOperation as exc:
        raise argparse.ArgumentTypeError(f"not an amount in USD: {value!r}") from exc
    if not amount.is_finite() or amount < 0:
        raise argparse.ArgumentTypeError(f"the balance must be zero or more; got {value!r}")
    return amount


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {value!r}") from exc
    if seconds < 0:
        raise argparse.ArgumentTypeError(f"seconds must be zero or more; got {value!r}")
    return seconds


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the emulator's options to ``parser`` (shared with ``prefect-kandinsky emulator``)."""
    defaults = EmulatorConfig()
    parser.add_argument(
        "--host", default="127.0.0.1", help="interface to bind (default: %(default)s)"
    )
    parser.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help="gateway port, 0 for any (default: %(default)s)",
    )
    parser.add_argument(
        "--cdn-port",
        type=int,
        default=DEFAULT_CDN_PORT,
        help="media CDN port, 0 for any (default: %(default)s)",
    )
    parser.add_argument(
        "--queue-seconds",
        type=_seconds,
        default=defaults.queue_seconds,
        help="time a job stays QUEUED (default: %(default)s)",
    )
    parser.add_argument(
        "--processing-seconds",
        type=_seconds,
        default=defaults.processing_seconds,
        help="minimum time a job stays PROCESSING (default: %(default)s)",
    )
    parser.add_argument(
        "--balance",
        type=_usd,
        default=DEFAULT_BALANCE_USD,
        help="wallet balance in USD (default: %(default)s)",
    )
    parser.add_argument(
        "--api-key",
        action="append",
        dest="api_keys",
        metavar="KEY",
        help=f"accepted subscription key, repeatable (default: {EMULATOR_API_KEY})",
    )
    parser.add_argument(
        "--allow-http-webhooks",
        action="store_true",
        help="accept http:// webhook URLs (the real gateway requires https)",
    )
    parser.add_argument(
        "--manual",
        action="store_true",
        help="jobs move only through POST /_emulator/jobs/{id}/advance",
    )
    parser.add_argument(
        "--sync-interval-seconds",
        type=_seconds,
        default=defaults.sync_interval_seconds,
        help="interval of X-Webhook-Mode: sync callbacks (default: %(default)s)",
    )
    parser.add_argument(
        "--media-ttl-seconds",
        type=_seconds,
        default=None,
        help="media links expire (403) this long after completion (default: never)",
    )
    parser.add_argument(
        "--submit-latency-seconds",
        type=_seconds,
        default=defaults.submit_latency_seconds,
        help="time the gateway takes to answer a submit, after queueing it (default: %(default)s)",
    )
    parser.add_argument(
        "--webhook-ca-file",
        default=None,
        metavar="PEM",
        help="CA certificates to trust, besides the system's, when posting https callbacks",
    )


def config_from_args(args: argparse.Namespace) -> EmulatorConfig:
    """The :class:`EmulatorConfig` the parsed arguments describe."""
    keys = frozenset(args.api_keys) if args.api_keys else frozenset({EMULATOR_API_KEY})
    return EmulatorConfig(
        api_keys=keys,
        balance_usd=args.balance,
        queue_seconds=args.queue_seconds,
        processing_seconds=args.processing_seconds,
        manual=args.manual,
        sync_interval_seconds=args.sync_interval_seconds,
        media_ttl_seconds=args.media_ttl_seconds,
        allow_http_webhooks=args.allow_http_webhooks,
        submit_latency_seconds=args.submit_latency_seconds,
        webhook_ca_file=args.webhook_ca_file,
    )


def run(args: argparse.Namespace) -> int:
    """Serve until Ctrl-C (or SIGTERM); return the exit code."""
    try:
        config = config_from_args(args)
    except ValueError as exc:
        print(f"invalid emulator settings: {exc}", file=sys.stderr)
        return 2
    from .server import EmulatorServer

    server = EmulatorServer(config=config, host=args.host, port=args.port, cdn_port=args.cdn_port)
    try:
        server.start()
    except OSError as exc:
        print(
            f"cannot listen on {args.host} ports {args.port} and {args.cdn_port}: {exc}",
            file=sys.stderr,
        )
        return 2
    stop = threading.Event()
    # Both signals set the event, also when SIGINT came in ignored (a background job of a
    # non-interactive shell inherits SIGINT as "ignore", and Python keeps it so).
    with contextlib.suppress(ValueError):  # not the main thread: Ctrl-C still works
        for stopping in (signal.SIGINT, signal.SIGTERM):
            signal.signal(stopping, lambda *_: stop.set())
    try:
        print("Kandinsky 5.0 Pro gateway emulator")
        print(f"  gateway:  {server.base_url}")
        print(f"  cdn:      {server.cdn_url}")
        print(f"  api key:  {server.api_key}")
        print(f"  sample:   {server.sample_image_url}")
        print(f"  admin:    {server.base_url}/_emulator/health (other routes need the api key)")
        print("Press Ctrl-C to stop.", flush=True)
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and :func:`run`."""
    parser = argparse.ArgumentParser(
        prog="python -m prefect_kandinsky.emulator",
        description="Serve an offline emulator of the Kandinsky 5.0 Pro gateway and its CDN.",
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
