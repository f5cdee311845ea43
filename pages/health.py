"""Health: the same checks as `python -m vpm health`, the effective settings (secrets masked), versions."""

import streamlit as st

from vpm.core import health
from vpm.core.presentation import STATUS_ICONS, STATUS_MARKS, STATUS_WORDS, code, package_versions, plain
from vpm.faces import webapp

st.title(":material/monitor_heart: Health")
st.caption("The same checks as `python -m vpm health`: storage, catalog, model and search index.")

settings = webapp.get_settings()
matcher = webapp.get_matcher()

# The model check loads the model (seconds, hundreds of MB): do it when it is loaded already or when asked.
if st.session_state.get("health_check_model") or matcher.model_loaded:
    st.session_state["health_check_model"] = True
with st.spinner("Running checks…"):
    try:
        checks = health.checks_for(matcher, load_model=bool(st.session_state.get("health_check_model")))
    except Exception as err:  # a check that itself breaks is a failed check, not a broken page
        webapp.show_error(err, what="The checks could not run")
        checks = []

if checks:
    verdict = health.overall(checks)
    summary = {
        "pass": ("All checks passed.", st.success),
        "warn": ("Working, with warnings: see what to do below.", st.warning),
        "fail": ("Something needs fixing: see what to do below.", st.error),
    }[verdict]
    summary[1](summary[0], icon=STATUS_ICONS[verdict])
    with st.container(border=True, gap="small"):
        for check in checks:
            st.markdown(f"{STATUS_MARKS[check.status]} **{check.name}** ({STATUS_WORDS[check.status]}): {plain(check.detail)}")
            if check.fix and check.status != "pass":
                st.caption(f"What to do: {plain(check.fix)}")
with st.container(horizontal=True):
    st.button("Run the checks again", icon=":material/refresh:")
    if not st.session_state.get("health_check_model") and st.button(
        "Load and check the model", icon=":material/neurology:"
    ):
        st.session_state["health_check_model"] = True
        st.rerun()

# Line by line rather than tables: a table cell cuts a value at its column's width ("metadata/products.jso", half a
# path on a phone); a line wraps, and a long path breaks inside its code span.
settings_column, versions_column = st.columns([3, 2], gap="large")
with settings_column:
    st.subheader("Effective settings")
    st.caption("From the environment, `.env` and Streamlit secrets. Secrets show only whether they are set.")
    st.markdown("  \n".join(f"**{name}** · {code(value)}" for name, value in settings.masked().items()))
with versions_column:
    st.subheader("Versions")
    st.markdown("  \n".join(f"**{name}** · {code(version)}" for name, version in package_versions().items()))
