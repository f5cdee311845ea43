"""Who may change the catalog (vpm.core.access) and how the pages lay it out: read-only, password, st.login."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from vpm.core import access
from vpm.core.config import load_settings

from pagetools import button, shown

CATALOG = "pages/catalog.py"
STORAGE = "pages/storage_browser.py"
MIGRATION = "pages/migration.py"
HOME = "pages/home.py"
CHANGE_WORDS = ("Add", "Import", "Delete", "Remove", "Save", "Migrate", "Check", "Preview", "Load sample")


@pytest.fixture(autouse=True)
def _no_throttle():
    access.reset_throttle()
    yield
    access.reset_throttle()


# ------------------------------------------------------------------------------------------------ rules


def settings(**values):
    return load_settings(**values)


def test_nothing_configured_lets_everyone_change_as_before():
    assert access.decide(settings(), oidc=False).may_change


def test_read_only_wins_over_every_sign_in():
    rules = settings(vpm_read_only=True, vpm_admin_password=SecretStr("pw"))
    decided = access.decide(rules, oidc=True, oidc_signed_in=True, oidc_email="a@b.c", password_ok=True)
    assert not decided.may_change and decided.read_only
    assert "read-only" in decided.why_not


def test_a_password_must_be_entered_and_is_compared_exactly():
    rules = settings(vpm_admin_password=SecretStr("correct horse"))
    signed_out = access.decide(rules, oidc=False)
    assert not signed_out.may_change and signed_out.offer_password and "Sign in" in signed_out.why_not
    assert access.check_password(rules, "correct hors", session="s") is None
    assert access.check_password(rules, "correct horse ", session="s") is None
    token = access.check_password(rules, "correct horse", session="s")
    assert token and "correct horse" not in token  # the session keeps a digest, never the password
    assert access.token_valid(rules, token)
    assert not access.token_valid(settings(vpm_admin_password=SecretStr("changed")), token)
    assert access.decide(rules, oidc=False, password_ok=True).may_change


def test_wrong_passwords_are_throttled_in_their_session_even_the_right_one():
    rules = settings(vpm_admin_password=SecretStr("pw"))
    for _ in range(access.THROTTLE_FAILURES):
        assert access.check_password(rules, "guess", session="guesser", now=100.0) is None
    with pytest.raises(access.SignInThrottled, match="wait"):
        access.check_password(rules, "pw", session="guesser", now=101.0)
    assert access.check_password(rules, "pw", session="guesser", now=100.0 + access.THROTTLE_WINDOW_S + 1)


def test_a_stranger_guessing_away_never_locks_the_owner_out():
    """One wrong password every 12 s from another session (and another address) for ten minutes: the owner's
    right password works on the first try all along."""
    rules = settings(vpm_admin_password=SecretStr("pw"))
    refused = 0
    for tick in range(50):
        now = 1000.0 + 12 * tick
        try:
            access.check_password(rules, "guess", session="jammer", client="203.0.113.9", now=now)
        except access.SignInThrottled:
            refused += 1
        assert access.check_password(rules, "pw", session=f"owner-{tick}", client="198.51.100.7", now=now + 1)
    assert refused  # the jammer is still slowed down in its own session


def test_a_client_opening_new_sessions_is_still_one_client_and_everyone_has_a_backstop():
    rules = settings(vpm_admin_password=SecretStr("pw"))
    for i in range(access.THROTTLE_CLIENT_FAILURES):
        assert access.check_password(rules, "guess", session=f"fresh-{i}", client="203.0.113.9", now=100.0) is None
    with pytest.raises(access.SignInThrottled):
        access.check_password(rules, "pw", session="fresh-new", client="203.0.113.9", now=101.0)
    assert access.check_password(rules, "pw", session="owner", client="198.51.100.7", now=101.0)

    access.reset_throttle()
    for i in range(access.THROTTLE_PROCESS_FAILURES):  # many addresses at once: the process-wide backstop
        assert access.check_password(rules, "guess", session=f"s{i}", client=f"10.0.{i // 250}.{i % 250}",
                                     now=200.0) is None
    with pytest.raises(access.SignInThrottled):
        access.check_password(rules, "pw", session="owner", client="198.51.100.7", now=201.0)


def test_streamlit_sign_in_and_the_allowed_emails():
    anyone = access.decide(settings(), oidc=True, oidc_signed_in=True, oidc_email="Ann@Example.com")
    assert anyone.may_change and anyone.signed_in_as == "Ann@Example.com"
    listed = settings(vpm_admin_emails="ann@example.com, bob@example.com")
    assert access.decide(listed, oidc=True, oidc_signed_in=True, oidc_email="ANN@example.com").may_change
    stranger = access.decide(listed, oidc=True, oidc_signed_in=True, oidc_email="eve@example.com")
    assert not stranger.may_change and "eve@example.com" in stranger.why_not
    assert not access.decide(listed, oidc=True).may_change  # signed out


def test_which_st_login_provider_is_configured():
    base = {"redirect_uri": "https://app/oauth2callback", "cookie_secret": "s"}
    flat = {**base, "client_id": "i", "client_secret": "s", "server_metadata_url": "https://idp/.well-known"}
    assert access.oidc_provider(flat) == "default"
    named = {**base, "google": {"client_id": "i", "client_secret": "s", "server_metadata_url": "https://g"}}
    assert access.oidc_provider(named) == "google"
    assert access.oidc_provider(base) is None
    assert access.oidc_provider({"client_id": "i"}) is None
    assert access.oidc_provider(None) is None


def test_the_admin_password_is_a_secret_everywhere():
    rules = settings(vpm_admin_password=SecretStr("hunter22"))
    assert "hunter22" not in repr(rules) and "hunter22" not in str(rules.masked())
    from vpm.core.config import secret_values

    assert "hunter22" in secret_values(rules)  # masked in every log line


# ------------------------------------------------------------------------------------------------ pages


def password_box(at):
    return next(t for t in at.text_input if t.label == "Admin password")


def labels(at) -> list[str]:
    return [b.label for b in at.button] + [u.label for u in at.file_uploader]


def changes_offered(at) -> list[str]:
    return [label for label in labels(at) if label.startswith(CHANGE_WORDS)]


@pytest.fixture
def catalog_with_a_product(app_settings, seed_catalog):
    seed_catalog([("Red mug", "Kitchen", 1)])
    return app_settings


def open_with_orphan(open_page, app_settings):
    """The storage browser's consistency tab, run, with one old orphan file waiting to be deleted."""
    import os
    import time

    orphan = app_settings.vpm_data_dir / "images" / "left-over.png"
    orphan.write_bytes(b"x")
    old = time.time() - 3600
    os.utime(orphan, (old, old))
    at = open_page(STORAGE)
    return button(at, "Run the consistency check").click().run()


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_signed_out_no_page_offers_a_change(catalog_with_a_product, open_page, monkeypatch):
    monkeypatch.setenv("VPM_ADMIN_PASSWORD", "correct horse")

    for page in (HOME, CATALOG, MIGRATION):
        at = open_page(page)
        assert not at.exception
        assert changes_offered(at) == [], page
    at = open_with_orphan(open_page, catalog_with_a_product)
    assert "Orphan files (1)" in [h.value for h in at.subheader]  # the check itself is open to all
    assert changes_offered(at) == [] and not [c for c in at.checkbox if "deleted" in c.label]


