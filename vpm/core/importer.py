"""Bulk-import sources: a folder of images, a .zip of one, or a CSV that lists images and their fields.

This module only reads and describes a source: it turns it into `ImportItem`s (what to add, and how to read
its bytes) plus the entries it refused up front. `Matcher.import_path` decides what is a duplicate and writes
in batches.

- Folder: every image below it; name = the file name made readable, category = the folder the image is in
  (images directly in the chosen folder: "Uncategorized").
- Zip: the same rules inside the archive. If every entry sits under one top folder (a zipped folder), that
  folder counts as the root. Nothing is extracted to disk, so a path like `../../etc/x` cannot escape; such
  entries are still refused and reported. Entry count and total uncompressed size are capped (zip bombs), and
  no entry is read past the per-file limit. An entry whose headers misstate its size (the two headers disagree,
  or it unpacks to more or less than declared) is refused, never read further than one byte past the claim.
- CSV: columns `image` (a path relative to the CSV, or an http(s) URL), `name`, `category`, and optionally
  `price`, `id`, `description`; any other non-empty column is kept as a product attribute. Paths may not point
  outside the CSV's folder. A bad row is reported as failed; the others proceed.

macOS metadata (`__MACOSX/`, `._*`) and other dotfiles are ignored silently: they are not the user's content.
"""

from __future__ import annotations

import copy
import csv
import io
import os
import re
import struct
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from vpm.core import product_schema
from vpm.core.errors import VpmError
from vpm.core.images import ACCEPTED_EXTENSIONS, ACCEPTED_NAMES

MIB = 1024 * 1024
IMAGE_EXTENSIONS = frozenset(f".{extension}" for extension in ACCEPTED_EXTENSIONS)
UNCATEGORIZED = "Uncategorized"
# The image's column, then the product's fields that have one (product_schema): a CSV must name the required ones.
REQUIRED_COLUMNS = product_schema.REQUIRED_COLUMNS
OPTIONAL_COLUMNS = product_schema.OPTIONAL_COLUMNS
# Many exported catalogs (our sample photos' metadata.csv among them) call the image "file", the id "product_id".
COLUMN_ALIASES = {"file": "image", **product_schema.csv_aliases()}


class ImportSourceError(VpmError, ValueError):
    """The source as a whole cannot be imported (missing, unreadable, not a zip, CSV without its columns...)."""


class ItemUnreadable(Exception):
    """One entry's bytes could not be read; the message is the reason shown in the report."""


@dataclass(frozen=True)
class ImportIssue:
    source: str  # the file, zip entry or CSV row it is about
    reason: str
    duplicate: bool = False  # skipped because the catalog has it already (else: not an image, a link...)

    def as_dict(self) -> dict[str, str]:
        return {"source": self.source, "reason": self.reason}


@dataclass(frozen=True)
class ImportLimits:
    max_file_bytes: int = 20 * MIB  # per image (the app passes VPM_MAX_UPLOAD_MB)
    max_members: int = 50_000  # zip entries
    max_total_bytes: int = 4 * 1024 * MIB  # zip: sum of uncompressed sizes


@dataclass
class ImportItem:
    source: str  # shown in the report: relative path, zip entry, or "row N (image)"
    filename: str  # for decode messages and the stored file's extension
    name: str
    category: str
    read: Callable[[], bytes] = field(repr=False)
    price: float | None = None
    description: str | None = None
    product_id: str | None = None
    attributes: dict[str, Any] = field(default_factory=dict)
    # Where the bytes are, as plain strings another process can read them from (`read_origin`): ("file", path,
    # rel), ("zip", archive, member) or ("url", url). A cluster import's workers read the source themselves.
    origin: tuple[str, ...] = ()


@dataclass
class ParsedSource:
    kind: str  # "folder", "zip" or "csv"
    path: Path
    items: list[ImportItem]
    skipped: list[ImportIssue] = field(default_factory=list)
    failed: list[ImportIssue] = field(default_factory=list)
    _close: Callable[[], None] | None = field(default=None, repr=False)

    def close(self) -> None:
        if self._close is not None:
            self._close()
            self._close = None

    def __enter__(self) -> ParsedSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


Fetch = Callable[[str], bytes]


