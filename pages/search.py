"""Search: a photo (upload or camera, with more photos of the same product if wanted), an image link or words in;
the closest products out, as cards.

The query is embedded once and its vectors kept in the session. The filters and the cards are a fragment, so
moving the threshold slider, changing top-k or the categories reruns only that part: it re-ranks the kept vectors
(`matcher.rank`, `matcher.rank_mix`, milliseconds) without rerunning the page around it. Words that refine a photo
and the products rejected with "Not this one" (kept for the session until cleared) join the query there too.
"""

import hashlib

import streamlit as st

from vpm.core.catalog import ProductNotFound
from vpm.core.images import InvalidBox, box_from_percent, outline_box, preview_thumbnail
from vpm.core.presentation import (
    IMAGE_FORMATS_TEXT,
    IMAGE_UPLOAD_TYPES,
    format_ms,
    nothing_found_text,
    plain,
    plural,
    query_hint,
    results_count_text,
    results_csv,
    score_percent,
    why_caption,
)
from vpm.core.query_mix import MAX_PHOTOS, MAX_WEIGHT, TEXT_WEIGHT, describe_weights, refine_unavailable
from vpm.core.searching import NO_WORDS_MATCH, words_note
from vpm.faces import webapp
from vpm.faces.search_slot import search_slot

PHOTO, LINK, WORDS = "Photo", "Image link", "Words"
STATE = "search_query"
SIMILAR = "search_similar"  # the product whose "More like this" is shown instead of the query's results
REJECTED = "search_rejected"  # products marked "Not this one": left out, and moved away from, for the session
REFINE, REFINE_WEIGHT = "search_refine", "search_refine_weight"

st.title(":material/image_search: Search")

settings = webapp.get_settings()
matcher = webapp.get_matcher()

categories = webapp.catalog_or_stop(matcher.categories)

if not categories:
    st.info(
        "The catalog is empty, so there is nothing to compare a photo with yet. Add a product or import a "
        "zip or CSV first.",
        icon=":material/inventory_2:",
    )
    st.page_link(webapp.CATALOG_PAGE, label="Add or import products", icon=":material/add_photo_alternate:")
    st.stop()


try:
    webapp.ensure_model(matcher)  # first use: a spinner says the model is loading
except Exception as err:
    webapp.show_error(err, what="The image model could not be loaded")
    st.page_link(webapp.HEALTH_PAGE, label="Open Health for what to do", icon=":material/monitor_heart:")
    st.stop()


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_query() -> dict | None:
    """What the person asked for, as {identity, kind, ...}; None when nothing is entered yet."""
    mode = st.radio("Search by", [PHOTO, LINK, WORDS], horizontal=True, key="search_mode")
    if mode == PHOTO:
        # The camera only appears when asked for, so opening the page never triggers a camera prompt.
        if st.toggle("Use the camera", key="search_camera"):
            shot = st.camera_input("Take a photo of the product", key="search_camera_input")
            if shot is None:
                return None
            data = shot.getvalue()
            return {"identity": ("camera", _digest(data)), "kind": "image", "data": data, "filename": "camera.jpg"}
        upload = st.file_uploader(
            "Photo of a product",
            type=list(IMAGE_UPLOAD_TYPES),
            key="search_upload",
            help=f"{IMAGE_FORMATS_TEXT}, up to {settings.vpm_max_upload_mb} MB.",
        )
        if upload is None:
            return None
        data = upload.getvalue()
        more = st.file_uploader(
            "More photos of the same product (optional)", type=list(IMAGE_UPLOAD_TYPES), accept_multiple_files=True,
            key="search_more",
            help=f"The back or a side: all the photos are searched as one query (at most {MAX_PHOTOS} in all).",
        ) or []
        extra = [(f.getvalue(), f.name) for f in more]
        return {"identity": ("upload", upload.name, _digest(data), *(_digest(d) for d, _name in extra)),
                "kind": "image", "data": data, "filename": upload.name, "more": extra}
    if mode == LINK:
        url = st.text_input(
            "Image link", key="search_url", placeholder="https://example.com/photo.jpg",
            help=f"A public http(s) link to a {IMAGE_FORMATS_TEXT} image. Press Enter to search.",
        ).strip()
        if not url:
            return None
        return {"identity": ("url", url), "kind": "image", "url": url}
    webapp.ensure_model(matcher)
    note = words_note(matcher)
    if note:  # no model reads words: they are looked up in what the catalog says in words
        st.caption(plain(note[:1].upper() + note[1:]))
    text = st.text_input(
        "Product name or words on it" if note else "Describe the product", key="search_text",
        placeholder="e.g. oat milk" if note else "e.g. red running shoe", help="Press Enter to search.",
    ).strip()
    if not text:
        return None
    return {"identity": ("text", text), "kind": "text", "text": text}


