"""The product model (a product has one or more photos) and the catalog store contract.

`CatalogStore` is what every face reads and writes products through; `vpm/backends/lance_catalog.py` implements it on
LanceDB tables beside the images, and one contract suite (tests/test_catalog_store.py) runs against every
implementation, local and S3. The store holds rows only: the files a photo points at are written before the
row that points at them, and deleted after it, by the Matcher.
"""

from __future__ import annotations

import logging
import math
import re
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from vpm.core.errors import VpmError
from vpm.core.product_schema import EDITABLE, ID_PATTERN, MAX_PRICE, spec

log = logging.getLogger(__name__)

_ID_RE = re.compile(ID_PATTERN)
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
MAX_PHOTOS = 50  # per product: enough for every side of a product, few enough to show on one page
MAX_PAGE = 1000  # products on one page of a listing, on every face (the API's limit, the CLI's --limit)
# MAX_PRICE (product_schema) is the largest price a new or changed product may have. Rows already stored with more
# stay readable (validated with STORED), and show in scientific notation.
STORED = {"stored": True}  # validation context for rows read back: what was accepted once is not refused now
EDITABLE_FIELDS = frozenset(EDITABLE)


class CatalogError(VpmError):
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


class ConcurrentChange(CatalogError):
    """A product kept changing under an update (another writer each time): try again."""


def new_product_id() -> str:
    return "product_" + uuid.uuid4().hex[:12]


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


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


class Photo(BaseModel):
    """One photo of a product: the original upload, its thumbnail, and the content hash its vector is keyed by."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    key: str = Field(min_length=1, max_length=1024)
    thumbnail_key: str | None = None
    sha256: str
    width: int | None = Field(default=None, ge=1)
    height: int | None = Field(default=None, ge=1)
    added_at: str = Field(default_factory=now_iso)

    @field_validator("sha256")
    @classmethod
    def _sha(cls, v: str) -> str:
        if not _SHA256_RE.match(v):
            raise ValueError("must be a SHA-256 hex digest")
        return v


class Product(BaseModel):
    """A product: the fields declared in product_schema (their limits come from there), its photos, and the
    bookkeeping of its row."""

    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)

    id: str = Field(default_factory=new_product_id, **spec("id").limits())
    name: str = Field(**spec("name").limits())
    category: str = Field(**spec("category").limits())
    price: float | None = Field(default=None, **spec("price").limits())
    description: str | None = Field(default=None, **spec("description").limits())
    attributes: dict[str, Any] = Field(default_factory=dict, **spec("attributes").limits())
    photos: list[Photo] = Field(default_factory=list, max_length=MAX_PHOTOS)
    created_at: str = Field(default_factory=now_iso)
    updated_at: str | None = None
    revision: int = 0  # bumped by every change; guards read-modify-write of the row

    @model_validator(mode="before")
    @classmethod
    def _one_photo_fields(cls, data: Any) -> Any:
        """Accept the one-photo layout of products.json (image_key, thumbnail_key, image_sha256)."""
        if not isinstance(data, dict) or data.get("photos") or not data.get("image_key"):
            return data
        sha = data.get("image_sha256")
        photo = {"key": data["image_key"], "thumbnail_key": data.get("thumbnail_key"), "sha256": sha}
        if data.get("created_at"):
            photo["added_at"] = data["created_at"]
        return {**data, "photos": [photo] if sha else []}

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

    @field_validator("price")
    @classmethod
    def _sane_price(cls, v: float | None, info: ValidationInfo) -> float | None:
        if v is not None and v > MAX_PRICE and not (info.context or {}).get("stored"):
            raise ValueError(f"{v:g} is more than the largest price accepted ({MAX_PRICE:,}); check the number")
        return v

    @field_validator("attributes")
    @classmethod
    def _attributes(cls, v: dict[str, Any]) -> dict[str, Any]:
        return _json_safe(v, "attributes")

    @field_validator("photos")
    @classmethod
    def _distinct_photos(cls, v: list[Photo]) -> list[Photo]:
        keys = [p.key for p in v]
        if len(set(keys)) != len(keys):
            raise ValueError("two photos share one storage key")
        return v

    # The first photo is the product's picture in lists and cards.
    @property
    def image_key(self) -> str | None:
        return self.photos[0].key if self.photos else None

    @property
    def thumbnail_key(self) -> str | None:
        return self.photos[0].thumbnail_key if self.photos else None

    @property
    def image_sha256(self) -> str | None:
        return self.photos[0].sha256 if self.photos else None

    def photo(self, key: str) -> Photo:
        for photo in self.photos:
            if photo.key == key:
                return photo
        raise ProductNotFound(f"product {self.id!r} has no photo {key!r}")

    def file_keys(self) -> list[str]:
        """Every storage object this product points at (photos and thumbnails)."""
        return [k for p in self.photos for k in (p.key, p.thumbnail_key) if k]

    def as_json(self) -> dict[str, Any]:
        """The product as a JSON document, with the first photo's keys at the top level for older tools."""
        document = self.model_dump(mode="json", exclude={"revision"})
        document.update(image_key=self.image_key, thumbnail_key=self.thumbnail_key, image_sha256=self.image_sha256)
        return document


