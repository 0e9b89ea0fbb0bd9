"""The emulator's MP4s, opened with PyAV: codec, rate, frame count, size and motion."""

from __future__ import annotations

import io
import itertools

import av
import numpy as np
import pytest
from PIL import Image

from prefect_kandinsky.emulator import (
    SAMPLE_IMAGE_PATH,
    frame_count,
    output_size,
    probe_video,
    render_video,
    sample_image_bytes,
)
from prefect_kandinsky.emulator.render import ImageDecodeError


@pytest.fixture(scope="module")
def sample_mp4() -> bytes:
    """The sample image rendered at 256P for one second, once for the module."""
    return render_video(sample_image_bytes(), height=256, seconds=1)


def _frames(data: bytes) -> list[np.ndarray]:
    with av.open(io.BytesIO(data)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def test_sample_image_is_a_small_three_by_two_png() -> None:
    """The bundled sample is a 480x320 PNG under 60 KB, readable as bytes and as a path."""
    data = sample_image_bytes()
    assert SAMPLE_IMAGE_PATH.read_bytes() == data
    assert len(data) < 60_000
    with Image.open(io.BytesIO(data)) as image:
        assert ("PNG", (480, 320)) == (image.format, image.size)


def test_render_is_h264_at_24_fps_with_seconds_times_24_plus_one_frames(sample_mp4: bytes) -> None:
    """A 1 s 256P render of a 3:2 image is H.264 yuv420p, 24 fps, 25 frames, 384x256."""
    facts = probe_video(sample_mp4)

    assert ("h264", "yuv420p") == (facts.codec, facts.pixel_format)
    assert 24.0 == facts.fps
    assert 25 == facts.frames
    assert (384, 256) == (facts.width, facts.height)
    assert 25 == len(_frames(sample_mp4))


def test_render_moves_the_camera(sample_mp4: bytes) -> None:
    """The first and last frames differ clearly (the slow zoom and pan are visible)."""
    frames = _frames(sample_mp4)
    difference = np.abs(frames[0].astype(np.int16) - frames[-1].astype(np.int16)).mean()
    assert difference > 5.0
    steps = [
        np.abs(a.astype(np.int16) - b.astype(np.int16)).mean()
        for a, b in itertools.pairwise(frames)
    ]
    assert max(steps) < difference  # gradual, not a cut


def test_render_keeps_a_portrait_aspect_with_an_even_width() -> None:
    """A 200x300 input at 256P becomes 170x256 (171 rounded to even), over 2 s: 49 frames."""
    image = Image.new("RGB", (200, 300), (200, 80, 40))
    for x in range(0, 200, 20):
        image.paste((20, 40, 200), (x, 0, x + 10, 300))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG")

    facts = probe_video(render_video(buffer.getvalue(), height=256, seconds=2))

    assert (170, 256, 49) == (facts.width, facts.height, facts.frames)


@pytest.mark.parametrize(
    ("size", "height", "expected"),
    [((480, 320), 256, (384, 256)), ((480, 320), 1024, (1536, 1024)), ((1, 1000), 256, (2, 256))],
)
def test_output_size_follows_the_input_aspect(
    size: tuple[int, int], height: int, expected: tuple[int, int]
) -> None:
    """Width is the input aspect times the height, rounded to an even number, at least 2."""
    assert expected == output_size(*size, height)


def test_frame_count_is_seconds_times_fps_plus_one() -> None:
    """A 5 s clip at 24 fps has 121 frames."""
    assert 121 == frame_count(5)


def test_undecodable_bytes_raise_a_decode_error() -> None:
    """Bytes that are not an image raise ImageDecodeError, which the engine reports as FAILED."""
    with pytest.raises(ImageDecodeError, match="not a decodable image"):
        render_video(b"<html>not an image</html>", height=256, seconds=1)


def test_a_clip_asked_for_again_is_served_from_memory() -> None:
    """Rendering is deterministic, so the same image, height and length are encoded once."""
    image = sample_image_bytes()

    first = render_video(image, height=256, seconds=1)

    assert first is render_video(image, height=256, seconds=1)
    taller = render_video(image, height=258, seconds=1)
    assert taller is not first and (258, 25) == (
        probe_video(taller).height,
        probe_video(taller).frames,
    )
