"""The ``prefect-kandinsky`` command: ``demo``, ``generate``, ``batch``, ``webhooks``, ``emulator``.

```
prefect-kandinsky demo                      # one video through the flow, on the built-in emulator
prefect-kandinsky generate --prompt ... --image URL_OR_PATH [--emulator | --credentials NAME]
prefect-kandinsky batch MANIFEST [--emulator | --credentials NAME] [--max-cost 20]
prefect-kandinsky webhooks serve --certfile cert.pem --keyfile key.pem   # callbacks -> events
prefect-kandinsky show kandinsky-summary-... # an artifact for a terminal, pictures left out
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
import re
import sys
import time
from collections.abc import Iterator, MutableMapping, Sequence
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
    parser.add_argument(
        "--acceleration",
        choices=ACCELERATIONS,
        default="regular",
        help="speed versus quality (default: %(default)s)",
    )
    parser.add_argument(
        "--output",
        default="output",
        help="directory or block such as s3-bucket/videos (default: %(default)s)",
    )
    parser.add_argument(
        "--poll-interval",
        type=float,
        default=None,
        help="seconds before the first status read; later reads back off (default: 2)",
    )
    parser.add_argument(
        "--verbose", action="store_true", help="show Prefect's own log lines as well"
    )


def version() -> str:
    """The installed version of prefect-kandinsky."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed_version

    try:
        return installed_version("prefect-kandinsky")
    except PackageNotFoundError:  # run from a checkout that is not installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``prefect-kandinsky``."""
    from prefect_kandinsky.emulator.__main__ import add_arguments as add_emulator_arguments

    parser = _Parser(
        prog=PROG, description="Kandinsky 5.0 Pro image-to-video through Prefect flows."
    )
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {version()}", help="show the version"
    )
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    demo = commands.add_parser(
        "demo", help="generate a video from the sample image on the built-in emulator"
    )
    demo.add_argument(
        "--output", default="output", help="directory for the MP4 (default: %(default)s)"
    )
    demo.add_argument(
        "--resolution",
        type=_argument(check_resolution),
        default="512P",
        help=f"one of {', '.join(RESOLUTIONS)} (default: %(default)s)",
    )
    demo.add_argument(
        "--duration",
        type=_argument(duration_seconds),
        default=3,
        help='seconds, as 3 or "3s"; 3, 5 and 10 are documented (default: %(default)s)',
    )
    demo.add_argument("--verbose", action="store_true", help="show Prefect's own log lines")

    generate = commands.add_parser("generate", help="run the generate-video flow once")
    generate.add_argument(
        "--prompt", required=True, help="the motion, camera movement and mood to generate"
    )
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
    batch.add_argument(
        "--no-check-image",
        dest="check_image",
        action="store_false",
        help="do not fetch the images before paying (for hosts only the gateway can reach)",
    )
    batch.add_argument("--retry-failed", action="store_true", help="submit FAILED rows again")
    batch.add_argument(
        "--overwrite",
        action="store_true",
        help="replace files already at the rows' filenames (refused otherwise, before paying)",
    )
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

    show = commands.add_parser(
        "show",
        help="print an artifact's markdown with its embedded pictures left out (for a terminal)",
    )
    show.add_argument("key", help="the artifact's key, e.g. kandinsky-summary-...")

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
    from prefect_kandinsky.media.images import IMAGE_SNIFF_BYTES, sniff_image_kind

    data = path.read_bytes()
    kind = sniff_image_kind(data[:IMAGE_SNIFF_BYTES])
    if kind is None:
        # Only images go to the emulator's CDN, and the file's bytes are never shown.
        raise UsageError(
            f"--image {image!r} is not an image ({len(data)} bytes of something else): "
            "give a PNG, JPEG or WebP file"
        )
    url: str = server.upload(data, content_type=f"image/{kind}")
    return url


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


