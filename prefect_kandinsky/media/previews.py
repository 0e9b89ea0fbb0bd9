"""Small pictures of a video and of its input image, embeddable in Prefect artifacts.

Links to generated videos expire; pictures carried inside an artifact as ``data:`` URIs do
not. This module reads a video file and picks a poster frame and a strip of frames spread from
the first frame to the last, scales them to a thumbnail width and encodes them as JPEG. When
room is left in the size budget it adds a moving preview as well: the whole video at
`CLIP_FPS` frames a second and `CLIP_WIDTH` pixels, as an animated WebP, an image that both
Prefect UIs show (the new one strips ``<video>``). Input images get the same treatment through
`image_thumbnail`; `embedded_preview` gives a video's preview as the `EmbeddedPreview` model
that stored-video results carry.

Decoding, scaling and JPEG encoding are done with PyAV, the animated WebP with Pillow; both
come with the ``emulator`` extra and are imported only when a preview is made: without PyAV
both functions return None and `previews_available` says False; without Pillow a preview has
no moving part. None of them raises for a file it cannot
read: each logs a warning on the ``prefect_kandinsky.media.previews`` logger and returns None.

Example:
    ```python
    from prefect_kandinsky.media.previews import image_thumbnail, video_preview

    preview = video_preview("kandinsky.mp4")
    if preview is not None:
        poster_markdown = f"![poster]({preview.poster.data_uri()})"
        strip_html = "".join(f'<img src="{p.data_uri()}">' for p in preview.strip)
    ```
"""

from __future__ import annotations

import base64
import bisect
import io
import logging
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from av.container import InputContainer
    from av.video.frame import VideoFrame
    from av.video.stream import VideoStream

    from prefect_kandinsky.gateway.models import EmbeddedPreview

logger = logging.getLogger(__name__)

PREVIEWS_AVAILABLE_HINT = "pip install 'prefect-kandinsky[emulator]'"
"""How to install what previews need (PyAV)."""

PREVIEW_FRAMES = 5
"""Pictures in a video's strip, first frame to last."""

PREVIEW_MAX_WIDTH = 256
"""Widest a preview picture gets, in pixels; narrower sources are not scaled up."""

PREVIEW_BUDGET_BYTES = 100_000
"""Most a whole video preview may take as ``data:`` URIs (base64 and prefixes included)."""

JPEG_QSCALE = 5
"""FFmpeg JPEG quantiser for previews: 2 is the best quality, 31 the smallest file."""

CLIP_WIDTH = 128
"""Width of the moving preview in pixels."""

CLIP_FPS = 6
"""Frames per second of the moving preview."""

CLIP_WEBP_QUALITY = 40
"""Pillow's WebP quality for the moving preview: 0 is the smallest, 100 the best."""

CLIP_ENCODER = "libx264"
"""The H.264 encoder `encode_mp4` uses by default (the emulator renders with it)."""
CLIP_ENCODER_OPTIONS = {"preset": "veryfast", "crf": "30", "profile": "main"}

_JPEG_CODEC = "mjpeg"
_JPEG_PIXEL_FORMAT = "yuvj420p"
_CLIP_PIXEL_FORMAT = "yuv420p"
_SCALER = "AREA"

# Ways to shrink the pictures when a preview is over budget, tried in order:
# (fraction of max_width, JPEG quantiser). After the last one, strip pictures are dropped.
_SHRINK_STEPS: tuple[tuple[float, int], ...] = (
    (1.0, JPEG_QSCALE),
    (1.0, 9),
    (1.0, 15),
    (0.75, 15),
    (0.5, 15),
    (0.5, 31),
)


