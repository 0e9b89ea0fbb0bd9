"""Timeouts, retry limits and polling defaults, in one place; each is overridable per call."""

from __future__ import annotations

DEFAULT_BASE_URL = "https://gateway.pixazo.ai"
"""The public gateway's origin."""

API_KEY_HEADER = "Ocp-Apim-Subscription-Key"
WEBHOOK_URL_HEADER = "X-Webhook-URL"
WEBHOOK_MODE_HEADER = "X-Webhook-Mode"

DEFAULT_TIMEOUT_SECONDS = 30.0
"""Read/write timeout of one gateway request."""
DEFAULT_CONNECT_TIMEOUT_SECONDS = 10.0
DEFAULT_MEDIA_TIMEOUT_SECONDS = 120.0
"""Read timeout between two chunks of a media download."""

DEFAULT_MAX_CONNECTIONS = 100
"""Connections one client keeps open at most (httpx's default)."""

DEFAULT_MAX_RETRIES = 4
"""Retries of one gateway call on 429, 5xx and connection errors (status reads)."""
DEFAULT_RETRY_INITIAL_DELAY = 0.5
DEFAULT_RETRY_MAX_DELAY = 30.0
DEFAULT_RETRY_JITTER = 0.25
"""Fraction of each backoff delay added at random, so workers do not retry in step."""
MAX_RETRY_AFTER_SECONDS = 300.0
"""A Retry-After longer than this is treated as this long."""

DEFAULT_POLL_INTERVAL = 2.0
"""First wait between two status reads; it grows towards the cap."""
DEFAULT_MAX_POLL_INTERVAL = 8.0
"""Cap of the wait between status reads, within the documented 5 to 10 s."""
DEFAULT_POLL_BACKOFF = 1.5
DEFAULT_WAIT_TIMEOUT_SECONDS = 1800.0
"""How long a wait for one generation may last before it raises a resumable error."""

DEFAULT_CHUNK_SIZE = 1024 * 1024
"""Bytes per chunk when streaming media."""
DEFAULT_MEDIA_RESUMES = 3
"""Range requests made to resume a truncated media download."""

DEFAULT_S3_MULTIPART_THRESHOLD = 16 * 1024 * 1024
"""Files larger than this go to S3 as a multipart upload."""
DEFAULT_S3_MULTIPART_CHUNKSIZE = 8 * 1024 * 1024
"""Bytes per part of a multipart upload to S3 (S3's minimum part is 5 MiB)."""
DEFAULT_PRESIGN_EXPIRES_SECONDS = 3600
"""Lifetime of the presigned https link to a video stored on S3, in seconds."""

DEFAULT_IMAGE_CHECK_TIMEOUT_SECONDS = 10.0
"""Timeout of the check of an input image made before the submit (connect and each read)."""
MAX_IMAGE_CHECK_BYTES = 20 * 1024 * 1024
"""The image check reads at most this many bytes of an input image (for its thumbnail)."""

DEFAULT_INPUT_FOLDER = "kandinsky-inputs"
"""Folder of an ``S3Bucket`` (under its ``bucket_folder``) that local input images are
uploaded to, each under the SHA-256 of its bytes."""
DEFAULT_PRESIGN_MARGIN_SECONDS = 3600.0
"""Extra life given to a presigned input image link beyond the wait's timeout: it covers the
time from the presign to the submit (the rest of a batch being prepared and submitted under
the rate limit) and clock skew."""

DEFAULT_MAX_RESPONSE_BYTES = 1024 * 1024
"""A gateway answer (submit, status or error) is read up to this many bytes; a larger one is
an error, not a reason to hold hundreds of MB (``KandinskyClient(max_response_bytes=...)``)."""
DEFAULT_MAX_MEDIA_BYTES = 2 * 1024 * 1024 * 1024
"""A media download stops with an error past this many bytes (2 GiB, whether the CDN declared
a length or not); raise it with ``max_media_bytes`` or :data:`MAX_MEDIA_BYTES_ENV`."""
MAX_MEDIA_BYTES_ENV = "KANDINSKY_MAX_MEDIA_BYTES"
"""Environment variable overriding :data:`DEFAULT_MAX_MEDIA_BYTES`, in bytes."""