def _check_image(url: str, credentials: KandinskyCredentials) -> None:
    from prefect_kandinsky.gateway.exceptions import KandinskyImageError
    from prefect_kandinsky.media.images import check_image

    try:
        asyncio.run(check_image(url, gateway_url=credentials.base_url))
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


def ui_url() -> str:
    """The address of the Prefect UI that shows this command's runs.

    Prefect's own setting, ``PREFECT_UI_URL`` (which Prefect infers from ``PREFECT_API_URL``
    when it is not set); without a server, the address ``prefect server start`` would serve,
    from ``PREFECT_SERVER_API_HOST`` and ``PREFECT_SERVER_API_PORT``.
    """
    from prefect.settings import PREFECT_SERVER_API_HOST, PREFECT_SERVER_API_PORT, PREFECT_UI_URL

    configured = PREFECT_UI_URL.value()
    if configured:
        return str(configured).rstrip("/")
    host = str(PREFECT_SERVER_API_HOST.value())
    host = {"0.0.0.0": "127.0.0.1", "::": "[::1]"}.get(host, host)
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{PREFECT_SERVER_API_PORT.value()}"


def _ui_hint(flow_run_id: UUID | None) -> list[str]:
    """Where to see a run in the Prefect UI, and how to start a server for it if none runs."""
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME

    page = f"/runs/flow-run/{flow_run_id}" if flow_run_id else "/artifacts"
    if PREFECT_API_URL.value():
        return [f"Open:        {ui_url()}{page}"]
    prefect = Path(sys.executable).with_name("prefect")
    command = prefect if prefect.exists() else "prefect"
    home = PREFECT_HOME.value()
    return [
        f"Open:        the runs and artifacts are stored under {home}; to browse them run",
        f"             PREFECT_HOME={home} PREFECT_SERVER_ANALYTICS_ENABLED=false "
        f"{command} server start",
        f"             and open {ui_url()}{page}",
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


def _finish(state: Any, prompt: str) -> int:
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
            f"Summary:     artifact {artifact_key(error.request_id, 'summary', prompt)}",
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
        return _finish(state, request.prompt)


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
            _check_image(request.image_url, credentials)
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
        return _finish(state, request.prompt)


class _BatchDisplay:
    """A live progress bar on a terminal with the phase; a line per phase and row otherwise."""

    def __init__(self, console: Console) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.console = console
        self.counts: dict[str, int] = {}
        self.phase = "checking rows"
        self.progress = Progress(
            TextColumn("rows"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.description}"),
            console=console,
            transient=True,
        )
        self.task = self.progress.add_task(self.phase, total=None)

    def start(self, total: int) -> None:
        """The number of rows is known: the bar has a length."""
        self.progress.update(self.task, total=total)

    def _describe(self) -> None:
        counts = ", ".join(f"{n} {state}" for state, n in sorted(self.counts.items()))
        self.progress.update(
            self.task, description="  ".join(part for part in (self.phase, counts) if part)
        )

    def on_event(self, event: object) -> None:
        from prefect_kandinsky.batch.ledger import RowRecord
        from prefect_kandinsky.batch.runner import BatchPhase

        if isinstance(event, BatchPhase):
            if event.text != self.phase and not event.working and not self.console.is_terminal:
                print(f"{event.text}...", file=sys.stderr)
            self.phase = event.text
            self._describe()
            return
        if not isinstance(event, RowRecord):
            return
        self.counts[event.state] = self.counts.get(event.state, 0) + 1
        self.progress.advance(self.task)
        self._describe()
        if not self.console.is_terminal:
            name = event.row_id or f"line {event.line}"
            print(f"{event.state:<10} {name}  {event.uri or event.error or ''}", file=sys.stderr)


def _input_bucket(name: str | None) -> Any:
    """The S3Bucket block named by ``--input-bucket``, loaded once for the checks and the run."""
    if name is None:
        return None
    from prefect_aws import S3Bucket

    try:
        return S3Bucket.load(name.removeprefix("s3-bucket/"))
    except ValueError as exc:
        raise UsageError(
            f"--input-bucket {name!r}: no S3Bucket block of that name ({exc}); create it "
            "(prefect block register -m prefect_aws, then in the UI or in Python), or pass "
            "another name"
        ) from exc


def _batch_rows(args: argparse.Namespace, server: Any, bucket: Any) -> tuple[Any, str | None]:
    """The rows to run and the batch id; a manifest that cannot be read is a usage error."""
    from prefect_kandinsky.batch.manifests import load_manifest
    from prefect_kandinsky.gateway.exceptions import KandinskyManifestError

    try:
        manifest = asyncio.run(load_manifest(args.manifest, s3_bucket=bucket))
    except (KandinskyManifestError, ValueError) as exc:
        raise UsageError(str(exc)) from exc
    if server is None:
        return args.manifest, args.batch_id
    # The emulator cannot read this machine's files: give it the local images.
    rows = []
    for row in manifest.rows:
        fields = row.model_dump(exclude={"line"}, exclude_none=True)
        if row.image_kind == "file":
            fields["image"] = _image_url(row.image, server)
        rows.append(fields)
    return rows, args.batch_id or manifest.source


def _check_batch(parameters: dict[str, Any]) -> int:
    """Every check made before the first submit, before any flow run; the number of rows.

    Bad rows, images, files in the way, a budget overrun and another run of the batch
    holding its lease are usage errors (exit 2).
    """
    from prefect_kandinsky.batch.flows import check_batch
    from prefect_kandinsky.batch.lease import KandinskyBatchBusyError
    from prefect_kandinsky.blocks import load_credentials, load_destination
    from prefect_kandinsky.gateway.exceptions import KandinskyBudgetError, KandinskyManifestError

    names = (
        "folder",
        "input_bucket",
        "batch_id",
        "ledger",
        "max_cost_usd",
        "check_image",
        "retry_failed",
        "resubmit_uncertain",
        "overwrite",
    )

    async def check() -> int:
        destination = await load_destination(parameters["destination"])
        credentials = await load_credentials(parameters.get("credentials"))
        plan = await check_batch(
            parameters["rows"],
            destination=destination,
            gateway_url=credentials.base_url,
            **{name: parameters[name] for name in names if parameters.get(name) is not None},
        )
        return len(plan.keyed)

    try:
        return asyncio.run(check())
    except (
        KandinskyManifestError,
        KandinskyBudgetError,
        KandinskyBatchBusyError,
        ValueError,
    ) as exc:
        raise UsageError(str(exc)) from exc


def _batch(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.live import Live

    from prefect_kandinsky.batch.flows import generate_videos
    from prefect_kandinsky.progress import watching

    with _emulator(args.emulator) as server:
        credentials = _credentials(args, server)
        bucket = _input_bucket(args.input_bucket)
        rows, batch_id = _batch_rows(args, server, bucket)
        parameters = {
            "rows": rows,
            "credentials": credentials if server is not None else args.credentials,
            "destination": args.output,
            "max_concurrency": args.max_concurrency,
            "max_cost_usd": args.max_cost,
            "rate_limit": args.rate_limit,
            "input_bucket": bucket,
            "batch_id": batch_id,
            "ledger": args.ledger,
            "check_image": args.check_image,
            "retry_failed": args.retry_failed,
            "resubmit_uncertain": args.resubmit_uncertain,
            "overwrite": args.overwrite or None,
            "poll_interval_seconds": args.poll_interval,
        }
        display = _BatchDisplay(Console(stderr=True))
        if not args.verbose:
            _silence_prefect_console()
        with (
            watching(display.on_event),
            Live(display.progress, console=display.console, transient=True)
            if display.console.is_terminal and not args.verbose
            else contextlib.nullcontext(),
        ):
            display.start(_check_batch(parameters))
            # Checked just now: the flow run does not fetch every image a second time.
            state = asyncio.run(_call(generate_videos, _set({**parameters, "check_image": False})))
        return _finish_batch(state, args.output)


def _set(parameters: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in parameters.items() if v is not None}


def _videos_at(result: Any, output: str) -> str:
    """Where the batch's videos are: the folder that holds them all, or the destination."""
    uris: list[str] = [str(row.uri) for row in result.rows if row.uri]
    if uris and all("://" not in uri and not uri.startswith("block:") for uri in uris):
        return os.path.commonpath([os.path.dirname(uri) for uri in uris])
    if uris and uris[0].startswith("block:"):
        return uris[0].rsplit("/", 1)[0] + "/"
    if uris:
        scheme, _, rest = uris[0].partition("://")
        folders = [uri.partition("://")[2].rsplit("/", 1)[0] for uri in uris]
        common = os.path.commonpath(folders) if rest else folders[0]
        return f"{scheme}://{common}/"
    return output if "/" in output and not os.path.exists(output) else os.path.abspath(output)


def _finish_batch(state: Any, output: str) -> int:
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
    from prefect_kandinsky.gateway.prices import plural

    stored = result.counts.get("stored", 0)
    lines = [
        "",
        f"Stored:      {stored} of {plural(len(result.rows), 'row')}",
        f"Videos:      {_videos_at(result, output)}",
        f"Charged:     {result.charged_label} in all, by the documented prices; this run: "
        f"{result.charged_this_run_label}",
        *(
            [
                f"Ambiguous:   {plural(result.ambiguous_attempts, 'submit')} whose answer was "
                f"lost and whose job is unknown may have cost up to ${result.ambiguous_usd:.2f} "
                "more (check the gateway's dashboard)"
            ]
            if result.ambiguous_attempts
            else []
        ),
        *(
            [f"Adopted:     {plural(result.adopted_rows, 'row')} adopted from their callback"]
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
        missing = len(result.rows) - stored
        print(
            f"{PROG}: {plural(missing, 'row')} {'is' if missing == 1 else 'are'} not stored "
            f"({_why_not_stored(result)}); {_way_out(result)}",
            file=sys.stderr,
        )
        return 1
    return 0


def _why_not_stored(result: Any) -> str:
    """The commonest reason rows are not stored, from their records."""
    errors: dict[str, int] = {}
    for row in result.rows:
        if not row.done:
            reason = f"{row.state}: {row.error}" if row.error else row.state
            errors[reason] = errors.get(reason, 0) + 1
    reason, count = max(errors.items(), key=lambda item: item[1])
    return reason[:200] + (f" ({count} rows)" if count > 1 else "")


def _way_out(result: Any) -> str:
    """What to do about the rows not stored, by their states."""
    states = {row.state for row in result.rows if not row.done}
    ways = []
    if "failed" in states:
        ways.append("pass --retry-failed to submit the FAILED rows again (they were charged)")
    if "uncertain" in states:
        ways.append(
            "check the gateway for the uncertain rows' jobs, then pass --resubmit-uncertain"
        )
    if states & {"pending", "refused"}:
        ways.append("fix the cause above for the rows not submitted, then run again")
    if states & {"submitted", "completed", "error", "submitting"}:
        ways.append("run the same command again to finish the rest without paying twice")
    return "; ".join(ways)


EMBEDDED = re.compile(
    r'<img src="data:([\w/+.-]+);base64,([A-Za-z0-9+/=]*)"[^>]*?alt="([^"]*)"[^>]*>'
)
"""An embedded picture in an artifact's markdown: its type, bytes (base64) and alt text."""


def readable_markdown(markdown: str) -> str:
    """``markdown`` with each embedded picture replaced by a short note of what it was."""

    def note(match: re.Match[str]) -> str:
        size = len(match.group(2)) * 3 // 4
        return f"[picture: {match.group(3)}, {match.group(1)}, {size / 1000:.1f} KB]"

    return EMBEDDED.sub(note, markdown)


def _show(key: str) -> int:
    """Print the latest artifact of ``key`` for a terminal: pictures become one-line notes."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    async def read() -> list[Any]:
        async with get_client() as client:
            return await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
                sort=ArtifactSort.CREATED_DESC,
                limit=1,
            )

    found = asyncio.run(read())
    if not found:
        raise UsageError(f"no artifact with the key {key!r}; `prefect artifact ls` lists them")
    artifact = found[0]
    if artifact.description:
        print(readable_markdown(str(artifact.description)), end="\n\n")
    data = artifact.data
    print(readable_markdown(data) if isinstance(data, str) else data)
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


TELEMETRY_CHOICES = ("PREFECT_SERVER_ANALYTICS_ENABLED", "DO_NOT_TRACK", "PREFECT_API_URL")
"""Environment variables by which a user has already chosen about Prefect's telemetry (or
runs against a Prefect server of their own); the command then leaves telemetry as it is."""


def quiet_telemetry(environ: MutableMapping[str, str] | None = None) -> bool:
    """Turn Prefect's telemetry off for the temporary server this command starts.

    Offline, Prefect's telemetry logs an error (or a ``database is locked`` traceback) from
    the temporary server, and a first-run notice on a terminal, in the middle of the
    command's output. Unless the user chose already (`TELEMETRY_CHOICES`), this sets
    ``PREFECT_SERVER_ANALYTICS_ENABLED=false`` and ``DO_NOT_TRACK=1`` for this process and
    the server it starts, before Prefect is imported; `undo_quiet_telemetry` takes them back
    when the active Prefect profile points at a server of the user's own.

    Returns:
        Whether telemetry was turned off.
    """
    environ = os.environ if environ is None else environ
    if any(name in environ for name in TELEMETRY_CHOICES):
        return False
    environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    environ["DO_NOT_TRACK"] = "1"
    return True


STARTUP_TIMEOUT_ENV = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
STARTUP_TIMEOUT_SECONDS = 120
"""How long the temporary Prefect server may take to start. Its first start migrates a new
database (about 17 s on a quiet 2-core machine), close to Prefect's own 20 s limit, so a busy
machine would fail the first command with a timeout; the user's own setting wins."""


def patient_server_start(environ: MutableMapping[str, str] | None = None) -> None:
    """Give the temporary server `STARTUP_TIMEOUT_SECONDS` to start, unless the user chose."""
    environ = os.environ if environ is None else environ
    environ.setdefault(STARTUP_TIMEOUT_ENV, str(STARTUP_TIMEOUT_SECONDS))


def undo_quiet_telemetry(environ: MutableMapping[str, str] | None = None) -> None:
    """Give the choice back to Prefect when the profile names a server (no temporary one)."""
    from prefect.settings import PREFECT_API_URL

    environ = os.environ if environ is None else environ
    if PREFECT_API_URL.value():
        environ.pop("PREFECT_SERVER_ANALYTICS_ENABLED", None)
        environ.pop("DO_NOT_TRACK", None)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``prefect-kandinsky``."""
    try:
        args = build_parser().parse_args(argv)
        if args.command != "emulator":
            patient_server_start()
            if quiet_telemetry():
                undo_quiet_telemetry()
        if args.command == "demo":
            return _demo(args)
        if args.command == "generate":
            return _generate(args)
        if args.command == "batch":
            return _batch(args)
        if args.command == "webhooks":
            return _serve_webhooks(args)
        if args.command == "show":
            return _show(args.key)
    except UsageError as exc:
        if "prefect" in sys.modules:
            _silence_prefect_console()
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    from prefect_kandinsky.emulator.__main__ import run as run_emulator

    return run_emulator(args)


if __name__ == "__main__":
    sys.exit(main())
