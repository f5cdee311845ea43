"""Textured test pictures with plenty of keypoints, and shopper-like views of them (crop, rotation, JPEG)."""

from __future__ import annotations

import io
import random

from PIL import Image, ImageDraw


def textured(seed: int, size: tuple[int, int] = (320, 320)) -> Image.Image:
    """Many random shapes in random colours: a 'package' with corners and edges SIFT can find again."""
    rng = random.Random(seed)
    image = Image.new("RGB", size, tuple(rng.randrange(256) for _ in range(3)))
    draw = ImageDraw.Draw(image)
    w, h = size
    for _ in range(120):
        x, y = rng.randrange(w), rng.randrange(h)
        dx, dy = rng.randrange(6, w // 5), rng.randrange(6, h // 5)
        colour = tuple(rng.randrange(256) for _ in range(3))
        if rng.random() < 0.5:
            draw.rectangle([x, y, x + dx, y + dy], fill=colour)
        else:
            draw.ellipse([x, y, x + dx, y + dy], fill=colour)
    return image


def shopper_view(image: Image.Image, seed: int = 0) -> Image.Image:
    """A little cropped, a little rotated, re-encoded as a JPEG: the same product, another photo."""
    rng = random.Random(seed)
    w, h = image.size
    left, top = rng.randrange(w // 12), rng.randrange(h // 12)
    view = image.crop((left, top, left + int(w * 0.88), top + int(h * 0.88)))
    view = view.rotate(rng.uniform(-6, 6), resample=Image.Resampling.BICUBIC, fillcolor=(255, 255, 255))
    return Image.open(io.BytesIO(to_bytes(view, "JPEG"))).convert("RGB")


def to_bytes(image: Image.Image, fmt: str = "PNG") -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **({"quality": 85} if fmt == "JPEG" else {}))
    return out.getvalue()