def read_region(query: dict | None):
    """The part of an uploaded photo to search with (a shelf photo with several products), or None for all of it.

    Two range sliders set the edges in percent; vpm checks the region (inside the photo, not tiny, not a strip) and
    draws the live preview, so nothing here decides what a valid region is.
    """
    if query is None or "data" not in query:
        return None
    if not st.toggle("Search only part of the photo", key="search_region",
                     help="For a photo with several products (a shelf, a table): frame the one you mean."):
        return None
    try:
        image = webapp.upload_image(query["data"], query["filename"])
    except Exception:
        return None
    left, right = st.slider("Left and right edges (%)", 0, 100, (0, 100), key="search_region_x")
    top, bottom = st.slider("Top and bottom edges (%)", 0, 100, (0, 100), key="search_region_y")
    try:
        box = box_from_percent(image.width, image.height, left, top, right - left, bottom - top)
    except InvalidBox as err:
        st.warning(f"{str(err)[:1].upper()}{str(err)[1:]}: widen the region.", icon=":material/crop_free:")
        return False
    st.image(outline_box(image, box), caption=f"The region searched: {box.w}×{box.h} px", width=280)
    return box


def embed(query: dict, box) -> dict:
    """Embed the query once; the result is kept in the session for re-ranking."""
    webapp.ensure_model(matcher)
    if query["kind"] == "text" and words_note(matcher):  # words alone: nothing to embed, the words index answers
        return {"identity": query["identity"], "kind": "text", "vector": None, "label": query["text"],
                "preview": None, "embed_ms": 0.0, "features": None, "box": None, "image": None, "read_text": None,
                "photos": [], "more_previews": []}
    webapp.prepare_search_index(matcher)  # a progress bar if catalog images still need embedding
    with search_slot(), st.spinner("Finding similar products…"):
        if query.get("more"):  # several photos of one product: one query
            photos = matcher.embed_photos([(query["data"], query["filename"]), *query["more"]], box=box)
            embedded = photos[0]
        elif query["kind"] == "text":
            embedded = matcher.embed_query(text=query["text"])
        elif "url" in query:
            embedded = matcher.embed_query(url=query["url"])
        else:
            embedded = matcher.embed_query(data=query["data"], filename=query["filename"], box=box)
    # A bounded thumbnail, never the upload itself: st.image would open and resize that outside our checks. A
    # region is outlined on the photo the region sliders already decoded (kept by webapp.upload_image).
    if embedded.image is None:
        preview = None
    elif embedded.box is not None:
        preview = outline_box(webapp.upload_image(embedded.image, embedded.label), embedded.box)
    else:
        preview = preview_thumbnail(embedded.image, embedded.label, max_bytes=settings.max_upload_bytes)
    more = [] if not query.get("more") else [
        preview_thumbnail(p.image, p.label, max_bytes=settings.max_upload_bytes) for p in photos[1:]]
    return {"identity": query["identity"], "kind": embedded.kind, "vector": embedded.vector,
            "label": embedded.label, "preview": preview, "embed_ms": embedded.embed_ms,
            "features": embedded.features, "box": embedded.box, "image": embedded.image,
            "read_text": None if embedded.image is None else matcher.query_text_reader(
                embedded.image, embedded.label, embedded.box),
            "photos": photos if query.get("more") else [embedded], "more_previews": more}


query = read_query()
box = read_region(query)

if query is None or box is False:
    st.session_state.pop(STATE, None)
    query = None
elif st.session_state.get(STATE, {}).get("identity") != (*query["identity"], str(box)):
    st.session_state.pop(STATE, None)
    st.session_state.pop(SIMILAR, None)  # a new photo or new words: their results, not an older "more like"
    try:
        st.session_state[STATE] = {**embed(query, box), "identity": (*query["identity"], str(box))}
    except Exception as err:
        webapp.show_error(err)


