"""Real H.264 MP4 rendering for the emulator: the input image with a slow zoom and pan.

The output follows what the gateway promises for a resolution preset: the height is the
preset's number (256, 512 or 1024 pixels), the width keeps the input's aspect ratio (rounded to
an even number, as yuv420p needs), 24 frames per second and ``seconds * 24 + 1`` frames.

Example:
    ```python
    from prefect_kandinsky.emulator import render_video, probe_video, sample_image_bytes

    mp4 = render_video(sample_image_bytes(), height=256, seconds=1)
    probe_video(mp4)  # VideoFacts(codec='h264', width=384, height=256, frames=25, fps=24.0, ...)
    ```

PyAV, Pillow and NumPy come with the ``emulator`` extra; they are imported only when a video
is rendered (the encoding is `prefect_kandinsky.media.previews.encode_mp4`'s), so the rest of the
emulator imports without them.

Rendering is deterministic: the same image, height, length and rate give the same bytes. The
last clips rendered (up to ``RENDER_CACHE_BYTES``) are kept and served again, so a batch or a
test suite animating one sample image a hundred times encodes it once.
"""

from __future__ import annotations

import hashlib
import io
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prefect_kandinsky.media.previews import encode_mp4

if TYPE_CHECKING:
    from av.video.frame import VideoFrame
    from PIL.Image import Image

FPS = 24
"""Frames per second of every emulated video."""

CODEC = "libx264"
PIXEL_FORMAT = "yuv420p"
MAX_ZOOM = 1.15
"""How far the camera has zoomed in by the last frame (1.0 is the whole image)."""
PAN_FRACTION = 0.04
"""How far the camera drifts sideways over the clip, as a fraction of the image width."""
ENCODER_OPTIONS = {"preset": "veryfast", "crf": "23"}

RESOLUTION_HEIGHTS: dict[str, int] = {"256P": 256, "512P": 512, "1024P": 1024}
"""Output height in pixels for each resolution preset."""

RENDER_CACHE_BYTES = 32 * 1024 * 1024
"""The most bytes of rendered clips kept for reuse (least recently used first out)."""

_RenderKey = tuple[bytes, int, int, int]


