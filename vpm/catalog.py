"""The product catalog: `metadata/products.json` in storage, changed only by guarded read-modify-write.

Data-safety rules (DESIGN.md): the image is written before the metadata that points at it; delete removes
the metadata first, then the image. Every change to products.json is a conditional put on the ETag that was
read (IfMatch, or IfNoneMatch for the first write); on a conflict the change is re-applied to a fresh read.
A products.json that is not valid is reported, never silently replaced by an empty catalog.
"""

from __future__ import annotations

import json
import logging
import math
import random
import re
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .storage import ObjectNotFound, PreconditionFailed, Storage, StorageError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,100}$")


class CatalogError(Exception):
    """A catalog operation could not be done; the message says why."""


class CatalogCorrupt(CatalogError):
    pass


class ProductNotFound(CatalogError, KeyError):
    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "product not found"


class DuplicateProduct(CatalogError):
    pass


class InvalidProduct(CatalogError, ValueError):
    pass


def new_product_id() -> str:
    return "product_" + uuid.uuid4().hex[:12]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# Control characters in a name forge log lines ("\n...CRITICAL") and drive terminals (ESC sequences through
# `vpm list`). Line breaks and tabs become one space; every other C0/C1 control and the bidi overrides that
# reorder what a reader sees are dropped.
_LINE_BREAKS_RE = re.compile(r"[\t\n\r\v\f\u0085\u2028\u2029]+")
_CONTROL_RE = re.compile(r"[\x00-\x08\x0e-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")
# In a description line breaks are content; other controls are dropped.
_DESCRIPTION_CONTROL_RE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def one_line_text(value: str) -> str:
    """A name or category as one plain line: line breaks to a space, control characters removed."""
    return _CONTROL_RE.sub("", _LINE_BREAKS_RE.sub(" ", value)).strip()


def _json_safe(value: Any, where: str) -> Any:
    """Attributes must survive strict JSON: finite numbers, strings, booleans, None, lists and objects."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{where} is {value}, not a finite number")
    if isinstance(value, dict):
        return {str(k): _json_safe(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise ValueError(f"{where} is a {type(value).__name__}, not a JSON value")


class Product(BaseModel):
    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)

    id: str = Field(default_factory=new_product_id)
    name: str = Field(min_length=1, max_length=200)
    category: str = Field(min_length=1, max_length=100)
    # allow_inf_nan=False: 1e309 parses to inf, which passes ge=0 and then breaks strict JSON and every search.
    price: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    description: str | None = Field(default=None, max_length=5000)
    attributes: dict[str, Any] = Field(default_factory=dict)
    image_key: str | None = None
    thumbnail_key: str | None = None
    image_sha256: str | None = None
    created_at: str = Field(default_factory=_now)

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        if not _ID_RE.match(v):
            raise ValueError("may contain only letters, digits, '-' and '_' (1-100 characters)")
        return v

    @field_validator("name", "category", mode="before")
    @classmethod
    def _one_line(cls, v):
        return one_line_text(v) if isinstance(v, str) else v

    @field_validator("description", mode="before")
    @classmethod
    def _blank_description(cls, v):
        if isinstance(v, str):
            v = _DESCRIPTION_CONTROL_RE.sub("", v)
        return None if isinstance(v, str) and not v.strip() else v

    @field_validator("attributes")
    @classmethod
    def _attributes(cls, v: dict[str, Any]) -> dict[str, Any]:
        return _json_safe(v, "attributes")


def validate_product(**fields: Any) -> Product:
    """Build a Product, turning pydantic's report into one readable line."""
    try:
        return Product(**{k: v for k, v in fields.items() if v is not None})
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "product"
        msg = first["msg"].removeprefix("Value error, ")
        raise InvalidProduct(f"invalid {field}: {msg}") from None


@dataclass(frozen=True)
class Snapshot:
    """products.json as read: its revision, products in insertion order, and the ETag to guard a write."""

    revision: int
    products: list[Product]
    etag: str | None  # None when the catalog does not exist yet

    def by_id(self) -> dict[str, Product]:
        return {p.id: p for p in self.products}


