"""Video previews and image thumbnails as the artifact shows them: data URIs of real JPEGs."""

from __future__ import annotations

import base64
import io
import logging
import subprocess
import sys
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from prefect_kandinsky.assets import sample_image_bytes
from prefect_kandinsky.emulator.render import render_video
from prefect_kandinsky.media.previews import (
    PREVIEWS_AVAILABLE_HINT,
    Picture,
    VideoPreview,
    embedded_preview,
    image_thumbnail,
    previews_available,
    video_preview,
)

LOGGER = "prefect_kandinsky.media.previews"


@pytest.fixture(scope="module")
def short_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample image rendered at 256P for one second (384x256, 25 frames)."""
    path = tmp_path_factory.mktemp("previews") / "short.mp4"
    path.write_bytes(render_video(sample_image_bytes(), height=256, seconds=1))
    return path


@pytest.fixture(scope="module")
def large_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample image rendered at 1024P for one second (1536x1024, 25 frames)."""
    path = tmp_path_factory.mktemp("previews") / "large.mp4"
    path.write_bytes(render_video(sample_image_bytes(), height=1024, seconds=1))
    return path


@pytest.fixture(scope="module")
def long_large_video(large_video: Path) -> Path:
    """A 1024P video of 250 frames (about 10 s): the 1024P render's packets ten times over."""
    path = large_video.with_name("long-large.mp4")
    with av.open(str(large_video)) as source:
        stream = source.streams.video[0]
        packets = [packet for packet in source.demux(stream) if packet.size]
        ticks = stream.duration  # 25 frames' worth of time-base ticks
        assert ticks is not None
        with av.open(str(path), mode="w", format="mp4") as output:
            copy = output.add_stream_from_template(stream)
            for repeat in range(10):
                for packet in packets:
                    assert packet.pts is not None and packet.dts is not None
                    moved = av.Packet(bytes(packet))
                    moved.pts = packet.pts + repeat * ticks
                    moved.dts = packet.dts + repeat * ticks
                    moved.time_base = packet.time_base
                    moved.is_keyframe = packet.is_keyframe
                    moved.stream = copy
                    output.mux(moved)
    return path


@pytest.fixture(scope="module")
def long_large_preview(long_large_video: Path) -> VideoPreview:
    """The default preview of the 1024P 10 s video, made once for the module."""
    preview = video_preview(long_large_video)
    assert preview is not None
    return preview


def _numbered_video(path: Path, *, keyframe_interval: int) -> Path:
    """25 flat grey frames of 64x64, frame ``i`` at level ``16 + 8 * i``, as H.264 MP4."""
    options = {"g": str(keyframe_interval), "keyint_min": str(keyframe_interval), "scenecut": "0"}
    with av.open(str(path), mode="w", format="mp4") as output:
        stream = output.add_stream("libx264", rate=24, options=options)
        stream.width = stream.height = 64
        stream.pix_fmt = "yuv420p"
        for index in range(25):
            pixels = np.full((64, 64, 3), 16 + 8 * index, dtype=np.uint8)
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            frame.pts = index
            frame.time_base = Fraction(1, 24)
            output.mux(stream.encode(frame))
        output.mux(stream.encode(None))
    return path


def _keyframes(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for packet in container.demux(video=0) if packet.is_keyframe)


def _decode_uri(uri: str, mime: str) -> bytes:
    prefix = f"data:{mime};base64,"
    assert uri.startswith(prefix)
    return base64.b64decode(uri.removeprefix(prefix), validate=True)


def _open_jpeg(picture: Picture) -> av.VideoFrame:
    """Decode the picture's data URI as the browser would get it, and check it is a JPEG."""
    data = _decode_uri(picture.data_uri(), "image/jpeg")
    assert data.startswith(b"\xff\xd8")
    with av.open(io.BytesIO(data), mode="r") as container:
        assert "mjpeg" == container.streams.video[0].codec_context.name
        return next(container.decode(video=0))


def _video_size(path: Path) -> tuple[int, int]:
    with av.open(str(path)) as container:
        context = container.streams.video[0].codec_context
        return context.width, context.height


def _grey_level(picture: Picture) -> float:
    frame = _open_jpeg(picture)
    return float(frame.reformat(format="gray").to_ndarray().mean())


def test_previews_are_available_with_pyav() -> None:
    """With PyAV installed, previews can be made."""
    assert previews_available()


def test_strip_spreads_frames_from_first_to_last(short_video: Path) -> None:
    """A 1 s video gives five pictures at 0, 0.25, 0.5, 0.75 and 1 s; the poster is the first."""
    preview = video_preview(short_video)

    assert preview is not None
    assert [0.0, 0.25, 0.5, 0.75, 1.0] == [picture.at_seconds for picture in preview.strip]
    assert preview.strip[0] == preview.poster