SIGN_IN_PANEL = """
import streamlit as st
from vpm.faces import webapp
webapp.sign_in_panel()
st.markdown(f"may change: {webapp.access().may_change}")
"""


def signed_in_app(page: str, password: str = "correct horse"):
    """The app run as a session that entered `password` in the sidebar's form (what the form keeps: a token).

    AppTest does not show the sidebar of a page reached through st.navigation after a rerun, so the form itself
    is driven in `test_a_wrong_password_is_refused_and_the_right_one_is_accepted`."""
    from streamlit.testing.v1 import AppTest

    from vpm.faces import webapp

    from conftest import APP_FILE

    webapp.clear_caches()
    at = AppTest.from_file(APP_FILE, default_timeout=60)
    at.session_state["_vpm_admin_token"] = access.session_token(password)
    at.run()
    if page != HOME:
        at.switch_page(page).run()
    return at


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_a_wrong_password_is_refused_and_the_right_one_is_accepted(app_settings, monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("VPM_ADMIN_PASSWORD", "correct horse")
    at = AppTest.from_string(SIGN_IN_PANEL, default_timeout=60).run()
    assert any(m.value == "may change: False" for m in at.markdown)

    password_box(at).input("wrong")
    at = button(at, "Sign in with the password").click().run()
    assert [shown(e.value) for e in at.error] == ["Wrong password."]
    assert any(m.value == "may change: False" for m in at.markdown)

    password_box(at).input("correct horse")
    at = button(at, "Sign in with the password").click().run()
    assert not at.exception
    assert any(m.value == "may change: True" for m in at.markdown)
    assert any("Signed in as administrator" in c.value for c in at.caption)
    assert all("correct horse" not in repr(at.session_state[k]) for k in at.session_state)  # never kept

    at = button(at, "Sign out").click().run()
    assert any(m.value == "may change: False" for m in at.markdown)


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_the_owner_signs_in_on_the_first_try_while_another_session_guesses_wrong(app_settings, monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("VPM_ADMIN_PASSWORD", "correct horse")
    jammer = AppTest.from_string(SIGN_IN_PANEL, default_timeout=60).run()
    for _ in range(access.THROTTLE_FAILURES + 1):
        password_box(jammer).input("guess")
        jammer = button(jammer, "Sign in with the password").click().run()
    assert "Too many wrong passwords" in " ".join(shown(e.value) for e in jammer.error)  # slowed down

    owner = AppTest.from_string(SIGN_IN_PANEL, default_timeout=60).run()
    password_box(owner).input("correct horse")
    owner = button(owner, "Sign in with the password").click().run()

    assert not owner.exception and not owner.error
    assert any(m.value == "may change: True" for m in owner.markdown)


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_signed_in_the_pages_offer_changes(catalog_with_a_product, monkeypatch):
    monkeypatch.setenv("VPM_ADMIN_PASSWORD", "correct horse")

    assert {"Add product", "Import", "Delete Red mug…"} <= set(labels(signed_in_app(CATALOG)))
    assert {"Check", "Preview", "Migrate"} <= set(labels(signed_in_app(MIGRATION)))
    assert changes_offered(signed_in_app(CATALOG, password="an old password")) == []


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_read_only_hides_every_change_even_for_a_signed_in_session(catalog_with_a_product, monkeypatch):
    monkeypatch.setenv("VPM_ADMIN_PASSWORD", "correct horse")
    monkeypatch.setenv("VPM_READ_ONLY", "true")
    for page in (HOME, CATALOG, MIGRATION):
        at = signed_in_app(page)
        assert not at.exception
        assert changes_offered(at) == [], page
        assert any("read-only" in shown(c.value).lower() for c in at.caption), page
    assert "Admin password" not in [t.label for t in at.text_input]  # nothing to sign in to


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_with_st_login_configured_the_sidebar_offers_a_sign_in_button(catalog_with_a_product):
    from streamlit.testing.v1 import AppTest

    from vpm.faces import webapp

    from conftest import APP_FILE

    webapp.clear_caches()
    at = AppTest.from_file(APP_FILE, default_timeout=60)
    at.secrets["auth"] = {
        "redirect_uri": "http://localhost:8501/oauth2callback", "cookie_secret": "not-a-real-secret",
        "client_id": "id", "client_secret": "secret",
        "server_metadata_url": "https://accounts.example/.well-known/openid-configuration",
    }
    at.run()
    assert not at.exception
    assert "Sign in" in [b.label for b in at.sidebar.button]
    assert "Admin password" not in [t.label for t in at.text_input]  # no password configured

    at.switch_page(CATALOG).run()
    assert not at.exception
    assert changes_offered(at) == []
    assert any("Sign in (in the sidebar)" in shown(c.value) for c in at.caption)
    webapp.clear_caches()