class Catalog:
    def __init__(self, storage: Storage, metadata_key: str = "metadata/products.json", max_retries: int = 50):
        self.storage = storage
        self.metadata_key = metadata_key
        self.max_retries = max_retries

    # ---------------------------------------------------------------------------------------- reading

    def load(self) -> Snapshot:
        try:
            raw, etag = self.storage.get_with_etag(self.metadata_key)
        except ObjectNotFound:
            return Snapshot(0, [], None)
        return Snapshot(*self._parse(raw), etag)

    def _parse(self, raw: bytes) -> tuple[int, list[Product]]:
        where = f"{self.metadata_key} in {self.storage.description}"
        try:
            doc = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise CatalogCorrupt(
                f"{where} is not valid JSON ({err}); fix or restore the file — it was left untouched"
            ) from None
        if isinstance(doc, list):  # earliest format: a bare list of products
            doc = {"version": 0, "products": doc}
        if not isinstance(doc, dict) or not isinstance(doc.get("products"), list):
            raise CatalogCorrupt(
                f"{where} is not a catalog: expected {{\"version\": N, \"products\": [...]}}; it was left untouched"
            )
        schema = doc.get("schema", SCHEMA_VERSION)
        if not isinstance(schema, int) or schema > SCHEMA_VERSION:
            raise CatalogCorrupt(f"{where} has schema {schema!r}, newer than this app understands ({SCHEMA_VERSION})")
        products = []
        for i, item in enumerate(doc["products"]):
            item = _without_non_finite_price(item, i, where)
            try:
                products.append(Product.model_validate(item))
            except ValidationError as err:
                first = err.errors()[0]
                field = ".".join(str(p) for p in first["loc"])
                raise CatalogCorrupt(
                    f"{where}: product #{i + 1} is invalid ({field}: {first['msg']}); it was left untouched"
                ) from None
        revision = doc.get("version", 0)
        return (revision if isinstance(revision, int) else 0), products

    def list(self) -> list[Product]:
        return self.load().products

    def get(self, product_id: str) -> Product:
        for p in self.load().products:
            if p.id == product_id:
                return p
        raise ProductNotFound(f"no product with id {product_id!r}")

    def categories(self) -> list[str]:
        return categories_of(self.list())

    # ---------------------------------------------------------------------------------------- writing

    def mutate(self, change: Callable[[list[Product]], list[Product]]) -> Snapshot:
        """Apply `change` to the current products and write the result, guarded by the ETag that was read.

        `change` must be a pure function of its input: on a conflict it runs again on a fresh read. It may
        raise CatalogError to abort without writing.
        """
        for attempt in range(self.max_retries):
            snap = self.load()
            products = change(list(snap.products))
            doc = {
                "schema": SCHEMA_VERSION,
                "version": snap.revision + 1,
                "updated_at": _now(),
                "products": [p.model_dump(mode="json") for p in products],
            }
            # allow_nan=False: strict JSON, so other tools (and `vpm list --json`) can always read it.
            body = json.dumps(doc, indent=2, ensure_ascii=False, allow_nan=False).encode()
            try:
                if snap.etag is None:
                    etag = self.storage.put(self.metadata_key, body, "application/json", if_none_match=True)
                else:
                    etag = self.storage.put(self.metadata_key, body, "application/json", if_match=snap.etag)
                return Snapshot(snap.revision + 1, products, etag)
            except PreconditionFailed:
                # Someone else wrote first: back off a little (with jitter, so 20 writers spread out) and redo.
                time.sleep(min(0.5, 0.005 * (2 ** min(attempt, 7))) * random.random())
        raise CatalogError(
            f"{self.metadata_key} kept changing under us ({self.max_retries} attempts): try again"
        )

    def add_products(self, products: Iterable[Product]) -> list[Product]:
        """Add products in one write. Duplicate ids (against the catalog or each other) abort the write."""
        new = list(products)
        ids = [p.id for p in new]
        if len(set(ids)) != len(ids):
            dup = next(i for i in ids if ids.count(i) > 1)
            raise DuplicateProduct(f"product id {dup!r} appears twice in this batch")

        def change(current: list[Product]) -> list[Product]:
            existing = {p.id for p in current}
            clash = [i for i in ids if i in existing]
            if clash:
                raise DuplicateProduct(f"a product with id {clash[0]!r} already exists")
            return current + new

        self.mutate(change)
        return new

    def add(self, product: Product) -> Product:
        return self.add_products([product])[0]

    def update(self, product_id: str, **fields: Any) -> Product:
        """Change name/category/price/description/attributes; id, image and timestamps stay."""
        allowed = {"name", "category", "price", "description", "attributes"}
        unknown = set(fields) - allowed
        if unknown:
            raise InvalidProduct(f"cannot edit {', '.join(sorted(unknown))}")
        result: list[Product] = []

        def change(current: list[Product]) -> list[Product]:
            out = []
            found = None
            for p in current:
                if p.id == product_id:
                    found = validate_product(**{**p.model_dump(), **fields})
                    out.append(found)
                else:
                    out.append(p)
            if found is None:
                raise ProductNotFound(f"no product with id {product_id!r}")
            result[:] = [found]
            return out

        self.mutate(change)
        return result[0]

    def remove(self, product_ids: Iterable[str]) -> list[Product]:
        """Remove products from the metadata only (the caller deletes their files afterwards)."""
        wanted = set(product_ids)
        removed: list[Product] = []

        def change(current: list[Product]) -> list[Product]:
            missing = wanted - {p.id for p in current}
            if missing:
                raise ProductNotFound(f"no product with id {sorted(missing)[0]!r}")
            removed[:] = [p for p in current if p.id in wanted]
            return [p for p in current if p.id not in wanted]

        self.mutate(change)
        return removed


def _without_non_finite_price(item: Any, index: int, where: str) -> Any:
    """A product stored before prices had to be finite (`Infinity`, `NaN`) loads with no price, and says so."""
    if not isinstance(item, dict):
        return item
    price = item.get("price")
    if isinstance(price, float) and not math.isfinite(price):
        log.warning(
            "%s: product %r (#%d) has the price %s, which is not a number; it is shown without a price until "
            "it is edited", where, str(item.get("id", "?"))[:100], index + 1, price,
        )
        return {**item, "price": None}
    return item


def categories_of(products: Iterable[Product]) -> list[str]:
    """The distinct categories of `products`, sorted as people expect (ignoring case)."""
    return sorted({p.category for p in products}, key=str.casefold)


def image_keys(product: Product) -> list[str]:
    return [k for k in (product.image_key, product.thumbnail_key) if k]


__all__ = [
    "Catalog",
    "CatalogCorrupt",
    "CatalogError",
    "DuplicateProduct",
    "InvalidProduct",
    "Product",
    "ProductNotFound",
    "categories_of",
    "Snapshot",
    "StorageError",
    "image_keys",
    "new_product_id",
    "validate_product",
]
