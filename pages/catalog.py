"""Catalog: add a product (one or more photos), import many (zip or CSV), browse a page at a time, edit,
add or remove photos, delete.

Layout only: each tab is a function; what a change does and whether it is allowed is decided in vpm/."""

import streamlit as st

from vpm.core.catalog import ProductNotFound
from vpm.core.importer import OPTIONAL_COLUMNS, REQUIRED_COLUMNS
from vpm.core.presentation import (
    IMAGE_FORMATS_TEXT,
    IMAGE_UPLOAD_TYPES,
    add_form_problems,
    changed_fields,
    code,
    format_price,
    page_caption,
    pick_category,
    plain,
    plural,
    product_rows,
)
from vpm.core.product_schema import spec
from vpm.core.sample import LOAD_TIME
from vpm.faces import webapp

PAGE_SIZE = 50
SEARCH_SIMILAR = "search_similar"  # the Search page shows this product's "More like this" (pages/search.py)


def main() -> None:
    st.title(":material/inventory_2: Catalog")
    settings = webapp.get_settings()
    matcher = webapp.get_matcher()
    category_counts = webapp.catalog_or_stop(matcher.category_counts)
    categories = sorted(category_counts, key=str.casefold)
    total = sum(category_counts.values())
    st.caption(
        f"{plural(total, 'product')} in {plural(len(categories), 'category', 'categories')} · "
        f"{webapp.storage_summary(settings)}"
    )
    sample = st.session_state.pop("catalog_sample_report", None)
    if sample is not None:
        st.success(f"Loaded the sample catalog: {plain(sample.summary())}.", icon=":material/check_circle:")

    # Changes (add, import, edit, photos, delete) only for a session that may make them (vpm.core.access): else one line
    # says why, and only the product table is drawn.
    allowed = webapp.may_change()
    if not allowed:
        with st.container():
            browse(matcher, categories, total, allowed=False)
        return
    if not total:
        with st.container(border=True):
            st.markdown(f"**Try the app with the sample products** (loading them takes {LOAD_TIME}), or add your "
                        "own below.")  # still true while they load
            webapp.offer_sample(matcher, key="catalog_sample", report_key="catalog_sample_report")
    add_tab, import_tab, browse_tab = st.tabs(
        [":material/add_photo_alternate: Add a product", ":material/upload_file: Bulk import",
         ":material/table: Products"]
    )
    with add_tab:
        add_product(settings, matcher, categories)
    with import_tab:
        bulk_import(matcher)
    with browse_tab:
        browse(matcher, categories, total, allowed=True)


# ------------------------------------------------------------------------------------------------ add


def add_label(field: str, label: str) -> str:
    """The add form says which fields a new product may go without (product_schema: those not required)."""
    return label if spec(field).required else f"{label} (optional)"


def add_product(settings, matcher, categories: list[str]) -> None:
    # What was typed stays when something is missing; a fresh form (new key) only after a product was added.
    form_number = st.session_state.setdefault("catalog_add_form", 0)
    with st.form(f"add_product_{form_number}", enter_to_submit=False):
        photos = st.file_uploader(
            "Product photos",
            type=list(IMAGE_UPLOAD_TYPES),
            accept_multiple_files=True,
            help=f"One or more photos of the same product (front, side, back…): {IMAGE_FORMATS_TEXT}, up to "
            f"{settings.vpm_max_upload_mb} MB each. Search matches a photo against every one.",
        )
        name = st.text_input(
            add_label("name", "Name"), max_chars=spec("name").max_length, placeholder="e.g. Trail running shoe"
        )
        left, right = st.columns(2)
        chosen = left.selectbox(
            add_label("category", "Category"),
            categories,
            index=None,
            placeholder="Choose a category" if categories else "No categories yet: type one",
            disabled=not categories,
        )
        typed = right.text_input("…or a new category", max_chars=spec("category").max_length, placeholder="e.g. Shoes")
        left, right = st.columns(2)
        price = left.number_input(
            add_label("price", "Price"), min_value=float(spec("price").minimum), value=None, step=0.01, format="%.2f"
        )
        description = st.text_area(
            add_label("description", "Description"), max_chars=spec("description").max_length, height=80
        )
        allow_duplicate = st.checkbox(
            "Add it even if a photo is already in the catalog",
            help="Normally a photo already in the catalog (the very same file) is refused, naming the product "
            "that has it, so the catalog does not fill with copies.",
        )
        submitted = st.form_submit_button("Add product", type="primary", icon=":material/add:")

    if submitted:
        # The card of the product added before would sit under this attempt's message: it goes.
        st.session_state.pop("catalog_last_added", None)
        category = pick_category(chosen, typed)
        problems = add_form_problems(bool(photos), name, category)
        if problems:
            st.error(problems, icon=":material/error:")
        else:
            try:
                webapp.ensure_model(matcher)
                with st.spinner(f"Adding {plain(name.strip())}…"):
                    product = matcher.create_product(
                        [(photo.getvalue(), photo.name) for photo in photos], name=name, category=category,
                        price=price, description=description or None, allow_duplicate=allow_duplicate,
                    )
                st.session_state["catalog_last_added"] = product.id
                st.session_state["catalog_add_form"] = form_number + 1
                st.session_state.pop("catalog_confirm_delete", None)
                st.rerun()  # redraw counts, categories and the table with the new product
            except Exception as err:
                webapp.show_error(err, what=f"Could not add {name.strip() or 'the product'}")
    last_added(matcher)


def last_added(matcher) -> None:
    """The card of the product this session added last, with where to go next."""
    product_id = st.session_state.get("catalog_last_added")
    if not product_id:
        return
    try:
        view = matcher.view(matcher.get_product(product_id))
    except ProductNotFound:
        return  # deleted since; nothing to show
    st.success(f"Added **{plain(view.product.name)}**. It is searchable now.", icon=":material/check_circle:")
    card, about = st.columns([1, 3])
    with card, st.container(border=True, width=webapp.CARD_WIDTH):
        webapp.product_card(view, matcher.files.web_urls)
    with about:
        st.markdown(f"**Id:** {code(view.product.id)}")
        st.markdown(f"**Photos:** {len(view.product.photos)}")
        if view.image_url and matcher.files.web_urls:  # a local folder's file:// path: not shown
            st.markdown(f"**Image URL:** {code(view.image_url)}")
        st.page_link(webapp.SEARCH_PAGE, label="Search with a photo", icon=":material/image_search:")
        if st.button("More like this", icon=":material/interests:", key="catalog_more_like_added",
                     help="Open Search with the products that look most like this one"):
            st.session_state[SEARCH_SIMILAR] = view.product.id
            st.switch_page(webapp.SEARCH_PAGE)


# --------------------------------------------------------------------------------------------- import


def bulk_import(matcher) -> None:
    st.markdown(
        "Upload a **.zip** of images with one folder per category (`Shoes/red_trail_shoe.jpg` becomes "
        f"*Red Trail Shoe* in *Shoes*), or a **.csv** with columns `{','.join(REQUIRED_COLUMNS)}` and optionally "
        f"`{','.join(OPTIONAL_COLUMNS)}`, where `image` is a link to the picture. Pictures already in the catalog "
        "are skipped, so running the same import twice is safe."
    )
    bundle = st.file_uploader("Zip or CSV file", type=["zip", "csv"], key="catalog_import_file")
    if st.button("Import", type="primary", icon=":material/upload:", disabled=bundle is None):
        try:
            webapp.ensure_model(matcher)
            with st.status(f"Importing {plain(bundle.name)}…", expanded=True) as status:
                bar = st.progress(0, text="Reading the file…")

                def progress(done: int, total: int, message: str = "") -> None:
                    fraction = done / total if total else 1.0
                    bar.progress(min(1.0, fraction), text=message or f"{done} of {total}")

                report = matcher.import_upload(bundle.getvalue(), bundle.name, progress=progress)
                bar.progress(1.0, text="Done")
                state = "complete" if not report.failed else "error"
                status.update(label=f"{plain(bundle.name)}: {report.summary()}", state=state, expanded=False)
            st.session_state["catalog_import_report"] = (bundle.name, report)
            st.rerun()  # redraw counts, categories and the table with the imported products
        except Exception as err:
            webapp.show_error(err, what=f"Could not import {bundle.name}")
    if "catalog_import_report" in st.session_state:
        import_report(*st.session_state["catalog_import_report"])


def import_report(source: str, report) -> None:
    """The last import's counts, and why each item was skipped, left out or failed."""
    st.markdown(f"**Last import: {plain(source)}**")
    with st.container(horizontal=True, gap="small"):  # wraps on a phone instead of stacking
        st.metric("Imported", len(report.imported), border=True, width="content")
        st.metric("Skipped (duplicates)", len(report.duplicates), border=True, width="content")
        if report.ignored:
            st.metric("Not images", len(report.ignored), border=True, width="content",
                      help="Files in the zip or folder that are not photos (a README, a link): left out.")
        st.metric("Failed", len(report.failed), border=True, width="content")
    for title, issues, open_ in (
        (f"Why {plural(len(report.failed), 'item')} failed", report.failed, True),
        (f"Skipped {plural(len(report.duplicates), 'duplicate')}", report.duplicates, False),
        (f"Left out {plural(len(report.ignored), 'file')} that {'is' if len(report.ignored) == 1 else 'are'} "
         "not a photo", report.ignored, False),
    ):
        if issues:
            with st.expander(title, expanded=open_):
                for issue in issues:
                    st.markdown(f"- {code(issue.source)}: {plain(issue.reason)}")


# --------------------------------------------------------------------------------------------- browse


def browse(matcher, categories: list[str], total: int, *, allowed: bool) -> None:
    if not total:
        st.info(
            "No products yet: load the sample products above, add one in the first tab, or import a zip or CSV."
            if allowed else "No products yet.",
            icon=":material/info:",
        )
        return
    page = products_table(matcher, categories, total)
    if not page.items:
        return
    product = picked_product(page.items, allowed)
    product_photos(matcher, product, allowed)
    if not allowed:
        return  # nothing below but edits
    add_photos(matcher, product)
    edit_product(matcher, product)
    delete_product(matcher, product)


def products_table(matcher, categories: list[str], total: int):
    """The filters, one page of products and the pager; the page drawn."""
    left, right = st.columns(2)
    shown_categories = left.multiselect("Category", categories, placeholder="All categories",
                                        key="catalog_filter_categories")
    name_query = right.text_input("Name contains", placeholder="Filter by name", key="catalog_filter_name")
    # A new filter starts at its first page.
    filters = (tuple(shown_categories), name_query.strip())
    if st.session_state.get("catalog_filters") != filters:
        st.session_state["catalog_filters"] = filters
        st.session_state["catalog_offset"] = 0
    offset = st.session_state.get("catalog_offset", 0)
    page = webapp.catalog_or_stop(
        lambda: matcher.page_products(
            offset=offset, limit=PAGE_SIZE, categories=shown_categories, name_contains=name_query
        )
    )
    st.caption(page_caption(page, total))
    st.dataframe(
        product_rows(page.items, webapp.picture_and_key),
        hide_index=True,
        width="stretch",
        column_config={
            "picture": st.column_config.ImageColumn("Picture", width="small"),
            "name": st.column_config.TextColumn("Name", width="medium"),
            "category": "Category",
            "price": "Price",
            "photos": "Photos",
            "id": "Id",
            "added": "Added",
        },
    )
    if page.offset or page.has_more:  # a pager only where there is more than one page
        with st.container(horizontal=True, gap="small"):
            if st.button("Previous page", icon=":material/navigate_before:", disabled=page.offset == 0):
                st.session_state["catalog_offset"] = max(0, page.offset - PAGE_SIZE)
                st.rerun()
            if st.button("Next page", icon=":material/navigate_next:", disabled=not page.has_more):
                st.session_state["catalog_offset"] = page.offset + PAGE_SIZE
                st.rerun()
    return page


def picked_product(items, allowed: bool):
    by_id = {p.id: p for p in items}
    if "catalog_reselect" in st.session_state:
        # After a rename the browser still holds the old label as the choice: choosing the product again
        # sends the new one (a widget's value can only be set before it is drawn, hence this rerun's flag).
        st.session_state["catalog_selected"] = st.session_state.pop("catalog_reselect")
    picked = st.selectbox(
        "Edit or delete" if allowed else "Show a product",
        list(by_id),
        format_func=lambda pid: f"{by_id[pid].name} · {by_id[pid].category} ({pid})",
        key="catalog_selected",
    )
    return by_id.get(picked) or items[0]


def product_photos(matcher, product, allowed: bool) -> None:
    """The product's photos, each removable (but the last) by a session that may change the catalog."""
    photos_head, similar = st.columns([3, 1], vertical_alignment="center")
    photos_head.markdown(f"**Photos of {plain(product.name)}** ({len(product.photos)})")
    if similar.button("More like this", icon=":material/interests:", key="catalog_more_like_this",
                      help="Open Search with the products that look most like this one", width="stretch"):
        st.session_state[SEARCH_SIMILAR] = product.id  # what the Search page's result cards set too
        st.switch_page(webapp.SEARCH_PAGE)
    with st.container(horizontal=True, wrap=True, gap="small"):
        for number, photo in enumerate(product.photos, 1):
            with st.container(border=True, width=webapp.CARD_WIDTH):
                picture = webapp.product_picture(product, photo.key)
                if picture is not None:
                    st.image(picture, width="stretch", alt=f"{product.name}, photo {number}")
                st.caption(f"Photo {number}" + (" · shown in lists" if number == 1 else ""))
                if allowed and len(product.photos) > 1 and st.button(
                    "Remove", key=f"remove_{photo.key}", icon=":material/delete:",
                    help="Remove this photo (its file and its vector); the product keeps its other photos.",
                ):
                    try:
                        matcher.remove_photo(product.id, photo.key)
                        st.toast(f"Removed photo {number} of {plain(product.name)}.", icon=":material/delete:")
                        st.rerun()
                    except Exception as err:
                        webapp.show_error(err, what="Could not remove the photo")


def add_photos(matcher, product) -> None:
    refused = st.session_state.pop("catalog_photos_refused", None)
    if refused is not None and refused[0] == product.id:  # said once, above a fresh uploader
        webapp.show_error(refused[1], what=f"Could not add photos to {product.name}")
        st.caption("None of them was added: choose the photos again, without the one refused.")
    with st.form(f"add_photos_{product.id}_{st.session_state.get('catalog_photo_form', 0)}"):
        more = st.file_uploader(
            "Add photos", type=list(IMAGE_UPLOAD_TYPES), accept_multiple_files=True,
            help="More photos of this product from other sides or in other light make matching surer.",
        )
        if st.form_submit_button("Add these photos", icon=":material/add_photo_alternate:"):
            if not more:
                st.error("Choose one or more photos to add.", icon=":material/error:")
            else:
                try:
                    webapp.ensure_model(matcher)
                    with st.spinner(f"Adding {plural(len(more), 'photo')}…"):
                        matcher.add_photos(product.id, [(f.getvalue(), f.name) for f in more])
                    st.session_state["catalog_photo_form"] = st.session_state.get("catalog_photo_form", 0) + 1
                    st.toast(f"Added {plural(len(more), 'photo')} to {plain(product.name)}.",
                             icon=":material/check_circle:")
                    st.rerun()
                except Exception as err:  # said after the rerun, above an empty uploader
                    # A fresh uploader: the refused photo must not stay there to be sent again.
                    st.session_state["catalog_photo_form"] = st.session_state.get("catalog_photo_form", 0) + 1
                    st.session_state["catalog_photos_refused"] = (product.id, err)
                    st.rerun()


def edit_product(matcher, product) -> None:
    with st.form(f"edit_{product.id}"):
        st.markdown(f"**Edit {plain(product.name)}**")
        new_name = st.text_input("Name", value=product.name, max_chars=spec("name").max_length)
        left, right = st.columns(2)
        new_category = left.text_input("Category", value=product.category, max_chars=spec("category").max_length)
        new_price = right.number_input(
            "Price", min_value=float(spec("price").minimum), value=product.price, step=0.01, format="%.2f",
            help="Leave empty for no price.",
        )
        new_description = st.text_area("Description", value=product.description or "", height=80)
        save = st.form_submit_button("Save changes", icon=":material/save:")
    if not save:
        return
    fields = changed_fields(
        product, name=new_name, category=new_category, price=new_price, description=new_description
    )
    if not fields:
        st.info("Nothing changed.", icon=":material/info:")
        return
    try:
        matcher.update_product(product.id, **fields)
        st.toast(f"Saved {plain(new_name.strip())}.", icon=":material/check_circle:")
        st.session_state["catalog_reselect"] = product.id  # the dropdown shows the new name
        st.rerun()
    except Exception as err:
        webapp.show_error(err, what=f"Could not save {product.name}")


def delete_product(matcher, product) -> None:
    """A delete button, then a confirmation that says what goes with the product."""
    if st.session_state.get("catalog_confirm_delete") != product.id:
        if st.button(f"Delete {plain(product.name)}…", icon=":material/delete:"):
            st.session_state["catalog_confirm_delete"] = product.id
            st.rerun()
        return
    st.warning(
        f"Delete **{plain(product.name)}** ({format_price(product.price) or 'no price'}, "
        f"{plain(product.category)})? Its {plural(len(product.photos), 'photo')} and thumbnails are "
        "removed too. This cannot be undone.",
        icon=":material/warning:",
    )
    yes, no = st.columns(2)
    if yes.button("Yes, delete", type="primary", icon=":material/delete_forever:"):
        st.session_state.pop("catalog_confirm_delete", None)
        try:
            matcher.delete_product(product.id)
            if st.session_state.get("catalog_last_added") == product.id:
                st.session_state.pop("catalog_last_added")
            st.toast(f"Deleted {plain(product.name)}.", icon=":material/delete:")
            st.rerun()
        except Exception as err:
            webapp.show_error(err, what=f"Could not delete {product.name}")
    if no.button("Cancel"):
        st.session_state.pop("catalog_confirm_delete", None)
        st.rerun()


main()
