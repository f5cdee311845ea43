"""The app reads the catalog's tables ahead, on a daemon thread, when its model first loads (issue 22): a first
search then finds them open. A page that never loads the model (Home) never starts it."""

from __future__ import annotations

import threading

import pytest


@pytest.fixture
def read_aheads(monkeypatch):
    """The threads Matcher.read_ahead ran on (AppTest runs the pages in this process)."""
    from vpm.core.matcher import Matcher

    threads: list[threading.Thread] = []
    done = threading.Event()
    read_ahead = Matcher.read_ahead

    def recorded(self):
        threads.append(threading.current_thread())
        try:
            read_ahead(self)
        finally:
            done.set()

    monkeypatch.setattr(Matcher, "read_ahead", recorded)
    return threads, done


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_the_first_model_load_reads_the_tables_ahead_in_the_background_and_home_does_not(
    app_settings, seed_catalog, open_page, read_aheads
):
    threads, done = read_aheads
    seed_catalog([("Red mug", "Kitchen", 1)])

    at = open_page("pages/home.py")
    assert not at.exception
    assert not threads  # Home draws without the model: nothing read ahead, torch not needed

    at.switch_page("pages/search.py").run()

    assert not at.exception
    assert done.wait(30)
    first = threads[0]
    assert first.name == "vpm-app-read-ahead" and first.daemon  # never the page's own thread
