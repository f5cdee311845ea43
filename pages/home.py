"""Home: what the app is, where the catalog lives, and the way to every page. Never loads the model."""

import streamlit as st

from vpm.core import health
from vpm.core.presentation import plain
from vpm.core.sample import LOAD_TIME
from vpm.faces import webapp
from vpm.models import model_outlook

st.title(":material/image_search: Visual Product Matcher")
st.caption("Find the products in your catalog that look like a photo.")

settings = webapp.get_settings()
matcher = webapp.get_matcher()
# Which model runs (or will, on the first search): instant; a hub probe, when one is needed, runs in the background.
outlook = model_outlook.for_matcher(matcher)

try:
    categories = matcher.category_counts()
    products = sum(categories.values())
except Exception as err:
    webapp.show_error(err, what="The catalog cannot be read")
    products = None

loaded = st.session_state.pop("home_sample_report", None)
if loaded is not None:
    st.success(f"Loaded the sample catalog: {plain(loaded.summary())}.", icon=":material/check_circle:")
    st.page_link(webapp.SEARCH_PAGE, label="Now search with a photo", icon=":material/image_search:")

if products == 0:
    waiting = health.local_catalog_waiting(settings)
    with st.container(border=True):
        st.subheader(":material/waving_hand: Welcome")
        ways = (
            "Drop in a phone picture, snap one with the camera, paste an image link, or describe the product in "
            "words" if outlook.words else "Drop in a phone picture, snap one with the camera, or paste an image link"
        )
        st.markdown(
            "Visual Product Matcher finds the products in your catalog that look like a photo. "
            f"{ways}, and it shows the closest products with a similarity score you can filter."
        )
        if waiting:
            st.info(
                f"This bucket is empty, but the local catalog has {waiting:,} products: copy them here on "
                "Migration & costs.",
                icon=":material/cloud_upload:",
            )
            st.page_link(webapp.MIGRATION_PAGE, label="Move the local catalog to the bucket",
                         icon=":material/cloud_upload:")
        if webapp.access().may_change:  # said so that it stays true while the sample loads below
            st.markdown(f"**Start with the sample products** (loading them takes {LOAD_TIME}), or add "
                        "your own.")
        else:
            st.markdown("**The catalog is empty.** Its owner can load the sample products or add their own.")
        if webapp.may_change():
            webapp.offer_sample(matcher, key="home_sample", report_key="home_sample_report")
            st.page_link(webapp.CATALOG_PAGE, label="Add or import your own products",
                         icon=":material/add_photo_alternate:")

st.subheader("Status")
top = st.columns(2)
with top[0], st.container(border=True):
    st.markdown("**:material/storage: Storage**")
    st.markdown(webapp.storage_summary(settings))
with top[1], st.container(border=True):
    st.markdown("**:material/neurology: Model**")
    if outlook.state == "checking":  # the hub probe answers within seconds: redraw the page once it has
        @st.fragment(run_every=1.0)
        def _model_line() -> None:
            now = model_outlook.for_matcher(matcher)
            st.markdown(plain(now.line))
            if now.state != "checking":
                st.rerun(scope="app")

        _model_line()
    else:
        st.markdown(plain(outlook.line))

if products is not None:
    index = health.index_summary(matcher, products)
    with st.container(horizontal=True):  # one row even on a phone: the numbers are short
        # As wide as their numbers ("12,345", "398 to embed"), wrapping to a new line rather than cutting one off.
        st.metric("Products", f"{products:,}", border=True, width="content")
        st.metric("Categories", f"{len(categories):,}", border=True, width="content")
        st.metric("Search index", index.headline, help=index.detail, border=True, width="content")

st.subheader("Go to")
pages = [
    (webapp.SEARCH_PAGE, "Search by photo or text" if outlook.words else "Search by photo", ":material/image_search:",
     "Find look-alike products."),
    (webapp.CATALOG_PAGE, "Catalog", ":material/inventory_2:", "Browse, add, import, edit and delete products."),
    (webapp.MAP_PAGE, "Catalog map", ":material/scatter_plot:", "Every product on one map; likely duplicates."),
    (webapp.STORAGE_PAGE, "Storage browser", ":material/folder_open:", "See the files behind the catalog."),
    (webapp.MIGRATION_PAGE, "Migration & costs", ":material/cloud_upload:", "Move to S3; estimate the bill."),
    (webapp.QUALITY_PAGE, "Match quality", ":material/fact_check:", "How often the right product comes first."),
    (webapp.HEALTH_PAGE, "Health", ":material/monitor_heart:", "Checks, settings and versions."),
]
for start in range(0, len(pages), 3):  # row by row, so a phone (one column) keeps the order
    for column, (page, label, icon, what) in zip(st.columns(3), pages[start : start + 3], strict=False):
        with column, st.container(border=True):
            st.page_link(page, label=label, icon=icon)
            st.caption(what)
