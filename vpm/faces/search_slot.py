"""The Search page's place in the process's search gate (vpm/core/admission.py): a crowd's searches wait their turn,
first come first served, each visitor told how many are ahead, instead of all embedding at once on a few cores."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import streamlit as st

from vpm.faces import webapp


@contextlib.contextmanager
def search_slot() -> Iterator[None]:
    """Run the block once the process's search gate lets it in; until then a notice says how many searches are
    ahead. Past the wait's bound it raises SearchBusy, a VpmError whose message show_error shows."""
    from vpm.core.admission import SearchBusy, queue_notice, shared_gate

    settings = webapp.get_settings()
    notice = st.empty()
    gate = shared_gate(settings.vpm_search_concurrency, settings.vpm_search_queue_timeout_s)
    try:
        with gate.admit(lambda ahead: notice.info(queue_notice(ahead), icon=":material/hourglass_top:")):
            notice.empty()
            yield
    except SearchBusy:
        notice.empty()
        raise
