"""Storage browser: the files behind the catalog, local folder or S3 bucket alike.

Read-only, except one explicit, confirmed action: deleting orphan files the consistency report found.
"""

import json

import streamlit as st

from vpm import webapp
from vpm.consistency import (
    RECENT_SECONDS,
    breadcrumbs,
    consistency_report,
    delete_orphans,
    object_rows,
    parent_prefix,
    preview_kind,
)
from vpm.images import ImageError, make_thumbnail
from vpm.presentation import code, format_bytes, plain, plural, table_rows
from vpm.storage import StorageError

PAGE_SIZE = 100
PREVIEW_MAX_BYTES = 25 * 1024 * 1024  # larger files are listed, not downloaded into the page
PREVIEW_SIDE = 800  # px: the preview's longest side

st.title(":material/folder_open: Storage browser")

settings = webapp.get_settings()
matcher = webapp.get_matcher()
storage = matcher.storage
st.caption(f"Browsing {webapp.storage_summary(settings)}. Nothing here changes your files unless you confirm.")

state = st.session_state
state.setdefault("browse_prefix", "")
state.setdefault("browse_tokens", [None])  # token of each page seen so far; the last is the current page


def go_to(prefix: str) -> None:
    state.browse_prefix = prefix
    state.browse_tokens = [None]
    state.pop("browse_preview", None)


def next_page(token: str) -> None:
    state.browse_tokens = [*state.browse_tokens, token]


def previous_page() -> None:
    state.browse_tokens = state.browse_tokens[:-1] or [None]


files_tab, catalog_tab, check_tab = st.tabs(
    [":material/folder: Files", ":material/table: Catalog tables", ":material/rule: Consistency"]
)