def open_source(
    path: str | os.PathLike, *, limits: ImportLimits = ImportLimits(), fetch: Fetch | None = None
) -> ParsedSource:
    """Describe what `path` would import. Raises ImportSourceError when the source as a whole is unusable."""
    path = Path(path).expanduser()
    if not path.exists():
        raise ImportSourceError(f"{path} does not exist: give a folder of images, a .zip or a .csv file")
    if path.is_dir():
        return _folder(path, limits)
    suffix = path.suffix.lower()
    if suffix == ".zip":
        return _zip(path, limits)
    if suffix in (".csv", ".tsv"):
        return _csv(path, limits, fetch)
    raise ImportSourceError(
        f"{path.name} is neither a folder, a .zip nor a .csv file: give a folder of images, a zip of one, or a "
        "CSV with the columns image, name, category"
    )


# ------------------------------------------------------------------------------------------------ naming


def pretty_name(stem: str) -> str:
    """'red_running-shoe_01' -> 'Red Running Shoe 01'; words already capitalised are kept as they are."""
    words = [w for w in re.split(r"[\s_\-.+]+", stem) if w]
    text = " ".join(w[:1].upper() + w[1:] if w.islower() else w for w in words) or stem.strip() or "Untitled"
    return text[:200]


def category_from(parent: PurePosixPath) -> str:
    """The folder an image sits in; the import's root folder gives "Uncategorized"."""
    name = parent.name.strip() if parent.parts else ""
    return name[:100] if name else UNCATEGORIZED


def _ignored(parts: tuple[str, ...]) -> bool:
    return any(p.startswith(".") or p == "__MACOSX" for p in parts)


def _is_image_name(name: str) -> bool:
    return PurePosixPath(name).suffix.lower() in IMAGE_EXTENSIONS


def _not_an_image(rel: str) -> ImportIssue:
    suffix = PurePosixPath(rel).suffix or "no extension"
    return ImportIssue(
        rel, f"not an image file ({suffix}); {ACCEPTED_NAMES} images are imported"
    )


def _too_big(rel: str, size: int, limit: int) -> ItemUnreadable:
    return ItemUnreadable(
        f"{rel} is {size / MIB:.1f} MB; the limit is {limit / MIB:g} MB per image (VPM_MAX_UPLOAD_MB)"
    )


# ------------------------------------------------------------------------------------------------ folder


def _folder(root: Path, limits: ImportLimits) -> ParsedSource:
    source = ParsedSource("folder", root, [])
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not _ignored((d,)))
        rel_dir = PurePosixPath(Path(dirpath).relative_to(root).as_posix())
        if str(rel_dir) == ".":
            rel_dir = PurePosixPath()
        for name in sorted(filenames):
            if _ignored((name,)):
                continue
            rel = (rel_dir / name).as_posix()
            full = Path(dirpath) / name
            if full.is_symlink():
                source.skipped.append(ImportIssue(rel, "a symbolic link; copy the image itself into the folder"))
                continue
            if not _is_image_name(name):
                source.skipped.append(_not_an_image(rel))
                continue
            source.items.append(
                ImportItem(
                    source=rel, filename=rel, name=pretty_name(PurePosixPath(name).stem),
                    category=category_from(rel_dir), read=_file_reader(full, rel, limits.max_file_bytes),
                    origin=("file", str(full.resolve()), rel),
                )
            )
    return source


def _file_reader(path: Path, rel: str, max_bytes: int) -> Callable[[], bytes]:
    def read() -> bytes:
        try:
            size = path.stat().st_size
            if size > max_bytes:
                raise _too_big(rel, size, max_bytes)
            return path.read_bytes()
        except OSError as err:
            raise ItemUnreadable(f"cannot read {rel}: {err.strerror or err}") from None

    return read


# --------------------------------------------------------------------------------------------------- zip


def _unsafe_member(name: str) -> str | None:
    """Why a zip entry's path is refused (zip-slip), or None."""
    if "\\" in name:
        return "its path uses backslashes"
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        return "its path is absolute"
    if ".." in name.split("/"):
        return "its path climbs out of the archive ('..')"
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        return "its path contains control characters"
    return None


def _zip(path: Path, limits: ImportLimits) -> ParsedSource:
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as err:
        raise ImportSourceError(f"{path.name} is not a readable zip file ({err}): re-create the archive") from None
    try:
        return _zip_entries(path, archive, limits)
    except BaseException:
        archive.close()
        raise


