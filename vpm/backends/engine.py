"""Where the catalog's tables live and how LanceDB reaches them: one connection per location per process.

The tables sit beside the images, under the metadata prefix (`S3_METADATA_KEY`'s folder): in
`<VPM_DATA_DIR>/metadata/` locally, under `s3://<S3_BUCKET_NAME>/metadata/` on S3. LanceDB is reached with the
same settings as boto3: region, endpoint, keys and session token; a named profile is resolved through boto3's
own chain (LanceDB's object store does not read profiles), and with none of these the object store finds
credentials itself (environment, instance or task role).

Every table handle of a location is shared by the whole process, so a write through one Matcher is seen by
every other one at once; another process's write is seen within `READ_CONSISTENCY`. LanceDB itself never checks
(`read_consistency_interval=None`): `keep_fresh`, called before a table is read, checks every open table of the
location together (one listing each on S3, all at once: one round trip), at most every `REFRESH_AFTER` and in the
background while the last check is younger than `READ_CONSISTENCY`, so a warm search on a bucket tens of
milliseconds away seldom waits on a check, and never on one a table (LanceDB's own checks cost one listing per
table per read, one after another).
"""

from __future__ import annotations

import logging
import random
import re
import threading
import time
import weakref
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from vpm.core.storage import StorageError

if TYPE_CHECKING:
    from vpm.core.config import Settings

log = logging.getLogger(__name__)

# Another process's write is seen by reads that start this long after its commit, at most (plus one round trip):
# the visibility promised is 2 s. Past REFRESH_AFTER a read triggers a check in the background and goes on with
# what it has; past READ_CONSISTENCY it waits for the check.
READ_CONSISTENCY = timedelta(milliseconds=1500)
REFRESH_AFTER = timedelta(milliseconds=1000)
# Compact once this many small fragments have piled up (each one-by-one add writes one).
SMALL_FRAGMENTS_BEFORE_COMPACTION = 24
# Versions older than this are pruned by compaction; readers never hold a version nearly this long.
KEEP_VERSIONS_FOR = timedelta(hours=1)


class EngineError(StorageError):
    """The table engine could not do what was asked; the message says where and what to check."""


class TableUnreadable(EngineError):
    """A table exists but cannot be opened. It is reported, never replaced by an empty one."""


@dataclass(frozen=True)
class Location:
    uri: str  # a local folder, or s3://bucket/prefix
    storage_options: tuple[tuple[str, str], ...]  # for LanceDB's object store; holds secrets: never log it
    description: str  # for people, no secrets
    prefix: str  # the storage key prefix the tables live under ("metadata/")
    # The settings it was made from: its files through vpm.core.storage (to say which file of a damaged table is bad).
    settings: Any = field(default=None, compare=False, repr=False)

    def options(self) -> dict[str, str]:
        return dict(self.storage_options)


def location(settings: Settings) -> Location:
    """Where this configuration keeps its tables."""
    prefix = settings.metadata_prefix
    if not settings.s3_enabled:
        folder = settings.vpm_data_dir.expanduser().resolve() / prefix
        return Location(str(folder), (), f"local folder {folder}", prefix, settings)
    bucket = settings.s3_bucket_name
    uri = f"s3://{bucket}/{prefix.rstrip('/')}" if prefix else f"s3://{bucket}"
    return Location(uri, tuple(sorted(_s3_options(settings).items())), f"s3://{bucket}/{prefix}", prefix, settings)


def _s3_options(settings: Settings) -> dict[str, str]:
    options = {"aws_region": settings.s3_region}
    if settings.s3_endpoint_url:
        options["aws_endpoint"] = settings.s3_endpoint_url
        if settings.s3_endpoint_url.startswith("http://"):
            options["allow_http"] = "true"
    if settings.s3_sse:  # the table files are encrypted like the images (LanceDB's object store option)
        options["aws_server_side_encryption"] = settings.s3_sse
    key_id, secret, token = _credentials(settings)
    if key_id and secret:
        options["aws_access_key_id"] = key_id
        options["aws_secret_access_key"] = secret
        if token:
            options["aws_session_token"] = token
    return options


