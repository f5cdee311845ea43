"""The Streamlit app's shared resources and small reusable widgets. Only pages import this module.

Resources are cached per process with `st.cache_resource` (one Matcher per storage configuration, one model
per VPM_MODEL/VPM_DEVICE); the model is loaded on first use only, so drawing a page never imports torch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

import streamlit as st

from vpm.core import access as access_rules
from vpm.core.catalog import CatalogError, Product
from vpm.core.config import ConfigError, Settings, configure_logging, load_settings
from vpm.core.errors import VpmError, log_unexpected, something_went_wrong
from vpm.core.presentation import (
    code,
    format_percent,
    format_price,
    plain,
    plural,
    score_percent,
    sentence,
    signals_text,
)
from vpm.core.storage import StorageError

if TYPE_CHECKING:  # imported for the annotations only: the matcher and the model load lazily
    from vpm.core.matcher import Matcher
    from vpm.models.embeddings import Embedder

log = logging.getLogger(__name__)
T = TypeVar("T")


def _leave_old_multipage_mode() -> None:
    """Make every visit go through streamlit_app.py, even the first one after the server starts.

    Streamlit treats a `pages/` folder beside the entry point as an old-style multipage app until some
    session has called st.navigation: a first visitor who opens /search directly gets pages/search.py run on
    its own (no page config, no sidebar status, pages named after files), and so does everyone after them
    until someone opens the home page. Every page imports this module, so switch that mode off here and
    rerun, which sends this very visit through streamlit_app.py to the same page.

    Why a private attribute: Streamlit has no public way to do this while `pages/` sits beside the entry point.
    Its documentation says the folder is ignored "as soon as any session of your app executes the st.navigation
    command" (the st.navigation reference): only after a first session ran streamlit_app.py. Until then
    `PagesManager.__init__` sets `uses_pages_directory` from the folder's existence and the script runner runs a
    deep-linked pages/x.py through its v1 emulation, without the entry point; st.navigation is the only public
    call that clears the flag, and it is documented for the entry point alone, which that visit never runs.
    There is no config option or start-up hook for it (Streamlit 1.67), and Streamlit's own guidance is to name
    the folder otherwise (app_pages/), which the product's layout rules out. tests/test_page_home.py fails by name
    if a Streamlit upgrade drops the attribute; tests/test_browser.py checks the first deep-linked visit.
    """
    from streamlit.runtime.pages_manager import PagesManager
    from streamlit.runtime.scriptrunner_utils.script_run_context import get_script_run_ctx

    if PagesManager.uses_pages_directory:
        PagesManager.uses_pages_directory = False
        if get_script_run_ctx(suppress_warning=True) is not None:
            st.rerun()


_leave_old_multipage_mode()

MODEL_SPINNER = "Loading the image model (first use only)…"

# Page files, used by streamlit_app.py for st.navigation and by pages for st.page_link.
HOME_PAGE = "pages/home.py"
SEARCH_PAGE = "pages/search.py"
CATALOG_PAGE = "pages/catalog.py"
STORAGE_PAGE = "pages/storage_browser.py"
MIGRATION_PAGE = "pages/migration.py"
MAP_PAGE = "pages/catalog_map.py"
HEALTH_PAGE = "pages/health.py"
QUALITY_PAGE = "pages/quality.py"


# ------------------------------------------------------------------------------------------ settings


def get_settings() -> Settings:
    """Effective settings; a bad value stops the page with one line naming the variable and how to fix it."""
    try:
        return load_settings()
    except ConfigError as err:
        st.error(f"**Configuration problem:** {plain(err)}", icon=":material/settings_alert:")
        st.info(
            "Fix the variable in your environment, `.env` file or `.streamlit/secrets.toml`, then restart "
            "the app. `.env.example` lists every setting with its default."
        )
        st.stop()


def _settings_key(settings: Settings) -> str:
    """A digest of every setting (secrets included) so a changed configuration gets a fresh Matcher.

    Hashed rather than used directly so secret values never become a readable cache key.
    """
    values = {
        name: (value.get_secret_value() if hasattr(value, "get_secret_value") else str(value))
        for name, value in settings
    }
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()


# ----------------------------------------------------------------------------------------- resources


@st.cache_resource(show_spinner=MODEL_SPINNER)
def _embedder_for(model: str, device: str, runtime: str = "auto"):
    from vpm.models.embeddings import load_embedder  # imports torch: only when a page really needs the model

    return load_embedder(model, device, runtime)


def loaded_embedder(matcher: Matcher) -> Embedder | None:
    """The matcher's embedder when it is already loaded, else None (for status displays that must not load)."""
    return matcher.embedder if matcher.model_loaded else None