def _data_uri(mime: str, data: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _data_uri_length(mime: str, data: bytes) -> int:
    return len(f"data:{mime};base64,") + 4 * ((len(data) + 2) // 3)


@dataclass(frozen=True)
class Picture:
    """One encoded picture: a video frame or an input image scaled down.

    Attributes:
        data: The encoded picture (JPEG).
        width: Width in pixels.
        height: Height in pixels.
        at_seconds: Where in the video the frame is, from its first frame; None for an image.
        mime: The picture's media type.
    """

    data: bytes
    width: int
    height: int
    at_seconds: float | None = None
    mime: str = "image/jpeg"

    def data_uri(self) -> str:
        """The picture as a ``data:`` URI, e.g. ``data:image/jpeg;base64,/9j/4AAQ...``."""
        return _data_uri(self.mime, self.data)


@dataclass(frozen=True)
class Clip:
    """The moving preview: the whole video, small and slow, as an animated WebP that loops.

    Attributes:
        data: The animated WebP file.
        width: Width in pixels.
        height: Height in pixels.
        fps: Frames per second.
        frames: Number of frames.
        mime: The clip's media type.
    """

    data: bytes
    width: int
    height: int
    fps: int
    frames: int
    mime: str = "image/webp"

    def data_uri(self) -> str:
        """The clip as a ``data:`` URI, e.g. ``data:image/webp;base64,UklGRlpV...``."""
        return _data_uri(self.mime, self.data)


@dataclass(frozen=True)
class VideoPreview:
    """What a video looks like, small enough to embed in an artifact.

    Attributes:
        poster: The picture to show first (the video's first frame).
        strip: Frames spread evenly from the first to the last, in order; the first is the
            poster's frame.
        clip: The moving preview (an animated WebP), when it fits the size budget.
    """

    poster: Picture
    strip: tuple[Picture, ...]
    clip: Clip | None = None

    @property
    def total_bytes(self) -> int:
        """Length of all the ``data:`` URIs together: poster, strip and clip."""
        items: list[Picture | Clip] = [self.poster, *self.strip]
        if self.clip is not None:
            items.append(self.clip)
        return sum(_data_uri_length(item.mime, item.data) for item in items)


def previews_available() -> bool:
    """Whether previews can be made, that is whether PyAV is importable.

    Returns:
        True when ``import av`` works; otherwise install with `PREVIEWS_AVAILABLE_HINT`.
    """
    try:
        import av  # noqa: F401
    except ImportError:
        return False
    return True


def image_thumbnail(data: bytes, *, max_width: int = PREVIEW_MAX_WIDTH) -> Picture | None:
    """Scale an encoded image down to a JPEG thumbnail.

    Args:
        data: The image file's bytes: PNG, JPEG, WebP, or the first frame of a GIF.
        max_width: Widest the thumbnail may be, in pixels; smaller images keep their size
            (rounded to even dimensions). The aspect ratio is kept.

    Returns:
        The thumbnail, or None when PyAV is missing or ``data`` is not a decodable image
        (a warning is logged).

    Raises:
        ValueError: ``max_width`` is below 2.

    Example:
        ```python
        from prefect_kandinsky.assets import sample_image_bytes
        from prefect_kandinsky.media.previews import image_thumbnail

        thumbnail = image_thumbnail(sample_image_bytes())  # 256x170, 5.3 KB as a data URI
        ```
    """
    _check_width(max_width)
    try:
        import av
    except ImportError:
        logger.warning("No image thumbnail: PyAV is not installed (%s)", PREVIEWS_AVAILABLE_HINT)
        return None
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.video:
                raise ValueError("no picture in it")
            frame = next(container.decode(container.streams.video[0]), None)
            if frame is None:
                raise ValueError("no picture could be decoded")
            width, height = _fit_width(frame.width, frame.height, max_width)
            return _encode_jpeg(_scale(frame, width, height), JPEG_QSCALE)
    except (av.FFmpegError, OSError, ValueError) as exc:
        logger.warning(
            "No image thumbnail for %d bytes: not a decodable image (%s)", len(data), exc
        )
        return None


def video_preview(
    path: str | os.PathLike[str],
    *,
    frames: int = PREVIEW_FRAMES,
    max_width: int = PREVIEW_MAX_WIDTH,
    budget_bytes: int = PREVIEW_BUDGET_BYTES,
    clip: bool = True,
) -> VideoPreview | None:
    """Pick a poster and a strip of frames from a video, as small JPEGs within a size budget.

    The strip's frames are spread evenly from the first frame to the last. Only the frames
    needed are decoded, starting from the nearest keyframe before each. When the pictures
    (and the clip) are over ``budget_bytes``, the clip is left out, then the pictures are
    encoded at lower quality and size, then strip pictures are dropped (keeping the first and
    the last) until the preview fits.

    Args:
        path: The video file (MP4 or anything else FFmpeg reads).
        frames: Number of pictures in the strip; fewer when the video has fewer frames.
        max_width: Widest a picture may be, in pixels; the aspect ratio is kept and narrower
            videos are not scaled up.
        budget_bytes: Most the whole preview may take as ``data:`` URIs.
        clip: Also make a `CLIP_WIDTH` pixels wide, `CLIP_FPS` fps animated WebP of the whole
            video, kept only if it fits the budget next to the pictures at full quality.

    Returns:
        The preview, or None when PyAV is missing, the file has no decodable video, or even
        the poster alone does not fit the budget (a warning says which).

    Raises:
        ValueError: ``frames`` is below 1, ``max_width`` below 2 or ``budget_bytes`` below 1.

    Example:
        ```python
        from prefect_kandinsky.media.previews import video_preview

        preview = video_preview("kandinsky.mp4")
        if preview is not None:
            print(len(preview.strip), preview.total_bytes)  # 5 and about 30 to 60 KB
        ```
    """
    if frames < 1:
        raise ValueError(f"frames must be at least 1; got {frames}")
    _check_width(max_width)
    if budget_bytes < 1:
        raise ValueError(f"budget_bytes must be positive; got {budget_bytes}")
    try:
        import av
    except ImportError:
        logger.warning(
            "No preview for %s: PyAV is not installed (%s)", path, PREVIEWS_AVAILABLE_HINT
        )
        return None
    try:
        sampled, clip_frames = _sample(Path(path), frames=frames, max_width=max_width, clip=clip)
    except (av.FFmpegError, OSError, ValueError) as exc:
        logger.warning("No preview for %s: no decodable video (%s)", path, exc)
        return None
    made = _encode_clip_safely(clip_frames, path) if len(clip_frames) > 1 else None
    preview = _fit(sampled, made, max_width=max_width, budget_bytes=budget_bytes)
    if preview is None:
        logger.warning(
            "No preview for %s: even the poster alone is over the budget of %d bytes",
            path,
            budget_bytes,
        )
    return preview


def embedded_preview(
    path: str | os.PathLike[str],
    *,
    frames: int = PREVIEW_FRAMES,
    max_width: int = PREVIEW_MAX_WIDTH,
    budget_bytes: int = PREVIEW_BUDGET_BYTES,
    clip: bool = True,
) -> EmbeddedPreview | None:
    """`video_preview` as the `EmbeddedPreview` model that stored-video results carry.

    Args:
        path: The video file.
        frames: Number of pictures in the strip.
        max_width: Widest a picture may be, in pixels.
        budget_bytes: Most the whole preview may take as ``data:`` URIs.
        clip: Also embed the moving preview (an animated WebP) when it fits the budget.

    Returns:
        The data URIs, sizes and times of the preview, or None like `video_preview`.

    Example:
        ```python
        from prefect_kandinsky.media.previews import embedded_preview

        preview = embedded_preview("kandinsky.mp4")
        if preview is not None:
            print(preview.width, preview.strip_seconds)  # 256 [0.0, 2.5, 5.0, 7.5, 10.0]
        ```
    """
    from prefect_kandinsky.gateway.models import EmbeddedPreview

    made = video_preview(
        path, frames=frames, max_width=max_width, budget_bytes=budget_bytes, clip=clip
    )
    if made is None:
        return None
    return EmbeddedPreview(
        width=made.poster.width,
        height=made.poster.height,
        poster=made.poster.data_uri(),
        strip=[picture.data_uri() for picture in made.strip],
        strip_seconds=[picture.at_seconds or 0.0 for picture in made.strip],
        clip=made.clip.data_uri() if made.clip is not None else None,
    )


@dataclass(frozen=True)
class _Sampled:
    """A decoded frame already scaled to the preview width, and where it is in the video."""

    frame: VideoFrame
    at_seconds: float


def _check_width(max_width: int) -> None:
    if max_width < 2:
        raise ValueError(f"max_width must be at least 2 pixels; got {max_width}")


def _fit_width(width: int, height: int, max_width: int) -> tuple[int, int]:
    """Even ``(width, height)`` at most ``max_width`` wide, keeping the aspect ratio."""
    if width <= 0 or height <= 0:
        raise ValueError(f"picture size must be positive; got {width}x{height}")
    new_width = max(2, min(width, max_width) // 2 * 2)
    new_height = max(2, round(height * new_width / width / 2) * 2)
    return new_width, new_height


def _scale(
    frame: VideoFrame, width: int, height: int, pixel_format: str = _JPEG_PIXEL_FORMAT
) -> VideoFrame:
    return frame.reformat(width=width, height=height, format=pixel_format, interpolation=_SCALER)


def _encode_jpeg(frame: VideoFrame, qscale: int, at_seconds: float | None = None) -> Picture:
    """Encode a ``yuvj420p`` frame as one JPEG with a fixed quantiser."""
    import av

    context = av.CodecContext.create(_JPEG_CODEC, "w")
    if not isinstance(context, av.VideoCodecContext):  # pragma: no cover - mjpeg is video
        raise TypeError(f"{_JPEG_CODEC} did not give a video encoder")
    context.width = frame.width
    context.height = frame.height
    context.pix_fmt = _JPEG_PIXEL_FORMAT
    context.time_base = Fraction(1, 1)
    # A fixed quantiser: equal bounds leave the rate control no choice.
    context.options = {"qmin": str(qscale), "qmax": str(qscale)}
    packets = [*context.encode(frame), *context.encode(None)]
    return Picture(
        data=b"".join(bytes(packet) for packet in packets),
        width=frame.width,
        height=frame.height,
        at_seconds=at_seconds,
    )


def _sample(
    path: Path, *, frames: int, max_width: int, clip: bool
) -> tuple[list[_Sampled], list[VideoFrame]]:
    """Decode the strip's frames (and the clip's, if asked) from ``path``, scaled down.

    Returns:
        The strip's frames scaled to ``max_width``, first to last, and the clip's frames
        scaled to `CLIP_WIDTH` in ``yuv420p`` (empty when no clip is asked).
    """
    import av

    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    timestamps, keyframes, time_base = _index(path)
    strip_timestamps = {timestamps[i] for i in _spread(len(timestamps), frames)}
    # The clip shows one frame per 1/CLIP_FPS second, the nearest one in time.
    clip_ticks = _clip_indices(timestamps, time_base) if clip else []
    clip_timestamps = {timestamps[i] for i in clip_ticks}
    wanted = sorted(strip_timestamps | clip_timestamps)
    strip: list[_Sampled] = []
    clip_by_timestamp: dict[int, VideoFrame] = {}
    with av.open(str(path), mode="r") as container:
        stream = container.streams.video[0]
        for timestamp, frame in _decode_at(container, stream, wanted, keyframes):
            if timestamp in strip_timestamps:
                width, height = _fit_width(frame.width, frame.height, max_width)
                at_seconds = float((timestamp - timestamps[0]) * time_base)
                strip.append(_Sampled(_scale(frame, width, height), at_seconds))
            if timestamp in clip_timestamps:
                width, height = _fit_width(frame.width, frame.height, CLIP_WIDTH)
                clip_by_timestamp[timestamp] = _scale(frame, width, height, _CLIP_PIXEL_FORMAT)
    if not strip:
        raise ValueError("no frame could be decoded")
    clip_frames = [
        clip_by_timestamp[timestamps[i]] for i in clip_ticks if timestamps[i] in clip_by_timestamp
    ]
    return strip, clip_frames


def _index(path: Path) -> tuple[list[int], list[int], Fraction]:
    """Read the video's packets (without decoding) for frame timestamps and keyframes.

    Returns:
        Every frame's timestamp in presentation order, the keyframes' timestamps, and the
        stream's time base (seconds per timestamp unit).
    """
    import av

    timestamps: list[int] = []
    keyframes: list[int] = []
    with av.open(str(path), mode="r") as container:
        if not container.streams.video:
            raise ValueError("it has no video stream")
        stream = container.streams.video[0]
        if stream.time_base is None:
            raise ValueError("its video stream has no time base")
        time_base = Fraction(stream.time_base)
        for packet in container.demux(stream):
            if packet.pts is None:
                continue
            timestamps.append(packet.pts)
            if packet.is_keyframe:
                keyframes.append(packet.pts)
    if not timestamps:
        raise ValueError("its video stream has no frames")
    timestamps.sort()
    keyframes.sort()
    return timestamps, keyframes or timestamps[:1], time_base


def _clip_indices(timestamps: Sequence[int], time_base: Fraction) -> list[int]:
    """For each clip tick, the index of the frame nearest to it in time."""
    start = timestamps[0]
    duration = float((timestamps[-1] - start) * time_base)
    indices: list[int] = []
    for tick in range(int(duration * CLIP_FPS) + 1):
        target = start + round(tick / CLIP_FPS / time_base)
        after = bisect.bisect_left(timestamps, target)
        around = [i for i in (after - 1, after) if 0 <= i < len(timestamps)]
        indices.append(min(around, key=lambda i: abs(timestamps[i] - target)))
    return indices


def _decode_at(
    container: InputContainer,
    stream: VideoStream,
    wanted: Sequence[int],
    keyframes: Sequence[int],
) -> Iterator[tuple[int, VideoFrame]]:
    """Yield the decoded frames whose timestamps are in ``wanted`` (sorted), in order.

    Decoding goes forward from frame to frame, and jumps (seeks) to the keyframe before the
    next wanted frame whenever that keyframe is past the last decoded frame, so stretches of
    the video with nothing wanted in them are skipped whole.
    """
    frames: Iterator[VideoFrame] | None = None
    position: int | None = None
    sought: int | None = None
    pending = 0
    while pending < len(wanted):
        target = wanted[pending]
        keyframe = keyframes[max(0, bisect.bisect_right(keyframes, target) - 1)]
        if frames is None or (position is not None and keyframe > position and keyframe != sought):
            if frames is not None or keyframe > keyframes[0]:
                container.seek(keyframe, stream=stream, backward=True)
            frames = _decode(container, stream)
            sought = keyframe
        frame = next(frames, None)
        if frame is None:
            return
        if frame.pts is None:
            continue
        position = frame.pts
        while pending < len(wanted) and wanted[pending] < position:
            pending += 1  # not in the decoded video; nothing to show for it
        if pending < len(wanted) and wanted[pending] == position:
            pending += 1
            yield position, frame


def _decode(container: InputContainer, stream: VideoStream) -> Iterator[VideoFrame]:
    """Decode ``stream`` from where the container is, skipping packets that do not decode."""
    import av

    for packet in container.demux(stream):
        try:
            yield from packet.decode()
        except av.InvalidDataError as exc:
            logger.debug("Skipped a damaged packet at %s: %s", packet.pts, exc)


def _fit(
    sampled: Sequence[_Sampled], clip: Clip | None, *, max_width: int, budget_bytes: int
) -> VideoPreview | None:
    """The best preview that fits ``budget_bytes``.

    The clip comes only with the pictures at full quality; without it, the pictures are
    encoded smaller step by step, then strip pictures are dropped (the first and the last
    stay longest).
    """
    pictures: list[Picture] = []
    for step, (fraction, qscale) in enumerate(_SHRINK_STEPS):
        pictures = _encode_all(sampled, width=max(2, int(max_width * fraction)), qscale=qscale)
        preview = VideoPreview(poster=pictures[0], strip=tuple(pictures))
        if step == 0 and clip is not None:
            with_clip = VideoPreview(poster=preview.poster, strip=preview.strip, clip=clip)
            if with_clip.total_bytes <= budget_bytes:
                return with_clip
        if preview.total_bytes <= budget_bytes:
            return preview
    for keep in range(len(pictures) - 1, -1, -1):
        preview = VideoPreview(poster=pictures[0], strip=_thin(pictures, keep))
        if preview.total_bytes <= budget_bytes:
            return preview
    return None


def _encode_all(sampled: Sequence[_Sampled], *, width: int, qscale: int) -> list[Picture]:
    pictures: list[Picture] = []
    for item in sampled:
        frame = item.frame
        if frame.width > width:
            frame = _scale(frame, *_fit_width(frame.width, frame.height, width))
        pictures.append(_encode_jpeg(frame, qscale, item.at_seconds))
    return pictures


def _thin(pictures: Sequence[Picture], keep: int) -> tuple[Picture, ...]:
    """``keep`` of ``pictures`` spread evenly, the first and last included when ``keep > 1``."""
    return tuple(pictures[i] for i in _spread(len(pictures), keep))


def _spread(length: int, keep: int) -> list[int]:
    """``keep`` (at most ``length``) indices of ``length`` items spread evenly, first to last."""
    keep = min(keep, length)
    if keep <= 0:
        return []
    if keep == 1:
        return [0]
    last = length - 1
    return sorted({round(i * last / (keep - 1)) for i in range(keep)})


def _encode_clip_safely(frames: Sequence[VideoFrame], path: str | os.PathLike[str]) -> Clip | None:
    import av

    try:
        return encode_animation(frames)
    except ImportError:
        logger.warning(
            "No moving preview for %s: Pillow is not installed (%s)", path, PREVIEWS_AVAILABLE_HINT
        )
        return None
    except (av.FFmpegError, OSError, ValueError) as exc:
        logger.warning("No moving preview for %s: %s", path, exc)
        return None


def encode_animation(frames: Sequence[VideoFrame], *, fps: int = CLIP_FPS) -> Clip:
    """Encode frames as an animated WebP that loops, shown at ``fps`` frames a second.

    Raises:
        ImportError: Pillow is not installed.
        ValueError: ``frames`` is empty.
    """
    from PIL import Image

    if not frames:
        raise ValueError("no frames to animate")
    images: list[Image.Image] = [frame.to_image() for frame in frames]  # type: ignore[no-untyped-call]
    buffer = io.BytesIO()
    images[0].save(
        buffer,
        format="WEBP",
        save_all=True,
        append_images=images[1:],
        duration=round(1000 / fps),
        loop=0,
        quality=CLIP_WEBP_QUALITY,
        method=4,
    )
    width, height = images[0].size
    return Clip(data=buffer.getvalue(), width=width, height=height, fps=fps, frames=len(images))


def encode_mp4(
    frames: Iterable[VideoFrame],
    *,
    width: int,
    height: int,
    fps: int,
    options: dict[str, str],
    codec: str = CLIP_ENCODER,
    pixel_format: str = _CLIP_PIXEL_FORMAT,
) -> bytes:
    """Encode ``frames`` as an MP4 with its index first (``+faststart``); return its bytes.

    The frames are numbered from 0 at ``fps``; the encoder converts them to ``width`` x
    ``height`` in ``pixel_format``. ``options`` go to the ``codec`` (preset, crf...). The
    emulator renders its videos through this too.
    """
    import av

    # +faststart (index first, for progressive download) rewrites the file at the end, which
    # FFmpeg only does on a real file: encode into a temporary one.
    with tempfile.TemporaryDirectory(prefix="kandinsky-mp4-") as folder:
        output = Path(folder) / "video.mp4"
        with av.open(
            str(output), mode="w", format="mp4", container_options={"movflags": "+faststart"}
        ) as container:
            stream = container.add_stream(codec, rate=fps, options=options)
            if not isinstance(stream, av.VideoStream):  # pragma: no cover - libx264 is video
                raise TypeError(f"{codec} did not give a video stream")
            stream.width = width
            stream.height = height
            stream.pix_fmt = pixel_format
            stream.codec_context.time_base = Fraction(1, fps)
            for index, frame in enumerate(frames):
                frame.pts = index
                frame.time_base = Fraction(1, fps)
                container.mux(stream.encode(frame))
            container.mux(stream.encode(None))
        return output.read_bytes()