def _credentials(settings: Settings) -> tuple[str | None, str | None, str | None]:
    def secret(value) -> str | None:
        return value.get_secret_value() if value is not None else None

    if settings.aws_access_key_id and settings.aws_secret_access_key:
        return secret(settings.aws_access_key_id), secret(settings.aws_secret_access_key), secret(
            settings.aws_session_token
        )
    if settings.aws_profile:
        import boto3

        credentials = boto3.Session(profile_name=settings.aws_profile).get_credentials()
        if credentials is None:
            raise EngineError(f"the AWS profile {settings.aws_profile!r} has no credentials; check AWS_PROFILE")
        frozen = credentials.get_frozen_credentials()
        return frozen.access_key, frozen.secret_key, frozen.token
    return None, None, None  # the object store's own chain: environment, instance or task role


_connections: dict[Location, Any] = {}
_tables: dict[tuple[Location, str], Any] = {}
_lock = threading.Lock()


def connect(where: Location) -> Any:
    """The process's LanceDB connection for `where` (opened on first use)."""
    with _lock:
        db = _connections.get(where)
        if db is None:
            import lancedb

            try:
                db = lancedb.connect(  # no checks of its own: keep_fresh checks every table at once
                    where.uri, storage_options=where.options() or None, read_consistency_interval=None
                )
            except Exception as err:  # noqa: BLE001 - LanceDB's errors have no common base class
                _say_in_storage_words(where)
                raise EngineError(f"cannot open the catalog tables in {where.description}: {_reason(err)}") from None
            _connections[where] = db
            _freshness.setdefault(where, _Freshness())
        return db


def _say_in_storage_words(where: Location) -> None:
    """When LanceDB cannot reach the location: raise Storage's own, specific error when it has one (a bucket that
    is missing or forbidden, an endpoint that is not S3), which says what to fix better than LanceDB's."""
    if where.settings is None:
        return
    from vpm.core.storage import make_storage

    try:
        next(iter(make_storage(where.settings).iter_sizes(where.prefix)), None)
    except StorageError:
        raise
    except Exception:  # noqa: BLE001 - no better words than LanceDB's: the caller says those
        return


class _Freshness:
    """When the open tables of one location were last checked for other processes' commits."""

    def __init__(self) -> None:
        self.checked = time.monotonic()  # a table opened after this opens at its latest version
        self.running: threading.Event | None = None  # set when the check under way is done


_freshness: dict[Location, _Freshness] = {}
# Every table handle given out, by location, as long as someone holds it: a store keeps its handle after `forget`
# drops it from the cache, and LanceDB no longer refreshes one by itself.
_handed_out: dict[Location, weakref.WeakSet] = {}
CHECK_WAIT_S = 60.0  # a read waits this long at most for a check under way (a check is a listing: milliseconds)


def keep_fresh(where: Location) -> None:
    """Call before reading a table of `where`: another process's commits are seen within READ_CONSISTENCY."""
    state = _freshness.get(where)
    if state is None:
        return  # not connected yet: whatever opens next opens at its latest version
    age = time.monotonic() - state.checked
    if age < REFRESH_AFTER.total_seconds():
        return
    done = _start_check(where, state)
    if age >= READ_CONSISTENCY.total_seconds():
        done.wait(CHECK_WAIT_S)


def _start_check(where: Location, state: _Freshness) -> threading.Event:
    with _lock:
        if state.running is not None:
            return state.running
        done = state.running = threading.Event()
        tables = list(_handed_out.get(where, ()))  # those dropped from the cache too, while a store holds one

    def check() -> None:
        started = time.monotonic()
        try:
            _checkout_latest(tables)
        finally:
            with _lock:
                state.checked, state.running = started, None
            done.set()

    threading.Thread(target=check, name="vpm-table-versions", daemon=True).start()
    return done