def _zip_entries(path: Path, archive: zipfile.ZipFile, limits: ImportLimits) -> ParsedSource:
    members = [m for m in archive.infolist() if not m.is_dir()]
    if len(members) > limits.max_members:
        raise ImportSourceError(
            f"{path.name} has {len(members):,} entries; at most {limits.max_members:,} are imported at once: "
            "split it into smaller archives"
        )
    declared = sum(m.file_size for m in members)
    if declared > limits.max_total_bytes:
        raise ImportSourceError(
            f"{path.name} would unpack to {declared / MIB:,.0f} MB; "
            f"the limit is {limits.max_total_bytes / MIB:,.0f} MB "
            "(a zip bomb, or simply too much at once): split it into smaller archives"
        )
    source = ParsedSource("zip", path, [], _close=archive.close)
    safe: list[zipfile.ZipInfo] = []
    with path.open("rb") as raw:  # a handle of its own: zipfile's is for reading the entries
        for info in members:
            why = _unsafe_member(info.filename)
            if not why and _ignored(PurePosixPath(info.filename).parts):
                continue
            why = why or _header_problem(raw, info)
            if why:
                source.failed.append(ImportIssue(info.filename, f"refused: {why}"))
                continue
            safe.append(info)
    # A zipped folder puts everything under one top folder: treat that folder as the root.
    tops = {PurePosixPath(m.filename).parts[0] for m in safe}
    strip = len(tops) == 1 and all(len(PurePosixPath(m.filename).parts) > 1 for m in safe)
    budget = _Budget(limits.max_total_bytes)
    for info in sorted(safe, key=lambda m: m.filename):
        rel = PurePosixPath(info.filename)
        inner = PurePosixPath(*rel.parts[1:]) if strip else rel
        if not _is_image_name(rel.name):
            source.skipped.append(_not_an_image(info.filename))
            continue
        source.items.append(
            ImportItem(
                source=info.filename, filename=info.filename, name=pretty_name(rel.stem),
                category=category_from(inner.parent), read=_member_reader(archive, info, limits, budget),
                origin=("zip", str(path.resolve()), info.filename),
            )
        )
    return source


class _Budget:
    """Bytes actually decompressed so far: the declared sizes in a zip can lie."""

    def __init__(self, limit: int):
        self.left = limit


_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")  # a member's local file header, as zipfile itself reads it
_ENCRYPTED = 0x01
_DATA_DESCRIPTOR = 0x08  # the sizes follow the data instead of the local header (a streamed archive)
_ZIP64 = 0xFFFFFFFF  # the sizes are in a zip64 extra field


def _header_problem(fh, info: zipfile.ZipInfo) -> str | None:
    """Why a member is refused from its headers alone, or None: it is encrypted, or its local header states
    another size than the archive's directory (which zipfile trusts), and an archive that says two things about
    one entry was damaged or made to fool one reader or another."""
    if info.flag_bits & _ENCRYPTED:
        return "it is encrypted (password-protected): zip the images again without a password"
    fh.seek(info.header_offset)
    raw = fh.read(_LOCAL_HEADER.size)
    if len(raw) < _LOCAL_HEADER.size or raw[:4] != b"PK\x03\x04":
        return "its local header is missing (the archive is damaged): re-create the archive"
    fields = _LOCAL_HEADER.unpack(raw)
    flags, compressed, size = fields[3], fields[8], fields[9]
    if flags & _DATA_DESCRIPTOR or _ZIP64 in (compressed, size):
        return None
    if (size, compressed) == (info.file_size, info.compress_size):
        return None
    return (f"its headers disagree about its size (its own header says {size:,} bytes, {compressed:,} compressed; "
            f"the archive's directory {info.file_size:,} bytes, {info.compress_size:,} compressed): the archive is "
            "damaged or was tampered with; re-create it")


def _misstated(name: str, declared: int, found: int) -> ItemUnreadable:
    what = f"more than the {declared:,} bytes" if found > declared else f"{found:,} bytes, not the {declared:,}"
    return ItemUnreadable(
        f"{name} unpacks to {what} its header declares: the archive is damaged or was tampered with, so this entry "
        "was not imported (re-create the archive)"
    )