@pytest.mark.parametrize("video", ["short_video", "large_video"])
def test_pictures_are_jpegs_at_most_max_width_keeping_the_aspect(
    video: str, request: pytest.FixtureRequest
) -> None:
    """Every picture decodes to a JPEG of its stated size, 256 px wide at most, aspect kept."""
    path: Path = request.getfixturevalue(video)
    video_width, video_height = _video_size(path)

    preview = video_preview(path)

    assert preview is not None
    for picture in (preview.poster, *preview.strip):
        frame = _open_jpeg(picture)
        assert (picture.width, picture.height) == (frame.width, frame.height)
        assert 256 == picture.width
        assert abs(picture.height - picture.width * video_height / video_width) <= 2
        assert 0 == picture.width % 2 == picture.height % 2


def test_narrow_max_width_scales_further(large_video: Path) -> None:
    """``max_width=96`` gives 96 px wide pictures of a 1536x1024 video, 64 px high."""
    preview = video_preview(large_video, frames=3, max_width=96)

    assert preview is not None
    assert [(96, 64)] * 3 == [
        (frame.width, frame.height) for frame in map(_open_jpeg, preview.strip)
    ]


@pytest.mark.parametrize("keyframe_interval", [5, 250])
def test_strip_shows_the_frames_at_its_times(tmp_path: Path, keyframe_interval: int) -> None:
    """Frames 0, 6, 12, 18 and 24 are shown, whether the decoder seeks to keyframes or not."""
    path = _numbered_video(tmp_path / "numbered.mp4", keyframe_interval=keyframe_interval)
    assert (5 if keyframe_interval == 5 else 1) == _keyframes(path)

    preview = video_preview(path, clip=False)

    assert preview is not None
    expected = [16 + 8 * index for index in (0, 6, 12, 18, 24)]
    assert expected == pytest.approx([_grey_level(picture) for picture in preview.strip], abs=3)
    assert [index / 24 for index in (0, 6, 12, 18, 24)] == pytest.approx(
        [picture.at_seconds for picture in preview.strip]
    )


def test_ten_second_1024p_preview_with_clip_fits_the_budget(
    long_large_preview: VideoPreview,
) -> None:
    """A 1024P 10 s video gives five pictures and a moving preview, in under 100 KB."""
    preview = long_large_preview

    assert 5 == len(preview.strip)
    assert preview.strip[-1].at_seconds == pytest.approx(249 / 24)
    assert preview.clip is not None
    assert preview.total_bytes <= 100_000
    assert preview.total_bytes == sum(
        len(item.data_uri()) for item in (preview.poster, *preview.strip, preview.clip)
    )


def test_moving_preview_is_an_animated_webp_of_the_whole_video(
    long_large_preview: VideoPreview,
) -> None:
    """The moving preview is a looping 128 px, 6 fps animated WebP: an image both UIs show."""
    from PIL import Image

    clip = long_large_preview.clip
    assert clip is not None

    data = _decode_uri(clip.data_uri(), "image/webp")

    with Image.open(io.BytesIO(data)) as image:
        assert ("WEBP", True, 0) == (image.format, image.is_animated, image.info.get("loop"))
        assert (128, 86) == image.size == (clip.width, clip.height)
        # Pillow merges frames that did not change into one longer frame.
        assert 1 < image.n_frames <= clip.frames
    assert (63, 6) == (clip.frames, clip.fps)
    assert len(data) < 60_000


def test_embedded_preview_carries_the_same_data_uris(short_video: Path) -> None:
    """The model for stored videos holds the preview's URIs, times, size and byte count."""
    preview = video_preview(short_video)
    assert preview is not None and preview.clip is not None

    embedded = embedded_preview(short_video)

    assert embedded is not None
    assert (preview.poster.data_uri(), preview.clip.data_uri()) == (embedded.poster, embedded.clip)
    assert [picture.data_uri() for picture in preview.strip] == embedded.strip
    assert [0.0, 0.25, 0.5, 0.75, 1.0] == embedded.strip_seconds
    assert (256, 170) == (embedded.width, embedded.height)
    assert preview.total_bytes == embedded.size_bytes


def test_clip_can_be_left_out(short_video: Path) -> None:
    """``clip=False`` gives the pictures only."""
    preview = video_preview(short_video, clip=False)

    assert preview is not None
    assert preview.clip is None
    assert 5 == len(preview.strip)


def test_small_budget_drops_the_clip_then_shrinks_then_thins_the_strip(short_video: Path) -> None:
    """Under tighter budgets the clip goes first, then the pictures shrink, then thin out."""
    full = video_preview(short_video)
    assert full is not None and full.clip is not None
    pictures_only = full.total_bytes - len(full.clip.data_uri())

    without_clip = video_preview(short_video, budget_bytes=full.total_bytes - 1)
    smaller = video_preview(short_video, budget_bytes=pictures_only - 1)
    thinned = video_preview(short_video, budget_bytes=4_000)

    assert without_clip is not None and smaller is not None and thinned is not None
    assert (None, pictures_only) == (without_clip.clip, without_clip.total_bytes)
    assert 5 == len(smaller.strip)
    assert smaller.total_bytes < pictures_only
    assert thinned.total_bytes <= 4_000
    assert 0 < len(thinned.strip) < 5
    assert 0.0 == thinned.strip[0].at_seconds == thinned.poster.at_seconds
    for picture in (thinned.poster, *thinned.strip):
        _open_jpeg(picture)