@st.fragment
def results(query_entered: bool) -> None:
    """The filters and the cards. A fragment: moving a slider, the categories or the switch re-ranks the query
    vector kept in the session and redraws only this part, not the page (no re-reading of the upload)."""
    current = st.session_state.get(STATE)
    kind = current["kind"] if current else ("text" if st.session_state.get("search_mode") == WORDS else "image")
    words_alone = kind == "text" and words_note(matcher) is not None  # ranked by words: no percentage to filter
    similarity, count, within = st.columns([3, 3, 4], vertical_alignment="bottom")
    threshold = None
    if not words_alone:
        default = score_percent(matcher.default_threshold(kind))
        threshold = similarity.slider(
            "Minimum match (%)" if kind == "image" else "Minimum similarity (%)", 0, 100, default, step=1,
            key=f"search_threshold_{kind}",
            help=(f"A photo result's percentage is how often such a match was right: {matcher.score_explained()}. "
                  f"The default, {default}%, still shows 95% of the right products that reach the top 5."
                  if kind == "image" else
                  "Only products at least this similar to your words are shown, unless their name, brand or "
                  "package text has the words. Lower it to see more."),
        )
    top_k = count.slider("Show at most", 1, 50, 12, key="search_top_k", help="The number of result cards.")
    chosen = within.multiselect("Categories", categories, key="search_categories", placeholder="All categories")
    verify = st.toggle(
        "Verify the top matches", value=matcher.rerank_default, key="search_rerank", disabled=kind == "text",
        help="Checks the 20 best candidates for keypoints that match your photo (printed labels, shapes) and moves "
             "the verified ones up. Photos only.",
    )
    if st.session_state.get(SIMILAR) is not None:
        show_similar(st.session_state[SIMILAR], top_k, chosen)
        return
    if current is None:
        if not query_entered:
            st.caption(query_hint(matcher.embedder.supports_text))
        return
    words, weight = read_refinement(current)
    rejected = st.session_state.get(REJECTED, [])
    options = {"top_k": top_k, "threshold": None if threshold is None else threshold / 100,
               "categories": chosen or None}
    try:
        with search_slot():
            if len(current["photos"]) > 1 or words or rejected:
                mix = matcher.mix_query(current["photos"] if current["kind"] == "image" else [],
                                        text=words if current["kind"] == "image" else current["label"],
                                        text_weight=weight, not_ids=rejected, strict=False)
                response = matcher.rank_mix(mix, rerank=verify, **options)
            elif current["kind"] == "text":  # words: fused with CLIP's ranking, or the words index alone
                response = matcher.search_text(current["label"], vector=current["vector"],
                                               took_ms=current["embed_ms"], **options)
            else:
                response = matcher.rank(
                    current["vector"], query=current["label"], took_ms=current["embed_ms"],
                    features=current.get("features"), rerank=verify, box=current.get("box"), kind=current["kind"],
                    read_text=current.get("read_text"), **options,
                )
    except Exception as err:
        webapp.show_error(err)
        return
    show_session_query(rejected, words if current["kind"] == "image" else "", response)
    show_results(current, response, threshold)


def read_refinement(current: dict) -> tuple[str, float | None]:
    """"Refine with words" beside a photo query, and how much they weigh: only with a model that reads words."""
    if current["kind"] != "image":
        return "", None
    unavailable = refine_unavailable(matcher)
    if unavailable:
        st.caption(plain(unavailable))  # one line; the photo still searches
        return "", None
    words, weight = st.columns([3, 2], vertical_alignment="bottom")
    text = words.text_input(
        "Refine with words", key=REFINE, placeholder="e.g. in red, the large one",
        help="Words that move the results towards what they describe, together with your photo.",
    ).strip()
    value = weight.slider(
        "Weight of the words", 0.0, MAX_WEIGHT, TEXT_WEIGHT, step=0.05, key=REFINE_WEIGHT, disabled=not text,
        help=f"How much the words count beside your photos: 1 is as much, 0 not at all (default {TEXT_WEIGHT:g}).",
    )
    return text, value


def reject(product_id: str) -> None:
    """A card's "Not this one": left out, and the ranking moved away from its look, for the rest of the session."""
    rejected = st.session_state.setdefault(REJECTED, [])
    if product_id not in rejected:
        rejected.append(product_id)


def clear_session_query() -> None:
    """Back to the photo (or words) alone: no refining words, no rejected products."""
    st.session_state[REJECTED] = []
    st.session_state[REFINE] = ""
    st.session_state[REFINE_WEIGHT] = TEXT_WEIGHT


def show_session_query(rejected: list[str], words: str, response) -> None:
    """What this session adds to the query, with the weights in use, and a way to clear it."""
    words = words if getattr(response, "text", None) else ""  # words the model could not read were left out
    if not rejected and not words:
        return
    names = []
    for product_id in rejected:
        try:
            names.append(plain(matcher.get_product(product_id).name))
        except ProductNotFound:
            continue  # deleted since
    parts = []
    if words:
        parts.append(f"refined by “{plain(words)}”")
    if names:
        parts.append(f"not {', '.join(names)}")
    note, clear = st.columns([4, 1], vertical_alignment="center")
    weights = describe_weights(getattr(response, "text_weight", None), getattr(response, "negative_weight", None))
    note.caption(f"This session's query: {'; '.join(parts)}. Weights: {weights}.")
    clear.button("Clear", icon=":material/backspace:", key="search_clear", on_click=clear_session_query,
                 help="Forget the refining words and the products marked “Not this one”")


