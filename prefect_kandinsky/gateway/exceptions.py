"""Errors raised by prefect-kandinsky.

```
KandinskyError
├── KandinskyAPIError                   the gateway answered with an error status
│   ├── KandinskyBadRequestError        400 (including "Model not found")
│   ├── KandinskyAuthenticationError    401
│   ├── KandinskyInsufficientBalanceError  402
│   ├── KandinskyPermissionDeniedError  403
│   ├── KandinskyNotFoundError          404
│   ├── KandinskyRateLimitError         429, with retry_after seconds
│   └── KandinskyServerError            5xx (to a submit: KandinskySubmitServerError, below)
├── KandinskyConnectionError            no usable answer: refused, reset, timed out
│   ├── KandinskyTimeoutError           the request timed out
│   └── KandinskySubmitUncertainError   a submit may have queued a job; never resent:
│       │                               cut after sending, or a 2xx without a request_id
│       └── KandinskySubmitServerError  a 5xx to a submit; also a KandinskyServerError
├── KandinskyJobError                   a generation did not complete
│   ├── KandinskyGenerationFailedError  status FAILED, with the gateway's error text
│   ├── KandinskySystemError            status ERROR (system error, documented as not charged)
│   └── KandinskyWaitTimeoutError       the wait deadline passed while the job still runs
├── KandinskyMediaError                 downloading or storing the output media failed
│   └── KandinskyMediaExpiredError      the CDN link answered 403/404: it has expired
├── KandinskyImageError                 the input image failed the check before the submit
├── KandinskyManifestError              a batch manifest has bad rows (every one listed);
│                                       nothing was submitted
├── KandinskyBudgetError                a batch would cost more than max_cost_usd; nothing
│                                       was submitted
└── KandinskyBatchIncompleteError       some rows of a batch are not stored; .result holds
                                        every row's outcome
```

Every error carries the request id where one is known. No message ever contains the API key.
This module is a leaf of the package: it imports nothing from it.

A submit after which the job may exist (and be billed) is never resent and always raises
``KandinskySubmitUncertainError``, whose ``status_code``, ``error`` and ``gateway_message`` hold
the gateway's answer where there was one. A connection cut after the submit was sent, or a 2xx
answer without a request_id, raises ``KandinskySubmitUncertainError`` itself. A 5xx raises its
subclass ``KandinskySubmitServerError``, which is also a ``KandinskyServerError`` (and so a
``KandinskyAPIError``): ``except KandinskyServerError`` still catches it. Every uncertain submit
is a ``KandinskyConnectionError`` too, so catch ``KandinskySubmitUncertainError`` first where
they are handled differently.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from decimal import Decimal


class KandinskyError(Exception):
    """Base class of every error raised by prefect-kandinsky."""

    def __init__(self, message: str, *, request_id: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.request_id = request_id

    def __reduce__(self) -> tuple[object, ...]:
        # Keyword-only constructors do not survive pickling by default; Prefect pickles
        # task exceptions into results, so rebuild from the stored attributes.
        return (_rebuild, (type(self), self.__dict__.copy()))


def _rebuild(cls: type[KandinskyError], state: dict[str, object]) -> KandinskyError:
    error = cls.__new__(cls)
    Exception.__init__(error, state.get("message", ""))
    error.__dict__.update(state)
    return error


class KandinskyAPIError(KandinskyError):
    """The gateway answered with an error status code."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        error: str | None = None,
        gateway_message: str | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message, request_id=request_id)
        self.status_code = status_code
        self.error = error
        self.gateway_message = gateway_message


class KandinskyBadRequestError(KandinskyAPIError):
    """400: the gateway rejected the request (bad parameters, model not found)."""


class KandinskyAuthenticationError(KandinskyAPIError):
    """401: the subscription key is missing or wrong."""


class KandinskyInsufficientBalanceError(KandinskyAPIError):
    """402: the wallet does not hold enough balance for this generation."""


class KandinskyPermissionDeniedError(KandinskyAPIError):
    """403: the subscription key may not use this model or endpoint."""


class KandinskyNotFoundError(KandinskyAPIError):
    """404: no such request id or endpoint."""


class KandinskyRateLimitError(KandinskyAPIError):
    """429: too many requests; ``retry_after`` holds the seconds the gateway asked for."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int = 429,
        error: str | None = None,
        gateway_message: str | None = None,
        request_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(
            message,
            status_code=status_code,
            error=error,
            gateway_message=gateway_message,
            request_id=request_id,
        )
        self.retry_after = retry_after


class KandinskyServerError(KandinskyAPIError):
    """5xx: the gateway failed."""


class KandinskyConnectionError(KandinskyError):
    """The gateway could not be reached or the connection broke."""


class KandinskyTimeoutError(KandinskyConnectionError):
    """A request to the gateway timed out."""


class KandinskySubmitUncertainError(KandinskyConnectionError):
    """A submit failed after the gateway may have queued the job.

    It is never resent automatically: look the job up on the gateway (or wait for its
    webhook) before submitting again, or you may pay twice. ``status_code``, ``error`` and
    ``gateway_message`` hold the gateway's answer, or None where none came.
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        error: str | None = None,
        gateway_message: str | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message, request_id=request_id)
        self.status_code = status_code
        self.error = error
        self.gateway_message = gateway_message


