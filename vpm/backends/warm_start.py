"""What a first search reads, read side by side: when a server starts (in the background), or by the first search.

On a bucket tens of milliseconds away every read is a round trip, and a first search used to read the catalog's
tables one after another (open each, its rows, the vectors, the calibration) after loading the model. Here the
tables open and fill while the model loads, all at once, so a first answer waits on the slowest of them, not on
their sum. Only tables that exist are opened (one listing says which): an empty catalog is left as it is, nothing
is created. A failure is only logged: the search that needs the part says what is wrong.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from vpm.backends import engine
from vpm.backends.lance_features import TABLE as FEATURES_TABLE
from vpm.backends.lance_text import TABLE as TEXT_TABLE
from vpm.backends.lance_vectors import table_name as vectors_table

if TYPE_CHECKING:
    from vpm.core.matcher import Matcher

log = logging.getLogger(__name__)


def warm_up(matcher: Matcher) -> threading.Thread:
    """A server's start: read in the background what the first search will need; returns the thread."""

    def run() -> None:
        try:
            matcher.read_ahead()
            names = set(engine.table_names(matcher.where))  # listed again: cheap, and said by the read above
            if vectors_table(matcher.embedder.model_id) in names:
                matcher._embed_missing_once()  # the first search's own check, on what was just read
        except Exception as err:  # noqa: BLE001 - a start-up nicety: the first search reports what is wrong
            log.info("a read ahead at start failed (the first search will try again): %s", err)

    thread = threading.Thread(target=run, name="vpm-warm-start", daemon=True)
    thread.start()
    return thread


def read_ahead(matcher: Matcher) -> None:
    """Open the catalog's existing tables and read what a search needs from them, all at once (the model loads
    meanwhile)."""
    try:
        names = set(engine.table_names(matcher.where))
    except Exception as err:  # noqa: BLE001 - see the module's docstring
        log.info("nothing read ahead: %s", err)
        return
    if "products" not in names:
        return  # no catalog yet: opening its tables would create them
    parts = [lambda: _model_and_vectors(matcher, names), matcher.catalog.warm]
    if FEATURES_TABLE in names and matcher.rerank_default:
        parts.append(matcher.features.count)
    if TEXT_TABLE in names and matcher.package_text_default:
        parts.append(matcher.texts.count)
    with ThreadPoolExecutor(len(parts), thread_name_prefix="vpm-read-ahead") as pool:
        for done in [pool.submit(part) for part in parts]:
            if (err := done.exception()) is not None:
                log.info("a read ahead failed (the search will try again): %s", err)


def _model_and_vectors(matcher: Matcher, names: set[str]) -> None:
    model_id = matcher.embedder.model_id  # loads the model (the longest part, on the CPU)
    if vectors_table(model_id) not in names:
        return
    with ThreadPoolExecutor(1, thread_name_prefix="vpm-read-ahead") as pool:
        calibration = pool.submit(matcher.calibration)
        matcher.vectors.warm()
        calibration.result()