class _AppModel:
    """How an app Matcher loads its model: through the app's own cache (on first use, with a spinner saying so,
    shared by every Matcher in this process that uses the same model). The first load also starts reading the
    catalog's tables ahead on a daemon thread, side by side with the model, so the first search finds them open.

    Not when the Matcher is built: `Matcher.read_ahead` loads the model, and a page that never searches (Home,
    Health) must not load it, nor import torch. The load runs under the Matcher's model lock, so the read ahead
    waits for this load rather than starting a second one, and the page's spinner stays with the page."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.matcher: Matcher | None = None  # the Matcher this loads for, once built
        self.read_ahead: threading.Thread | None = None

    def __call__(self) -> Embedder:
        if self.matcher is not None and self.read_ahead is None:
            self.read_ahead = threading.Thread(
                target=_read_ahead, args=(self.matcher,), name="vpm-app-read-ahead", daemon=True
            )
            self.read_ahead.start()
        return _embedder_for(self.settings.vpm_model, self.settings.vpm_device, self.settings.vpm_runtime)


def _read_ahead(matcher: Matcher) -> None:
    try:
        matcher.read_ahead()
    except Exception as err:  # noqa: BLE001 - a head start only: the search that needs the part says what is wrong
        log.info("reading the catalog ahead failed (the first search will try again): %s", err)


@st.cache_resource(show_spinner=False)
def _matcher_for(key: str, _settings: Settings) -> Matcher:
    from vpm.core.wiring import build_matcher

    # Once per configuration: LOG_LEVEL, the cap on AWS libraries' request logs, the secret-masking filter.
    configure_logging(_settings)
    model = _AppModel(_settings)
    model.matcher = build_matcher(_settings, load_embedder=model)
    return model.matcher


def get_matcher() -> Matcher:
    """The Matcher for the current settings, shared by every session in this process."""
    settings = get_settings()
    return _matcher_for(_settings_key(settings), settings)


def ensure_model(matcher: Matcher) -> Embedder:
    """Load the matcher's model now (the spinner says so on first use) and return it; call before work
    that embeds, so the wait is explained rather than a silent pause. The sidebar, drawn before the page,
    then names the model that really runs."""
    was_loaded = matcher.model_loaded
    embedder = matcher.embedder
    if not was_loaded:
        _update_sidebar_model(matcher)
    return embedder


def prepare_search_index(matcher: Matcher) -> None:
    """Embed catalog photos that have no vector yet (a new model, an upgraded catalog), with a progress bar.

    A search would embed a few silently; a catalog of thousands takes minutes on a CPU, so say so. Costs two
    counts when nothing is missing.
    """
    from vpm.models.model_outlook import for_matcher

    missing = matcher.index_needs_embedding()
    keypoints = matcher.keypoints_missing()
    if not missing and not keypoints:
        return
    what = (f"embedding about {plural(missing, 'catalog photo')} for {for_matcher(matcher).name} (once per model)"
            if missing else f"finding the keypoints of about {plural(keypoints, 'catalog photo')} (once)")
    with st.status(f"Preparing the search index: {what}…", expanded=True) as box:
        bar = st.progress(0.0)

        def progress(done: int, total: int, message: str = "") -> None:
            bar.progress(min(1.0, done / total) if total else 1.0, text=message or f"{done} of {total}")

        after = matcher.reindex(progress=progress)
        state = "complete" if not after.missing else "error"
        label = "Search index ready" if not after.missing else (
            f"{plural(after.missing, 'photo')} could not be embedded: {'; '.join(after.problems[:3])}"
        )
        box.update(label=plain(label), state=state, expanded=False)


def offer_sample(matcher: Matcher, *, key: str, report_key: str) -> None:
    """"Load sample products" for an empty catalog (Home and Catalog): the sample shipped with the app, imported
    like any other import, with a progress bar. The report is left in st.session_state[report_key] for the
    page to show after the rerun. Only for sessions that may change the catalog (the caller asks)."""
    from vpm.core.sample import LOAD_TIME, load_sample, offer_help, sample_available, sample_size

    if not sample_available():
        return
    products, _photos = sample_size()
    if not st.button(
        "Load sample products", type="primary", icon=":material/inventory:", key=key,
        help=offer_help(),
    ):
        return
    try:
        ensure_model(matcher)
        with st.status(f"Loading {products} sample products (it takes {LOAD_TIME})…", expanded=True) as box:
            bar = st.progress(0.0, text="Reading the sample…")

            def progress(done: int, total: int, message: str = "") -> None:
                bar.progress(min(1.0, done / total) if total else 1.0,
                             text=plain(message) or f"{done} of {plural(total, 'photo')}")  # import, then the fit

            report = load_sample(matcher, progress)
            box.update(label=plain(f"Sample: {report.summary()}"), state="error" if report.failed else "complete",
                       expanded=False)
    except Exception as err:  # noqa: BLE001 - the page boundary: say what went wrong, keep the page usable
        show_error(err, what="Could not load the sample products")
        return
    st.session_state[report_key] = report
    st.rerun()


def clear_caches() -> None:
    """Forget cached matchers, models and thumbnails (tests call this between AppTest runs)."""
    st.cache_resource.clear()
    st.cache_data.clear()


# ------------------------------------------------------------------------------------------- errors


def show_error(err: BaseException, *, what: str | None = None) -> None:
    """Tell the person what went wrong in vpm's own words; never a traceback, never a bug's text.

    A VpmError (bad image, refused URL, invalid product, storage unreachable...) carries a message written
    for people. Anything else is a bug: logged with its traceback under a short id, shown with that id.
    """
    prefix = f"{what}: " if what else ""
    if isinstance(err, VpmError):  # a sentence: its first letter a capital, whatever the message starts with
        st.error(plain(sentence(f"{prefix}{err}")), icon=":material/error:")
        return
    incident = log_unexpected(log, err, "the app")
    st.error(
        plain(f"{prefix}{something_went_wrong(incident)}.")
        + " Try again, and check the Health page if it keeps happening.",
        icon=":material/error:",
    )


def catalog_or_stop(read: Callable[[], T]) -> T:
    """Run a catalog read; if the catalog cannot be read, say why, point at Health and stop the page."""
    try:
        return read()
    except Exception as err:  # noqa: BLE001 - the page boundary: whatever it is, say so and stop drawing
        show_error(err, what="The catalog cannot be read")
        st.page_link(HEALTH_PAGE, label="Open Health for what to do", icon=":material/monitor_heart:")
        st.stop()


# ------------------------------------------------------------------------------------------- images


def picture_and_key(product: Product, photo_key: str | None = None) -> tuple[bytes, str] | None:
    """Thumbnail bytes (falling back to a small preview made from the original) of one photo (the first unless
    `photo_key` names another), and the key they came from."""
    photo = next((p for p in product.photos if p.key == photo_key), None) or (
        product.photos[0] if product.photos else None
    )
    if photo is None:
        return None
    for key in (photo.thumbnail_key, photo.key):
        if key:
            data = thumbnail_bytes(key, photo.sha256)
            if data is not None:
                return data, key
    return None


@st.cache_data(show_spinner=False, max_entries=2000)
def thumbnail_bytes(key: str, etag: str | None = None) -> bytes | None:
    """The bytes of a stored thumbnail, or a bounded preview of a stored original (never the original itself:
    Streamlit would open and resize it outside our checks); `etag` (or any content token) makes a changed file
    reload. None when the object cannot be read, so one missing picture never breaks a grid."""
    from vpm.core.images import ImageError, preview_thumbnail
    from vpm.core.storage import StorageError

    try:
        data = get_matcher().files.read(key)
    except StorageError as err:
        log.warning("cannot read %s: %s", key, err)
        return None
    if key.startswith(get_settings().s3_thumbnail_prefix):
        return data
    try:
        return preview_thumbnail(data, key, max_side=2 * CARD_WIDTH, max_bytes=max(len(data), 1))
    except ImageError as err:
        log.warning("cannot preview %s: %s", key, err)
        return None


@st.cache_data(show_spinner=False, max_entries=2)
def upload_image(data: bytes, filename: str):
    """An uploaded photo decoded (upright RGB, checked like any upload), kept for the reruns a region's sliders make."""
    from vpm.core.images import decode_image

    return decode_image(data, filename, max_bytes=get_settings().max_upload_bytes).image