def _checkout_latest(tables: list) -> None:
    """Every table at its latest version, all checked at once (one listing each: one round trip in all)."""
    def one(table) -> None:
        try:
            table.checkout_latest()
        except Exception as err:  # noqa: BLE001 - the read that follows says what is wrong, in its own words
            log.info("could not check the latest version of %s: %s", getattr(table, "name", "a table"), _reason(err))

    if len(tables) == 1:
        one(tables[0])
        return
    list(_check_pool().map(one, tables))


_checkers = None


def _check_pool():
    """The threads version checks run on, kept for the process (a check every second or so: no thread churn)."""
    global _checkers  # noqa: PLW0603 - one pool a process, made on first use
    from concurrent.futures import ThreadPoolExecutor

    with _lock:
        if _checkers is None:
            _checkers = ThreadPoolExecutor(8, thread_name_prefix="vpm-version")
        return _checkers


def table_names(where: Location) -> list[str]:
    """The tables of `where`, all in one listing a page (a start learns which exist without asking each)."""
    db = connect(where)
    names: list[str] = []
    token = None
    with translated(f"cannot list the tables in {where.description}"):
        while True:  # paginated, as a bucket may hold many tables
            response = db.list_tables(page_token=token, limit=1000)
            names += response.tables
            token = response.page_token
            if not token:
                return names


PRIMARY_KEY = {b"lance-schema:unenforced-primary-key:position": b"1"}


def with_primary_key(schema, column: str):
    """`schema` with `column` marked as the primary key: LanceDB then detects two writers inserting one key
    at once and lets exactly one of them insert it (set at creation, so it needs no commit of its own)."""
    import pyarrow as pa

    return pa.schema([f.with_metadata(PRIMARY_KEY) if f.name == column else f for f in schema])


def open_or_create_table(where: Location, name: str, schema, *,
                         exists: bool | Callable[[], bool] | None = None) -> Any:
    """The table `name`, created empty only when nothing of it exists yet.

    `exists` says whether any object of the table is in storage (the caller lists it through Storage), or is a
    function that says so, asked only when the table does not open (a listing is a round trip to a bucket: a table
    that opens needs none); a table whose files exist but cannot be opened raises TableUnreadable rather than
    being recreated empty.
    """
    key = (where, name)
    with _lock:
        table = _tables.get(key)
    if table is not None:
        return table
    with _opening_lock(key):  # one opener a table per process (tables open side by side); other processes are
        with _lock:            # handled by create's exist_ok
            table = _tables.get(key)
        if table is not None:
            return table
        db = connect(where)
        try:
            table = db.open_table(name)
        except Exception as err:  # noqa: BLE001 - 'does not exist' and 'damaged' arrive as different types
            if callable(exists):
                exists = exists()
            if exists and not _never_committed(where, name):
                raise TableUnreadable(_unreadable(where, name, err)) from None
            table = _create(db, where, name, schema)
        with _lock:
            table = _tables.setdefault(key, table)
            _handed_out.setdefault(where, weakref.WeakSet()).add(table)
            return table


_opening: dict[tuple[Location, str], threading.Lock] = {}


def _opening_lock(key: tuple[Location, str]) -> threading.Lock:
    with _lock:
        return _opening.setdefault(key, threading.Lock())


def _never_committed(where: Location, name: str) -> bool:
    """A table folder with neither a data file nor a version file: a creation killed before its first commit left
    only scratch objects behind, so creating it now loses nothing (anything more is refused as unreadable)."""
    if where.settings is None:
        return False
    from vpm.core.storage import make_storage

    folder = f"{where.prefix}{name}.lance/"
    for key, _size in make_storage(where.settings).iter_sizes(folder):
        rest = key[len(folder):]
        if rest.startswith("data/") or (rest.startswith("_versions/") and version_of(rest.rpartition("/")[2]) is not None):
            return False
    return True


