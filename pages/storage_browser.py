"""Storage browser: the files behind the catalog, local folder or S3 bucket alike.

Read-only, except the repairs of the Consistency tab, each confirmed first by a signed-in user: setting a damaged
table's unreadable versions aside, deleting orphan files, embedding what is missing (vpm/core/repair.py decides).
"""

import json

import streamlit as st

from vpm.core import repair
from vpm.core.consistency import (
    RECENT_SECONDS,
    breadcrumbs,
    object_rows,
    parent_prefix,
    preview_kind,
)
from vpm.core.images import ImageError, make_thumbnail
from vpm.core.presentation import code, format_bytes, plain, plural, table_rows
from vpm.core.storage import StorageError
from vpm.faces import webapp

PAGE_SIZE = 100
PREVIEW_MAX_BYTES = 25 * 1024 * 1024  # larger files are listed, not downloaded into the page
PREVIEW_SIDE = 800  # px: the preview's longest side

STATUS_BOX = {"pass": st.success, "warn": st.warning, "fail": st.error}
STATUS_ICON = {"pass": ":material/check_circle:", "warn": ":material/warning:", "fail": ":material/error:"}

state = st.session_state


def main() -> None:
    st.title(":material/folder_open: Storage browser")
    settings = webapp.get_settings()
    matcher = webapp.get_matcher()
    st.caption(f"Browsing {webapp.storage_summary(settings)}. Nothing here changes your files unless you confirm.")
    state.setdefault("browse_prefix", "")
    state.setdefault("browse_tokens", [None])  # token of each page seen so far; the last is the current page

    files_tab, catalog_tab, check_tab = st.tabs(
        [":material/folder: Files", ":material/table: Catalog tables", ":material/rule: Consistency"]
    )
    with files_tab:
        files(matcher)
    with catalog_tab:
        catalog_tables(matcher)
    with check_tab:
        consistency(matcher, settings)


# ------------------------------------------------------------------------------------------------- files


def go_to(prefix: str) -> None:
    state.browse_prefix = prefix
    state.browse_tokens = [None]
    state.pop("browse_preview", None)


def next_page(token: str) -> None:
    state.browse_tokens = [*state.browse_tokens, token]


def previous_page() -> None:
    state.browse_tokens = state.browse_tokens[:-1] or [None]


def files(matcher) -> None:
    """One folder a page at a time: where it is, its sub-folders, its files (with their products), a preview."""
    prefix = state.browse_prefix
    crumbs(prefix)
    page_number = len(state.browse_tokens)
    try:
        listing = matcher.files.list_folder(prefix, page_size=PAGE_SIZE, token=state.browse_tokens[-1])
    except StorageError as err:
        webapp.show_error(err, what="Cannot list this folder")
        return
    folders(listing, prefix)
    paged = page_number > 1 or bool(listing.next_token)
    owners = file_table(matcher, listing, prefix, page_number, paged)
    if paged:  # a pager only where there is more than one page
        pager(listing, page_number)
    if listing.objects:
        preview(matcher, listing, prefix, owners)


def crumbs(prefix: str) -> None:
    with st.container(horizontal=True, gap="small"):
        trail = breadcrumbs(prefix)
        for i, (label, crumb_prefix) in enumerate(trail):
            current = i == len(trail) - 1
            st.button(
                label,
                key=f"crumb_{crumb_prefix}",
                icon=":material/home:" if i == 0 else ":material/chevron_right:",
                type="primary" if current else "secondary",
                disabled=current,
                on_click=go_to,
                args=(crumb_prefix,),
            )


def folders(listing, prefix: str) -> None:
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


def file_table(matcher, listing, prefix: str, page_number: int, paged: bool) -> dict[str, tuple[str, str]]:
    """The files of this page with the product each belongs to; a click on a row previews it. Returns the owners."""
    if listing.objects or not listing.prefixes:
        shown = plural(len(listing.objects), "file")
        more = " (more on the next page)" if listing.next_token else ""
        page_label = f"Page {page_number} · " if paged else ""
        st.caption(f"{page_label}{shown} in {code(prefix or '/')}{more}")
    owners: dict[str, tuple[str, str]] = {}
    if not listing.objects:
        if not listing.prefixes:
            st.info("This folder is empty. Files appear here as products are added on the Catalog page.",
                    icon=":material/folder_off:")
        return owners
    try:  # which product each file belongs to, for the table; a listing never fails for want of it
        owners = matcher.files.owners([o.key for o in listing.objects])
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
    return owners


def pager(listing, page_number: int) -> None:
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


