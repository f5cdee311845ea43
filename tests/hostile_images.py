"""Tiny files with hostile shapes (issue 9): a few hundred bytes that pass the pixel cap, then blow up memory.

Each is a strip: so few pixels that the 50 MP check lets it through, but a preprocessing step that scales the short
side up to 224 px (CLIP's processor, EfficientNet's `_pixels`) turns it into a 2.5-30 GB image. All are generated
here; none are committed.

    from hostile_images import HOSTILE_IMAGES
    for hostile in HOSTILE_IMAGES: hostile.filename, hostile.data, hostile.shape
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

from PIL import Image

STRIP_COLOUR = (200, 40, 70)


@dataclass(frozen=True)
class HostileImage:
    filename: str
    size: tuple[int, int]  # width, height
    content_type: str
    data: bytes = field(repr=False)

    @property
    def shape(self) -> str:
        """As decode_image's message writes it, e.g. "1×200000"."""
        return f"{self.size[0]}×{self.size[1]}"

    def pil(self) -> Image.Image:
        """The same strip as an RGB PIL image, for calling an embedder without decode_image."""
        return Image.new("RGB", self.size, STRIP_COLOUR)


def _encode(image: Image.Image, pil_format: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=pil_format, **params)
    return buffer.getvalue()


def _make(filename: str, size: tuple[int, int], pil_format: str, content_type: str, mode: str, **params):
    colour = 0 if mode == "1" else STRIP_COLOUR
    data = _encode(Image.new(mode, size, colour), pil_format, **params)
    return HostileImage(filename, size, content_type, data)


HOSTILE_IMAGES = (
    # ~470 bytes; 10 GP (30 GB as RGB) once the short side is scaled to 224.
    _make("tall-1x200000.png", (1, 200_000), "PNG", "image/png", "1", optimize=True),
    # WebP's largest width; ~50 bytes; 0.8 GP (2.5 GB) at 224.
    _make("wide-16383x1.webp", (16_383, 1), "WEBP", "image/webp", "RGB", lossless=True),
    # ~320 bytes; 1 GP (3 GB) at 224.
    _make("strip-40000x2.png", (40_000, 2), "PNG", "image/png", "RGB", optimize=True),
)


def guard_resizes(monkeypatch, max_pixels: int) -> list[tuple[int, int]]:
    """Record every size PIL's `Image.resize` is asked for, and refuse (AssertionError) any above `max_pixels`.

    The refusal comes before the allocation, so an unbounded resize fails the test instead of taking 30 GB of the
    machine. Thumbnails, reductions and the models' preprocessing (EfficientNet's `_pixels`, CLIP's processor) all
    resize through it.
    """
    sizes: list[tuple[int, int]] = []
    real_resize = Image.Image.resize

    def guarded_resize(self, size, *args, **kwargs):
        width, height = size
        sizes.append((width, height))
        assert width * height <= max_pixels, f"a {self.size} image resized to {size}: over {max_pixels} pixels"
        return real_resize(self, size, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "resize", guarded_resize)
    return sizes
