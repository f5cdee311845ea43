"""Visual Product Matcher: the Streamlit entry point. Navigation and the sidebar status; nothing else."""

import streamlit as st

from vpm.faces import webapp

st.set_page_config(page_title="Visual Product Matcher", page_icon=":material/image_search:", layout="wide")

navigation = st.navigation(
    {
        "Find": [
            st.Page(webapp.HOME_PAGE, title="Home", icon=":material/home:", default=True),
            st.Page(webapp.SEARCH_PAGE, title="Search", icon=":material/image_search:"),
        ],
        "Manage": [
            st.Page(webapp.CATALOG_PAGE, title="Catalog", icon=":material/inventory_2:"),
            st.Page(webapp.MAP_PAGE, title="Catalog map", icon=":material/scatter_plot:"),
            st.Page(webapp.STORAGE_PAGE, title="Storage browser", icon=":material/folder_open:"),
            st.Page(webapp.MIGRATION_PAGE, title="Migration & costs", icon=":material/cloud_upload:"),
        ],
        "Operate": [
            st.Page(webapp.QUALITY_PAGE, title="Match quality", icon=":material/fact_check:"),
            st.Page(webapp.HEALTH_PAGE, title="Health", icon=":material/monitor_heart:"),
        ],
    }
)
webapp.let_text_wrap()  # an uploader's list of formats wraps on a phone instead of ending in "..."
webapp.sidebar_status()
navigation.run()
