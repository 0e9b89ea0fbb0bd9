"""The ``prefect-kandinsky`` command: ``demo``, ``generate``, ``batch``, ``webhooks``, ``emulator``.

```
prefect-kandinsky demo                      # one video through the flow, on the built-in emulator
prefect-kandinsky generate --prompt ... --image URL_OR_PATH [--emulator | --credentials NAME]
prefect-kandinsky batch MANIFEST [--emulator | --credentials NAME] [--max-cost 20]
prefect-kandinsky webhooks serve --certfile cert.pem --keyfile key.pem   # callbacks -> events
prefect-kandinsky emulator --port 8080      # serve the gateway emulator
```

Mistakes are caught before any flow run is created or anything is paid: a bad argument, a
missing key or an image URL that does not answer with an image gives one line on stderr and
exit code 2. While a video renders, a live line shows its status and the time since the
submit; at the end the command prints where the video is and where its artifacts are.
Exit codes: 0 done, 1 the generation failed (the line says why and whether it was charged),
2 nothing was run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from prefect_kandinsky.gateway.models import (
    ACCELERATIONS,
    RESOLUTIONS,
    VideoRequest,
    check_resolution,
    check_steps,
    duration_seconds,
)

if TYPE_CHECKING:
    from uuid import UUID

    from rich.console import Console, RenderableType

    from prefect_kandinsky.credentials import KandinskyCredentials
    from prefect_kandinsky.gateway.models import PersistedVideo, StatusResponse

DEMO_PROMPT = (
    "The sun slowly rises over the hills, the camera gently pushes in, warm morning light."
)
PROG = "prefect-kandinsky"
_KEY_WAY_OUT_WITHOUT_A_BLOCK = "set KANDINSKY_API_KEY, or add --emulator to run offline for free"
KEY_WAY_OUT = (
    f"pass --credentials NAME (a saved KandinskyCredentials block), {_KEY_WAY_OUT_WITHOUT_A_BLOCK}"
)


class UsageError(Exception):
    """A mistake caught before anything ran: printed as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr, then exit code 2."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see {self.prog} --help)")


def _argument(check: Any) -> Any:
    """Wrap a model check so argparse reports its message as the argument's error."""

    def convert(text: str) -> Any:
        try:
            return check(text)
        except ValueError as exc:  # PydanticCustomError is a ValueError
            raise argparse.ArgumentTypeError(str(exc)) from exc

    return convert


