"""The ``prefect-kandinsky`` command: ``demo``, ``generate`` and ``emulator``.

```
prefect-kandinsky demo                      # one video through the flow, on the built-in emulator
prefect-kandinsky generate --prompt ... --image URL_OR_PATH [--emulator]
prefect-kandinsky emulator --port 8080      # serve the gateway emulator
```
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from prefect_kandinsky.models import ACCELERATIONS, RESOLUTIONS, VideoRequest

DEMO_PROMPT = (
    "The sun slowly rises over the hills, the camera gently pushes in, warm morning light."
)


def _add_video_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--resolution", choices=RESOLUTIONS, default="512P")
    parser.add_argument("--duration", type=int, default=5, help="seconds (3, 5, 10 documented)")
    parser.add_argument("--steps", type=int, default=28, help="num_inference_steps, 20 to 50")
    parser.add_argument("--acceleration", choices=ACCELERATIONS, default="regular")
    parser.add_argument(
        "--output", default="output", help="directory or block such as s3-bucket/videos"
    )
    parser.add_argument("--poll-interval", type=float, default=None, help="first poll, seconds")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``prefect-kandinsky``."""
    from prefect_kandinsky.emulator.__main__ import add_arguments as add_emulator_arguments

    parser = argparse.ArgumentParser(
        prog="prefect-kandinsky",
        description="Kandinsky 5.0 Pro image-to-video through Prefect flows.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser(
        "demo", help="generate a video from the sample image on the built-in emulator"
    )
    demo.add_argument("--output", default="output", help="directory for the MP4")
    demo.add_argument("--resolution", choices=RESOLUTIONS, default="512P")
    demo.add_argument("--duration", type=int, default=3)

    generate = commands.add_parser("generate", help="run the generate-video flow once")
    generate.add_argument("--prompt", required=True)
    generate.add_argument(
        "--image", required=True, help="image URL, or a local file with --emulator"
    )
    _add_video_arguments(generate)
    generate.add_argument("--credentials", help="name of a saved KandinskyCredentials block")
    generate.add_argument("--idempotency-key", help="submit at most once for this key")
    generate.add_argument(
        "--emulator", action="store_true", help="run against the built-in emulator (no key)"
    )

    emulator = commands.add_parser("emulator", help="serve the gateway emulator")
    add_emulator_arguments(emulator)
    return parser


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
        raise SystemExit(
            f"--image {image!r} is a local file: the gateway needs a public http(s) URL "
            "(or add --emulator to animate a local file offline)"
        )
    if not path.is_file():
        raise SystemExit(f"--image {image!r}: no such file")
    url: str = server.upload(path.read_bytes(), content_type=_content_type(path))
    return url


def _content_type(path: Path) -> str:
    suffix = path.suffix.lower().lstrip(".")
    return {"jpg": "image/jpeg", "jpeg": "image/jpeg", "webp": "image/webp"}.get(
        suffix, "image/png"
    )


def _run_flow(server: Any, **parameters: Any) -> Any:
    from prefect_kandinsky.credentials import KandinskyCredentials
    from prefect_kandinsky.flows import generate_video

    if server is not None:
        parameters["credentials"] = KandinskyCredentials(
            api_key=server.api_key, base_url=server.base_url
        )
    parameters = {k: v for k, v in parameters.items() if v is not None}
    return asyncio.run(generate_video(**parameters))


def _report(persisted: Any) -> None:
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME

    from prefect_kandinsky.artifacts import artifact_key

    video = persisted.video
    request = video.request if video else None
    cost = request.estimated_cost_label if request else "unknown"
    print()
    print(f"Video:       {persisted.uri}")
    print(f"Request id:  {persisted.request_id}")
    print(f"Cost:        {cost} (estimate from the documented price table)")
    if persisted.frames is not None:
        print(
            f"Frames:      {persisted.frames} at {persisted.fps:g} fps, "
            f"{persisted.width}x{persisted.height}, {persisted.codec}"
        )
    print(f"Bytes:       {persisted.size_bytes} (sha256 {persisted.sha256[:16]}...)")
    keys = ", ".join(artifact_key(persisted.request_id, k) for k in ("video", "summary"))
    print(f"Artifacts:   {keys}")
    api = PREFECT_API_URL.value()
    if api:
        print(f"             in the Prefect UI of {api.removesuffix('/api')}")
    else:
        prefect = Path(sys.executable).with_name("prefect")
        command = prefect if prefect.exists() else "prefect"
        print(
            f"             stored under {PREFECT_HOME.value()}; to browse them run\n"
            f"             PREFECT_HOME={PREFECT_HOME.value()} {command} server start\n"
            "             and open http://127.0.0.1:4200/artifacts"
        )


def _demo(args: argparse.Namespace) -> int:
    from prefect_kandinsky.emulator import EmulatorServer

    with EmulatorServer() as server:
        image_url = server.sample_image_url
        request = VideoRequest(
            prompt=DEMO_PROMPT,
            image_url=image_url,
            resolution=args.resolution,
            duration=args.duration,
        )
        print(f"Gateway emulator at {server.base_url} (no key, no network)")
        print(f"Animating the sample image {image_url}")
        print(f"Estimated cost on the real gateway: {request.estimated_cost_label}")
        persisted = _run_flow(
            server,
            prompt=request.prompt,
            image_url=request.image_url,
            resolution=request.resolution,
            duration=request.duration_seconds,
            destination=str(Path(args.output).resolve()),
            poll_interval_seconds=0.5,
        )
    _report(persisted)
    return 0


def _generate(args: argparse.Namespace) -> int:
    with _emulator(args.emulator) as server:
        persisted = _run_flow(
            server,
            prompt=args.prompt,
            image_url=_image_url(args.image, server),
            resolution=args.resolution,
            duration=args.duration,
            num_inference_steps=args.steps,
            acceleration=args.acceleration,
            destination=args.output,
            credentials=args.credentials,
            idempotency_key=args.idempotency_key,
            poll_interval_seconds=args.poll_interval,
        )
    _report(persisted)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``prefect-kandinsky``."""
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        return _demo(args)
    if args.command == "generate":
        return _generate(args)
    from prefect_kandinsky.emulator.__main__ import run as run_emulator

    return run_emulator(args)


if __name__ == "__main__":
    sys.exit(main())