def _member_reader(archive: zipfile.ZipFile, info: zipfile.ZipInfo, limits: ImportLimits, budget: _Budget):
    def read() -> bytes:
        declared = info.file_size
        if declared > limits.max_file_bytes:
            raise _too_big(info.filename, declared, limits.max_file_bytes)
        if declared > budget.left:
            raise ItemUnreadable(
                f"{info.filename}: the archive unpacks to more than {limits.max_total_bytes / MIB:,.0f} MB in total; "
                "the rest is not read (split it into smaller archives)"
            )
        # zipfile stops at the declared size and checks the CRC there: asked for one byte past the claim (the CRC
        # checked here instead), it shows data that unpacks to more than its header says (a bomb behind a small
        # size, read no further) as well as data that ends short of it. At most the declared size + 1 is held.
        probe = copy.copy(info)
        probe.file_size = declared + 1
        del probe.CRC
        try:
            with archive.open(probe) as fh:
                data = fh.read(declared + 1)
        except (zipfile.BadZipFile, OSError, EOFError, RuntimeError, NotImplementedError, zlib.error) as err:
            raise ItemUnreadable(f"{info.filename} is damaged inside the zip ({err})") from None
        if len(data) != declared:
            raise _misstated(info.filename, declared, len(data))
        if zlib.crc32(data) != info.CRC:
            raise ItemUnreadable(f"{info.filename} is damaged inside the zip (its CRC-32 does not match its data)")
        budget.left -= len(data)
        return data

    return read


# --------------------------------------------------------------------------------------------------- csv


def _csv(path: Path, limits: ImportLimits, fetch: Fetch | None) -> ParsedSource:
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise ImportSourceError(f"cannot read {path}: {err.strerror or err}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise ImportSourceError(
            f"{path.name} is not UTF-8 text (byte 0x{raw[err.start]:02x} on row {line}): save it as "
            "\"CSV UTF-8\" and try again"
        ) from None
    if not text.strip():
        raise ImportSourceError(f"{path.name} is empty: it needs a header row with image, name, category")
    first_line = text.splitlines()[0]
    delimiter = "\t" if path.suffix.lower() == ".tsv" else max(",;\t", key=first_line.count)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = next(reader)
    except csv.Error as err:
        raise ImportSourceError(f"{path.name} row 1 is not valid CSV ({err})") from None
    columns = [h.strip().lower() for h in header]
    for alias, column in COLUMN_ALIASES.items():
        if column not in columns and alias in columns:
            columns[columns.index(alias)] = column
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        found = ", ".join(h for h in header if h.strip()) or "none"
        raise ImportSourceError(
            f"{path.name} is missing the required column{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
            f"(found: {found}); the header row must name image, name and category"
        )
    duplicated = sorted({c for c in columns if c and columns.count(c) > 1})
    if duplicated:
        raise ImportSourceError(f"{path.name} has the column {duplicated[0]!r} twice in its header row")

    source = ParsedSource("csv", path, [])
    base = path.parent.resolve()
    row_number = 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as err:
            source.failed.append(ImportIssue(f"row {reader.line_num}", f"not valid CSV ({err})"))
            continue
        row_number = reader.line_num  # the line a spreadsheet shows (header = row 1)
        if not any(cell.strip() for cell in row):
            continue
        if len(row) > len(columns):
            source.failed.append(
                ImportIssue(f"row {row_number}", f"has {len(row)} values but the header names {len(columns)} columns")
            )
            continue
        values = {c: v.strip() for c, v in zip(columns, row, strict=False) if c}
        try:
            source.items.append(_csv_item(values, row_number, base, limits, fetch))
        except _RowError as err:
            label = f"row {row_number}" + (f" ({values.get('image')})" if values.get("image") else "")
            source.failed.append(ImportIssue(label, str(err)))
    return source


class _RowError(ValueError):
    pass


def parse_price(text: str) -> float | None:
    """'12.50', '$1,299.00', '€ 3' -> float; '' -> None. Raises ValueError for anything else."""
    cleaned = re.sub(r"^[\s$€£¥]+|\s+$", "", text).replace(",", "") if text else ""
    if not cleaned:
        return None
    if not re.fullmatch(r"\d+(\.\d+)?", cleaned):
        raise ValueError(text)
    return float(cleaned)