def _add_video_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--resolution",
        type=_argument(check_resolution),
        default="512P",
        help=f"one of {', '.join(RESOLUTIONS)} (default: %(default)s)",
    )
    parser.add_argument(
        "--duration",
        type=_argument(duration_seconds),
        default=5,
        help='seconds, as 5 or "5s"; 3, 5 and 10 are documented (default: %(default)s)',
    )
    parser.add_argument(
        "--steps",
        type=_argument(lambda text: check_steps(text)),
        default=28,
        help="num_inference_steps, 20 to 50 (default: %(default)s)",
    )
    parser.add_argument("--acceleration", choices=ACCELERATIONS, default="regular")
    parser.add_argument(
        "--output", default="output", help="directory or block such as s3-bucket/videos"
    )
    parser.add_argument("--poll-interval", type=float, default=None, help="first poll, seconds")
    parser.add_argument(
        "--verbose", action="store_true", help="show Prefect's own log lines as well"
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``prefect-kandinsky``."""
    from prefect_kandinsky.emulator.__main__ import add_arguments as add_emulator_arguments

    parser = _Parser(
        prog=PROG, description="Kandinsky 5.0 Pro image-to-video through Prefect flows."
    )
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    demo = commands.add_parser(
        "demo", help="generate a video from the sample image on the built-in emulator"
    )
    demo.add_argument("--output", default="output", help="directory for the MP4")
    demo.add_argument("--resolution", type=_argument(check_resolution), default="512P")
    demo.add_argument("--duration", type=_argument(duration_seconds), default=3)
    demo.add_argument("--verbose", action="store_true", help="show Prefect's own log lines")

    generate = commands.add_parser("generate", help="run the generate-video flow once")
    generate.add_argument("--prompt", required=True)
    generate.add_argument(
        "--image", required=True, help="image URL, or a local file with --emulator"
    )
    _add_video_arguments(generate)
    generate.add_argument("--credentials", help="name of a saved KandinskyCredentials block")
    generate.add_argument("--idempotency-key", help="submit at most once for this key")
    generate.add_argument(
        "--no-check-image",
        dest="check_image",
        action="store_false",
        help="do not fetch the image before paying (for hosts only the gateway can reach)",
    )
    generate.add_argument(
        "--emulator", action="store_true", help="run against the built-in emulator (no key)"
    )

    batch = commands.add_parser(
        "batch", help="generate one video per row of a manifest (CSV or JSONL)"
    )
    batch.add_argument(
        "manifest", help="a local file, s3://bucket/key, or <block-slug>/<block-name>/<path>"
    )
    batch.add_argument("--credentials", help="name of a saved KandinskyCredentials block")
    batch.add_argument(
        "--emulator", action="store_true", help="run against the built-in emulator (no key)"
    )
    batch.add_argument(
        "--output", default="output", help="directory or block such as s3-bucket/videos"
    )
    batch.add_argument(
        "--max-concurrency", type=int, default=16, help="renders in flight at once (default: 16)"
    )
    batch.add_argument("--max-cost", type=float, help="refuse the batch above this many USD")
    batch.add_argument("--rate-limit", help="a Prefect global concurrency limit for submits")
    batch.add_argument(
        "--input-bucket", help="S3Bucket block for s3:// manifests and images, and uploads"
    )
    batch.add_argument("--batch-id", help="the batch's identity (default: the manifest)")
    batch.add_argument("--ledger", help="folder or storage block of the rows' records")
    batch.add_argument("--no-check-image", dest="check_image", action="store_false")
    batch.add_argument("--retry-failed", action="store_true", help="submit FAILED rows again")
    batch.add_argument(
        "--resubmit-uncertain",
        action="store_true",
        help="submit again rows whose earlier submit may have reached the gateway",
    )
    batch.add_argument("--poll-interval", type=float, default=None, help="first poll, seconds")
    batch.add_argument(
        "--verbose", action="store_true", help="show Prefect's own log lines as well"
    )

    webhooks = commands.add_parser(
        "webhooks", help="receive the gateway's callbacks and turn them into Prefect events"
    )
    webhook_commands = webhooks.add_subparsers(
        dest="webhooks_command", required=True, parser_class=_Parser
    )
    serve = webhook_commands.add_parser("serve", help="serve the webhook receiver")
    serve.add_argument(
        "--credentials",
        help="name of a saved KandinskyCredentials block with a webhook_secret (default: "
        "KANDINSKY_API_KEY and KANDINSKY_WEBHOOK_SECRET)",
    )
    serve.add_argument("--host", default="127.0.0.1", help="interface (default: %(default)s)")
    serve.add_argument("--port", type=int, default=8443, help="port (default: %(default)s)")
    serve.add_argument("--certfile", help="PEM certificate chain, for https")
    serve.add_argument("--keyfile", help="PEM private key, when not in --certfile")
    serve.add_argument(
        "--self-signed",
        metavar="DIR",
        help="serve https with a throwaway certificate for 127.0.0.1 made in DIR (once), signed "
        "by a local CA in DIR/ca.pem that the emulator trusts with --webhook-ca-file "
        "DIR/ca.pem: for trying it on one machine",
    )
    serve.add_argument("--log-level", default="info", help="(default: %(default)s)")

    emulator = commands.add_parser("emulator", help="serve the gateway emulator")
    add_emulator_arguments(emulator)
    return parser


# -- checks made before anything runs ------------------------------------------------------


@contextlib.contextmanager
def _emulator(enabled: bool) -> Iterator[Any]:
    if not enabled:
        yield None
        return
    from prefect_kandinsky.emulator import EmulatorServer

    with EmulatorServer() as server:
        yield server


def _image_url(image: str, server: Any) -> str:
    if image.startswith(("http://", "https://")):
        return image
    path = Path(image)
    if server is None:
        raise UsageError(
            f"--image {image!r} is a local file: the gateway needs a public http(s) URL "
            "(or add --emulator to animate a local file offline)"
        )
    if not path.is_file():
        raise UsageError(f"--image {image!r}: no such file")
    url: str = server.upload(path.read_bytes(), content_type=_content_type(path))
    return url


def _content_type(path: Path) -> str:
    suffix = path.suffix.lower().lstrip(".")
    return {"jpg": "image/jpeg", "jpeg": "image/jpeg", "webp": "image/webp"}.get(
        suffix, "image/png"
    )


def _request(**fields: Any) -> VideoRequest:
    from pydantic import ValidationError

    try:
        return VideoRequest(**fields)
    except ValidationError as exc:
        raise UsageError("; ".join(str(error["msg"]) for error in exc.errors())) from exc


def _credentials(args: argparse.Namespace, server: Any) -> KandinskyCredentials:
    """The credentials to run with; a missing key or block is a usage error."""
    from prefect_kandinsky.credentials import API_KEY_ENV, KandinskyCredentials

    if server is not None:
        return KandinskyCredentials(api_key=server.api_key, base_url=server.base_url)
    if args.credentials:
        from prefect.exceptions import ObjectNotFound

        try:
            loaded = asyncio.run(KandinskyCredentials.aload(args.credentials))
        except (ObjectNotFound, ValueError) as exc:
            raise UsageError(
                f"--credentials {args.credentials!r}: no KandinskyCredentials block of that "
                f"name on the Prefect API ({exc.__class__.__name__}); save one, or "
                f"{_KEY_WAY_OUT_WITHOUT_A_BLOCK}"
            ) from exc
        return loaded
    if not os.environ.get(API_KEY_ENV, "").strip():
        raise UsageError(f"no gateway API key: {KEY_WAY_OUT}")
    return KandinskyCredentials.from_env()


def _check_image(url: str) -> None:
    from prefect_kandinsky.gateway.exceptions import KandinskyImageError
    from prefect_kandinsky.media.images import check_image

    try:
        asyncio.run(check_image(url))
    except KandinskyImageError as exc:
        raise UsageError(f"{exc} (or pass --no-check-image)") from exc


# -- running the flow with a live display --------------------------------------------------


class _Display:
    """A live status line on a terminal; one line per status change otherwise.

    Elapsed time counts from the first status read, right after the submit.
    """

    def __init__(self, console: Console) -> None:
        from rich.spinner import Spinner

        self.console = console
        self.started: float | None = None
        self.request_id: str | None = None
        self.status = "starting"
        self.spinner = Spinner("dots")

    def on_event(self, event: object) -> None:
        from prefect_kandinsky.progress import StatusRead

        if isinstance(event, StatusRead):
            self.on_status(event.request_id, event.status)

    def on_status(self, request_id: str, status: StatusResponse) -> None:
        if self.started is None:
            self.started = time.monotonic()
        changed = status.status.value != self.status or request_id != self.request_id
        self.request_id, self.status = request_id, status.status.value
        if changed and not self.console.is_terminal:
            print(f"{self.status:<10} {self._elapsed()}  {request_id}", file=sys.stderr)

    def _elapsed(self) -> str:
        if self.started is None:
            return ""
        return f"{time.monotonic() - self.started:5.1f} s"

    def __rich__(self) -> RenderableType:
        from rich.text import Text

        text = Text.assemble(
            (self.status, "bold"),
            f"  {self._elapsed()}",
            (f"  {self.request_id}" if self.request_id else "", "dim"),
        )
        self.spinner.update(text=text)
        return self.spinner


def _silence_prefect_console() -> None:
    """Keep Prefect's console log lines off the terminal (they still reach the API).

    Left so until the process ends: the temporary server Prefect may have started stops at
    exit and says so, and its events worker may say it is still sending events.
    """
    import prefect.logging.configuration  # noqa: F401  (sets up Prefect's handlers)
    from prefect.logging.handlers import PrefectConsoleHandler

    root = logging.getLogger()
    for handler in root.handlers:
        if isinstance(handler, PrefectConsoleHandler):
            handler.setLevel(logging.CRITICAL)
    if not root.handlers:  # no flow ran: keep Python's last-resort handler quiet too
        root.addHandler(logging.NullHandler())


def _run_flow(verbose: bool, **parameters: Any) -> Any:
    """Run ``generate_video`` showing live progress; return its final state."""
    from rich.console import Console

    from prefect_kandinsky.flows import generate_video

    display = _Display(Console(stderr=True))
    return _run_live(generate_video, parameters, display, display, verbose, refresh_per_second=8)


def _run_live(
    flow: Any,
    parameters: dict[str, Any],
    display: _Display | _BatchDisplay,
    renderable: RenderableType,
    verbose: bool,
    **live: Any,
) -> Any:
    """Run ``flow`` with the parameters that are not None; return its final state.

    ``display`` hears the progress events; ``renderable`` shows live on a terminal unless
    ``verbose``, which also leaves Prefect's own log lines on.
    """
    from rich.live import Live

    from prefect_kandinsky.progress import watching

    if not verbose:
        _silence_prefect_console()
    with (
        watching(display.on_event),
        Live(renderable, console=display.console, transient=True, **live)
        if display.console.is_terminal and not verbose
        else contextlib.nullcontext(),
    ):
        return asyncio.run(_call(flow, _set(parameters)))


async def _call(flow: Any, parameters: dict[str, Any]) -> Any:
    return await flow(**parameters, return_state=True)


# -- reporting ----------------------------------------------------------------------------


def _ui_hint(flow_run_id: UUID | None) -> list[str]:
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME

    page = f"/runs/flow-run/{flow_run_id}" if flow_run_id else "/artifacts"
    api = PREFECT_API_URL.value()
    if api:
        return [f"Open:        {api.removesuffix('/api')}{page}"]
    prefect = Path(sys.executable).with_name("prefect")
    command = prefect if prefect.exists() else "prefect"
    home = PREFECT_HOME.value()
    return [
        f"Open:        the runs and artifacts are stored under {home}; to browse them run",
        f"             PREFECT_HOME={home} PREFECT_SERVER_ANALYTICS_ENABLED=false "
        f"{command} server start",
        f"             and open http://127.0.0.1:4200{page}",
    ]


def _artifact_lines(flow_run_id: UUID | None) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    if flow_run_id is None:
        return []

    async def read() -> list[Any]:
        async with get_client() as client:
            return await client.read_artifacts(
                artifact_filter=ArtifactFilter(
                    flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])
                )
            )

    lines = []
    for index, artifact in enumerate(sorted(asyncio.run(read()), key=lambda a: a.key or "~")):
        label = "Artifacts:" if index == 0 else ""
        name = artifact.key or "(progress, on the run's page)"
        lines.append(f"{label:<13}{name} [{artifact.type}]")
    return lines


def _report(persisted: PersistedVideo, flow_run_id: UUID | None) -> None:
    video = persisted.video
    request = video.request if video else None
    cost = request.estimated_cost_label if request else "unknown"
    lines = [
        "",
        f"Video:       {persisted.uri}",
        f"Request id:  {persisted.request_id}",
        f"Cost:        {cost} (estimate from the documented price table)",
    ]
    if persisted.frames is not None:
        lines.append(
            f"Frames:      {persisted.frames} at {persisted.fps:g} fps, "
            f"{persisted.width}x{persisted.height}, {persisted.codec}"
        )
    lines.append(f"Bytes:       {persisted.size_bytes} (sha256 {persisted.sha256[:16]}...)")
    lines += _artifact_lines(flow_run_id)
    lines += _ui_hint(flow_run_id)
    print("\n".join(lines))


def _finish(state: Any) -> int:
    from prefect_kandinsky.gateway.exceptions import KandinskyError

    flow_run_id = state.state_details.flow_run_id
    if state.is_completed():
        _report(state.result(), flow_run_id)
        return 0
    error = state.result(raise_on_failure=False)
    message = str(error) if isinstance(error, BaseException) else str(state.message)
    print(f"{PROG}: {message}", file=sys.stderr)
    if isinstance(error, KandinskyError) and error.request_id:
        from prefect_kandinsky.artifacts import artifact_key

        print(
            f"Summary:     artifact {artifact_key(error.request_id, 'summary')}",
            file=sys.stderr,
        )
    for line in _ui_hint(flow_run_id):
        print(line, file=sys.stderr)
    return 1


def _demo(args: argparse.Namespace) -> int:
    from prefect_kandinsky.emulator import EmulatorServer

    with EmulatorServer() as server:
        image_url = server.sample_image_url
        request = _request(
            prompt=DEMO_PROMPT,
            image_url=image_url,
            resolution=args.resolution,
            duration=args.duration,
        )
        print(f"Gateway emulator at {server.base_url} (no key, no network)")
        print(f"Animating the sample image {image_url}")
        print(f"Estimated cost on the real gateway: {request.estimated_cost_label}", flush=True)
        state = _run_flow(
            args.verbose,
            prompt=request.prompt,
            image_url=request.image_url,
            resolution=request.resolution,
            duration=request.duration_seconds,
            destination=str(Path(args.output).resolve()),
            credentials=_credentials(argparse.Namespace(credentials=None), server),
            poll_interval_seconds=0.5,
        )
        return _finish(state)


def _generate(args: argparse.Namespace) -> int:
    with _emulator(args.emulator) as server:
        image_url = _image_url(args.image, server)
        request = _request(
            prompt=args.prompt,
            image_url=image_url,
            resolution=args.resolution,
            duration=args.duration,
            num_inference_steps=args.steps,
            acceleration=args.acceleration,
        )
        credentials = _credentials(args, server)
        if args.check_image:
            _check_image(request.image_url)
        state = _run_flow(
            args.verbose,
            prompt=request.prompt,
            image_url=request.image_url,
            resolution=request.resolution,
            duration=request.duration_seconds,
            num_inference_steps=request.num_inference_steps,
            acceleration=request.acceleration,
            destination=args.output,
            # A saved block by name; from the environment the flow reads the key itself:
            # a key never becomes a flow run parameter.
            credentials=credentials if server is not None else args.credentials,
            idempotency_key=args.idempotency_key,
            check_image=args.check_image,
            poll_interval_seconds=args.poll_interval,
        )
        return _finish(state)


class _BatchDisplay:
    """A live progress bar of finished rows on a terminal; a line per row otherwise."""

    def __init__(self, console: Console, total: int) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.console = console
        self.total = total
        self.counts: dict[str, int] = {}
        self.progress = Progress(
            TextColumn("rows"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.description}"),
            console=console,
            transient=True,
        )
        self.task = self.progress.add_task("", total=total)

    def on_event(self, event: object) -> None:
        from prefect_kandinsky.batch.ledger import RowRecord

        if not isinstance(event, RowRecord):
            return
        self.counts[event.state] = self.counts.get(event.state, 0) + 1
        counts = ", ".join(f"{n} {state}" for state, n in sorted(self.counts.items()))
        self.progress.update(self.task, advance=1, description=counts)
        if not self.console.is_terminal:
            name = event.row_id or f"line {event.line}"
            print(f"{event.state:<10} {name}  {event.uri or event.error or ''}", file=sys.stderr)


def _batch_rows(args: argparse.Namespace, server: Any) -> tuple[Any, str | None, int]:
    """The rows to run, the batch id, and the row count; every problem is a usage error."""
    from prefect_kandinsky.batch.manifests import load_manifest
    from prefect_kandinsky.gateway.exceptions import KandinskyManifestError

    try:
        manifest = asyncio.run(load_manifest(args.manifest))
    except (KandinskyManifestError, ValueError) as exc:
        raise UsageError(str(exc)) from exc
    if server is None:
        return args.manifest, args.batch_id, len(manifest.rows)
    # The emulator cannot read this machine's files: give it the local images.
    rows = []
    for row in manifest.rows:
        fields = row.model_dump(exclude={"line"}, exclude_none=True)
        if row.image_kind == "file":
            fields["image"] = _image_url(row.image, server)
        rows.append(fields)
    return rows, args.batch_id or manifest.source, len(rows)


def _batch(args: argparse.Namespace) -> int:
    from rich.console import Console

    from prefect_kandinsky.batch.flows import generate_videos

    with _emulator(args.emulator) as server:
        credentials = _credentials(args, server)
        rows, batch_id, total = _batch_rows(args, server)
        parameters = {
            "rows": rows,
            "credentials": credentials if server is not None else args.credentials,
            "destination": args.output,
            "max_concurrency": args.max_concurrency,
            "max_cost_usd": args.max_cost,
            "rate_limit": args.rate_limit,
            "input_bucket": args.input_bucket,
            "batch_id": batch_id,
            "ledger": args.ledger,
            "check_image": args.check_image,
            "retry_failed": args.retry_failed,
            "resubmit_uncertain": args.resubmit_uncertain,
            "poll_interval_seconds": args.poll_interval,
        }
        display = _BatchDisplay(Console(stderr=True), total)
        state = _run_live(generate_videos, parameters, display, display.progress, args.verbose)
        return _finish_batch(state)


def _set(parameters: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in parameters.items() if v is not None}


def _finish_batch(state: Any) -> int:
    from prefect_kandinsky.batch.artifacts import batch_key
    from prefect_kandinsky.gateway.exceptions import (
        KandinskyBatchIncompleteError,
        KandinskyBudgetError,
        KandinskyManifestError,
    )

    flow_run_id = state.state_details.flow_run_id
    outcome = state.result(raise_on_failure=False)
    result = outcome.result if isinstance(outcome, KandinskyBatchIncompleteError) else outcome
    if isinstance(outcome, KandinskyManifestError | KandinskyBudgetError):
        print(f"{PROG}: {outcome}", file=sys.stderr)
        return 2
    if isinstance(outcome, BaseException) and result is outcome:
        print(f"{PROG}: {outcome}", file=sys.stderr)
        for line in _ui_hint(flow_run_id):
            print(line, file=sys.stderr)
        return 1
    stored = result.counts.get("stored", 0)
    lines = [
        "",
        f"Stored:      {stored} of {len(result.rows)} rows",
        f"Charged:     ${result.charged_usd:.2f} (documented prices; this run's estimate "
        f"${result.estimated_cost_usd:.2f})",
        *(
            [
                f"Ambiguous:   {result.ambiguous_attempts} submits whose answer was lost and "
                f"whose job is unknown may have cost up to ${result.ambiguous_usd:.2f} more "
                "(check the gateway's dashboard)"
            ]
            if result.ambiguous_attempts
            else []
        ),
        *(
            [f"Adopted:     {result.adopted_rows} rows' jobs were adopted from their callback"]
            if result.adopted_rows
            else []
        ),
        f"Rows:        {', '.join(f'{n} {s}' for s, n in sorted(result.counts.items()))}",
        f"Ledger:      {result.ledger}",
        f"Artifacts:   {batch_key(result.batch_id, '')} [table]",
        f"             {batch_key(result.batch_id, 'summary')} [markdown]",
        *_ui_hint(flow_run_id),
    ]
    print("\n".join(lines))
    if not result.complete:
        print(
            f"{PROG}: {len(result.rows) - stored} rows are not stored; run the same command "
            "again to finish them without paying twice for the others",
            file=sys.stderr,
        )
        return 1
    return 0


def _serve_webhooks(args: argparse.Namespace) -> int:
    from prefect_kandinsky.events.server import serve

    credentials = _credentials(args, None)
    if credentials.webhook_secret is None:
        raise UsageError(
            "the receiver needs a webhook_secret: set it on the KandinskyCredentials block "
            "(the same block the flows use), or export KANDINSKY_WEBHOOK_SECRET"
        )
    if args.keyfile and not args.certfile:
        raise UsageError("--keyfile needs --certfile")
    if args.self_signed:
        if args.certfile:
            raise UsageError("pass --certfile or --self-signed, not both")
        from prefect_kandinsky.events.certificates import throwaway_certificate

        ca_file, server_file = throwaway_certificate(args.self_signed)
        args.certfile = str(server_file)
        print(
            f"{PROG}: serving a throwaway certificate for 127.0.0.1; trust it in the emulator "
            f"with --webhook-ca-file {ca_file}",
            file=sys.stderr,
        )
    serve(
        credentials,
        host=args.host,
        port=args.port,
        certfile=args.certfile,
        keyfile=args.keyfile,
        log_level=args.log_level,
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``prefect-kandinsky``."""
    try:
        args = build_parser().parse_args(argv)
        if args.command == "demo":
            return _demo(args)
        if args.command == "generate":
            return _generate(args)
        if args.command == "batch":
            return _batch(args)
        if args.command == "webhooks":
            return _serve_webhooks(args)
    except UsageError as exc:
        if "prefect" in sys.modules:
            _silence_prefect_console()
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    from prefect_kandinsky.emulator.__main__ import run as run_emulator

    return run_emulator(args)


if __name__ == "__main__":
    sys.exit(main())