def _unreadable(where: Location, name: str, err: Exception) -> str:
    """Why a table that exists cannot be opened and what to do: when its newest version files are the damaged part
    and an older version opens, those files by name (relative to the catalog folder) and the way back."""
    opened = f"the table {name} in {where.description} exists but cannot be opened"
    try:
        found = damaged_versions(where, name)
    except Exception as why:  # noqa: BLE001 - a diagnosis that fails must not hide the refusal itself
        log.info("could not tell which version of %s is damaged: %s", name, _reason(why))
        found = None
    if found is None:
        return (f"{opened} ({_reason(err)}); it was left untouched: restore it from a backup, or move it aside to "
                "start an empty catalog")
    held = f" ({found.rows} rows)" if found.rows is not None else ""
    if len(found.bad) == 1:
        bad, reason = found.bad[0]
        what = f"its newest version file {bad.key} (version {bad.version}) cannot be read ({reason})"
        files, kept = "that one file", "keeps it"
    else:
        what = (f"its newest {len(found.bad)} version files ({', '.join(b.key for b, _why in found.bad)}; versions "
                f"{found.bad_versions}) cannot be read ({found.bad[0][1]})")
        files, kept = "those files", "keeps them"
    return (
        f"{opened}: {what}. It was left untouched, and the older versions are intact: version {found.good.version} "
        f"opens{held}. To go back to version {found.good.version}, run `python -m vpm check --repair` (it moves "
        f"{files} into the catalog's set-aside folder and {kept}), or move {files} aside, out of the catalog (keep "
        "a copy for a bug report), then try again"
    )


VERSIONS_CHECKED = 4  # the newest version file and up to three before it, when a table will not open
_V2_NAME_DIGITS = 20  # Lance's newer naming: u64::MAX - version, zero-padded, so the newest lists first


def version_of(file_name: str) -> int | None:
    """The version a file of a table's `_versions/` folder holds ("3.manifest", or the newer 20-digit naming);
    None for anything else there (e.g. `latest_version_hint.json`)."""
    stem, dot, ext = file_name.partition(".")
    if ext != "manifest" or not dot or not stem.isdigit():
        return None
    return (2**64 - 1 - int(stem)) if len(stem) == _V2_NAME_DIGITS else int(stem)


@dataclass(frozen=True)
class VersionFile:
    key: str  # the storage key of one version file (a manifest) of a table
    version: int


@dataclass(frozen=True)
class DamagedVersions:
    """A table's newest version files that cannot be read, and the newest older one that opens by itself."""

    bad: list[tuple[VersionFile, str]]  # newest first, each with why it cannot be read
    good: VersionFile
    rows: int | None  # rows of the good version, when its file says
    committed_at: datetime | None  # when the good version was written (UTC), when its file says

    @property
    def bad_versions(self) -> str:
        """"5 and 6", "5, 6 and 7": the versions that cannot be read, oldest first."""
        numbers = [str(b.version) for b, _why in reversed(self.bad)]
        return numbers[0] if len(numbers) == 1 else f"{', '.join(numbers[:-1])} and {numbers[-1]}"


def damaged_versions(where: Location, name: str, limit: int = VERSIONS_CHECKED) -> DamagedVersions | None:
    """When the newest version files of a table cannot be opened by themselves and an older one can (among the
    newest `limit`): which are damaged and which opens. None when the newest version file is fine (the damage is
    elsewhere), when none of them opens, or when it cannot tell.

    Read-only: each version file is read through vpm.core.storage and opened with LanceDB in a scratch folder of its
    own, never where the table lives."""
    import heapq

    from vpm.core.storage import make_storage

    if where.settings is None:
        return None
    storage = make_storage(where.settings)
    folder = f"{where.prefix}{name}.lance/_versions/"
    versions = ((v, key) for key, _size in storage.iter_sizes(folder)  # names only: no file is read to list them
                if (v := version_of(key.rpartition("/")[2])) is not None)
    newest = heapq.nlargest(limit, versions)
    bad: list[tuple[VersionFile, str]] = []
    for version, key in newest:
        opened = version_opens(storage, name, key)
        if isinstance(opened, str):
            bad.append((VersionFile(key, version), opened))
            continue
        if not bad:
            return None  # the newest version file is fine: the damage is elsewhere
        return DamagedVersions(bad, VersionFile(key, version), opened.rows, opened.committed_at)
    return None


