"""May this session change the catalog? Read-only mode, Streamlit's own sign-in (OIDC), or an admin password.

Searching and browsing are open to everyone. Changes (add, edit, delete, import, loading the sample, orphan
deletion, migration) are allowed:
- never when VPM_READ_ONLY=true (a public demo): signing in does not change that;
- else, when a sign-in is configured, only for a session that signed in: with `st.login` (an `[auth]` section in
  Streamlit's secrets; VPM_ADMIN_EMAILS, when set, names who may change things) or with VPM_ADMIN_PASSWORD
  (compared in constant time; wrong guesses are throttled per session and per client, with a high limit for the
  whole process as a backstop);
- else (nothing configured, e.g. on a laptop) for everyone, as before.

Pure decisions, importable without Streamlit: vpm.faces.webapp reads st.user, st.secrets and the session and lays out
the result. The REST API keeps its own rule (VPM_API_KEY).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from vpm.core.errors import VpmError

if TYPE_CHECKING:
    from vpm.core.config import Settings

# Wrong passwords allowed in THROTTLE_WINDOW_S before the attempts are refused for a while, counted per session
# and per client (its address: a visitor who opens new sessions is still one client). Across the whole process
# only a high backstop, so a stranger guessing away never locks the owner, in a session of their own, out.
THROTTLE_FAILURES = 5  # per session
THROTTLE_CLIENT_FAILURES = 2 * THROTTLE_FAILURES  # per client address, over all its sessions
THROTTLE_PROCESS_FAILURES = 10 * THROTTLE_FAILURES  # everyone together: the backstop against many addresses
THROTTLE_WINDOW_S = 60.0

READ_ONLY_WHY = "This is a read-only copy of the catalog: search and browse freely; changes are switched off."
SIGN_IN_WHY = "Sign in (in the sidebar) to add, edit or delete products; searching is open to everyone."


class SignInThrottled(VpmError):
    """Too many wrong passwords in a short time; the message says how long to wait."""


@dataclass(frozen=True)
class Access:
    """What the pages lay out: whether changes are allowed, why not in one line, and which sign-in to offer."""

    may_change: bool
    why_not: str = ""  # one line for people; "" when changes are allowed
    read_only: bool = False
    offer_oidc: bool = False  # a "Sign in" button (st.login)
    offer_password: bool = False  # a password form
    signed_in_as: str | None = None  # who, once signed in ("administrator" for the password)

    @property
    def guarded(self) -> bool:
        """Whether a sign-in is configured at all (so the sidebar has something to offer or to sign out of)."""
        return self.offer_oidc or self.offer_password or self.signed_in_as is not None


def oidc_provider(auth_section: Mapping[str, Any] | None) -> str | None:
    """The provider `st.login` should use when Streamlit's sign-in is configured, else None.

    "default" for the flat form (client_id, client_secret, server_metadata_url beside redirect_uri and
    cookie_secret), else the first named provider section that has those three keys."""
    if not auth_section or not all(auth_section.get(k) for k in ("redirect_uri", "cookie_secret")):
        return None
    needed = ("client_id", "client_secret", "server_metadata_url")
    if all(auth_section.get(k) for k in needed):
        return "default"
    for name, section in auth_section.items():
        if isinstance(section, Mapping) and "_" not in name and all(section.get(k) for k in needed):
            return name
    return None


def admin_emails(settings: Settings) -> set[str]:
    return {e.strip().casefold() for e in settings.vpm_admin_emails.split(",") if e.strip()}


def decide(
    settings: Settings, *, oidc: bool, oidc_email: str | None = None, oidc_signed_in: bool = False,
    password_ok: bool = False,
) -> Access:
    """The one rule. `oidc`: st.login is configured; `oidc_signed_in`/`oidc_email`: st.user says so;
    `password_ok`: this session entered VPM_ADMIN_PASSWORD (see `session_token`)."""
    if settings.vpm_read_only:
        return Access(False, READ_ONLY_WHY, read_only=True)
    password = settings.vpm_admin_password is not None
    if not oidc and not password:
        return Access(True)
    if oidc and oidc_signed_in:
        allowed = admin_emails(settings)
        who = oidc_email or "signed in"
        if not allowed or (oidc_email or "").casefold() in allowed:
            return Access(True, signed_in_as=who, offer_oidc=True)
        return Access(
            False, f"Signed in as {who}, who may search but not change the catalog: ask its owner.",
            offer_oidc=True, offer_password=password, signed_in_as=who,
        )
    if password and password_ok:
        return Access(True, signed_in_as="administrator", offer_password=True)
    return Access(False, SIGN_IN_WHY, offer_oidc=oidc, offer_password=password)


# --------------------------------------------------------------------------------------------- password

_process_key = secrets.token_bytes(32)  # session tokens die with the process
# Times of recent wrong attempts: per session, per client address, and all of them. Only THROTTLE_WINDOW_S is
# kept, and an attempt refused by the throttle is not recorded, so at most THROTTLE_PROCESS_FAILURES are held.
_failures: dict[str, deque[float]] = {}
_all_failures: deque[float] = deque()
_failures_lock = threading.Lock()


def session_token(password: str) -> str:
    """What a session keeps after a right password: a keyed digest, never the password itself; it stops
    matching when VPM_ADMIN_PASSWORD changes or the process restarts."""
    return hmac.new(_process_key, password.encode("utf-8"), hashlib.sha256).hexdigest()


def token_valid(settings: Settings, token: object) -> bool:
    if settings.vpm_admin_password is None or not isinstance(token, str):
        return False
    return hmac.compare_digest(token, session_token(settings.vpm_admin_password.get_secret_value()))


def _recent(times: deque[float], now: float) -> deque[float]:
    while times and now - times[0] > THROTTLE_WINDOW_S:
        times.popleft()
    return times


def check_password(
    settings: Settings, attempt: str, *, session: str, client: str | None = None, now: float | None = None
) -> str | None:
    """A session token when `attempt` is VPM_ADMIN_PASSWORD (constant-time comparison), else None.

    `session` names the browser session trying, `client` its address (None when unknown, e.g. on localhost).
    Raises SignInThrottled after THROTTLE_FAILURES wrong attempts within THROTTLE_WINDOW_S in this session, or
    THROTTLE_CLIENT_FAILURES from this client, or THROTTLE_PROCESS_FAILURES from everyone together; the right
    password is refused too until the window has passed. Another session's wrong guesses never count here below
    that backstop."""
    expected = settings.vpm_admin_password
    if expected is None:
        return None
    now = time.monotonic() if now is None else now
    keys = [(f"session {session}", THROTTLE_FAILURES)]
    if client:
        keys.append((f"client {client}", THROTTLE_CLIENT_FAILURES))
    with _failures_lock:
        for key in [k for k, times in _failures.items() if not _recent(times, now)]:
            del _failures[key]  # expired: the map holds only who failed in the window
        counts = [(_failures.get(key, deque()), limit) for key, limit in keys]
        counts.append((_recent(_all_failures, now), THROTTLE_PROCESS_FAILURES))
        full = [times for times, limit in counts if len(times) >= limit]
        if full:
            wait = max(1, round(max(THROTTLE_WINDOW_S - (now - times[0]) for times in full)))
            raise SignInThrottled(f"Too many wrong passwords: wait {wait} s and try again.")
        if hmac.compare_digest(attempt.encode("utf-8"), expected.get_secret_value().encode("utf-8")):
            return session_token(expected.get_secret_value())
        for key, _limit in keys:
            _failures.setdefault(key, deque()).append(now)
        _all_failures.append(now)
        return None


def reset_throttle() -> None:
    """Forget wrong attempts (tests)."""
    with _failures_lock:
        _failures.clear()
        _all_failures.clear()