def more_like(product_id: str) -> None:
    """A card's "More like this": the products most like that one replace the results until "Back"."""
    st.session_state[SIMILAR] = product_id


def show_similar(product_id: str, top_k: int, chosen: list[str]) -> None:
    st.divider()
    try:
        response = matcher.similar(product_id, top_k=top_k, categories=chosen or None)
    except Exception as err:
        st.session_state.pop(SIMILAR, None)
        webapp.show_error(err, what="More like this could not be shown")
        return
    head, back = st.columns([4, 1], vertical_alignment="center")
    head.subheader(plain(response.query[:1].upper() + response.query[1:]))
    back.button("Back", icon=":material/arrow_back:", key="search_similar_back", on_click=st.session_state.pop,
                args=(SIMILAR, None), help="Back to the results of your own photo or words")
    st.caption("Ranked by how alike their photos look to this product's own photos (nothing is read again or "
               "re-embedded); the percentage is that likeness, not a match score.")
    if response.results:
        webapp.product_grid(response.results, columns=4, key="similar", more_like_this=more_like)
    else:
        st.info("No other product to compare it with in the chosen categories.", icon=":material/info:")


def lower_threshold(key: str, percent: int) -> None:
    """'Show it': the threshold slider moves down to the closest product's score, which then shows."""
    st.session_state[key] = percent


def show_results(current: dict, response, threshold: int | None) -> None:
    st.divider()
    summary, picture = st.columns([4, 1], vertical_alignment="top")
    with picture:
        if current["preview"] is not None:
            several = bool(current.get("more_previews"))
            st.image(current["preview"], caption="Your photos" if several else "Your photo", width=140)
            for more in current.get("more_previews", []):
                if more is not None:
                    st.image(more, width=140)
    with summary:
        st.subheader("Matches")
        if current["kind"] == "text":
            st.markdown(f"For “{plain(current['label'])}”")
        if response.answered_by:
            st.caption(f"answered by: {plain(response.answered_by)}")
        if response.results:
            st.markdown(f"**{plural(len(response.results), 'product')} found by these words**"
                        if threshold is None else f"**{results_count_text(len(response.results), threshold / 100)}**")
            verified = ""
            if response.verified:
                verified = " · verified by keypoints" + (
                    f" with {plain(response.verified_with)}" if getattr(response, "fusion", None) else ""
                ) + (", which changed the order" if response.reranked else "")
            together = ""
            if getattr(response, "fusion", None):
                together = f" · {len(response.photos)} photos searched as one query ({response.fusion})"
            st.caption(f"Search took {format_ms(response.took_ms)} · model {response.model}{together}{verified}")
            st.download_button(
                "Download results (CSV)", results_csv(response.results), file_name="vpm-results.csv",
                mime="text/csv", icon=":material/download:", on_click="ignore",
            )
        elif threshold is None:
            st.warning(plain(NO_WORDS_MATCH[:1].upper() + NO_WORDS_MATCH[1:]) + ".", icon=":material/search_off:")
        else:
            best = response.best_match
            st.warning(nothing_found_text(response.best_score, threshold / 100,
                                          None if best is None else plain(best.product.name)),
                       icon=":material/search_off:")
            if best is not None:
                st.button(f"Show {plain(best.product.name)}", icon=":material/visibility:", key="search_show_best",
                          on_click=lower_threshold, args=(f"search_threshold_{current['kind']}",
                                                          score_percent(response.best_score)))

    if getattr(response, "notice", None):
        st.caption(plain(response.notice))
    if response.results:
        webapp.product_grid(response.results, columns=4, more_like_this=more_like, not_this_one=reject)

    if response.results and current.get("image") is not None:
        with st.expander("Why this match? See the keypoints a result shares with your photo"):
            labels = [f"{i}. {m.product.name}" for i, m in enumerate(response.results, 1)]
            picked = st.selectbox("Result", range(len(labels)), format_func=lambda i: labels[i], key="search_why_pick")
            if st.button("Show the matching keypoints", key="search_why", icon=":material/join_inner:"):
                match = response.results[picked]
                try:
                    drawing, inliers = matcher.explain_match(current["image"], current["label"], match.product.id,
                                                             match.photo_key, box=current.get("box"))
                except Exception as err:
                    webapp.show_error(err, what="The matches could not be drawn")
                else:
                    st.image(drawing, caption=why_caption(inliers))


results(query is not None)