def preview(matcher, listing, prefix: str, owners: dict[str, tuple[str, str]]) -> None:
    """The chosen file: a bounded picture, JSON, or the start of its text."""
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
    if choice not in by_key:
        return
    info = by_key[choice]
    kind = preview_kind(info)
    owner = f" · {plain(owners[choice][1])}" if choice in owners else ""
    st.caption(f"{code(choice)}{owner} · {format_bytes(info.size)}")
    if info.size > PREVIEW_MAX_BYTES:
        st.info(f"Too large to preview here ({format_bytes(info.size)}).", icon=":material/info:")
        return
    if kind == "none":
        st.info("No preview for this kind of file.", icon=":material/info:")
        return
    try:
        data = matcher.files.read(choice)
    except StorageError as err:
        webapp.show_error(err, what="Cannot read this file")
        return
    if kind == "image":
        try:
            # A bounded preview: never hand a full-size decode to Streamlit to re-encode.
            picture = make_thumbnail(matcher.decode(data, choice).image, PREVIEW_SIDE)
        except ImageError as err:  # says what is wrong with the file
            webapp.show_error(err)
        else:
            st.image(picture, caption=choice, width="content")
    elif kind == "json":
        try:
            st.json(json.loads(data), expanded=1)
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            st.error(f"Not valid JSON: {plain(err)}", icon=":material/error:")
    else:
        st.code(data[:20_000].decode("utf-8", errors="replace"), language=None)


# ---------------------------------------------------------------------------------------- catalog tables


def catalog_tables(matcher) -> None:
    st.caption(
        f"The catalog lives in LanceDB tables in {code(matcher.files.description)}: one row a product, one vector "
        "a photo for each model. Their files sit under the metadata prefix; the files tab lists them."
    )
    try:
        tables = matcher.table_summaries()
    except Exception as err:  # a table the engine cannot open: the engine's own message says which and why
        webapp.show_error(err, what="The catalog tables cannot be read")
        st.caption("The Consistency tab checks every table and, for a signed-in user, sets damaged versions aside.")
        return
    if not tables:
        st.info("No catalog yet: add products on the Catalog page.", icon=":material/info:")
    else:
        st.dataframe(table_rows(tables), hide_index=True, width="stretch")
        st.caption("Small fragments are merged and old versions pruned automatically as products are added.")


# ------------------------------------------------------------------------------------------ consistency


def consistency(matcher, settings) -> None:
    st.caption(
        "Checks that every catalog table opens, compares the catalog with the files (photos whose file is missing, "
        "files no product uses), and finds photos without a search vector or keypoints. The same verdict as "
        "python -m vpm check; a signed-in user can repair what it finds here."
    )
    if st.button("Run the consistency check", icon=":material/rule:", type="primary"):
        try:
            with st.spinner("Opening the tables, listing files and reading the catalog…"):
                state.check_result = repair.check(matcher)
        except Exception as err:
            webapp.show_error(err, what="The check could not run")
            state.pop("check_result", None)

    show_outcomes()
    found = state.get("check_result")
    if found is None:
        return
    allowed = webapp.may_change()
    for c in found.checks:
        STATUS_BOX[c.status](plain(f"{c.name[:1].upper()}{c.name[1:]}: {c.detail}"), icon=STATUS_ICON[c.status])
        if c.fix and c.status != "pass":
            st.caption(plain(f"Fix: {c.fix}"))
    if found.set_asides:
        st.caption("Set aside earlier (kept): " + ", ".join(code(r.folder) for r in found.set_asides))
    if found.damaged:
        show_damaged_tables(matcher, found, allowed)
    if found.report is not None:
        show_report(matcher, settings, found, allowed)


def show_report(matcher, settings, found, allowed: bool) -> None:
    """Storage against the catalog: counts, missing files, orphans, vectors and keypoints, and what can be mended."""
    report = found.report
    with st.container(horizontal=True, gap="small"):
        # As wide as their numbers: a fixed narrow tile cut "44,512" to "44...".
        st.metric("Products", f"{report.products:,}", border=True, width="content")
        st.metric("Images", f"{report.image_files:,}", border=True, width="content")
        st.metric("Thumbnails", f"{report.thumbnail_files:,}", border=True, width="content")
    if found.status == "pass" and report.ok:
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

    show_orphans(matcher, settings, found, report, allowed)
    show_coverage("Search vectors", report.vectors, "a vector")
    if found.keypoints is not None:
        show_coverage("Keypoints", found.keypoints, "keypoints")
    show_embedding(matcher, found, allowed)


def show_outcomes() -> None:
    """What the last repair action did, once, above the fresh check it was followed by."""
    for result in state.pop("set_aside_results", []):
        st.success(plain(result.summary()[:1].upper() + result.summary()[1:]) + ". The versions set aside are kept "
                   f"there, never deleted: {code(result.folder)}.", icon=":material/inventory_2:")
    failed = state.pop("set_aside_failed", None)
    if failed:
        st.error(plain(failed[:1].upper() + failed[1:]), icon=":material/error:")
    result = state.pop("orphan_delete_result", None)
    if result is not None:
        (st.success if result.deleted else st.warning)(result.summary().capitalize() + ".", icon=":material/delete:")
        if result.deleted:
            st.markdown("Deleted:\n" + "\n".join(f"- {code(k)}" for k in result.deleted))
        if result.kept:
            st.markdown("Kept:\n" + "\n".join(f"- {code(k)}: {plain(why)}" for k, why in result.kept))
    embedded = state.pop("embed_result", None)
    if embedded is not None:
        st.success(plain(embedded), icon=":material/auto_awesome:")


