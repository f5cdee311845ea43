"""Home: what the app is, where the catalog lives, and the way to every page. Never loads the model."""

import streamlit as st

from vpm import health, webapp

st.title(":material/image_search: Visual Product Matcher")
st.caption("Find the products in your catalog that look like a photo.")

settings = webapp.get_settings()
matcher = webapp.get_matcher()

try:
    categories = matcher.category_counts()
    products = sum(categories.values())
except Exception as err:
    webapp.show_error(err, what="The catalog cannot be read")
    products = None

if products == 0:
    with st.container(border=True):
        st.subheader(":material/waving_hand: Welcome")
        st.markdown(
            "Visual Product Matcher finds the products in your catalog that look like a photo. "
            "Drop in a phone picture, snap one with the camera, paste an image link, or describe the "
            "product in words, and it shows the closest products with a similarity score you can filter.\n\n"
            "**Your catalog is empty.** To get started:\n"
            "1. Open **Catalog** and add a product: a photo, a name and a category.\n"
            "2. Or import many at once: a `.zip` of images in one folder per category, or a `.csv` with "
            "`image,name,category` columns (image is a link or a path inside the zip).\n"
            "3. Then open **Search** and try a photo."
        )
        st.page_link(webapp.CATALOG_PAGE, label="Add or import products", icon=":material/add_photo_alternate:")

st.subheader("Status")
top = st.columns(2)
with top[0], st.container(border=True):
    st.markdown("**:material/storage: Storage**")
    st.markdown(webapp.storage_summary(settings))
with top[1], st.container(border=True):
    st.markdown("**:material/neurology: Model**")
    embedder = webapp.loaded_embedder(matcher)
    if embedder is None:
        st.markdown(f"`{settings.vpm_model}`, not loaded yet: it loads on the first search.")
    else:
        text = "text and images" if embedder.supports_text else "images only"
        st.markdown(f"{embedder.display_name} ({text})")
        if embedder.fallback_reason:
            st.warning(f"Using the built-in fallback model: {embedder.fallback_reason}", icon=":material/info:")

if products is not None:
    index = health.index_summary(matcher, products)
    with st.container(horizontal=True):  # one row even on a phone: the numbers are short
        st.metric("Products", f"{products:,}", border=True)
        st.metric("Categories", f"{len(categories):,}", border=True)
        st.metric("Search index", index.headline, help=index.detail, border=True)

st.subheader("Go to")
pages = [
    (webapp.SEARCH_PAGE, "Search by photo or text", ":material/image_search:", "Find look-alike products."),
    (webapp.CATALOG_PAGE, "Catalog", ":material/inventory_2:", "Add, import, edit and delete products."),
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
