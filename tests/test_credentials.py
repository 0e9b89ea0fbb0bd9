"""The credentials Block: Prefect's standard block checks, secrets, save and load."""

from __future__ import annotations

import pytest
from prefect.blocks.core import Block
from prefect.testing.standard_test_suites import BlockStandardTestSuite
from pydantic import SecretStr

from prefect_kandinsky import KandinskyClient, KandinskyCredentials

KEY = "sk-test-0123456789"


class TestKandinskyCredentialsBlock(BlockStandardTestSuite):
    """Prefect's standard suite; the block has no logo (see `test_has_a_valid_image`)."""

    @pytest.fixture
    def block(self) -> type[Block]:
        return KandinskyCredentials

    def test_has_a_valid_image(self, block: type[Block]) -> None:
        """No logo URL: a remote logo breaks offline and Prefect refuses a data: URI."""
        assert block._logo_url is None


def test_form_labels_read_as_words() -> None:
    """The block form's labels: "API key", "Base URL", "Webhook secret", not "Api Key"."""
    properties = KandinskyCredentials.model_json_schema()["properties"]
    assert {
        "api_key": "API key",
        "base_url": "Base URL",
        "model_id": "Model ID",
        "timeout_seconds": "Timeout (seconds)",
        "max_retries": "Max retries",
        "webhook_secret": "Webhook secret",
        "webhook_previous_secrets": "Previous webhook secrets",
    } == {name: field["title"] for name, field in properties.items()}


def test_key_is_secret_everywhere() -> None:
    """The key is absent from the block's repr, its dump and the client's repr."""
    creds = KandinskyCredentials(api_key=SecretStr(KEY))
    assert KEY not in repr(creds)
    assert KEY not in str(creds.model_dump())
    assert KEY not in repr(creds.get_client())


def test_get_client_carries_the_settings() -> None:
    """The client is configured from the block, and overrides win."""
    creds = KandinskyCredentials(
        api_key=KEY, base_url="http://127.0.0.1:9/", model_id="m-1", max_retries=1
    )
    client = creds.get_client(max_retries=0)
    assert isinstance(client, KandinskyClient)
    assert ("http://127.0.0.1:9", "m-1", 0) == (
        client.base_url,
        client.model_id,
        client.max_retries,
    )


def test_from_env_requires_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without KANDINSKY_API_KEY the error names the variable and the alternative."""
    monkeypatch.delenv("KANDINSKY_API_KEY", raising=False)
    with pytest.raises(ValueError, match="KANDINSKY_API_KEY is not set.*KandinskyCredentials.load"):
        KandinskyCredentials.from_env()
    monkeypatch.setenv("KANDINSKY_API_KEY", KEY)
    monkeypatch.setenv("KANDINSKY_BASE_URL", "http://127.0.0.1:9")
    creds = KandinskyCredentials.from_env()
    assert (KEY, "http://127.0.0.1:9") == (creds.api_key.get_secret_value(), creds.base_url)


async def test_save_load_and_register_on_a_real_api(prefect_api: None) -> None:
    """The block saves, loads with its secret intact, and registers from the module."""
    from prefect.client.orchestration import get_client
    from prefect.utilities.asyncutils import run_sync_in_worker_thread

    await KandinskyCredentials(api_key=KEY, base_url="http://127.0.0.1:9").save(
        "unit-test", overwrite=True
    )
    loaded = await KandinskyCredentials.load("unit-test")
    assert KEY == loaded.api_key.get_secret_value()
    assert "http://127.0.0.1:9" == loaded.base_url

    import os
    import subprocess
    import sys

    from prefect.settings import PREFECT_API_URL

    result = await run_sync_in_worker_thread(
        subprocess.run,
        [sys.executable, "-m", "prefect", "block", "register", "-m", "prefect_kandinsky"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value())},
    )
    assert 0 == result.returncode, result.stdout + result.stderr
    async with get_client() as client:
        block_type = await client.read_block_type_by_slug("kandinsky-credentials")
    assert "Kandinsky Credentials" == block_type.name
