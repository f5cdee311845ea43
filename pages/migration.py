"""Migration & costs: copy the local catalog to S3 (check -> preview -> migrate -> verify) and estimate the bill.

All the work is vpm.migration's and vpm.core.costs'; this page collects the target settings for one run, keeps the
preview the person saw, and allows Migrate only while the settings still match that preview's fingerprint.
"""

import streamlit as st

from vpm.core import capacity
from vpm.core.config import ConfigError, load_settings, redact_url
from vpm.core.costs import CatalogSize, PriceError, Traffic, estimate, format_usd
from vpm.core.errors import VpmError
from vpm.core.health import overall
from vpm.core.presentation import STATUS_ICONS, STATUS_WORDS, format_bytes, format_quantity, plain, plural, sentence
from vpm.faces import webapp
from vpm.migration import (
    CONFLICT,
    MISSING,
    OVERWRITE,
    SKIP,
    UPLOAD,
    Migration,
    local_catalog_size,
    plan_fingerprint,
)
from vpm.migration.report import report_vectors_line

st.title(":material/cloud_upload: Migration & costs")

settings = webapp.get_settings()
state = st.session_state
# The bucket the app serves from now (S3 on): after migrating into it, nothing needs switching on.
serving_target = webapp.get_matcher().files.storage_description if settings.s3_enabled else None
st.caption(
    f"Copies the local catalog in `{settings.vpm_data_dir}` to an S3 bucket. It never deletes anything, skips "
    "files already there with the same content, verifies every upload, writes the products only once every "
    "file they point at is verified, and copies the search vectors last, so nothing is embedded again."
)

migrate_tab, costs_tab = st.tabs([":material/cloud_upload: Migrate", ":material/payments: Costs"])


def show_checks(checks) -> None:
    """The verdict, then what failed or warns (with the fix) in boxes, then the passes as one short list."""
    verdict = overall(checks)
    message = {
        "pass": "Ready to migrate: every check passed.",
        "warn": "Ready to migrate, with warnings: see below.",
        "fail": "Not ready: fix what failed below, then check again.",
    }[verdict]
    {"pass": st.success, "warn": st.warning, "fail": st.error}[verdict](message, icon=STATUS_ICONS[verdict])
    for check in sorted((c for c in checks if c.status != "pass"), key=lambda c: c.status != "fail"):
        with st.container(border=True):
            st.markdown(f"{STATUS_ICONS[check.status]} **{check.name}** · {STATUS_WORDS[check.status]}")
            st.markdown(plain(check.detail))
            if check.fix:
                st.caption(f"What to do: {plain(check.fix)}")
    passed = [c for c in checks if c.status == "pass"]
    if passed:
        st.markdown("  \n".join(f"{STATUS_ICONS['pass']} **{c.name}** · pass: {plain(c.detail)}" for c in passed))


def metric_row(values) -> None:
    """Metrics side by side that wrap on a phone instead of stacking one a row: (label, value, help)."""
    with st.container(horizontal=True, gap="small"):
        for label, value, help_text in values:
            st.metric(label, f"{value:,}" if isinstance(value, int) else value, help=help_text, border=True,
                      width="content")


def progress_callback(bar, verb: str):
    """Adapt migrate's progress(done_files, total_files, done_bytes, total_bytes) to a Streamlit bar."""

    def update(done_files: int, total_files: int, done_bytes: int, total_bytes: int) -> None:
        if total_bytes:
            fraction = done_bytes / total_bytes
            text = f"{verb} {done_files} of {plural(total_files, 'file')} · {format_bytes(done_bytes)} of {format_bytes(total_bytes)}"
        else:
            fraction = done_files / total_files if total_files else 1.0
            text = f"{verb} {done_files} of {plural(total_files, 'file')} · {format_bytes(done_bytes)}"
        bar.progress(min(1.0, fraction), text=text)

    return update


# -------------------------------------------------------------------------------------------- settings
allowed = True
with migrate_tab:
    # A migration writes to a bucket (and Check writes a probe): only for a session that may change things.
    allowed = webapp.may_change()
