"""The pictures the browser test takes: whole pages, the README's Search page, and a shopper's photo to search
with."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image


def save_whole_page(page, path: Path, width: int, height: int) -> None:
    """Streamlit scrolls inside its main area, not the document: grow the window to the content, then shoot."""
    content = page.evaluate(
        "() => Math.max(...[...document.querySelectorAll('[data-testid=stMain], [data-testid=stSidebarContent]')]"
        ".map(e => e.scrollHeight))"
    )
    page.set_viewport_size({"width": width, "height": max(height, int(content))})
    page.wait_for_timeout(400)
    path.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(path), full_page=True)
    page.set_viewport_size({"width": width, "height": height})


def save_search_picture(page, first_card, path: Path) -> None:
    """The Search page as the README shows it: 1280 px wide, from the top down to the first row of result cards."""
    page.set_viewport_size({"width": 1280, "height": 1600})
    page.wait_for_timeout(600)
    bottom = first_card.bounding_box()
    height = min(1600, int(bottom["y"] + bottom["height"]) + 12)  # within the gap below the cards
    path.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(path), clip={"x": 0, "y": 0, "width": 1280, "height": height})
    page.set_viewport_size({"width": 1280, "height": 900})


def closer(photo: bytes) -> bytes:
    """The middle of a photo (70% of each side), as a shopper a step closer to the shelf takes it: a photo of the
    product that is not a file of the catalog."""
    with Image.open(io.BytesIO(photo)) as image:
        w, h = image.size
        middle = image.convert("RGB").crop((int(w * 0.15), int(h * 0.15), int(w * 0.85), int(h * 0.85)))
    out = io.BytesIO()
    middle.save(out, "JPEG", quality=90)
    return out.getvalue()
