"""The catalog store on a LanceDB table: one row a product, its photos a list inside the row.

Keeping a product's photos in its own row makes every change to a product one atomic commit. Ids are unique
through LanceDB's primary-key conflict detection (insert-if-absent: of two writers racing on one id exactly
one inserts), and a change to a product is a read-modify-write guarded by the row's revision, retried on
conflict. Listing pages read only the rows they show; `newest_first` walks the table's own order backwards
(rows are appended as they are added or changed), so no page sorts the catalog.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from vpm.backends import engine
from vpm.core import product_schema
from vpm.core.catalog import (
    STORED,
    CatalogCorrupt,
    CatalogStore,
    ConcurrentChange,
    DuplicateProduct,
    Page,
    Photo,
    Product,
    ProductNotFound,
    apply_edit,
    with_photos,
    without_photo,
)

log = logging.getLogger(__name__)

TABLE = "products"
MAX_ATTEMPTS = 50
# Scalar indexes help once a table is big enough that a scan shows; below this a scan is cheaper to keep.
INDEX_FROM_ROWS = 5_000
# Product rows a process keeps from the table's current version (read for search results; dropped when the table
# changes, and all at once past this many: a few hundred MB at most).
CACHED_PRODUCTS = 100_000

# The products table's layout. A table records the version it was written at (SCHEMA_VERSION_KEY in the id
# column's metadata: a key in a field's metadata is the one LanceDB lets a table change after it is created); one
# written at an older version is upgraded when opened (`ensure_version`), one from a newer release is refused.
# Raise SCHEMA_VERSION with every change to the columns; a new column must be nullable (null is its default for
# the rows already there, and the Product model's default is what they read as).
SCHEMA_VERSION = 1
SCHEMA_VERSION_KEY = b"vpm:schema-version"

_PHOTO = pa.struct(
    [
        pa.field("key", pa.string()),
        pa.field("thumbnail_key", pa.string()),
        pa.field("sha256", pa.string()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("added_at", pa.string()),
    ]
)
# How each kind of product field is stored (attributes: a JSON object as text).
_COLUMN_TYPES = {"id": pa.string(), "line": pa.string(), "text": pa.string(), "price": pa.float64(), "json": pa.string()}


def _field_columns() -> list[pa.Field]:
    """The product's own fields (product_schema), each with its casefolded copy when it has one."""
    columns = []
    for spec in product_schema.FIELDS:
        not_null = spec.required or spec.kind == "id"
        columns.append(pa.field(spec.name, _COLUMN_TYPES[spec.kind], nullable=not not_null))
        if spec.casefolded:  # for the name search and the category filter
            columns.append(pa.field(product_schema.key_column(spec.name), pa.string(), nullable=not not_null))
    return columns


def _with_version(schema: pa.Schema) -> pa.Schema:
    return pa.schema([f.with_metadata({**(f.metadata or {}), SCHEMA_VERSION_KEY: str(SCHEMA_VERSION).encode()})
                      if f.name == "id" else f for f in schema])


SCHEMA = _with_version(engine.with_primary_key(pa.schema(
    [
        *_field_columns(),
        pa.field("photos", pa.list_(_PHOTO)),
        pa.field("photo_shas", pa.list_(pa.string())),  # for "which product already has this photo"
        pa.field("file_keys", pa.list_(pa.string())),  # photos and thumbnails: "does a product use this file"
        pa.field("photo_count", pa.int32(), nullable=False),  # summed for "how many photos in all"
        pa.field("created_at", pa.string()),
        pa.field("updated_at", pa.string()),
        pa.field("revision", pa.int64(), nullable=False),
    ]
), "id"))


def sql_string(value: str) -> str:
    """A SQL string literal: quotes doubled, so no value can end the literal early."""
    return "'" + str(value).replace("'", "''") + "'"


def sql_list(values: Iterable[str]) -> str:
    return "(" + ", ".join(sql_string(v) for v in values) + ")"