def show_damaged_tables(matcher, found, allowed: bool) -> None:
    st.subheader(f"Damaged tables ({len(found.damaged)})")
    for table in found.damaged:
        st.error(plain(table.problem[:1].upper() + table.problem[1:]), icon=":material/broken_image:")
    if not found.fixable:
        st.caption("Setting versions aside cannot bring these back: restore them from a backup.")
        return
    count = sum(len(t.plan.bad) for t in found.fixable)
    st.markdown("Setting the damaged versions aside would do this:\n"
                + "\n".join(f"- {plain(t.plan_line())}" for t in found.fixable))
    if not allowed:
        return
    folder = matcher.files.set_aside_folder
    confirmed = st.checkbox(
        f"I understand that {plural(count, 'version file')} will be moved to {folder} (kept there, never deleted) "
        "and that the changes they hold will no longer be in the catalog.",
        key="confirm_set_aside",
    )
    if st.button(f"Set aside {plural(count, 'damaged version')}", icon=":material/inventory_2:",
                 disabled=not confirmed):
        with st.status("Setting the damaged versions aside…", expanded=True) as box:
            try:
                state.set_aside_results = repair.set_aside_damaged(matcher, found.fixable)
            except Exception as err:  # RepairError says what state the table is in
                state.set_aside_failed = str(err)
                box.update(label="The damaged versions could not be set aside", state="error")
            state.check_result = repair.check(matcher)
        state.pop("confirm_set_aside", None)
        st.rerun()


def show_orphans(matcher, settings, found, report, allowed: bool) -> None:
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
    else:
        st.caption("Every file under the image and thumbnail folders belongs to a product.")
    if not (report.orphans and report.catalog_exists and allowed):
        return
    minutes = f"{RECENT_SECONDS / 60:g}"
    recent = [o for o in report.orphans if o.recent]
    include_recent = False
    if recent:
        include_recent = st.checkbox(
            f"Also delete the {plural(len(recent), 'file')} written in the last {minutes} minutes",
            help="An add writes its photo before the product that points at it, so a brand-new file may "
            "belong to a product being added right now.",
        )
    plan = repair.plan_orphans(matcher, report, include_recent=include_recent, records=found.set_asides)
    held = [(o, why) for o, why in plan.keep if not o.recent or include_recent]  # kept for an earlier set-aside
    young = len(plan.keep) - len(held)
    if held:
        st.caption(f"Kept whatever you choose: {plural(len(held), 'file')} written around changes set aside "
                   "earlier (they may belong to one of their products): "
                   + ", ".join(code(o.key) for o, _why in held[:20]))
    if not plan.delete:
        if young:
            st.caption(
                f"Nothing to delete yet: {'the orphan was' if young == 1 else f'all {young} orphans were'} written "
                f"in the last {minutes} minutes and may belong to a product being added right now."
            )
        return
    keeping = (
        f", and {plural(young, 'file')} written in the last {minutes} minutes will be kept "
        f"({'it' if young == 1 else 'they'} may belong to a product being added right now)" if young else ""
    )
    confirmed = st.checkbox(
        f"I understand that {plural(len(plan.delete), 'orphan file')} will be deleted permanently{keeping}. "
        "Each is re-checked against the catalog first.",
        key="confirm_orphan_delete",
    )
    if st.button(f"Delete {plural(len(plan.delete), 'orphan file')}", icon=":material/delete:", disabled=not confirmed):
        try:
            outcome = repair.delete_planned(matcher, plan, include_recent=include_recent)
        except Exception as err:
            webapp.show_error(err)
        else:
            state.orphan_delete_result = outcome
            state.check_result = repair.check(matcher)
            state.pop("confirm_orphan_delete", None)
            st.rerun()


def show_coverage(title: str, coverage, what: str) -> None:
    st.subheader(title)
    if coverage.state == "ok":
        st.caption(coverage.detail)
    elif coverage.state == "missing":
        st.warning(coverage.detail, icon=":material/warning:")
        st.caption(f"Products without {what}: " + ", ".join(f"`{i}`" for i in coverage.missing_product_ids[:50]))
    else:
        st.info(f"Unknown: {coverage.detail}", icon=":material/help:")


def show_embedding(matcher, found, allowed: bool) -> None:
    plan = repair.plan_embedding(matcher, found)
    if not plan.needed or not allowed:
        return
    st.caption(plain(plan.line()[:1].upper() + plan.line()[1:]) + ".")
    if st.button("Embed what is missing", icon=":material/auto_awesome:"):
        with st.status("Embedding what is missing…", expanded=True) as box:
            webapp.ensure_model(matcher)
            bar = st.progress(0.0, text="Starting…")

            def progress(done: int, total: int, message: str = "") -> None:
                bar.progress(min(1.0, done / total) if total else 1.0, text=message or f"{done}/{total}")

            try:
                status = repair.embed_missing(matcher, progress)
            except Exception as err:
                box.update(label="Embedding stopped", state="error")
                webapp.show_error(err)
                return
            state.embed_result = (f"Vectors for {status.vectors}/{status.photos} photos of {status.products} "
                                  f"products ({status.model_id}); keypoints and package text filled in as "
                                  "python -m vpm index does.")
            state.check_result = repair.check(matcher)
        st.rerun()


main()