@dataclass(frozen=True)
class OpenedVersion:
    version: int
    rows: int | None
    committed_at: datetime | None


def version_opens(storage, name: str, key: str) -> OpenedVersion | str:
    """What one version file of the table `name` says when opened by itself (in a scratch folder, never where the
    table lives), else why it cannot be opened."""
    import tempfile
    from pathlib import Path

    import lancedb

    with tempfile.TemporaryDirectory(prefix="vpm-version-check-") as scratch:
        copy = Path(scratch) / f"{name}.lance" / "_versions" / key.rpartition("/")[2]
        copy.parent.mkdir(parents=True)
        copy.write_bytes(storage.get(key))
        try:
            table = lancedb.connect(scratch).open_table(name)
            version = int(table.version)
        except Exception as why:  # noqa: BLE001 - LanceDB's errors have no common base class
            return _reason(why).removeprefix("lance error: ")
        try:
            rows: int | None = int(table.count_rows())
        except Exception:  # noqa: BLE001 - the count needs more than the version file at times
            rows = None
        return OpenedVersion(version, rows, _committed_at(table, version))


def _committed_at(table, version: int) -> datetime | None:
    """When `version` of an open table was written, in UTC (LanceDB gives a naive local time)."""
    try:
        stamp = next((v["timestamp"] for v in table.list_versions() if int(v["version"]) == version), None)
    except Exception:  # noqa: BLE001 - a nicety: the caller copes without it
        return None
    if stamp is None:
        return None
    return stamp.astimezone(UTC)


def _create(db, where: Location, name: str, schema):
    try:
        return db.create_table(name, schema=schema, exist_ok=True)
    except Exception as first:  # noqa: BLE001 - maybe another process created it at the same moment
        try:
            return db.open_table(name)
        except Exception:  # noqa: BLE001 - then the first error is the one to report
            raise EngineError(f"cannot create the table {name} in {where.description}: {_reason(first)}") from None


def dropped(where: Location, name: str, table: Any) -> bool:
    """Whether `forget` dropped this handle since it was opened: the files changed behind our back, and a held
    handle never goes back to an older version (a damaged one set aside), so its holder opens the table again."""
    with _lock:
        return _tables.get((where, name)) is not table


def forget_table(where: Location, name: str) -> None:
    """Drop the cached handle of one table (after it was dropped or replaced)."""
    with _lock:
        _tables.pop((where, name), None)


def forget(where: Location | None = None) -> None:
    """Drop cached connections and tables (tests; or after the files were replaced behind our back)."""
    with _lock:
        for key in [k for k in _tables if where is None or k[0] == where]:
            del _tables[key]
        for key in [k for k in _connections if where is None or k == where]:
            del _connections[key]
        # The files changed behind our back: the handles stores still hold are checked before their next read.
        for key, state in _freshness.items():
            if where is None or key == where:
                state.checked = float("-inf")


@contextmanager
def translated(what: str):
    """Run engine calls so that any failure becomes one EngineError saying `what` failed and why.

    LanceDB raises whatever its layers raise (OSError, ValueError, RuntimeError, its own errors), so this is
    the one place that catches them all; errors that already speak our language pass through unchanged.
    """
    try:
        yield
    except StorageError:  # EngineError and TableUnreadable included: they already say where and what
        raise
    except Exception as err:  # noqa: BLE001 - the engine's own errors have no common base class
        raise EngineError(f"{what}: {_reason(err)}") from None