def to_row(product: Product) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for spec in product_schema.FIELDS:
        value = getattr(product, spec.name)
        row[spec.name] = json.dumps(value, ensure_ascii=False, allow_nan=False) if spec.kind == "json" else value
        if spec.casefolded:
            row[product_schema.key_column(spec.name)] = value.casefold()
    return {
        **row,
        "photos": [p.model_dump() for p in product.photos],
        "photo_shas": [p.sha256 for p in product.photos],
        "file_keys": product.file_keys(),
        "photo_count": len(product.photos),
        "created_at": product.created_at,
        "updated_at": product.updated_at,
        "revision": product.revision,
    }


def to_table(products: Sequence[Product]) -> pa.Table:
    return pa.Table.from_pylist([to_row(p) for p in products], schema=SCHEMA)


def from_row(row: dict[str, Any], where: str) -> Product:
    try:
        attributes = json.loads(row.get("attributes") or "{}")
        return Product.model_validate({**row, "attributes": attributes, "photos": row.get("photos") or []},
                                      context=STORED)
    except Exception as err:  # noqa: BLE001 - a row this code did not write: say which one, never guess
        raise CatalogCorrupt(f"{where}: the row of product {row.get('id')!r} is not a valid product ({err})") from None


class LanceCatalogStore(CatalogStore):
    def __init__(self, where: engine.Location, *, exists: bool | None = None):
        self.where = where
        self._table = None
        self._exists = exists
        self._category_cache: tuple[int, dict[str, int]] | None = None
        self._photo_total: tuple[int, int] | None = None  # (version, photos)
        # (version, {id: product, or None when not there}, whether that is every row): rows read at that version,
        # valid while it is current
        self._rows_cache: tuple[int, dict[str, Product | None], bool] | None = None

    @property
    def description(self) -> str:
        return f"the products table in {self.where.description}"

    @property
    def table(self):
        engine.keep_fresh(self.where)  # other processes' commits: seen within engine.READ_CONSISTENCY
        if self._table is not None and engine.dropped(self.where, TABLE, self._table):
            self._table = None
        if self._table is None:
            table = engine.open_or_create_table(self.where, TABLE, SCHEMA, exists=self._exists)
            ensure_version(table, self.description)
            self._table = table
        return self._table

    # ------------------------------------------------------------------------------------------ reading

    def _rows(self, query) -> list[dict[str, Any]]:
        with engine.translated(f"cannot read {self.description}"):
            return query.to_arrow().to_pylist()

    def _products(self, query) -> list[Product]:
        return [from_row(row, self.description) for row in self._rows(query)]

    def get(self, product_id: str) -> Product:
        found = self.get_many([product_id])
        if product_id not in found:
            raise ProductNotFound(f"no product with id {product_id!r}")
        return found[product_id]

    def get_many(self, product_ids: Sequence[str]) -> dict[str, Product]:
        """These products (ids not in the catalog are left out). Rows already read at the table's current version
        come from memory; the rest are read in one query (on S3 a read is several round trips: a search's
        candidates are asked for every time)."""
        ids = list(dict.fromkeys(product_ids))
        rows = self._cached_rows()
        missing = [i for i in ids if i not in rows]
        if missing and not rows and self._count(None) <= INDEX_FROM_ROWS:
            # Without an index a lookup scans every fragment anyway: the same round trips read every row once
            # (until the table changes, no search reads it again).
            self.warm()
            rows = self._cached_rows()
            missing = [i for i in ids if i not in rows]
        for chunk in engine.chunks(missing):  # bounded IN lists
            query = self.table.search().where(f"id IN {sql_list(chunk)}").limit(len(chunk) * 2)
            found = {product.id: product for product in self._products(query)}
            rows.update({i: found.get(i) for i in chunk})  # None: not in the catalog at this version
        return {i: rows[i] for i in ids if rows.get(i) is not None}

    def _cached_rows(self) -> dict[str, Product | None]:
        """The rows kept from the table's current version (a new, empty dict once it changed)."""
        version = self.version()
        cached = self._rows_cache
        if cached is None or cached[0] != version or len(cached[1]) > CACHED_PRODUCTS:
            cached = self._rows_cache = (version, {}, False)
        return cached[1]

    def warm(self) -> None:
        """Read every row into memory when the table is small (a start's reads, or a search's after a change)."""
        version = self.version()
        if self._count(None) > INDEX_FROM_ROWS:
            return
        every = {product.id: product for product in self._products(self.table.search().limit(None))}
        self._rows_cache = (version, every, True)  # rows newer than `version` are dropped at the next read

    def _every_row(self) -> list[Product] | None:
        """Every product, when all of the current version is in memory."""
        cached = self._rows_cache
        if cached is None or not cached[2] or cached[0] != self.version():
            return None
        return [p for p in cached[1].values() if p is not None]

    @staticmethod
    def _filter(categories: Iterable[str] | None, name_contains: str | None) -> str | None:
        clauses = []
        wanted = sorted({c.strip().casefold() for c in categories or () if c and c.strip()})
        if wanted:
            clauses.append(f"category_key IN {sql_list(wanted)}")
        if name_contains and name_contains.strip():
            clauses.append(f"contains(name_key, {sql_string(name_contains.strip().casefold())})")
        return " AND ".join(clauses) or None

    def page(self, *, offset=0, limit=50, categories=None, name_contains=None, newest_first=True) -> Page:
        offset, limit = max(0, int(offset)), max(1, int(limit))
        where = self._filter(categories, name_contains)
        total = self._count(where)
        if offset >= total:
            return Page([], total, offset, limit)
        size = min(limit, total - offset)
        start = total - offset - size if newest_first else offset
        query = self.table.search()
        if where:
            query = query.where(where)
        items = self._products(query.offset(start).limit(size))
        if newest_first:
            items.reverse()
        return Page(items, total, offset, limit)

    def _count(self, where: str | None) -> int:
        with engine.translated(f"cannot read {self.description}"):
            return self.table.count_rows(where) if where else self.table.count_rows()

    def count(self, categories=None) -> int:
        return self._count(self._filter(categories, None))

    def category_counts(self) -> dict[str, int]:
        version = self.version()
        cached = self._category_cache
        if cached and cached[0] == version:
            return dict(cached[1])
        counts = self._group_categories()
        self._category_cache = (version, counts)
        return dict(counts)

    def _group_categories(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        with engine.translated(f"cannot read {self.description}"):
            batches = self.table.search().select(["category"]).limit(None).to_batches(batch_size=65536)
            for batch in batches:
                grouped = pa.Table.from_batches([batch]).group_by("category").aggregate([("category", "count")])
                for row in grouped.to_pylist():
                    counts[row["category"]] = counts.get(row["category"], 0) + row["category_count"]
        return counts

    def iter_batches(self, batch_size: int = 1000) -> Iterator[list[Product]]:
        offset = 0
        while True:
            items = self._products(self.table.search().offset(offset).limit(batch_size))
            if not items:
                return
            yield items
            if len(items) < batch_size:
                return
            offset += len(items)

    def owners_of(self, shas: Iterable[str]) -> dict[str, str]:
        wanted = sorted(set(shas))
        owners: dict[str, str] = {}
        for chunk in engine.chunks(wanted):
            query = (
                self.table.search()
                .where(f"array_has_any(photo_shas, [{', '.join(sql_string(s) for s in chunk)}])")
                .select(["id", "photo_shas"])
                .limit(None)
            )
            for row in self._rows(query):
                for sha in row["photo_shas"] or ():
                    if sha in chunk:
                        owners.setdefault(sha, row["id"])
        return owners

    def photo_count(self) -> int:
        version = self.version()
        cached = self._photo_total
        if cached and cached[0] == version:
            return cached[1]
        every = self._every_row()
        if every is not None:  # all in memory already: no read
            total = sum(len(p.photos) for p in every)
        else:
            total = 0
            with engine.translated(f"cannot read {self.description}"):
                for batch in self.table.search().select(["photo_count"]).limit(None).to_batches(batch_size=65536):
                    total += int(pc.sum(batch.column("photo_count")).as_py() or 0)
        self._photo_total = (version, total)
        return total

    def referenced(self, keys: Iterable[str]) -> set[str]:
        wanted = sorted(set(keys))
        used: set[str] = set()
        for chunk in engine.chunks(wanted):
            query = (
                self.table.search()
                .where(f"array_has_any(file_keys, [{', '.join(sql_string(k) for k in chunk)}])")
                .select(["file_keys"])
                .limit(None)
            )
            chunk_set = set(chunk)
            for row in self._rows(query):
                used.update(k for k in row["file_keys"] or () if k in chunk_set)
        return used

    def owners_of_keys(self, keys: Iterable[str]) -> dict[str, tuple[str, str]]:
        wanted = sorted(set(keys))
        owners: dict[str, tuple[str, str]] = {}
        for chunk in engine.chunks(wanted):
            query = (
                self.table.search()
                .where(f"array_has_any(file_keys, [{', '.join(sql_string(k) for k in chunk)}])")
                .select(["id", "name", "file_keys"])
                .limit(None)
            )
            chunk_set = set(chunk)
            for row in self._rows(query):
                for key in row["file_keys"] or ():
                    if key in chunk_set:
                        owners.setdefault(key, (row["id"], row["name"]))
        return owners

    def version(self) -> int:
        return int(self.table.version)

    # ------------------------------------------------------------------------------------------ writing

    def add(self, products: Sequence[Product]) -> list[str]:
        products = list(products)
        if not products:
            return []
        ids = [p.id for p in products]
        if len(set(ids)) != len(ids):
            dup = next(i for i in ids if ids.count(i) > 1)
            raise DuplicateProduct(f"product id {dup!r} appears twice in this batch")
        self._write(
            lambda: self.table.merge_insert("id").when_not_matched_insert_all().execute(to_table(products)),
            "add products to",
        )
        # Which rows are ours: compare what is stored with what we sent.
        stored = self.get_many(ids)
        taken = [p.id for p in products if _identity(stored.get(p.id)) != _identity(p)]
        engine.compact_when_due(self.table, after=self.ensure_indexes)
        return taken

    def upsert(self, products: Sequence[Product]) -> None:
        """Insert or replace whole rows (a migration's --overwrite, an upgrade); bypasses revision checks."""
        if not products:
            return
        self._write(
            lambda: self.table.merge_insert("id").when_matched_update_all().when_not_matched_insert_all().execute(
                to_table(list(products))
            ),
            "write products to",
        )
        engine.compact_when_due(self.table, after=self.ensure_indexes)

    def update(self, product_id: str, **fields: Any) -> Product:
        return self._change(product_id, lambda p: apply_edit(p, fields))

    def add_photos(self, product_id: str, photos: Sequence[Photo]) -> Product:
        return self._change(product_id, lambda p: with_photos(p, photos))

    def remove_photo(self, product_id: str, key: str) -> Product:
        return self._change(product_id, lambda p: without_photo(p, key))

    def _change(self, product_id: str, change) -> Product:
        """Read, change, write only if nobody changed the row since it was read; otherwise again."""
        for attempt in range(MAX_ATTEMPTS):
            if attempt:  # someone else changed the row: read it at the table's latest version, not this handle's
                with engine.translated(f"cannot read {self.description}"):
                    self.table.checkout_latest()
            current = self.get(product_id)
            changed = change(current)
            guard = f"target.revision = {int(current.revision)}"
            row = to_table([changed])
            result = self._write(
                lambda guard=guard, row=row: self.table.merge_insert("id").when_matched_update_all(where=guard)
                .execute(row),
                "change a product in",
            )
            if result.num_updated_rows == 1:
                engine.compact_when_due(self.table, after=self.ensure_indexes)
                return changed
            time.sleep(min(0.2, 0.005 * 2 ** min(attempt, 6)) * random.random())  # someone else won; re-read
        raise ConcurrentChange(f"product {product_id!r} kept changing under this edit: try again")

    def delete(self, product_ids: Sequence[str]) -> list[Product]:
        ids = list(dict.fromkeys(product_ids))
        if not ids:
            return []
        found = self.get_many(ids)
        missing = [i for i in ids if i not in found]
        if missing:
            raise ProductNotFound(f"no product with id {missing[0]!r}")
        self._write(lambda: self.table.delete(f"id IN {sql_list(ids)}"), "delete products from")
        engine.compact_when_due(self.table, after=self.ensure_indexes)
        return [found[i] for i in ids]

    def _write(self, operation, what: str):
        with engine.translated(f"could not {what} {self.description}"):
            return operation()

    # --------------------------------------------------------------------------------------- maintenance

    def ensure_indexes(self) -> None:
        """Scalar indexes for lookups by id, category and photo hash, once the table is big enough."""
        ensure_scalar_indexes(self.table, {"id": "btree", "category_key": "bitmap", "photo_shas": "label_list", "file_keys": "label_list"})


class TableTooNew(engine.TableUnreadable):
    """The table was written by a newer release, in a layout this one does not know: left untouched."""


def stored_version(table) -> int:
    """The schema version a table was written at; 0 for a table of the releases before versions were kept."""
    metadata = table.schema.field("id").metadata or {}
    raw = metadata.get(SCHEMA_VERSION_KEY)
    try:
        return int(raw) if raw is not None else 0
    except ValueError:
        raise TableTooNew(f"the schema version of {TABLE} is {raw!r}, which this release cannot read") from None


def ensure_version(table, description: str) -> None:
    """Bring a table written by an older release up to SCHEMA_VERSION: the columns it lacks are added (null in its
    rows), then the version is stamped. A table from a newer release is refused, never changed.

    Safe when several processes open the same old table at once: after a failed step each reads the table again
    and finds the work another did."""
    version = _known_version(table, description)
    if version == SCHEMA_VERSION:
        return
    failure: Exception | None = None
    for _attempt in range(3):
        missing = [f for f in SCHEMA if f.name not in table.schema.names]
        try:
            if missing:
                _add_columns(table, missing, description)
            table.update_field_metadata({"path": "id", "metadata": {SCHEMA_VERSION_KEY.decode(): str(SCHEMA_VERSION)}})
        except engine.TableUnreadable:
            raise
        except Exception as err:  # noqa: BLE001 - another process may have upgraded it first: look again
            failure = err
            with engine.translated(f"cannot read {description}"):
                table.checkout_latest()
            if _known_version(table, description) == SCHEMA_VERSION:
                return
            continue
        added = f" (added {', '.join(f.name for f in missing)})" if missing else ""
        log.info("upgraded %s from schema version %d to %d%s", description, version, SCHEMA_VERSION, added)
        return
    reason = engine._reason(failure) if failure else "unknown"
    if any(f.name not in table.schema.names for f in SCHEMA):
        raise engine.TableUnreadable(
            f"could not upgrade {description} to schema version {SCHEMA_VERSION} ({reason}): check that the "
            "catalog can be written to, then start again; the table was left as it was"
        )
    # Every column is there, so the table reads and writes as it is, only unstamped: try again at the next start.
    log.warning("could not record schema version %d on %s: %s", SCHEMA_VERSION, description, reason)


def _known_version(table, description: str) -> int:
    """The table's schema version, refused when it is newer than this release knows."""
    version = stored_version(table)
    if version > SCHEMA_VERSION:
        raise TableTooNew(
            f"{description} was written by a newer release of Visual Product Matcher (schema version {version}; "
            f"this one reads up to {SCHEMA_VERSION}): upgrade vpm to open it; the table was left untouched"
        )
    return version


def _add_columns(table, missing: list[pa.Field], description: str) -> None:
    not_null = [f.name for f in missing if not f.nullable]
    if not_null:  # nothing to fill them with: a table this code did not write
        raise engine.TableUnreadable(
            f"{description} lacks the column{'s' if len(not_null) > 1 else ''} {', '.join(not_null)}, which cannot "
            "be filled in: it was not written by Visual Product Matcher, or is damaged; restore it from a backup"
        )
    table.add_columns([f.remove_metadata() for f in missing])


def ensure_scalar_indexes(table, wanted: dict[str, str]) -> None:
    try:
        if table.count_rows() < INDEX_FROM_ROWS:
            return
        from lancedb.index import Bitmap, BTree, LabelList

        configs = {"btree": BTree, "bitmap": Bitmap, "label_list": LabelList}
        have = {next(iter(index.columns)) for index in table.list_indices()}
        for column, kind in wanted.items():
            if column not in have:
                table.create_index(column, config=configs[kind]())
                log.info("built a %s index on %s.%s", kind, table.name, column)
    except Exception as err:  # noqa: BLE001 - an index is an optimisation: a failure is logged, never fatal
        log.warning("could not index %s: %s", table.name, engine._reason(err))


def _identity(product: Product | None):
    """What tells our row from someone else's with the same id: the whole product (a photo's key carries a
    token of its upload, so two writers never produce equal rows by chance)."""
    return None if product is None else product.model_dump()
