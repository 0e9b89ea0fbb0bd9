"""The gateway's errors as the emulator raises them: ``{"error", "message"}`` with a status.

The state raises them; the HTTP layer (``app.py``) renders each as its status code and JSON.
"""

from __future__ import annotations


class GatewayError(Exception):
    """An error the gateway answers with ``{"error": ..., "message": ...}``."""

    status_code: int = 500
    error: str = "Internal Server Error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_json(self) -> dict[str, str]:
        """The response body."""
        return {"error": self.error, "message": self.message}


class BadRequest(GatewayError):
    """400: the body or a header is invalid; the message names the field."""

    status_code = 400
    error = "Bad Request"


class ModelNotFound(GatewayError):
    """400: the model in the path is unknown or disabled."""

    status_code = 400
    error = "Model not found"

    def __init__(self, model_id: str) -> None:
        super().__init__(f"Model '{model_id}' not found or is disabled")
        self.model_id = model_id


class Unauthorized(GatewayError):
    """401: the subscription key is missing or unknown."""

    status_code = 401
    error = "Unauthorized"


class InsufficientBalance(GatewayError):
    """402: the wallet cannot pay for the request."""

    status_code = 402
    error = "Insufficient Balance"

    def __init__(self) -> None:
        super().__init__("Your wallet does not have enough balance.")


class MediaExpired(GatewayError):
    """403: the media link is past its ``media_ttl_seconds``."""

    status_code = 403
    error = "Forbidden"


class NotFound(GatewayError):
    """404: no such request, media or asset."""

    status_code = 404
    error = "Not Found"


class InvalidTransition(GatewayError):
    """409: :meth:`EmulatorState.advance` was asked for a move the status flow does not allow."""

    status_code = 409
    error = "Conflict"