# ------------------------------------------------------------------------------------------------- files
with files_tab:
    prefix = state.browse_prefix
    with st.container(horizontal=True, gap="small"):
        crumbs = breadcrumbs(prefix)
        for i, (label, crumb_prefix) in enumerate(crumbs):
            current = i == len(crumbs) - 1
            st.button(
                label,
                key=f"crumb_{crumb_prefix}",
                icon=":material/home:" if i == 0 else ":material/chevron_right:",
                type="primary" if current else "secondary",
                disabled=current,
                on_click=go_to,
                args=(crumb_prefix,),
            )

    page_number = len(state.browse_tokens)
    try:
        listing = storage.list(prefix, delimiter="/", page_size=PAGE_SIZE, token=state.browse_tokens[-1])
    except StorageError as err:
        webapp.show_error(err, what="Cannot list this folder")
        listing = None

    if listing is not None:
        if listing.prefixes:
            with st.container(horizontal=True, gap="small"):
                for folder in listing.prefixes:
                    st.button(
                        folder[len(prefix):],
                        key=f"folder_{folder}",
                        icon=":material/folder:",
                        on_click=go_to,
                        args=(folder,),
                    )
        if prefix:
            st.button("Up one level", icon=":material/arrow_upward:", on_click=go_to, args=(parent_prefix(prefix),))

        paged = page_number > 1 or bool(listing.next_token)
        if listing.objects or not listing.prefixes:
            shown = plural(len(listing.objects), "file")
            more = " (more on the next page)" if listing.next_token else ""
            page_label = f"Page {page_number} · " if paged else ""
            st.caption(f"{page_label}{shown} in {code(prefix or '/')}{more}")
        owners: dict[str, tuple[str, str]] = {}
        if listing.objects:
            try:  # which product each file belongs to, for the table; a listing never fails for want of it
                owners = matcher.catalog.owners_of_keys([o.key for o in listing.objects])
            except Exception as err:  # the names are a convenience
                webapp.log.warning("cannot name the products of %s: %s", prefix, err)
            rows = object_rows(listing.objects, prefix)
            for row, info in zip(rows, listing.objects, strict=True):
                row["product"] = owners[info.key][1] if info.key in owners else ""
            table = st.dataframe(
                rows,
                hide_index=True,
                width="stretch",
                column_order=("name", "product", "size", "last modified", "content type"),
                column_config={"name": st.column_config.TextColumn("name", width="medium"),
                               "product": st.column_config.TextColumn("product", width="medium")},
                on_select="rerun",
                selection_mode="single-row",
                key=f"browse_table_{prefix}_{page_number}",
            )
            picked_rows = table.selection.rows if table is not None else []
            picked = listing.objects[picked_rows[0]].key if picked_rows else None
            if picked != state.get("browse_last_pick"):  # a click on a row (a new one) previews it
                state.browse_last_pick = picked
                if picked is not None:
                    state.browse_preview = picked
        elif not listing.prefixes:
            st.info("This folder is empty. Files appear here as products are added on the Catalog page.",
                    icon=":material/folder_off:")

        if paged:  # a pager only where there is more than one page
            with st.container(horizontal=True, gap="small"):
                st.button(
                    "Previous page",
                    icon=":material/navigate_before:",
                    disabled=page_number == 1,
                    on_click=previous_page,
                )
                st.button(
                    "Next page",
                    icon=":material/navigate_next:",
                    disabled=not listing.next_token,
                    on_click=next_page,
                    args=(listing.next_token,),
                )

        if listing.objects:
            st.subheader("Preview")
            by_key = {o.key: o for o in listing.objects}
            if state.get("browse_preview") not in (None, *by_key):
                state.pop("browse_preview")
            choice = st.selectbox(
                "File to preview (or click a row above)",
                [None, *by_key],
                format_func=lambda k: "Choose a file…" if k is None else k[len(prefix):],
                key="browse_preview",
            )
            if choice in by_key:
                info = by_key[choice]
                kind = preview_kind(info)
                owner = f" · {plain(owners[choice][1])}" if choice in owners else ""
                st.caption(f"{code(choice)}{owner} · {format_bytes(info.size)}")
                if info.size > PREVIEW_MAX_BYTES:
                    st.info(f"Too large to preview here ({format_bytes(info.size)}).", icon=":material/info:")
                elif kind == "none":
                    st.info("No preview for this kind of file.", icon=":material/info:")
                else:
                    try:
                        data = storage.get(choice)
                    except StorageError as err:
                        webapp.show_error(err, what="Cannot read this file")
                        data = None
                    if data is not None and kind == "image":
                        try:
                            # A bounded preview: never hand a full-size decode to Streamlit to re-encode.
                            picture = make_thumbnail(matcher.decode(data, choice).image, PREVIEW_SIDE)
                        except ImageError as err:  # says what is wrong with the file
                            webapp.show_error(err)
                        else:
                            st.image(picture, caption=choice, width="content")
                    elif data is not None and kind == "json":
                        try:
                            st.json(json.loads(data), expanded=1)
                        except (UnicodeDecodeError, json.JSONDecodeError) as err:
                            st.error(f"Not valid JSON: {plain(err)}", icon=":material/error:")
                    elif data is not None:
                        st.code(data[:20_000].decode("utf-8", errors="replace"), language=None)

# ---------------------------------------------------------------------------------------- catalog tables
with catalog_tab:
    st.caption(
        f"The catalog lives in LanceDB tables in {code(matcher.where.description)}: one row a product, one vector "
        "a photo for each model. Their files sit under the metadata prefix; the files tab lists them."
    )
    try:
        tables = matcher.table_summaries()
    except Exception as err:  # a table the engine cannot open: the engine's own message says which and why
        webapp.show_error(err, what="The catalog tables cannot be read")
    else:
        if not tables:
            st.info("No catalog yet: add products on the Catalog page.", icon=":material/info:")
        else:
            st.dataframe(table_rows(tables), hide_index=True, width="stretch")
            st.caption("Small fragments are merged and old versions pruned automatically as products are added.")