def product_picture(product: Product, photo_key: str | None = None) -> bytes | None:
    found = picture_and_key(product, photo_key)
    return found[0] if found else None


# -------------------------------------------------------------------------------------------- grids


def _unpack(item: Any) -> tuple[Product, float | None, str | None]:
    """Accept a Match (product + score + the photo that matched), a ProductView or a bare Product."""
    product = getattr(item, "product", item)
    return product, getattr(item, "score", None), getattr(item, "photo_key", None)


CARD_WIDTH = 170  # px: a card on its own (the catalog's "just added"); in a grid, cards share the row
_CARD_MIN_WIDTH = 150  # px: two cards side by side on a 390 px phone
_GRID_GAP = "0.75rem"

# Cards in a grid: one height a row, a square picture cropped to fill it (object-fit), "More like this" at the
# bottom so the buttons of a row line up. Names and captions wrap rather than end in "…": on a phone a card is
# 150 px wide, and a cut "66 keypoints ma…" or half a name tells nothing (a long word or key breaks where it must).
# Keyed containers carry these classes.
_GRID_CSS = """
<style>
[class*="st-key-vpm_grid_"] {
  display: grid !important; gap: %(gap)s; align-items: stretch; width: 100%%;
}
[class*="st-key-vpm_grid_"] > [data-testid="stLayoutWrapper"] { width: auto !important; height: 100%%; min-width: 0; }
[class*="st-key-vpm_card_"] { height: 100%%; min-width: 0; }
[class*="st-key-vpm_card_"] [data-testid="stImage"] img {
  width: 100%% !important; aspect-ratio: 1 / 1; object-fit: cover; border-radius: 0.25rem;
}
[class*="st-key-vpm_card_"] [data-testid="stMarkdownContainer"] p { margin: 0; overflow-wrap: anywhere; }
[class*="st-key-vpm_card_"] > [class*="st-key-vpm_more_"] { margin-top: auto; }
</style>
"""