class KandinskySubmitServerError(KandinskySubmitUncertainError, KandinskyServerError):
    """5xx to a submit: the gateway may have queued and billed the job before failing.

    Both a :class:`KandinskySubmitUncertainError` (never resent) and a
    :class:`KandinskyServerError`, with the same attributes.
    """

    status_code: int

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        error: str | None = None,
        gateway_message: str | None = None,
        request_id: str | None = None,
    ) -> None:
        # The two bases take different keywords; KandinskyAPIError sets every attribute
        # KandinskySubmitUncertainError would, and hands on to KandinskyError.
        KandinskyAPIError.__init__(
            self,
            message,
            status_code=status_code,
            error=error,
            gateway_message=gateway_message,
            request_id=request_id,
        )


class KandinskyJobError(KandinskyError):
    """A generation ended without a video, or the wait for it ended first."""

    def __init__(
        self,
        message: str,
        *,
        request_id: str,
        status: str | None = None,
        error: str | None = None,
    ) -> None:
        super().__init__(message, request_id=request_id)
        self.status = status
        self.error = error


class KandinskyGenerationFailedError(KandinskyJobError):
    """The generation ended FAILED; ``error`` holds the gateway's text."""


class KandinskySystemError(KandinskyJobError):
    """The generation ended ERROR, a system error the gateway documents as not charged."""


class KandinskyWaitTimeoutError(KandinskyJobError):
    """The wait deadline passed while the job was still QUEUED or PROCESSING.

    The job goes on at the gateway: resume waiting with ``request_id`` instead of
    submitting again.
    """

    def __init__(
        self,
        message: str,
        *,
        request_id: str,
        status: str | None = None,
        error: str | None = None,
        waited_seconds: float = 0.0,
    ) -> None:
        super().__init__(message, request_id=request_id, status=status, error=error)
        self.waited_seconds = waited_seconds


class KandinskyMediaError(KandinskyError):
    """Downloading or storing the output media failed."""

    def __init__(
        self,
        message: str,
        *,
        request_id: str | None = None,
        url: str | None = None,
        status_code: int | None = None,
    ) -> None:
        super().__init__(message, request_id=request_id)
        self.url = url
        self.status_code = status_code


class KandinskyMediaExpiredError(KandinskyMediaError):
    """The CDN answered 403 or 404 for a media URL: the link has expired or was removed."""


class KandinskyImageError(KandinskyError):
    """The input image failed the check made before the submit; nothing was submitted.

    ``url`` is the image URL, ``status_code`` and ``content_type`` what its host answered
    (None where no answer came).
    """

    def __init__(
        self,
        message: str,
        *,
        url: str,
        status_code: int | None = None,
        content_type: str | None = None,
    ) -> None:
        super().__init__(message)
        self.url = url
        self.status_code = status_code
        self.content_type = content_type


class KandinskyManifestError(KandinskyError):
    """A batch manifest could not be read, or some of its rows are invalid.

    The whole manifest is checked before anything is paid: ``problems`` lists every problem
    of every row (line, row id, field, value and what is allowed), ``source`` names the
    manifest. Nothing was submitted.
    """

    def __init__(self, message: str, *, problems: Sequence[Any], source: str) -> None:
        super().__init__(message)
        self.problems = problems
        self.source = source


class KandinskyBudgetError(KandinskyError):
    """A batch would cost more than its ``max_cost_usd``; nothing was submitted.

    ``estimate`` holds the documented price of the batch by resolution and duration,
    ``already_charged_usd`` what earlier runs of the same batch have already spent.
    """

    def __init__(
        self,
        message: str,
        *,
        estimate: Any,
        max_cost_usd: Decimal,
        already_charged_usd: Decimal,
    ) -> None:
        super().__init__(message)
        self.estimate = estimate
        self.max_cost_usd = max_cost_usd
        self.already_charged_usd = already_charged_usd


class KandinskyBatchIncompleteError(KandinskyError):
    """A batch ended with rows that are not stored (failed, refused, uncertain, in flight).

    ``result`` is the ``BatchResult`` with every row's record: run the batch again to finish
    the rest without paying twice for the rows already stored or in flight.
    """

    def __init__(self, message: str, *, result: Any) -> None:
        super().__init__(message)
        self.result = result
