"""A catalog table that will not open: which of its newest versions are damaged, and setting them aside.

A table is a folder of data files plus one small version file (a manifest) per change; LanceDB opens the newest
version file. When that file is damaged (a crash mid-write on a disk that lies, a stray file copied in) every
command refuses, although the older versions are intact. The way back sets the unreadable newest version files
aside: it copies them into `<metadata>/set-aside/<time>-<table>/` with a `set-aside.json` that says what they were
and why, checks every copy, and only then removes them from the table, which then opens at its newest readable
version. Nothing is ever deleted that was not copied first; when the table still does not open after that, the
files are put back where they were.

Works the same on a local folder and on S3: files are moved through vpm.core.storage (copy, verify, delete), and each
version file is tried in a scratch folder of its own (vpm.backends.engine.damaged_versions), never where the table lives.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from vpm.backends import engine
from vpm.core.storage import ObjectNotFound, Storage, StorageError

log = logging.getLogger(__name__)

SET_ASIDE_FOLDER = "set-aside/"  # under the metadata prefix, beside the tables (not a table itself)
RECORD_NAME = "set-aside.json"
# Version files tried, newest first, when looking for one that opens: a table whose last 20 changes are all damaged
# is beyond this repair (restore it from a backup).
VERSIONS_TRIED = 20
VALIDATE_BATCH = 10_000  # rows a batch when a repaired table is read through once


class RepairError(StorageError):
    """A repair could not be done (or undone); the message says what state the table is in and what to do."""


@dataclass(frozen=True)
class TableState:
    """One catalog table as `vpm check` sees it: does it open, and if not, can setting versions aside fix it."""

    name: str
    readable: bool
    rows: int | None = None
    version: int | None = None
    problem: str = ""  # why it does not open ("" when it does)
    plan: engine.DamagedVersions | None = None  # the versions to set aside, when that brings it back

    def as_dict(self) -> dict[str, Any]:
        found: dict[str, Any] = {"table": self.name, "readable": self.readable, "rows": self.rows,
                                 "version": self.version, "problem": self.problem}
        if self.plan is not None:
            found["set_aside"] = {
                "versions": [bad.version for bad, _why in self.plan.bad],
                "files": [bad.key for bad, _why in self.plan.bad],
                "opens_at_version": self.plan.good.version,
                "rows_then": self.plan.rows,
            }
        return found

    def plan_line(self) -> str:
        """What setting aside will do, for people ("" when there is nothing it can do)."""
        if self.plan is None:
            return ""
        plan = self.plan
        count = len(plan.bad)
        rows = f" ({plan.rows:,} rows)" if plan.rows is not None else ""
        versions = f"version {plan.bad_versions}" if count == 1 else f"versions {plan.bad_versions}"
        last = "the last change" if count == 1 else f"the last {count} changes"
        return (f"{self.name}: set aside {versions} ({last} made to the table; "
                f"{'its file' if count == 1 else 'their files'}: {', '.join(bad.key for bad, _why in plan.bad)}); "
                f"the table then opens at version {plan.good.version}{rows}")


@dataclass(frozen=True)
class SetAsideResult:
    table: str
    folder: str  # where the version files now are
    versions: list[int]  # newest first
    moved: list[tuple[str, str]]  # (from, to)
    transactions: list[str]  # copies of the set-aside changes' transaction files (context for a bug report)
    version: int  # the table's version now
    rows: int

    def summary(self) -> str:
        count = len(self.versions)
        numbers = ", ".join(str(v) for v in sorted(self.versions))
        return (f"{self.table}: set aside {'version' if count == 1 else 'versions'} {numbers} "
                f"({_changes(count)}) in {self.folder}; the table opens at version {self.version} with "
                f"{self.rows:,} rows")

    def as_dict(self) -> dict[str, Any]:
        return {"table": self.table, "folder": self.folder, "versions": self.versions, "changes": len(self.versions),
                "moved": [{"from": a, "to": b} for a, b in self.moved], "transactions": self.transactions,
                "version": self.version, "rows": self.rows}


@dataclass(frozen=True)
class SetAsideRecord:
    """One earlier set-aside, read back from its `set-aside.json`."""

    folder: str
    table: str
    versions: list[int]
    readable_version: int
    readable_version_committed_at: datetime | None
    set_aside_at: datetime | None
    extra: dict[str, Any] = field(default_factory=dict)


def _changes(count: int) -> str:
    return f"{count} change" if count == 1 else f"{count} changes"


# -------------------------------------------------------------------------------------------------- looking


def table_names(storage: Storage, where: engine.Location) -> list[str]:
    """The tables under the metadata prefix (each a `<name>.lance/` folder), listed a page at a time."""
    names: list[str] = []
    token = None
    while True:
        page = storage.list(where.prefix, delimiter="/", page_size=1000, token=token)
        names += [p[len(where.prefix):-len(".lance/")] for p in page.prefixes if p.endswith(".lance/")]
        if not page.next_token:
            return sorted(names)
        token = page.next_token


def probe(where: engine.Location, name: str, *, versions_tried: int = VERSIONS_TRIED) -> TableState:
    """Open one table afresh (never a cached handle) and count its rows; when it will not open, find out whether
    setting its newest version files aside brings it back. Changes nothing."""
    try:
        table = engine.connect(where).open_table(name)
        return TableState(name, True, int(table.count_rows()), int(table.version))
    except engine.EngineError as err:
        return TableState(name, False, problem=str(err))
    except Exception as err:  # noqa: BLE001 - LanceDB's errors have no common base class
        why = engine._reason(err)
    try:
        plan = engine.damaged_versions(where, name, limit=versions_tried)
    except Exception as err:  # noqa: BLE001 - a diagnosis that fails leaves the refusal as it is
        log.info("could not tell which version of %s is damaged: %s", name, engine._reason(err))
        plan = None
    if plan is None:
        problem = (f"the table {name} in {where.description} cannot be opened ({why}), and none of its newest "
                   f"{versions_tried} version files opens by itself (or the damage is not in them): setting versions "
                   "aside cannot bring it back; restore it from a backup")
    else:
        which = f"version {plan.bad_versions}" if len(plan.bad) == 1 else f"versions {plan.bad_versions}"
        problem = (f"the table {name} in {where.description} cannot be opened: its newest {which} cannot be read "
                   f"({plan.bad[0][1]}); version {plan.good.version} opens")
    return TableState(name, False, problem=problem, plan=plan)


def probe_all(storage: Storage, where: engine.Location) -> list[TableState]:
    return [probe(where, name) for name in table_names(storage, where)]


# ------------------------------------------------------------------------------------------------ repairing


def set_aside(storage: Storage, where: engine.Location, state: TableState, *, now: datetime | None = None) -> SetAsideResult:
    """Set the table's unreadable newest version files aside (copy, verify, then remove) and open it at its newest
    readable version. Raises RepairError, with the table as it was, when that does not make it open."""
    if state.plan is None:
        raise RepairError(f"nothing was changed: {state.problem or f'the table {state.name} opens'}")
    plan = state.plan
    now = now or datetime.now(UTC)
    folder = f"{where.prefix}{SET_ASIDE_FOLDER}{now:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}-{state.name}/"
    originals: dict[str, bytes] = {}
    moved: list[tuple[str, str]] = []
    for bad, _why in plan.bad:  # copy and check every file first: nothing is removed before all are safe
        data = storage.get(bad.key)
        target = f"{folder}_versions/{bad.key.rpartition('/')[2]}"
        storage.put(target, data, "application/octet-stream", if_none_match=True)
        if storage.get(target) != data:
            raise RepairError(f"nothing was removed from {state.name}: the copy of {bad.key} in {folder} reads back "
                              "different bytes; check the storage and try again")
        originals[bad.key] = data
        moved.append((bad.key, target))
    transactions = _copy_transactions(storage, where, state.name, plan.good.version, folder)
    _write_record(storage, folder, state, moved, transactions, now)
    for key in originals:
        storage.delete(key)
    engine.forget(where)  # every cached handle of this location is stale now
    try:
        version, rows = _read_through(where, state.name)
    except Exception as err:  # noqa: BLE001 - put everything back as it was, then say why
        _put_back(storage, where, originals, folder, moved, transactions)
        raise RepairError(
            f"setting versions {plan.bad_versions} of {state.name} aside did not make it open "
            f"({engine._reason(err)}), so they were put back where they were and the table is as it was: restore it "
            "from a backup"
        ) from None
    log.info("set aside version(s) %s of the table %s in %s; it opens at version %d (%d rows)",
             plan.bad_versions, state.name, folder, version, rows)
    return SetAsideResult(state.name, folder, [bad.version for bad, _why in plan.bad], moved, transactions,
                          version, rows)


def _read_through(where: engine.Location, name: str) -> tuple[int, int]:
    """Open the table afresh and read one column of every row (every data file is touched): (version, rows)."""
    table = engine.connect(where).open_table(name)
    column = table.schema.names[0]
    rows = sum(batch.num_rows for batch in table.search().select([column]).to_batches(VALIDATE_BATCH))
    return int(table.version), rows


def _copy_transactions(storage: Storage, where: engine.Location, name: str, good: int, folder: str) -> list[str]:
    """Copies of the transaction files of the changes set aside (named `<version read>-<id>.txn`: a change that
    read version `good` or later), beside the version files. The originals stay: LanceDB only reads the ones a
    version file names."""
    copied: list[str] = []
    for key, _size in storage.iter_sizes(f"{where.prefix}{name}.lance/_transactions/"):
        read, dash, _rest = key.rpartition("/")[2].partition("-")
        if not dash or not read.isdigit() or int(read) < good:
            continue
        target = f"{folder}_transactions/{key.rpartition('/')[2]}"
        try:
            storage.put(target, storage.get(key), "application/octet-stream", if_none_match=True)
        except StorageError as err:  # context only: the version files are what matters
            log.info("could not copy the transaction file %s: %s", key, err)
            continue
        copied.append(target)
    return copied


def _write_record(storage: Storage, folder: str, state: TableState, moved, transactions, now: datetime) -> None:
    plan = state.plan
    assert plan is not None
    record = {
        "what": (f"The newest version files of the catalog table {state.name!r} could not be read, so every command "
                 "refused to open it. They were moved here by `python -m vpm check --repair` (never deleted), and "
                 f"the table opened at version {plan.good.version} again. The data files their changes wrote stay in "
                 "the table's data/ folder."),
        "how_to_restore": ("Only if these files are repaired: stop every writer, then copy _versions/* back into "
                           f"{state.name}.lance/_versions/ (a table changed since would then hold two different "
                           "versions of one number: keep a backup)."),
        "table": state.name,
        "set_aside_at": now.isoformat(),
        "changes": len(plan.bad),
        "versions": [{"version": bad.version, "from": source, "to": target, "why": why}
                     for (bad, why), (source, target) in zip(plan.bad, moved, strict=True)],
        "transactions": transactions,
        "readable_version": plan.good.version,
        "readable_rows": plan.rows,
        "readable_version_committed_at": plan.committed_at.isoformat() if plan.committed_at else None,
    }
    storage.put(f"{folder}{RECORD_NAME}", json.dumps(record, indent=2).encode(), "application/json",
                if_none_match=True)


def _put_back(storage: Storage, where: engine.Location, originals: dict[str, bytes], folder: str, moved,
              transactions: list[str]) -> None:
    """Undo a set-aside that did not help: the version files back in place, then our own copies removed."""
    for key, data in originals.items():
        storage.put(key, data, "application/octet-stream")
    engine.forget(where)
    for key in [target for _source, target in moved] + transactions + [f"{folder}{RECORD_NAME}"]:
        try:
            storage.delete(key)  # copies this repair made a moment ago, of files now back where they were
        except StorageError as err:
            log.info("could not remove %s: %s", key, err)


# ----------------------------------------------------------------------------------------- earlier set-asides


def records(storage: Storage, where: engine.Location) -> Iterator[SetAsideRecord]:
    """Every earlier set-aside of this catalog, read from its `set-aside.json` (a folder without one is skipped)."""
    base = f"{where.prefix}{SET_ASIDE_FOLDER}"
    token = None
    while True:
        page = storage.list(base, delimiter="/", page_size=1000, token=token)
        for folder in page.prefixes:
            try:
                data = json.loads(storage.get(f"{folder}{RECORD_NAME}"))
                yield SetAsideRecord(
                    folder, str(data["table"]), [int(v["version"]) for v in data.get("versions", [])],
                    int(data["readable_version"]), _moment(data.get("readable_version_committed_at")),
                    _moment(data.get("set_aside_at")), data,
                )
            except (ObjectNotFound, ValueError, KeyError, TypeError) as err:
                log.info("skipping %s: no readable %s (%s)", folder, RECORD_NAME, err)
        if not page.next_token:
            return
        token = page.next_token


def _moment(text: Any) -> datetime | None:
    if not isinstance(text, str):
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment
