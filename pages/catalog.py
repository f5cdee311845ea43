"""Catalog: add one product, import many (zip or CSV), browse, edit and delete."""

import streamlit as st

from vpm import webapp
from vpm.catalog import categories_of
from vpm.presentation import (
    code,
    plain,
    IMAGE_UPLOAD_TYPES,
    add_form_problems,
    changed_fields,
    filter_products,
    format_price,
    pick_category,
    plural,
    product_rows,
)

st.title(":material/inventory_2: Catalog")

settings = webapp.get_settings()
matcher = webapp.get_matcher()

products = webapp.catalog_or_stop(matcher.list_products)
categories = categories_of(products)

st.caption(
    f"{plural(len(products), 'product')} in {plural(len(categories), 'category', 'categories')} · "
    f"{webapp.storage_summary(settings)}"
)

add_tab, import_tab, browse_tab = st.tabs(
    [":material/add_photo_alternate: Add a product", ":material/upload_file: Bulk import", ":material/table: Products"]
)

# ------------------------------------------------------------------------------------------------ add

with add_tab:
    with st.form("add_product", clear_on_submit=True, enter_to_submit=False):
        photo = st.file_uploader(
            "Product photo",
            type=list(IMAGE_UPLOAD_TYPES),
            help=f"JPEG, PNG, WebP, GIF, BMP, TIFF or HEIC, up to {settings.vpm_max_upload_mb} MB.",
        )
        name = st.text_input("Name", max_chars=200, placeholder="e.g. Trail running shoe")
        left, right = st.columns(2)
        chosen = left.selectbox(
            "Category",
            categories,
            index=None,
            placeholder="Choose a category" if categories else "No categories yet: type one",
            disabled=not categories,
        )
        typed = right.text_input("…or a new category", max_chars=100, placeholder="e.g. Shoes")
        left, right = st.columns(2)
        price = left.number_input("Price (optional)", min_value=0.0, value=None, step=0.01, format="%.2f")
        description = st.text_area("Description (optional)", max_chars=5000, height=80)
        submitted = st.form_submit_button("Add product", type="primary", icon=":material/add:")

    if submitted:
        category = pick_category(chosen, typed)
        problems = add_form_problems(photo is not None, name, category)
        if problems:
            st.error(problems, icon=":material/error:")
        else:
            try:
                webapp.ensure_model(matcher)
                with st.spinner(f"Adding {name.strip()}…"):
                    product = matcher.add_product(
                        photo.getvalue(), photo.name, name=name, category=category, price=price,
                        description=description or None,
                    )
                st.session_state["catalog_last_added"] = product.id
                st.session_state.pop("catalog_confirm_delete", None)
                st.rerun()  # redraw counts, categories and the table with the new product
            except Exception as err:
                webapp.show_error(err, what=f"Could not add {photo.name}")

    last_added = st.session_state.get("catalog_last_added")
    if last_added:
        try:
            view = matcher.view(matcher.get_product(last_added))
        except Exception:
            view = None  # deleted since; nothing to show
        if view is not None:
            st.success(f"Added **{plain(view.product.name)}**. It is searchable now.", icon=":material/check_circle:")
            card, about = st.columns([1, 3])
            with card:
                with st.container(border=True, width=webapp.CARD_WIDTH):
                    webapp.product_card(view)
            with about:
                st.markdown(f"**Id:** {code(view.product.id)}")
                if view.image_url:
                    st.markdown(f"**Image URL:** {code(view.image_url)}")
                st.page_link(webapp.SEARCH_PAGE, label="Search with a photo", icon=":material/image_search:")

# --------------------------------------------------------------------------------------------- import

with import_tab:
    st.markdown(
        "Upload a **.zip** of images with one folder per category (`Shoes/red_trail_shoe.jpg` becomes "
        "*Red Trail Shoe* in *Shoes*), or a **.csv** with columns `image,name,category` and optionally "
        "`price,id,description`, where `image` is a link to the picture. Pictures already in the catalog are "
        "skipped, so running the same import twice is safe."
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
        source, report = st.session_state["catalog_import_report"]
        st.markdown(f"**Last import: {plain(source)}**")
        counts = st.columns(3)
        counts[0].metric("Imported", len(report.imported), border=True)
        counts[1].metric("Skipped (duplicates)", len(report.skipped), border=True)
        counts[2].metric("Failed", len(report.failed), border=True)
        if report.failed:
            with st.expander(f"Why {plural(len(report.failed), 'item')} failed", expanded=True):
                for issue in report.failed:
                    st.markdown(f"- {code(issue.source)}: {plain(issue.reason)}")
        if report.skipped:
            with st.expander(f"Skipped {plural(len(report.skipped), 'item')}"):
                for issue in report.skipped:
                    st.markdown(f"- {code(issue.source)}: {plain(issue.reason)}")

# --------------------------------------------------------------------------------------------- browse

with browse_tab:
    if not products:
        st.info("No products yet: add one or import a zip or CSV in the other tabs.", icon=":material/info:")
    else:
        left, right = st.columns(2)
        shown_categories = left.multiselect("Category", categories, placeholder="All categories")
        name_query = right.text_input("Name contains", placeholder="Filter by name")
        shown = filter_products(products, shown_categories, name_query)
        st.caption(f"Showing {len(shown)} of {plural(len(products), 'product')}.")
        st.dataframe(
            product_rows(shown, webapp.picture_and_key),
            hide_index=True,
            width="stretch",
            column_config={
                "picture": st.column_config.ImageColumn("Picture", width="small"),
                "name": st.column_config.TextColumn("Name", width="medium"),
                "category": "Category",
                "price": "Price",
                "id": "Id",
                "added": "Added",
            },
        )

        if shown:
            by_id = {p.id: p for p in shown}
            picked = st.selectbox(
                "Edit or delete",
                list(by_id),
                format_func=lambda pid: f"{by_id[pid].name} · {by_id[pid].category} ({pid})",
                key="catalog_selected",
            )
            product = by_id[picked]
            with st.form(f"edit_{product.id}"):
                st.markdown(f"**Edit {plain(product.name)}**")
                new_name = st.text_input("Name", value=product.name, max_chars=200)
                left, right = st.columns(2)
                new_category = left.text_input("Category", value=product.category, max_chars=100)
                new_price = right.number_input(
                    "Price", min_value=0.0, value=product.price, step=0.01, format="%.2f",
                    help="Leave empty for no price.",
                )
                new_description = st.text_area("Description", value=product.description or "", height=80)
                save = st.form_submit_button("Save changes", icon=":material/save:")
            if save:
                fields = changed_fields(
                    product, name=new_name, category=new_category, price=new_price, description=new_description
                )
                if not fields:
                    st.info("Nothing changed.", icon=":material/info:")
                else:
                    try:
                        matcher.update_product(product.id, **fields)
                        st.toast(f"Saved {plain(new_name.strip())}.", icon=":material/check_circle:")
                        st.rerun()
                    except Exception as err:
                        webapp.show_error(err, what=f"Could not save {product.name}")

            pending = st.session_state.get("catalog_confirm_delete")
            if pending != product.id:
                if st.button(f"Delete {plain(product.name)}…", icon=":material/delete:"):
                    st.session_state["catalog_confirm_delete"] = product.id
                    st.rerun()
            else:
                st.warning(
                    f"Delete **{plain(product.name)}** ({format_price(product.price) or 'no price'}, {plain(product.category)})? "
                    "Its image and thumbnail are removed too. This cannot be undone.",
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
