"""Catalog map: every product as a point (similar products close together), coloured by category, with its name
and picture on hover; beside it, pairs of different products whose photos are near-identical.

All the work is vpm.core.catalog_map's, from the vectors already cached for the model that runs: nothing is embedded
and the model is not loaded. The result is cached until the catalog or its vectors change.
"""

import altair as alt
import pandas as pd
import streamlit as st

from vpm.core import catalog_map
from vpm.core.presentation import data_uri, format_ms, plain, plural
from vpm.faces import webapp

MAX_TOOLTIP_PICTURES = 1000  # products whose picture rides along in the page (small WebPs, ~2 KB each)
PICTURE_SIDE = 96  # px
SHOWN_PAIRS = 100  # possible duplicates listed (most alike first)

st.title(":material/scatter_plot: Catalog map")
st.caption(
    "Every product is a point; products that look alike are close together. Hover a point for its name and "
    "picture. Made from the search vectors already stored: nothing is embedded again."
)

settings = webapp.get_settings()
matcher = webapp.get_matcher()
files = matcher.files  # where the catalog lives, its version, whether its URLs open in a browser

try:
    index = catalog_map.map_index(matcher)
except catalog_map.MapUnavailable as err:
    st.info(plain(err), icon=":material/info:")
    st.page_link(webapp.CATALOG_PAGE, label="Open the Catalog", icon=":material/inventory_2:")
    st.stop()
except Exception as err:
    webapp.show_error(err, what="The map cannot be drawn")
    st.stop()

threshold = st.slider(
    "Possible duplicates: photos at least this alike (%)", 80.0, 100.0, catalog_map.DEFAULT_THRESHOLD * 100, 0.5,
    format="%.1f%%",
    help="Pairs of different products with two photos at least this similar (cosine). Photos of one product "
    "are never compared with each other.",
) / 100


@st.cache_data(show_spinner="Drawing the map from the stored vectors…", max_entries=8, ttl=600)
def cached_map(where: str, model_id: str, version: int, vectors: int, threshold: float, _matcher, _index):
    """Keyed by the catalog's location, model, catalog version and vector count: a change draws it again."""
    return catalog_map.build_map(_matcher, threshold=threshold, index=_index)


def pictures(points) -> dict[str, str]:
    """A small picture per product for the tooltip: the storage's own URL (S3, CDN) or, for a local folder, a
    tiny WebP inline; none past MAX_TOOLTIP_PICTURES products, to keep the page light."""
    from vpm.core.images import ImageError, preview_thumbnail

    out: dict[str, str] = {}
    if files.web_urls:
        for p in points[:MAX_TOOLTIP_PICTURES * 5]:
            url = matcher.url_for(p.picture_key)
            if url:
                out[p.product_id] = url
        return out
    for p in points[:MAX_TOOLTIP_PICTURES]:
        data = webapp.thumbnail_bytes(p.picture_key) if p.picture_key else None
        if data is None:
            continue
        try:
            out[p.product_id] = data_uri(preview_thumbnail(data, p.picture_key, max_side=PICTURE_SIDE), "p.webp")
        except ImageError:
            continue
    return out


try:
    made = cached_map(files.description, index.model_id, files.catalog_version(), index.count(),
                      threshold, matcher, index)
except catalog_map.MapUnavailable as err:
    st.info(plain(err), icon=":material/info:")
    st.stop()
except Exception as err:
    webapp.show_error(err, what="The map cannot be drawn")
    st.stop()

sample = (f" (a sample of {made.photos_used:,} of {made.photos_total:,} photos: the map and the duplicates cover "
          "that sample)" if made.sampled else "")
st.caption(
    f"{plural(len(made.points), 'product')} from {plural(made.photos_used, 'photo')}{sample} · {made.method} of the "
    f"{made.model_id} vectors · made in {format_ms(made.seconds.get('total', 0) * 1000)}"
)

chart_column, pairs_column = st.columns([3, 2], gap="medium")
with chart_column:
    rows = pd.DataFrame(list(catalog_map.chart_rows(made.points, pictures(made.points))))
    tooltip = [alt.Tooltip("name:N", title="Product"), alt.Tooltip("category:N", title="Category"),
               alt.Tooltip("photos:Q", title="Photos")]
    if rows["image"].notna().any():
        tooltip.append(alt.Tooltip("image:N", title="image"))  # vega-tooltip draws a field named image as a picture
    chart = (
        alt.Chart(rows)
        .mark_circle(size=70, opacity=0.8)
        .encode(
            x=alt.X("x:Q", axis=None, scale=alt.Scale(zero=False, nice=False, padding=16)),
            y=alt.Y("y:Q", axis=None, scale=alt.Scale(zero=False, nice=False, padding=16)),
            color=alt.Color("category:N", title="Category", legend=alt.Legend(orient="bottom", columns=2)),
            tooltip=tooltip,
        )
        .properties(height=480)
        .interactive()
    )
    st.altair_chart(chart, width="stretch")
    if len(made.points) > MAX_TOOLTIP_PICTURES and not files.web_urls:
        st.caption(f"Pictures on hover for the first {MAX_TOOLTIP_PICTURES:,} products; names for all.")

with pairs_column:
    capped = " — the most alike" if len(made.pairs) >= catalog_map.MAX_PAIRS else ""
    st.subheader(f"Possible duplicates ({len(made.pairs)}{capped})")
    if not made.pairs:
        st.caption(
            f"No two different products have photos at least {threshold:.1%} alike. Lower the slider to see "
            "close look-alikes."
        )
    else:
        st.caption("Different products with near-identical photos: the same item added twice, or a photo filed "
                   "under the wrong product. Check them on the Catalog page.")
        # Lines, most alike first, not a table: in this narrow column a table cut the names (and its headers).
        shown = made.pairs[:SHOWN_PAIRS]
        with st.container(height=480 if len(shown) > 12 else "content", key="duplicate_pairs"):
            st.markdown("  \n".join(f"{i}. {plain(catalog_map.pair_line(d))}" for i, d in enumerate(shown, 1)))
        if len(made.pairs) > len(shown):
            st.caption(f"The {len(shown)} most alike of {len(made.pairs)}: raise the slider to narrow them down.")
