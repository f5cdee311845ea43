"""What the browser test checks on a drawn page beyond its words: text cut off at its box's edge, a page wider than
the window, the phone sidebar left open over the page. Plain functions over a Playwright page or locator."""

from __future__ import annotations

import time
from collections.abc import Callable

# Every element that holds text and hides what does not fit (overflow hidden or clip, or an ellipsis) while its
# text is wider or taller than its box: what a person sees as "metadata/products.jso" or "66 keypoints ma…".
# Inline elements have no box of their own, and a 1 px box is a label for screen readers, hidden on purpose.
_CUT_TEXT_JS = """
(root) => {
  const cut = [];
  for (const el of root.querySelectorAll('*')) {
    const style = getComputedStyle(el);
    if (style.display === 'inline' || style.display === 'none' || style.visibility === 'hidden') continue;
    if (el.clientWidth <= 1 && el.clientHeight <= 1) continue;
    const text = (el.innerText || '').trim();
    if (!text) continue;
    const hides = (v) => v === 'hidden' || v === 'clip';  // a scroll area (auto, scroll) leaves it all reachable
    const hidesX = hides(style.overflowX) || style.textOverflow === 'ellipsis';
    if ((hidesX && el.scrollWidth > el.clientWidth + 1) || (hides(style.overflowY) && el.scrollHeight > el.clientHeight + 1)) {
      cut.push(text.replace(/\\s+/g, ' ').slice(0, 100));
    }
  }
  return cut;
}
"""


def cut_texts(page, locator, within_s: float = 5.0) -> list[str]:
    """The texts inside `locator` that are cut off where a person reads them (empty when everything shows whole).
    Asked again for a few seconds while some are: an expander that is still opening hides what it holds."""
    deadline = time.monotonic() + within_s
    while True:
        found = locator.evaluate(_CUT_TEXT_JS)
        if not found or time.monotonic() >= deadline:
            return found
        page.wait_for_timeout(200)


def wider_than_the_window(page) -> int:
    """How many px the main area's content sticks out sideways (0 when it fits: nothing to scroll sideways to)."""
    return page.locator('[data-testid="stMain"]').evaluate("m => Math.max(0, m.scrollWidth - m.clientWidth)")


def sidebar_open(page) -> bool:
    return page.locator('[data-testid="stSidebar"]').get_attribute("data-collapsed") == "false"


def covered_by_the_sidebar(page, locator) -> bool:
    """Whether a tap on the middle of `locator` would land on something other than the main area (the sidebar)."""
    box = locator.bounding_box()
    return not page.evaluate(
        "([x, y]) => !!document.elementFromPoint(x, y)?.closest('[data-testid=\"stMain\"]')",
        [box["x"] + box["width"] / 2, box["y"] + box["height"] / 2],
    )


def soon(page, check: Callable[[], bool], within_s: float = 5.0) -> bool:
    """`check()` once it holds, or its last answer after `within_s`: for what follows a slide (the sidebar's takes
    0.3 s), never a measure of speed."""
    deadline = time.monotonic() + within_s
    while not check() and time.monotonic() < deadline:
        page.wait_for_timeout(100)
    return check()