IN_LIST_SIZE = 500  # values in one SQL IN (...) list: bounded queries, whatever a caller asks about
CONFLICT_ATTEMPTS = 4


def is_commit_conflict(err: Exception) -> bool:
    """A write that lost a race with another writer's commit (e.g. two servers creating a table at once)."""
    text = str(err).lower()
    return "concurrent transaction" in text or "commit conflict" in text


def retry_conflicts(operation, reopen):
    """Run a table write; when it loses a commit race with another process, reopen the table (its handle may be
    behind: the other writer may have replaced the version it read) and run it again, a few times at most."""
    for attempt in range(CONFLICT_ATTEMPTS):
        try:
            return operation()
        except Exception as err:
            if attempt == CONFLICT_ATTEMPTS - 1 or not is_commit_conflict(err):
                raise
            log.info("a concurrent writer committed first (%s); writing again", _reason(err))
            reopen()
            time.sleep(0.05 * (attempt + 1) + random.random() * 0.05)
    raise AssertionError("unreachable")


def iter_photo_keys(table: Any, read, batch_size: int = 1000):
    """(photo_key, product_id) of every row of a per-photo table, a page at a time; `read` runs a query (the
    table's own error translation)."""
    offset = 0
    while True:
        rows = read(table.search().select(["photo_key", "product_id"]).offset(offset).limit(batch_size))
        keys = list(zip(rows.column("photo_key").to_pylist(), rows.column("product_id").to_pylist(), strict=True))
        if keys:
            yield keys
        if len(keys) < batch_size:
            return
        offset += len(keys)


def chunks(values, size: int = IN_LIST_SIZE):
    """`values` (a sequence) in consecutive slices of at most `size`."""
    for start in range(0, len(values), size):
        yield values[start : start + size]


# Where in LanceDB's Rust sources an error was raised (", /root/.cargo/registry/.../utils.rs:172:20"): a path on
# the machine that built it, of no use to whoever reads the message.
_RUST_SOURCE = re.compile(r",?\s*(?:/|[A-Za-z]:\\)\S*\.rs:\d+:\d+")


def _reason(err: Exception) -> str:
    """One line of what the engine said, without the Rust backtrace or source location it sometimes appends."""
    from vpm.core.config import mask_secrets

    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return mask_secrets(_RUST_SOURCE.sub("", text))[:300]  # LanceDB's errors quote the endpoint URL, password and all


@dataclass(frozen=True)
class TableSummary:
    name: str
    holds: str  # what the table is, for people
    rows: int
    version: int
    fragments: int
    indexes: list[str]


def summarize(table: Any, holds: str) -> TableSummary:
    try:
        stats = table.stats()
        indexes = sorted(f"{', '.join(index.columns)} ({index.index_type})" for index in table.list_indices())
        return TableSummary(table.name, holds, int(stats["num_rows"]), int(table.version),
                            int(stats["fragment_stats"]["num_fragments"]), indexes)
    except Exception as err:  # noqa: BLE001 - LanceDB's errors have no common base class
        raise EngineError(f"cannot describe the table {table.name}: {_reason(err)}") from None


# ------------------------------------------------------------------------------------------- maintenance


def compact_when_due(table: Any, *, after=None, wait: bool = False) -> None:
    """Merge small fragments and fold new rows into indexes once enough have piled up (vpm.backends.maintenance).

    Runs in a background thread so a search or an add never waits for it; at most one per table per process.
    `after` runs once the pass is done (e.g. to build indexes a grown table now needs).
    A pass that loses a race with another writer is simply tried again after a later write.
    """
    from vpm.backends import maintenance

    policy = maintenance.Policy(SMALL_FRAGMENTS_BEFORE_COMPACTION, KEEP_VERSIONS_FOR)
    maintenance.after_write(table, policy, after=after, wait=wait)
