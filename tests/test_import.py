"""What importing the package costs: no heavy module until a name is used, and Prefect's
discovery of the credentials block (the ``prefect.collections`` entry point and
``prefect block register -m prefect_kandinsky``) still works.

Each check runs in a fresh interpreter, so what this test session has already imported
cannot hide a regression; the checks of what each import loads share one, importing the
lightest first.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from typing import Any

import pytest

HEAVY_ON_IMPORT = ["prefect_aws", "boto3", "prefect.artifacts", "uvicorn", "av"]
"""Modules that ``import prefect_kandinsky`` must leave out of ``sys.modules``."""

HEAVY_FOR_A_FLOW = ["prefect_aws", "boto3", "botocore", "aiobotocore", "uvicorn", "av"]
"""Modules that a flow using the three tasks must not pay for: S3 loads with an ``S3Bucket``,
uvicorn with a receiver, PyAV with a probe or a preview."""

HEAVY_FOR_THE_PLUGIN = ["prefect_aws", "uvicorn", "starlette", "httpx", "av"]
"""Modules that importing the pytest plugin (done by every pytest session) must leave out."""


def _run(code: str) -> Any:
    """Run ``code`` in a fresh interpreter and return the JSON it prints last."""
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert 0 == result.returncode, result.stdout + result.stderr
    return json.loads(result.stdout.splitlines()[-1])


STEPS = {
    "plugin": "import prefect_kandinsky.emulator.pytest_plugin",
    "package": "import prefect_kandinsky",
    "tasks": "from prefect_kandinsky import submit_video, await_video, persist_video",
    "generate_video": "from prefect_kandinsky import generate_video",
}
"""Imports made one after the other in one fresh interpreter, lightest first: each step's
modules are what it loaded on top of the steps before, which the tests assert load nothing
heavy themselves."""


@pytest.fixture(scope="module")
def loaded_after() -> dict[str, list[str]]:
    """The heavy modules in ``sys.modules`` after each of ``STEPS``, in one fresh interpreter."""
    watched = sorted({*HEAVY_ON_IMPORT, *HEAVY_FOR_A_FLOW, *HEAVY_FOR_THE_PLUGIN})
    lines = ["import json, sys", "loaded = {}"]
    for step, statement in STEPS.items():
        lines += [statement, f"loaded[{step!r}] = [m for m in {watched!r} if m in sys.modules]"]
    lines.append("print(json.dumps(loaded))")
    found: dict[str, list[str]] = _run("\n".join(lines))
    return found


def _among(loaded: list[str], names: list[str]) -> list[str]:
    return [name for name in names if name in loaded]


def test_pytest_plugin_loads_no_server_or_media_module(loaded_after: dict[str, list[str]]) -> None:
    """Importing the pytest plugin loads no prefect-aws, uvicorn, starlette, httpx or PyAV."""
    assert [] == _among(loaded_after["plugin"], HEAVY_FOR_THE_PLUGIN)


def test_import_loads_no_heavy_module(loaded_after: dict[str, list[str]]) -> None:
    """``import prefect_kandinsky`` loads no prefect-aws, boto3, artifacts, uvicorn or PyAV."""
    assert [] == _among(loaded_after["package"], HEAVY_ON_IMPORT)


def test_the_three_tasks_load_no_s3_server_or_media_module(
    loaded_after: dict[str, list[str]],
) -> None:
    """``from prefect_kandinsky import submit_video, await_video, persist_video`` loads no
    prefect-aws, boto3, botocore, uvicorn or PyAV: a flow that writes to a local folder and
    polls pays for none of them."""
    assert [] == _among(loaded_after["tasks"], HEAVY_FOR_A_FLOW)


def test_generate_video_loads_no_server_or_media_module(
    loaded_after: dict[str, list[str]],
) -> None:
    """``from prefect_kandinsky import generate_video`` loads no uvicorn or PyAV (its
    ``destination`` parameter offers an ``S3Bucket`` block in the UI, so it loads prefect-aws)."""
    assert [] == _among(loaded_after["generate_video"], ["uvicorn", "av"])


@pytest.mark.parametrize("module", ["prefect_kandinsky", "prefect_kandinsky.emulator"])
def test_every_public_name_is_listed_and_resolves(module: str) -> None:
    """``dir()`` lists every name of ``__all__`` before first use, and each one imports."""
    missing = _run(
        f"""
        import importlib, json
        module = importlib.import_module({module!r})
        unlisted = sorted(set(module.__all__) - set(dir(module)))
        unresolved = [name for name in module.__all__ if getattr(module, name, None) is None]
        print(json.dumps({{"unlisted": unlisted, "unresolved": unresolved}}))
        """
    )
    assert {"unlisted": [], "unresolved": []} == missing


def test_unknown_name_raises_attribute_error() -> None:
    """A name the package does not export raises AttributeError naming it."""
    import prefect_kandinsky

    with pytest.raises(AttributeError, match="'prefect_kandinsky' has no attribute 'NoSuchName'"):
        prefect_kandinsky.NoSuchName  # type: ignore[attr-defined]  # noqa: B018


def test_block_register_finds_the_credentials_block() -> None:
    """``inspect.getmembers`` on the package, as ``prefect block register -m`` does, finds it."""
    found = _run(
        """
        import inspect, json
        from prefect.blocks.core import Block
        import prefect_kandinsky
        blocks = [
            f"{value.__module__}.{name}"
            for name, value in inspect.getmembers(prefect_kandinsky)
            if inspect.isclass(value) and issubclass(value, Block)
        ]
        print(json.dumps(blocks))
        """
    )
    assert ["prefect_kandinsky.credentials.KandinskyCredentials"] == found


def test_collections_entry_point_registers_the_block_and_nothing_heavy() -> None:
    """Loading the ``prefect.collections`` entry point registers the block, without prefect-aws."""
    outcome = _run(
        """
        import json, sys
        from importlib.metadata import entry_points
        from prefect.blocks.core import Block
        from prefect.utilities.dispatch import get_registry_for_type

        before = "kandinsky-credentials" in get_registry_for_type(Block)
        for entry_point in entry_points(group="prefect.collections"):
            if entry_point.name == "prefect_kandinsky":
                entry_point.load()
        block = get_registry_for_type(Block).get("kandinsky-credentials")
        print(json.dumps({
            "before": before,
            "after": f"{block.__module__}.{block.__name__}" if block else None,
            "heavy": [m for m in ("prefect_aws", "boto3", "prefect.artifacts") if m in sys.modules],
        }))
        """
    )
    assert {
        "before": False,
        "after": "prefect_kandinsky.credentials.KandinskyCredentials",
        "heavy": [],
    } == outcome