# Text Streamlit cuts with an ellipsis that a person needs whole: a file uploader's hint lists the accepted formats
# ("20MB per file • JPG, JPEG, PNG, TIF,..." on a phone). It wraps instead. Sent once a page, by streamlit_app.py.
WRAP_CSS = """
<style>
[data-testid="stFileUploaderDropzoneInstructions"] span {
  white-space: normal !important; overflow: visible !important; text-overflow: clip !important;
}
</style>
"""


def let_text_wrap() -> None:
    """Style what Streamlit would cut off so that it wraps instead (see WRAP_CSS); draws nothing visible."""
    st.html(WRAP_CSS)


def first_line(text: str | None, limit: int = 120) -> str:
    """The first line of a description, shortened with an ellipsis: what a card has room for."""
    line = next((part.strip() for part in (text or "").splitlines() if part.strip()), "")
    return line if len(line) <= limit else line[: limit - 1].rstrip() + "…"


def card_picture(item: Any, web_urls: bool) -> str | bytes | None:
    """What a card shows (a search result: the photo that matched). Where the files' URLs open in a browser (a
    bucket's presigned or CDN URL), the thumbnail URL the result or view carries: the browser fetches it and the
    app reads nothing. Otherwise (a local folder's file:// path) the stored thumbnail's bytes."""
    url = getattr(item, "thumbnail_url", None)
    if web_urls and url:
        return url
    product, _score, photo_key = _unpack(item)
    return product_picture(product, photo_key)