def validate_product(**fields: Any) -> Product:
    """Build a Product, turning pydantic's report into one readable line."""
    try:
        return Product(**{k: v for k, v in fields.items() if v is not None})
    except ValidationError as err:
        raise InvalidProduct(one_problem(err)) from None


def one_problem(err: ValidationError) -> str:
    first = err.errors()[0]
    field = ".".join(str(p) for p in first["loc"]) or "product"
    msg = first["msg"].removeprefix("Value error, ")
    return f"invalid {field}: {msg}"


def categories_of(products: Iterable[Product]) -> list[str]:
    """The distinct categories of `products`, sorted as people expect (ignoring case)."""
    return sorted({p.category for p in products}, key=str.casefold)


def sort_categories(counts: dict[str, int]) -> list[str]:
    return sorted(counts, key=str.casefold)


# ------------------------------------------------------------------------------------------------ contract


@dataclass(frozen=True)
class Page:
    """One page of a listing: the products on it and how many match in all."""

    items: list[Product]
    total: int
    offset: int
    limit: int

    @property
    def has_more(self) -> bool:
        return self.offset + len(self.items) < self.total


class CatalogStore(ABC):
    """Products and their photos. Every implementation passes tests/test_catalog_store.py.

    Writes are atomic per call and safe against concurrent writers in other threads and processes: an id is
    taken once (insert-if-absent), and a change to one product is a read-modify-write guarded by its revision.
    """

    @property
    @abstractmethod
    def description(self) -> str:
        """Where the products live, for people."""

    # reading
    @abstractmethod
    def get(self, product_id: str) -> Product:
        """The product, or ProductNotFound."""

    @abstractmethod
    def get_many(self, product_ids: Sequence[str]) -> dict[str, Product]:
        """The products among `product_ids` that exist, by id."""

    @abstractmethod
    def page(
        self, *, offset: int = 0, limit: int = 50, categories: Iterable[str] | None = None,
        name_contains: str | None = None, newest_first: bool = True,
    ) -> Page:
        """A page of products, filtered by category (any of, case-insensitive) and by name (substring); with
        `newest_first` the products added or changed most recently come first, else the oldest."""

    @abstractmethod
    def count(self, categories: Iterable[str] | None = None) -> int: ...

    @abstractmethod
    def photo_count(self) -> int:
        """How many photos the catalog's products have in all."""

    @abstractmethod
    def category_counts(self) -> dict[str, int]:
        """Every category with its number of products."""

    @abstractmethod
    def iter_batches(self, batch_size: int = 1000) -> Iterator[list[Product]]:
        """Every product, a bounded batch at a time (for exports, checks and migrations)."""

    @abstractmethod
    def owners_of(self, shas: Iterable[str]) -> dict[str, str]:
        """For each photo SHA-256 already in the catalog: the id of a product that has it."""

    @abstractmethod
    def referenced(self, keys: Iterable[str]) -> set[str]:
        """Which of these storage keys a product's photo or thumbnail points at."""

    @abstractmethod
    def owners_of_keys(self, keys: Iterable[str]) -> dict[str, tuple[str, str]]:
        """For each of these storage keys a product's photo or thumbnail points at: (product id, name)."""

    @abstractmethod
    def version(self) -> int:
        """Changes whenever the products change (for caches)."""

    # writing
    @abstractmethod
    def add(self, products: Sequence[Product]) -> list[str]:
        """Insert the products whose id is free; return the ids that were taken already (nothing else is
        written for those). Ids repeated within `products` raise DuplicateProduct."""

    @abstractmethod
    def update(self, product_id: str, **fields: Any) -> Product:
        """Change editable fields (name, category, price, description, attributes)."""

    @abstractmethod
    def add_photos(self, product_id: str, photos: Sequence[Photo]) -> Product: ...

    @abstractmethod
    def remove_photo(self, product_id: str, key: str) -> Product:
        """Remove one photo; a product keeps at least one."""

    @abstractmethod
    def delete(self, product_ids: Sequence[str]) -> list[Product]:
        """Remove the rows (the caller deletes their files afterwards); unknown ids raise ProductNotFound."""

    # helpers every implementation shares

    def add_one(self, product: Product) -> Product:
        if self.add([product]):
            raise DuplicateProduct(f"a product with id {product.id!r} already exists")
        return product

    def categories(self) -> list[str]:
        return sort_categories(self.category_counts())