class _RenderCache:
    """The last clips rendered, by (image digest, height, seconds, fps); thread-safe."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._clips: OrderedDict[_RenderKey, bytes] = OrderedDict()
        self._size = 0

    def get(self, key: _RenderKey) -> bytes | None:
        with self._lock:
            clip = self._clips.get(key)
            if clip is not None:
                self._clips.move_to_end(key)
            return clip

    def put(self, key: _RenderKey, clip: bytes) -> None:
        if len(clip) > self.limit:
            return
        with self._lock:
            if key in self._clips:
                return
            self._clips[key] = clip
            self._size += len(clip)
            while self._size > self.limit:
                _, dropped = self._clips.popitem(last=False)
                self._size -= len(dropped)


_RENDERED = _RenderCache(RENDER_CACHE_BYTES)


class ImageDecodeError(ValueError):
    """The input bytes are not an image Pillow can decode."""


@dataclass(frozen=True)
class VideoFacts:
    """What a rendered MP4 holds, read back with PyAV."""

    codec: str
    width: int
    height: int
    frames: int
    fps: float
    duration_seconds: float
    pixel_format: str
    size_bytes: int


def frame_count(seconds: int, fps: int = FPS) -> int:
    """Number of frames in a clip of ``seconds``: one per tick plus the closing frame."""
    return seconds * fps + 1


def output_size(image_width: int, image_height: int, height: int) -> tuple[int, int]:
    """Return ``(width, height)`` for an output of ``height`` pixels keeping the input's aspect.

    The width is rounded to the nearest even number (and is at least 2).
    """
    if image_width <= 0 or image_height <= 0:
        raise ValueError(f"image size must be positive; got {image_width}x{image_height}")
    width = round(image_width * height / image_height / 2) * 2
    return max(2, width), height


def render_video(image: bytes, *, height: int, seconds: int, fps: int = FPS) -> bytes:
    """Render ``image`` into an H.264 MP4 of ``seconds`` with a slow zoom and pan.

    Args:
        image: The encoded input image (PNG, JPEG, WebP, ...).
        height: Output height in pixels (256, 512 or 1024 for the gateway's presets).
        seconds: Duration in whole seconds; the clip has ``seconds * fps + 1`` frames.
        fps: Frames per second.

    Returns:
        The MP4 file's bytes (``libx264``, ``yuv420p``, ``+faststart``).

    Raises:
        ImageDecodeError: ``image`` is not a decodable image.
        ValueError: ``height`` or ``seconds`` is not positive.
    """
    if height <= 0 or height % 2:
        raise ValueError(f"height must be a positive even number of pixels; got {height}")
    if seconds <= 0:
        raise ValueError(f"seconds must be positive; got {seconds}")
    key = (hashlib.sha256(image).digest(), height, seconds, fps)
    clip = _RENDERED.get(key)
    if clip is None:
        clip = _render(image, height=height, seconds=seconds, fps=fps)
        _RENDERED.put(key, clip)
    return clip


def _render(image: bytes, *, height: int, seconds: int, fps: int) -> bytes:
    """Decode ``image`` and encode the clip (``render_video`` without its checks and cache)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(image)) as opened:
            source = ImageOps.exif_transpose(opened).convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ImageDecodeError(f"not a decodable image ({len(image)} bytes): {exc}") from exc

    width, height = output_size(source.width, source.height, height)
    # Work from a copy a little larger than the output, so that per-frame crops are fast at any
    # input size and the zoomed-in end still samples down rather than up.
    margin = MAX_ZOOM + PAN_FRACTION
    canvas = source.resize(
        (round(width * margin), round(height * margin)), Image.Resampling.LANCZOS
    )
    frames = _frames(canvas, width=width, height=height, total=frame_count(seconds, fps))
    return encode_mp4(
        frames,
        width=width,
        height=height,
        fps=fps,
        options=ENCODER_OPTIONS,
        codec=CODEC,
        pixel_format=PIXEL_FORMAT,
    )


def _frames(canvas: Image, *, width: int, height: int, total: int) -> Iterator[VideoFrame]:
    """The ``total`` frames of the camera's move over ``canvas``, made one at a time."""
    import av
    import numpy as np
    from PIL.Image import Resampling

    for index in range(total):
        box = _camera_box(canvas.width, canvas.height, index / (total - 1 or 1))
        picture = canvas.resize((width, height), Resampling.BILINEAR, box=box)
        yield av.VideoFrame.from_ndarray(np.asarray(picture), format="rgb24")


def _camera_box(width: int, height: int, progress: float) -> tuple[float, float, float, float]:
    """The source rectangle seen at ``progress`` (0 to 1): eased zoom in plus a sideways drift."""
    eased = progress * progress * (3 - 2 * progress)
    zoom = 1 + (MAX_ZOOM - 1) * eased
    visible_w = width / zoom
    visible_h = height / zoom
    center_x = width / 2 + (eased - 0.5) * PAN_FRACTION * width
    center_y = height / 2
    left = min(max(0.0, center_x - visible_w / 2), width - visible_w)
    top = min(max(0.0, center_y - visible_h / 2), height - visible_h)
    return (left, top, left + visible_w, top + visible_h)


def probe_video(data: bytes) -> VideoFacts:
    """Open an MP4 held in memory with PyAV and report its codec, size, frames and rate."""
    import av

    with av.open(io.BytesIO(data), mode="r") as container:
        stream = container.streams.video[0]
        frames = stream.frames or sum(1 for _ in container.decode(stream))
        rate = stream.average_rate
        duration = (
            float(stream.duration * stream.time_base)
            if stream.duration is not None and stream.time_base is not None
            else 0.0
        )
        return VideoFacts(
            codec=stream.codec_context.name,
            width=stream.codec_context.width,
            height=stream.codec_context.height,
            frames=frames,
            fps=float(rate) if rate is not None else 0.0,
            duration_seconds=duration,
            pixel_format=str(stream.codec_context.pix_fmt),
            size_bytes=len(data),
        )