def product_card(item: Any, web_urls: bool = False) -> None:
    """One product: picture, name, category and price, the description's first line, and the score as a percent
    and a bar when given. `web_urls`: the files' URLs open in a browser (`matcher.files.web_urls`)."""
    product, score, photo_key = _unpack(item)
    picture = card_picture(item, web_urls)
    if picture is not None:
        st.image(picture, width="stretch", alt=product.name)
    else:
        st.caption(":material/hide_image: no picture")
    # Names, categories and descriptions are stored user input: shown as plain text, never as Markdown.
    st.markdown(f"**{plain(product.name)}**", help=plain(product.description) if product.description else None)
    details = [plain(product.category)]
    price = format_price(product.price)
    if price:
        details.append(price)
    st.caption(" · ".join(details))
    if product.description:
        st.caption(plain(first_line(product.description)))
    if getattr(item, "matched_in", ""):  # a words search: where its words were found
        st.caption(plain(item.matched_in))
    if score is not None and not getattr(item, "words_only", False):  # words alone rank, they are no percentage
        st.progress(score_percent(score), text=f"{format_percent(score)} match")
        if len(product.photos) > 1:
            number = next((i for i, p in enumerate(product.photos, 1) if p.key == photo_key), 1)
            st.caption(f"Best match: photo {number} of {len(product.photos)}")
        similarity = getattr(item, "similarity", None)
        if similarity is not None and abs(similarity - score) > 1e-9:  # a photo result: what its score is made of
            st.caption(signals_text(item))


def product_grid(items: Iterable[Any], columns: int = 4, key: str = "results",
                 more_like_this: Callable[[str], None] | None = None,
                 not_this_one: Callable[[str], None] | None = None) -> None:
    """Cards in a grid that uses the full width: at most `columns` a row, as many as fit at 150 px or more
    (two a row on a phone), each card as tall as the tallest in its row. With `more_like_this`, each card has a
    "More like this" button that calls it with the card's product id; with `not_this_one`, a "Not this one"
    button likewise."""
    items = list(items)
    web_urls = bool(items) and get_matcher().files.web_urls  # asked once a grid: each ask reads the settings
    track = f"max({_CARD_MIN_WIDTH}px, calc((100% - {columns - 1} * {_GRID_GAP}) / {columns}))"
    st.html(_GRID_CSS % {"gap": _GRID_GAP} + f"<style>.st-key-vpm_grid_{key} {{ grid-template-columns: "
            f"repeat(auto-fill, minmax({track}, 1fr)); }}</style>")
    with st.container(horizontal=True, wrap=True, gap="small", key=f"vpm_grid_{key}"):
        for number, item in enumerate(items):
            with st.container(border=True, key=f"vpm_card_{key}_{number}"):
                product_card(item, web_urls)
                if more_like_this is not None:
                    st.button("More like this", icon=":material/interests:", key=f"vpm_more_{key}_{number}",
                              on_click=more_like_this, args=(_unpack(item)[0].id,), width="stretch")
                if not_this_one is not None:
                    st.button("Not this one", icon=":material/thumb_down:", key=f"vpm_not_{key}_{number}",
                              on_click=not_this_one, args=(_unpack(item)[0].id,), width="stretch",
                              help="Hide it, and move the results away from its look, for the rest of this session")


# ------------------------------------------------------------------------------------------- access

_ADMIN_TOKEN = "_vpm_admin_token"