def apply_edit(product: Product, fields: dict[str, Any]) -> Product:
    """The product with `fields` changed and its revision bumped; validated like a new product."""
    unknown = set(fields) - EDITABLE_FIELDS
    if unknown:
        raise InvalidProduct(f"cannot edit {', '.join(sorted(unknown))}")
    return _revised(product, fields)


def with_photos(product: Product, photos: Sequence[Photo]) -> Product:
    have = {p.key for p in product.photos}
    clash = [p.key for p in photos if p.key in have]
    if clash:
        raise InvalidProduct(f"product {product.id!r} already has the photo {clash[0]!r}")
    if len(product.photos) + len(photos) > MAX_PHOTOS:
        raise InvalidProduct(f"a product has at most {MAX_PHOTOS} photos; {product.id!r} has {len(product.photos)}")
    return _revised(product, {"photos": [*product.photos, *photos]})


def without_photo(product: Product, key: str) -> Product:
    product.photo(key)  # ProductNotFound when it has no such photo
    if len(product.photos) == 1:
        raise InvalidProduct(
            f"{key!r} is the only photo of {product.id!r}: add another photo first, or delete the product"
        )
    return _revised(product, {"photos": [p for p in product.photos if p.key != key]})


def _revised(product: Product, fields: dict[str, Any]) -> Product:
    data = {**product.model_dump(), **fields, "revision": product.revision + 1, "updated_at": now_iso()}
    # A price kept as it was stays acceptable (a product stored before MAX_PRICE can still get a new photo).
    kept_price = data.get("price") == product.price
    try:
        return Product.model_validate(data, context=STORED if kept_price else None)
    except ValidationError as err:
        raise InvalidProduct(one_problem(err)) from None


__all__ = [
    "CatalogCorrupt",
    "CatalogError",
    "CatalogStore",
    "ConcurrentChange",
    "DuplicateProduct",
    "InvalidProduct",
    "Page",
    "Photo",
    "Product",
    "ProductNotFound",
    "apply_edit",
    "categories_of",
    "new_product_id",
    "now_iso",
    "validate_product",
    "with_photos",
    "without_photo",
]