if allowed:
    with migrate_tab:
        st.subheader("1. Target bucket")
        st.caption(
            "From your configuration; changes here apply to this run only. "
            + ("The app serves the catalog from the configured bucket already." if settings.s3_enabled else
               "After migrating, put the same values in your configuration with `S3_ENABLED=true` to serve the "
               "catalog from the bucket.")
        )
        bucket = st.text_input("Bucket", value=settings.s3_bucket_name or "", placeholder="my-product-images")
        region = st.text_input("Region", value=settings.s3_region)
        # Shown redacted (a password in the URL never reaches the screen); left as shown, the configured one is used.
        shown_endpoint = redact_url(settings.s3_endpoint_url) or ""
        endpoint = st.text_input(
            "Endpoint URL (only for S3-compatible services)", value=shown_endpoint, placeholder="https://…"
        )
        if endpoint == shown_endpoint:
            endpoint = settings.s3_endpoint_url or ""
        image_prefix = st.text_input("Image prefix", value=settings.s3_image_prefix)
        thumbnail_prefix = st.text_input("Thumbnail prefix", value=settings.s3_thumbnail_prefix)
        st.caption(f"The catalog tables go beside the images, under `{settings.metadata_prefix}`, as in the local folder.")
        overwrite = st.checkbox(
            "Replace bucket files and products that differ from the local ones",
            help="Off: differences are reported as conflicts and left alone. On: the local version replaces them.",
        )

        configured = "set in your configuration" if settings.aws_secret_access_key else "not set in your configuration"
        with st.expander(f"Credentials: AWS keys {configured}"):
            st.caption(
                "Leave empty to use the configured credentials (or a profile / IAM role). Keys entered here are used "
                "for this run only: they are not saved or shown."
            )
            key_id = st.text_input("AWS access key ID", type="password", key="mig_key_id")
            secret = st.text_input("AWS secret access key", type="password", key="mig_secret")
            token = st.text_input("AWS session token (temporary credentials only)", type="password", key="mig_token")

        overrides = {
            "s3_bucket_name": bucket,
            "s3_region": region,
            "s3_endpoint_url": endpoint,
            "s3_image_prefix": image_prefix,
            "s3_thumbnail_prefix": thumbnail_prefix,
        }
        if key_id or secret:
            overrides.update(aws_access_key_id=key_id, aws_secret_access_key=secret, aws_session_token=token or None)
        # What Migrate must match: the preview's fingerprint (a digest: no secret sits in session state twice).
        try:
            fingerprint = plan_fingerprint(load_settings(**overrides), overwrite=overwrite)
        except ConfigError:  # settings that do not load cannot match any preview; Preview says why
            fingerprint = None

        def make_migration() -> Migration | None:
            if not bucket.strip():  # the field above is the way to name it; no need to edit any configuration
                st.error("Type the name of the target bucket in the Bucket field above, then try again.",
                         icon=":material/edit:")
                return None
            try:
                return Migration(load_settings(**overrides))
            except Exception as err:  # ConfigError / MigrationError: one line naming the setting
                webapp.show_error(err, what="Target settings")
                return None

        # ------------------------------------------------------------------------------------------ check
        st.subheader("2. Check")
        st.caption("Credentials, bucket, region, permissions (with a probe object that is removed) and the local catalog.")
        if st.button("Check", icon=":material/fact_check:"):
            migration = make_migration()
            if migration is not None:
                with st.spinner("Checking…"):
                    state.mig_checks = migration.check()
        if "mig_checks" in state:
            show_checks(state.mig_checks)

        # ---------------------------------------------------------------------------------------- preview
        st.subheader("3. Preview")
        st.caption("A dry run: compares every local file with the bucket (without AWS credentials yet, it lists "
                   "them from the local catalog alone, with their size and cost). Writes nothing.")
        if st.button("Preview", icon=":material/preview:"):
            migration = make_migration()
            if migration is not None:
                bar = st.progress(0.0, text="Reading local files…")
                try:
                    plan = migration.plan(overwrite=overwrite, progress=progress_callback(bar, "Compared"))
                except Exception as err:
                    webapp.show_error(err, what="The preview could not be made")
                else:
                    state.mig_plan = plan
                    state.pop("mig_report", None)
                finally:
                    bar.empty()

        plan = state.get("mig_plan")
        if plan is not None:
            totals = plan.totals()
            metric_row([
                ("Upload", totals[UPLOAD]["files"] + totals[OVERWRITE]["files"], format_bytes(plan.upload_bytes)),
                ("Already there", totals[SKIP]["files"], "identical: skipped"),
                ("Conflicts", totals[CONFLICT]["files"], "a different object at the same key"),
                ("Missing locally", totals[MISSING]["files"], "the catalog points at a file that is not there"),
            ])
            st.markdown(
                f"**{plural(totals['files'], 'file')}, {format_bytes(totals['bytes'])}** from {plan.source} to "
                f"{plan.target}: {format_bytes(plan.upload_bytes)} to upload."
            )
            st.markdown(f"**Products**: {plan.products.action}: {plain(plan.products.detail)}")
            st.markdown(f"**Vectors**: {plain(plan.vectors_line())}")
            st.markdown(f"**Cost**: {plain(plan.cost_line())}")
            for warning in plan.warnings:
                st.warning(plain(sentence(warning)), icon=":material/warning:")
            if plan.blocked:
                st.error(
                    "Some files the products point at are missing locally, so no product is written to the bucket. "
                    "Restore them or delete those products, then preview again.",
                    icon=":material/block:",
                )
            st.dataframe(
                [{**row, "size": format_bytes(row["size"])} for row in plan.rows()],
                hide_index=True,
                width="stretch",
                column_order=("action", "key", "size", "kind", "reason"),
            )

        # ---------------------------------------------------------------------------------------- migrate
        st.subheader("4. Migrate")
        stale = plan is not None and plan.fingerprint() != fingerprint
        if plan is None:
            st.caption("Preview first: Migrate runs exactly the plan you saw.")
        elif not plan.compared:
            st.caption("Set AWS credentials (above, or in your configuration) and preview again: Migrate runs only a "
                       "plan that was compared with the bucket.")
        elif stale:
            st.warning("The settings changed since the preview: preview again.", icon=":material/sync_problem:")
        elif plan.nothing_to_do:
            st.caption("Nothing to upload: the bucket already has the whole catalog. Migrate will only verify it.")
        else:
            st.caption(
                f"Uploads {plural(len(plan.to_upload), 'file')} ({format_bytes(plan.upload_bytes)}), writes "
                f"{plural(len(plan.products.to_write), 'product')} and copies {plural(plan.vectors_to_copy, 'vector')} "
                f"to {plan.target}."
            )
        if st.button("Migrate", icon=":material/cloud_upload:", type="primary",
                     disabled=plan is None or stale or plan.blocked or not plan.compared):
            migration = make_migration()
            if migration is not None:
                bar = st.progress(0.0, text="Starting…")
                try:
                    state.mig_report = migration.execute(plan, progress=progress_callback(bar, "Uploaded"))
                except Exception as err:
                    webapp.show_error(err, what="The migration stopped")
                else:
                    state.pop("mig_plan", None)  # it has been used; the bucket changed, so a new preview is needed
                    st.rerun()
                finally:
                    bar.empty()

        report = state.get("mig_report")
        if report is not None:
            if report.ok:
                st.success(f"Migration to {report.target} done and verified.", icon=":material/check_circle:")
            else:
                st.error(f"Migration to {report.target} is incomplete: see below.", icon=":material/error:")
            metric_row([
                ("Uploaded", len(report.uploaded), format_bytes(report.bytes_uploaded)),
                ("Skipped", len(report.skipped), "identical files already there"),
                ("Conflicts", len(report.conflicts), "left alone: a different object at the same key"),
                ("Failed", len(report.failed), "did not arrive or did not verify"),
            ])
            st.markdown(f"**Products**: {report.products.status}: {plain(report.products.detail)}")
            st.markdown(f"**Vectors**: {plain(report_vectors_line(report))}")
            st.caption(f"{format_bytes(report.bytes_uploaded)} uploaded in {report.duration_s:,.1f} s.")
            for check in report.verification:
                st.markdown(f"{STATUS_ICONS[check.status]} **{check.name}**: {plain(check.detail)}")
                if check.fix and check.status != "pass":
                    st.caption(f"What to do: {plain(check.fix)}")
            problems = [r.as_dict() for r in report.conflicts + report.failed]
            if problems:
                st.dataframe(problems, hide_index=True, width="stretch", column_order=("status", "key", "reason"))
            if report.conflicts or report.products.conflicts:
                st.caption("Conflicts are never overwritten: inspect them, then tick 'Replace…' above and preview again.")
            if report.failed:
                st.caption("Preview and migrate again to send what is missing; nothing verified is sent twice.")
            if report.ok and settings.s3_enabled and report.target == serving_target:
                st.info("The app already serves the catalog from this bucket: the migrated products are searchable now.",
                        icon=":material/info:")
            elif report.ok:
                st.info(
                    "To serve the catalog from the bucket, set `S3_ENABLED=true` and the bucket settings above in your "
                    "configuration, then restart the app.",
                    icon=":material/info:",
                )