def _csv_item(values: dict[str, str], row: int, base: Path, limits: ImportLimits, fetch: Fetch | None) -> ImportItem:
    for column in REQUIRED_COLUMNS:
        if not values.get(column):
            raise _RowError(f"column {column} is empty")
    fields = {spec.name: _csv_value(spec, values.get(spec.csv_column, "")) for spec in product_schema.CSV_FIELDS}
    image = values["image"]
    label = f"row {row} ({image})"
    if re.match(r"^https?://", image, re.IGNORECASE):
        if fetch is None:
            raise _RowError("image URLs cannot be fetched here")
        read = _url_reader(image, fetch)
        origin: tuple[str, ...] = ("url", image)
        filename = PurePosixPath(image.split("?", 1)[0].split("#", 1)[0]).name or "image"
    elif re.match(r"^[a-z][a-z0-9+.-]*://", image, re.IGNORECASE):
        raise _RowError(f"column image: {image!r} is neither a relative path nor an http(s) URL")
    else:
        target = (base / image).resolve()
        if Path(image).is_absolute() or base not in target.parents:
            raise _RowError(f"column image: {image!r} points outside the CSV's folder; use a path relative to it")
        if not target.is_file():
            raise _RowError(f"column image: {image} does not exist next to the CSV")
        read = _file_reader(target, image, limits.max_file_bytes)
        origin = ("file", str(target), image)
        filename = image
    extra = {c: v for c, v in values.items() if c not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS and v}
    if fields["id"] and fields["id"] != values.get("id"):
        extra["source_id"] = values["id"]  # the id as the CSV wrote it, for people and other tools
    return ImportItem(
        source=label, filename=filename, name=fields["name"], category=fields["category"], read=read,
        price=fields["price"], description=fields["description"], product_id=fields["id"], attributes=extra,
        origin=origin,
    )


def _csv_value(spec: product_schema.ProductField, text: str) -> Any:
    """One CSV cell as the value of its field; an empty cell is no value."""
    if spec.kind == "price":
        try:
            return parse_price(text)
        except ValueError:
            raise _RowError(f"column {spec.csv_column}: {text!r} is not a price (write it like 12.50)") from None
    if spec.kind == "id":
        return catalog_id(text) or None
    return text or None


def catalog_id(text: str) -> str:
    """An id from another system as a catalog id: each run of characters ids cannot hold (anything but letters,
    digits, '-' and '_') becomes one '-' ("abo:B074M5HPBD" -> "abo-B074M5HPBD"); at most 100 characters."""
    return re.sub(r"[^A-Za-z0-9_-]+", "-", text.strip()).strip("-")[:100]


def _url_reader(url: str, fetch: Fetch) -> Callable[[], bytes]:
    def read() -> bytes:
        try:
            return fetch(url)
        except VpmError as err:  # urlfetch.URLRefused / URLFetchError explain why
            raise ItemUnreadable(str(err)) from None

    return read


# ------------------------------------------------------------------------------------- reading elsewhere


def read_origin(origin: tuple[str, ...], limits: ImportLimits, fetch: Fetch | None = None) -> bytes:
    """An item's bytes read from its `origin` by any process that sees the source (a Ray worker on the machine
    that holds it), with the same limits and messages as `ImportItem.read`. Raises ItemUnreadable.

    A zip's running total of decompressed bytes is kept per call here, not per archive: each entry is still
    capped at the per-file limit, and the declared total was checked when the source was opened.
    """
    kind = origin[0] if origin else ""
    if kind == "file":
        return _file_reader(Path(origin[1]), origin[2], limits.max_file_bytes)()
    if kind == "zip":
        archive = _open_archive(origin[1])
        try:
            info = archive.getinfo(origin[2])
        except KeyError:
            raise ItemUnreadable(f"{origin[2]} is no longer in {Path(origin[1]).name}") from None
        return _member_reader(archive, info, limits, _Budget(limits.max_total_bytes))()
    if kind == "url":
        if fetch is None:
            raise ItemUnreadable("image URLs cannot be fetched here")
        return _url_reader(origin[1], fetch)()
    raise ItemUnreadable(f"no way to read {origin!r} in another process")


_archives: dict[str, zipfile.ZipFile] = {}


def _open_archive(path: str) -> zipfile.ZipFile:
    """One open handle per archive per process (a worker reads many entries of one zip)."""
    archive = _archives.get(path)
    if archive is None:
        try:
            archive = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as err:
            raise ItemUnreadable(f"cannot open {Path(path).name} ({err})") from None
        _archives[path] = archive
    return archive