def _auth_section() -> Any:
    """Streamlit's `[auth]` secrets section (st.login's configuration), or None."""
    try:
        return st.secrets.get("auth")
    except Exception:  # noqa: BLE001 - no secrets.toml at all: no sign-in configured
        return None


def access() -> access_rules.Access:
    """May this session change the catalog (vpm.core.access decides; this reads st.user and the session)."""
    settings = get_settings()
    provider = access_rules.oidc_provider(_auth_section())
    signed_in, email = False, None
    if provider is not None:
        signed_in = bool(st.user.get("is_logged_in"))
        email = st.user.get("email") if signed_in else None
    return access_rules.decide(
        settings, oidc=provider is not None, oidc_signed_in=signed_in, oidc_email=email,
        password_ok=access_rules.token_valid(settings, st.session_state.get(_ADMIN_TOKEN)),
    )


def may_change() -> bool:
    """For pages: True when this session may change the catalog; else one line says why (and how to sign in)
    and the page leaves out every widget that changes something."""
    allowed = access()
    if not allowed.may_change:
        st.caption(f":material/lock: {plain(allowed.why_not)}")
    return allowed.may_change


def _sign_in_session() -> str:
    """This browser session's name for the sign-in throttle: wrong guesses in another session never count here."""
    import secrets

    return st.session_state.setdefault("_vpm_sign_in_session", secrets.token_hex(8))


def _client_address() -> str | None:
    """The client's address for the throttle (a visitor opening new sessions is still one client); None when
    Streamlit does not know it (localhost)."""
    try:
        return st.context.ip_address
    except Exception:  # noqa: BLE001 - no client context (a test run): counted per session only
        return None


def sign_in_panel() -> None:
    """The sidebar's sign-in: a button for st.login, a password form for VPM_ADMIN_PASSWORD, or sign out."""
    allowed = access()
    if allowed.read_only:
        st.caption(":material/lock: Read-only: search and browse")
        return
    if not allowed.guarded:
        return
    if allowed.signed_in_as is not None:
        st.caption(f":material/verified_user: Signed in as {plain(allowed.signed_in_as)}")
        if st.button("Sign out", icon=":material/logout:", key="vpm_sign_out"):
            st.session_state.pop(_ADMIN_TOKEN, None)
            if st.user.get("is_logged_in"):
                st.logout()
            st.rerun()
        return
    if allowed.offer_oidc:
        provider = access_rules.oidc_provider(_auth_section())
        if st.button("Sign in", icon=":material/login:", key="vpm_sign_in", type="primary"):
            st.login(None if provider == "default" else provider)
    if allowed.offer_password:
        problem = st.session_state.pop("_vpm_sign_in_problem", None)
        if problem:
            st.error(plain(problem), icon=":material/error:")
        # A fresh form after each try (then a rerun, so the fresh one is what the person types into next): the
        # typed password is not kept in the session once it has been checked.
        form = st.session_state.setdefault("_vpm_sign_in_form", 0)
        with st.form(f"vpm_admin_sign_in_{form}", border=False, enter_to_submit=True):
            attempt = st.text_input("Admin password", type="password")
            submitted = st.form_submit_button("Sign in with the password", icon=":material/key:")
        if submitted:
            st.session_state["_vpm_sign_in_form"] = form + 1
            try:
                token = access_rules.check_password(
                    get_settings(), attempt or "", session=_sign_in_session(), client=_client_address()
                )
            except access_rules.SignInThrottled as err:
                st.session_state["_vpm_sign_in_problem"] = str(err)
            else:
                if token is None:
                    st.session_state["_vpm_sign_in_problem"] = "Wrong password."
                else:
                    st.session_state[_ADMIN_TOKEN] = token
            st.rerun()


# ------------------------------------------------------------------------------------------ sidebar


def storage_summary(settings: Settings) -> str:
    """'Local folder ./data' or 'S3 bucket my-bucket (eu-west-1) · CDN on'."""
    if settings.s3_enabled:
        cdn = "CDN on" if settings.s3_cdn_url else "CDN off"
        return f"S3 bucket {code(settings.s3_bucket_name)} ({settings.s3_region}) · {cdn}"
    return f"Local folder {code(settings.vpm_data_dir)}"