# ------------------------------------------------------------------------------------------ consistency
with check_tab:
    st.caption(
        "Compares the catalog with the files: photos whose file is missing, files no product uses "
        "(orphans), and photos without a search vector for the active model."
    )
    if st.button("Run the consistency check", icon=":material/rule:", type="primary"):
        try:
            with st.spinner("Listing files and reading the catalog…"):
                state.consistency_report = consistency_report(matcher)
        except Exception as err:
            webapp.show_error(err, what="The check could not run")
            state.pop("consistency_report", None)

    result = state.pop("orphan_delete_result", None)
    if result is not None:
        (st.success if result.deleted else st.warning)(result.summary().capitalize() + ".", icon=":material/delete:")
        if result.deleted:
            st.markdown("Deleted:\n" + "\n".join(f"- {code(k)}" for k in result.deleted))
        if result.kept:
            st.markdown("Kept:\n" + "\n".join(f"- {code(k)}: {plain(why)}" for k, why in result.kept))

    report = state.get("consistency_report")
    if report is not None:
        with st.container(horizontal=True, gap="small"):
            # As wide as their numbers: a fixed narrow tile cut "44,512" to "44...".
            st.metric("Products", f"{report.products:,}", border=True, width="content")
            st.metric("Images", f"{report.image_files:,}", border=True, width="content")
            st.metric("Thumbnails", f"{report.thumbnail_files:,}", border=True, width="content")
        if report.ok:
            st.success("Storage and catalog agree.", icon=":material/check_circle:")

        st.subheader(f"Missing files ({len(report.missing)})")
        if report.missing:
            st.error(
                f"{plural(len(report.missing), 'file')} that products point at cannot be found. Restore them, "
                "or delete and re-add those products on the Catalog page.",
                icon=":material/broken_image:",
            )
            st.dataframe(report.missing_rows(), hide_index=True, width="stretch")
        else:
            st.caption("Every product's image and thumbnail is there.")

        st.subheader(f"Orphan files ({len(report.orphans)})")
        if not report.catalog_exists and report.orphans:
            st.warning(
                f"`{settings.s3_metadata_key}` does not exist, so every file looks orphaned. Restore the "
                "catalog before deleting anything.",
                icon=":material/warning:",
            )
        if report.orphans:
            st.caption(f"Files no product references: {format_bytes(report.orphan_bytes)} in all.")
            st.dataframe(report.orphan_rows(), hide_index=True, width="stretch")
        if report.orphans and report.catalog_exists and webapp.may_change():
            recent = [o for o in report.orphans if o.recent]
            include_recent = False
            minutes = RECENT_SECONDS // 60
            if recent:
                include_recent = st.checkbox(
                    f"Also delete the {plural(len(recent), 'file')} written in the last {minutes} minutes",
                    help="An add writes its photo before the product that points at it, so a brand-new file may "
                    "belong to a product being added right now.",
                )
            doomed = [o for o in report.orphans if include_recent or not o.recent]
            kept = len(report.orphans) - len(doomed)
            if not doomed:
                st.caption(
                    f"Nothing to delete yet: {'the orphan was' if kept == 1 else f'all {kept} orphans were'} written "
                    f"in the last {minutes} minutes and may belong to a product being added right now."
                )
            else:
                keeping = (
                    f", and {plural(kept, 'file')} written in the last {minutes} minutes will be kept "
                    f"({'it' if kept == 1 else 'they'} may belong to a product being added right now)" if kept else ""
                )
                confirmed = st.checkbox(
                    f"I understand that {plural(len(doomed), 'orphan file')} will be deleted permanently{keeping}. "
                    "Each is re-checked against the catalog first.",
                    key="confirm_orphan_delete",
                )
                if st.button(f"Delete {plural(len(doomed), 'orphan file')}", icon=":material/delete:",
                             disabled=not confirmed):
                    try:
                        outcome = delete_orphans(
                            matcher,
                            [o.key for o in doomed],
                            report.orphan_keys,
                            min_age_seconds=0 if include_recent else RECENT_SECONDS,
                        )
                    except Exception as err:
                        webapp.show_error(err)
                    else:
                        state.orphan_delete_result = outcome
                        state.consistency_report = consistency_report(matcher)
                        state.pop("confirm_orphan_delete", None)
                        st.rerun()
        elif not report.orphans:
            st.caption("Every file under the image and thumbnail folders belongs to a product.")

        st.subheader("Search vectors")
        vectors = report.vectors
        if vectors.state == "ok":
            st.caption(vectors.detail)
        elif vectors.state == "missing":
            st.warning(vectors.detail, icon=":material/warning:")
            st.caption("Products without a vector: " + ", ".join(f"`{i}`" for i in vectors.missing_product_ids[:50]))
        else:
            st.info(f"Unknown: {vectors.detail}", icon=":material/help:")
