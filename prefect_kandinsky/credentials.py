"""The credentials Block: where the subscription key and gateway settings live."""

from __future__ import annotations

import logging
from typing import Any

import httpx
from prefect.blocks.abstract import CredentialsBlock
from pydantic import Field, HttpUrl, SecretStr

from prefect_kandinsky.gateway.client import KandinskyClient
from prefect_kandinsky.gateway.constants import (
    DEFAULT_BASE_URL,
    DEFAULT_MAX_RETRIES,
    DEFAULT_TIMEOUT_SECONDS,
)
from prefect_kandinsky.gateway.models import DEFAULT_MODEL_ID, without_null

API_KEY_ENV = "KANDINSKY_API_KEY"
"""Environment variable read by ``KandinskyCredentials.from_env``."""
BASE_URL_ENV = "KANDINSKY_BASE_URL"
WEBHOOK_SECRET_ENV = "KANDINSKY_WEBHOOK_SECRET"
WEBHOOK_PREVIOUS_SECRETS_ENV = "KANDINSKY_WEBHOOK_PREVIOUS_SECRETS"
"""Previous webhook secrets, comma-separated, that the receiver still accepts while rotating."""


class KandinskyCredentials(CredentialsBlock):
    """Credentials and settings for the Kandinsky 5.0 Pro gateway.

    The API key is stored as a secret and sent only to the gateway.

    Example:
        Load stored credentials and build a client:
        ```python
        from prefect_kandinsky import KandinskyCredentials

        credentials = KandinskyCredentials.load("BLOCK_NAME")
        async with credentials.get_client() as client:
            status = await client.get_status("kandinsky-5-0-pro-953_...")
        ```
    """

    _block_type_name = "Kandinsky Credentials"
    _block_type_slug = "kandinsky-credentials"
    # No logo: a remote one does not load offline (the UI shows a broken image), and
    # Prefect's client refuses a data: URI (its block types take http(s) URLs only); without
    # one the UI shows its own default icon.
    _logo_url = None
    _documentation_url = HttpUrl("https://github.com/prefect-kandinsky/prefect-kandinsky#readme")
    _description = "Subscription key and gateway settings for the Kandinsky 5.0 Pro API."

    api_key: SecretStr = Field(
        title="API key",
        description="The gateway subscription key, sent as Ocp-Apim-Subscription-Key.",
    )
    base_url: str = Field(
        default=DEFAULT_BASE_URL,
        title="Base URL",
        description="The gateway's origin; point it at an emulator for offline runs.",
    )
    model_id: str = Field(
        default=DEFAULT_MODEL_ID,
        title="Model ID",
        description="The gateway's model id for Kandinsky 5.0 Pro.",
    )
    timeout_seconds: float = Field(
        default=DEFAULT_TIMEOUT_SECONDS,
        title="Timeout (seconds)",
        gt=0,
        description="Read and write timeout of one gateway request, in seconds.",
    )
    max_retries: int = Field(
        default=DEFAULT_MAX_RETRIES,
        title="Max retries",
        ge=0,
        description="Retries of one gateway call on 429, 5xx and connection errors.",
    )
    webhook_secret: SecretStr | None = Field(
        json_schema_extra=without_null,
        default=None,
        title="Webhook secret",
        description="Server secret that signs the tokens of webhook callback URLs and that "
        "the webhook receiver checks them with; without it the receiver refuses every "
        "callback.",
    )
    webhook_previous_secrets: list[SecretStr] = Field(
        default_factory=list,
        title="Previous webhook secrets",
        description="Secrets used before webhook_secret that the receiver still accepts, so "
        "callback URLs already given to running jobs stay valid while the secret is rotated; "
        "new URLs are signed with webhook_secret only. Remove one once its jobs have ended.",
    )

    @property
    def webhook_secrets(self) -> list[SecretStr]:
        """Every secret the receiver accepts: ``webhook_secret`` first, then previous ones."""
        current = [self.webhook_secret] if self.webhook_secret is not None else []
        return current + [s for s in self.webhook_previous_secrets if s.get_secret_value()]

    @classmethod
    def from_env(cls) -> KandinskyCredentials:
        """Build credentials from ``KANDINSKY_API_KEY`` (``KANDINSKY_BASE_URL``,
        ``KANDINSKY_WEBHOOK_SECRET``, ``KANDINSKY_WEBHOOK_PREVIOUS_SECRETS``)."""
        import os

        key = os.environ.get(API_KEY_ENV, "")
        if not key.strip():
            raise ValueError(
                f"{API_KEY_ENV} is not set: export your gateway subscription key, or load a "
                "saved block with KandinskyCredentials.load(...)"
            )
        secret = os.environ.get(WEBHOOK_SECRET_ENV, "").strip()
        previous = os.environ.get(WEBHOOK_PREVIOUS_SECRETS_ENV, "").split(",")
        return cls(
            api_key=SecretStr(key),
            base_url=os.environ.get(BASE_URL_ENV, DEFAULT_BASE_URL),
            webhook_secret=SecretStr(secret) if secret else None,
            webhook_previous_secrets=[SecretStr(p.strip()) for p in previous if p.strip()],
        )

    def get_client(
        self,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        logger: logging.Logger | logging.LoggerAdapter[Any] | None = None,
        **overrides: Any,
    ) -> KandinskyClient:
        """Return a configured ``KandinskyClient``; keyword arguments override its settings."""
        settings: dict[str, Any] = {
            "api_key": self.api_key,
            "base_url": self.base_url,
            "model_id": self.model_id,
            "timeout": self.timeout_seconds,
            "max_retries": self.max_retries,
            "transport": transport,
            "logger": logger,
        }
        settings.update(overrides)
        return KandinskyClient(**settings)