def model_summary(settings: Settings, matcher) -> str:
    """The sidebar's model line: the model that runs (or will), in a few words, never a path."""
    from vpm.models.model_outlook import for_matcher

    return plain(for_matcher(matcher).summary)  # the same plain words before and after the model loads


_MODEL_SLOT = "_vpm_sidebar_model"


def _show_model(slot, settings: Settings, matcher) -> None:
    slot.caption(f":material/neurology: {model_summary(settings, matcher)}")


def _model_state(matcher) -> str:
    from vpm.models.model_outlook import for_matcher

    return for_matcher(matcher).state


@st.fragment(run_every=1.0)
def _model_line_until_known(settings: Settings, matcher) -> None:
    """While the hub is being asked (a few seconds after the server starts), the line redraws itself every
    second; once the answer is in, the app reruns once so every part of the page says the same thing."""
    st.caption(f":material/neurology: {model_summary(settings, matcher)}")
    if _model_state(matcher) != "checking":
        st.rerun(scope="app")


def _update_sidebar_model(matcher: Matcher) -> None:
    """The sidebar is drawn before the page; when the page loads the model, correct the line in place."""
    slot = st.session_state.get(_MODEL_SLOT)
    if slot is not None:
        _show_model(slot, matcher.settings, matcher)


# Streamlit closes its sidebar after a page link is tapped only when the browser's user agent says "phone": in a
# narrow desktop window (or a tablet asking for desktop sites) the open sidebar stayed over the page it had just
# opened. Below Streamlit's own breakpoint for an overlay sidebar (768 px), close it the same way its button does.
# The hidden container keeps the element from adding a gap to the sidebar; the flag keeps one listener a tab.
_CLOSE_SIDEBAR_ON_NAVIGATION = """
<style>.st-key-vpm_sidebar_script { display: none; }</style>
<script>
(() => {
  if (window.vpmClosesSidebarOnNavigation) return;
  window.vpmClosesSidebarOnNavigation = true;
  document.addEventListener("click", (event) => {
    if (!event.target.closest('[data-testid="stSidebarNav"] a')) return;
    if (!window.matchMedia("(max-width: 768px)").matches) return;
    setTimeout(() => {  // after Streamlit's own handling: on a phone it has closed the sidebar already
      const sidebar = document.querySelector('[data-testid="stSidebar"]');
      if (sidebar && sidebar.getAttribute("data-collapsed") === "false") {
        document.querySelector('[data-testid="stSidebarCollapseButton"] button')?.click();
      }
    }, 0);
  });
})();
</script>
"""


def _close_sidebar_on_navigation() -> None:
    with st.container(key="vpm_sidebar_script"):
        st.html(_CLOSE_SIDEBAR_ON_NAVIGATION, unsafe_allow_javascript=True)  # our own constant, no user input


def sidebar_status() -> None:
    """Backend, product count and model state in the sidebar. Never fails the page it is drawn on."""
    try:
        settings = load_settings()
    except ConfigError:
        return  # the page itself reports the configuration problem
    with st.sidebar:
        _close_sidebar_on_navigation()
        st.caption(f":material/storage: {storage_summary(settings)}")
        matcher = get_matcher()
        try:
            count = matcher.count_products()
            st.caption(f":material/inventory_2: {plural(count, 'product')}")
        except (CatalogError, StorageError) as err:  # the catalog may be unreadable; the Health page says why
            st.caption(f":material/warning: Catalog unavailable ({type(err).__name__})")
        if _model_state(matcher) == "checking":
            st.session_state.pop(_MODEL_SLOT, None)
            _model_line_until_known(settings, matcher)
        else:
            slot = st.empty()
            _show_model(slot, settings, matcher)
            st.session_state[_MODEL_SLOT] = slot
        sign_in_panel()