def test_budget_too_small_for_the_poster_gives_none_and_a_warning(
    short_video: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A budget no JPEG fits in gives no preview and says so."""
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert video_preview(short_video, budget_bytes=100) is None

    assert "over the budget of 100 bytes" in caplog.text


@pytest.mark.parametrize(
    "content", [b'{"request_id": "kandinsky-1"}', sample_image_bytes()[:200], b""]
)
def test_non_video_file_gives_none_and_a_warning(
    tmp_path: Path, content: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    """JSON, a cut-off PNG or an empty file give no preview and a warning naming the file."""
    path = tmp_path / "not-a-video.mp4"
    path.write_bytes(content)

    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert video_preview(path) is None

    assert [(LOGGER, logging.WARNING)] == [(r.name, r.levelno) for r in caplog.records]
    assert str(path) in caplog.text


def test_missing_file_gives_none_and_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A path with no file behind it gives no preview and a warning naming it."""
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert video_preview(tmp_path / "gone.mp4") is None

    assert "gone.mp4" in caplog.text


def test_truncated_video_still_shows_its_opening(short_video: Path, tmp_path: Path) -> None:
    """A download cut at three quarters previews the frames that are there."""
    data = short_video.read_bytes()
    path = tmp_path / "cut.mp4"
    path.write_bytes(data[: len(data) * 3 // 4])

    preview = video_preview(path)

    assert preview is not None
    assert 0.0 == preview.poster.at_seconds
    assert all(picture.at_seconds is not None for picture in preview.strip)
    assert preview.strip[-1].at_seconds is not None and preview.strip[-1].at_seconds < 1.0


@pytest.mark.parametrize(
    ("keywords", "match"),
    [
        ({"frames": 0}, "frames must be at least 1; got 0"),
        ({"max_width": 1}, "max_width must be at least 2 pixels; got 1"),
        ({"budget_bytes": 0}, "budget_bytes must be positive; got 0"),
    ],
)
def test_bad_arguments_raise(short_video: Path, keywords: dict[str, Any], match: str) -> None:
    """Arguments that cannot give a preview are refused, naming the value."""
    with pytest.raises(ValueError, match=match):
        video_preview(short_video, **keywords)


def test_image_thumbnail_keeps_the_png_aspect() -> None:
    """The 480x320 sample PNG becomes a 256x170 JPEG with no time."""
    picture = image_thumbnail(sample_image_bytes())

    assert picture is not None
    frame = _open_jpeg(picture)
    assert (256, 170) == (picture.width, picture.height) == (frame.width, frame.height)
    assert picture.at_seconds is None
    assert len(picture.data_uri()) < 10_000


def test_image_thumbnail_does_not_scale_up() -> None:
    """An image narrower than ``max_width`` keeps its size."""
    picture = image_thumbnail(sample_image_bytes(), max_width=1000)

    assert picture is not None
    assert (480, 320) == (picture.width, picture.height)


def test_image_thumbnail_reads_jpeg_webp_and_gif(short_video: Path) -> None:
    """JPEG, WebP and GIF inputs give thumbnails too (made here from a video frame)."""
    with av.open(str(short_video)) as container:
        frame = next(container.decode(video=0))
    for codec, pixel_format in [("mjpeg", "yuvj420p"), ("libwebp", "yuv420p"), ("gif", "rgb8")]:
        context = av.CodecContext.create(codec, "w")
        assert isinstance(context, av.VideoCodecContext)
        context.width, context.height = frame.width, frame.height
        context.pix_fmt = pixel_format
        context.time_base = Fraction(1, 24)
        encoded = frame.reformat(format=pixel_format)
        data = b"".join(bytes(p) for p in [*context.encode(encoded), *context.encode(None)])

        picture = image_thumbnail(data)

        assert picture is not None, codec
        assert (256, 170) == (picture.width, picture.height)


def test_image_thumbnail_of_garbage_gives_none_and_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Bytes that are no image give no thumbnail and a warning."""
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert image_thumbnail(b"<html>403 Forbidden</html>") is None

    assert "not a decodable image" in caplog.text


def test_without_pyav_nothing_is_made(
    short_video: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """With PyAV unimportable, both functions return None and the warning tells how to fix it."""
    monkeypatch.setitem(sys.modules, "av", None)

    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert not previews_available()
        assert video_preview(short_video) is None
        assert image_thumbnail(sample_image_bytes()) is None

    assert 2 == caplog.text.count(PREVIEWS_AVAILABLE_HINT)


def test_module_does_not_import_pyav() -> None:
    """Importing the previews module leaves PyAV unloaded, so it imports fast without it."""
    code = "import sys, prefect_kandinsky.media.previews; print('av' in sys.modules)"

    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )

    assert "False" == result.stdout.strip()


def test_total_bytes_counts_every_data_uri() -> None:
    """``total_bytes`` is the length of the poster's, the strip's and the clip's data URIs."""
    picture = Picture(data=b"\xff\xd8 four", width=2, height=2, at_seconds=0.0)

    preview = VideoPreview(poster=picture, strip=(picture, picture))

    assert 3 * len(picture.data_uri()) == preview.total_bytes