# ----------------------------------------------------------------------------------------------- costs


@st.cache_data(ttl=300, show_spinner="Measuring the local catalog…")
def measured_local_catalog(data_dir: str, image_prefix: str, thumbnail_prefix: str, _settings) -> CatalogSize:
    """Cached by folder and prefixes (`_settings`, unhashed, carries the same values)."""
    return local_catalog_size(_settings)


with costs_tab:
    st.caption("What the catalog would cost on S3: the migration once, then every month. Edit the assumptions.")
    plan = state.get("mig_plan")
    if plan is not None:
        size = plan.estimate.catalog  # what the preview measured (the same measure as below)
        where = "the previewed migration"
    else:
        size = measured_local_catalog(str(settings.vpm_data_dir), settings.s3_image_prefix,
                                      settings.s3_thumbnail_prefix, settings)
        where = f"the local folder `{settings.vpm_data_dir}`"
    st.markdown(
        f"Catalog ({where}): {plural(size.images, 'image')} ({format_bytes(size.image_bytes)}), "
        f"{plural(size.thumbnails, 'thumbnail')} ({format_bytes(size.thumbnail_bytes)}), "
        f"{plain(size.metadata_text())}."
    )

    searches = st.number_input("Searches a month", min_value=0, value=1000, step=100)
    per_search = st.number_input("Images shown per search", min_value=0, value=10, step=1)
    shown = st.radio("Results show", ["thumbnails", "originals"], horizontal=True)
    use_cdn = st.toggle("Serve images through a CDN (CloudFront)")
    try:
        result = estimate(
            size,
            Traffic(searches_per_month=int(searches), images_per_search=int(per_search), use_cdn=use_cdn,
                    serve_thumbnails=shown == "thumbnails"),
        )
    except (PriceError, ConfigError) as err:
        webapp.show_error(err)
        st.stop()

    cols = st.columns(2)  # dollar amounts need the width: side by side on a desktop, stacked on a phone
    cols[0].metric("Migration, once", format_usd(result.one_time_total), border=True,
                   help="PUT and LIST requests; transfer into S3 is free")
    cols[1].metric("Every month", format_usd(result.monthly_total), border=True,
                   help="storage, requests and transfer at these assumptions")
    st.bar_chart(
        [{"cost": group, "USD a month": usd} for group, usd in result.monthly_by_group().items()],
        x="cost",
        y="USD a month",
        horizontal=True,
        sort=False,
        height=200,
    )
    # Line by line rather than a table: the notes are sentences, which a table cuts off (or pushes off a phone's
    # screen); here they wrap at any width.
    with st.container(border=True, gap="small", key="cost_lines"):
        for row in result.rows():
            st.markdown(f"**{plain(row['item'])}** · {format_usd(row['usd'])} {row['kind']}")
            st.caption(f"{format_quantity(row['quantity'], row['unit'])} · {plain(row['note'])}")
    prices = result.prices
    st.caption(f"List prices for {prices.region} as of {prices.as_of.isoformat()} ({prices.source}).")

    # ------------------------------------------------------------------------------- the whole system at a size
    st.subheader("The whole system at a size you choose")
    st.caption("The bucket, the CDN, the search replicas, a full re-embed and an index build for a catalog of the size "
               "you type, from unit costs measured on this project's benches (docs/scaling.md); the searches and "
               "display choices above apply.")
    typed = st.text_input("Products", placeholder="e.g. 250000, 10M or 1B", key="system_products")
    cols = st.columns(3)
    photos_each = cols[0].number_input("Photos per product", min_value=1, max_value=capacity.MAX_PHOTOS_PER_PRODUCT,
                                       value=1, step=1)
    replicas = cols[1].number_input("Search replicas (0: as the load needs)", min_value=0,
                                    max_value=capacity.MAX_REPLICAS, value=0, step=1)
    workers = cols[2].number_input("Workers for a re-embed", min_value=1, max_value=capacity.MAX_WORKERS, value=10,
                                   step=1)
    if typed.strip():
        try:
            system = capacity.system_estimate(capacity.size_from_text(
                typed, photos_per_product=int(photos_each), searches_per_month=int(searches),
                replicas=int(replicas) or None, workers=int(workers), images_per_search=int(per_search),
                use_cdn=use_cdn, serve_thumbnails=shown == "thumbnails"))
        except VpmError as err:
            webapp.show_error(err)
        else:
            size = system.size
            st.markdown(f"**{size.products:,} products**, {size.photos:,} photos, "
                        f"{size.searches_per_month:,} searches a month.")
            cols = st.columns(2)
            cols[0].metric("Whole system, every month", format_usd(system.bill.monthly_total), border=True,
                           help="bucket storage and requests, image views, search replicas")
            cols[1].metric("Whole system, once", format_usd(system.bill.one_time_total), border=True,
                           help="the first upload, a full re-embed and an index build")
            with st.container(border=True, gap="small", key="system_lines"):
                for row in system.bill.rows():
                    st.markdown(f"**{plain(row['item'])}** · {format_usd(row['usd'])} {row['kind']}")
                    st.caption(f"{format_quantity(row['quantity'], row['unit'])} · {plain(row['note'])}")
            with st.container(border=True, gap="small", key="system_figures"):
                for figure in system.figures:
                    st.markdown(f"**{plain(figure.what)}**: {plain(figure.text)}")
                    st.caption(f"{figure.basis}: {plain(figure.how)}")
            for limit in system.limits:
                st.warning(plain(f"Breaks at this size: {limit.part} ({limit.why}). What replaces it: "
                                 f"{limit.replacement}."), icon=":material/construction:")
            prices = system.bill.prices
            st.caption(f"Compute prices for {prices.region} as of {prices.compute_as_of.isoformat()} "
                       f"({prices.compute_source}).")
