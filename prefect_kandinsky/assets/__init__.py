"""Files shipped with prefect-kandinsky: a sample input image for demos and the emulator."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

SAMPLE_IMAGE_PATH = Path(__file__).with_name("sample.png")
"""A 480x320 (3:2) procedural landscape PNG: sky, sun, clouds and hills."""

SAMPLE_IMAGE_CONTENT_TYPE = "image/png"


def sample_image_bytes() -> bytes:
    """Return the bytes of the sample input image (works from a wheel or a zip too)."""
    return files(__name__).joinpath("sample.png").read_bytes()


__all__ = ["SAMPLE_IMAGE_CONTENT_TYPE", "SAMPLE_IMAGE_PATH", "sample_image_bytes"]
