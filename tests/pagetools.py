"""Small AppTest helpers shared by the page tests: run a page, find a button by its label, click it."""

from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest

PAGES = Path(__file__).resolve().parents[1] / "pages"
TIMEOUT = 60


def run_page(page: Path) -> AppTest:
    at = AppTest.from_file(str(page), default_timeout=TIMEOUT).run()
    assert not at.exception
    return at


def button(at: AppTest, label: str):
    matches = [b for b in at.button if b.label == label]
    assert matches, f"no button {label!r}; buttons: {[b.label for b in at.button]}"
    return matches[0]


def click(at: AppTest, label: str) -> AppTest:
    button(at, label).click()
    at.run()
    assert not at.exception
    return at


def shown(markdown: str) -> str:
    """What a person reads from an element's Markdown source: backslash escapes resolved, the invisible word
    joiners that keep "https://" from becoming a link removed (see vpm.core.presentation.plain)."""
    import re

    return re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", markdown).replace("\u2060", "")
