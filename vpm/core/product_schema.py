"""The product's own fields, declared once.

Each face and store used to spell them again: the products table's columns, the Product model's limits, the API's
upload form, `vpm add`'s flags, the CSV columns an import reads. They are derived from `FIELDS` now, so a new field
is one line here (and, for a stored one, one step of `lance_catalog`'s schema upgrade).

Pure data: no pydantic, no pyarrow, no face. What a photo is, and the bookkeeping of a row (revision, timestamps,
the photo lists), belongs to `catalog.py` and the store.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_PRICE = 1_000_000_000  # anything above is a typo (1e308 printed as 309 digits)
ID_PATTERN = r"^[A-Za-z0-9_-]{1,100}$"

# How a field's value is stored and read from text: each kind maps to one table column type and one text parser.
KINDS = frozenset({"id", "line", "text", "price", "json"})


@dataclass(frozen=True)
class ProductField:
    name: str  # the Product attribute, the table column, the API form field, the CLI flag (--name)
    kind: str  # one of KINDS
    help: str  # for people: `vpm add --help`, the API's docs
    required: bool = False  # a new product must have it
    editable: bool = True  # an edit may change it (an id is chosen once)
    max_length: int | None = None  # text kinds: characters at most
    minimum: float | None = None  # price: the least value
    maximum: float | None = None  # price: the largest value a new or changed product may have
    csv: tuple[str, ...] = ()  # CSV columns: the first is its name, the others aliases other exports use
    on_cli: bool = True  # a flag of `vpm add`
    on_api: bool = True  # a field of the API's upload form
    casefolded: bool = False  # the table keeps a casefolded copy, `<name>_key`, for filters and the name search
    in_results: bool = False  # a search result shows it (the rest is one click away, on the product)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"{self.name}: unknown kind {self.kind!r}")

    @property
    def csv_column(self) -> str | None:
        return self.csv[0] if self.csv else None

    def limits(self) -> dict[str, object]:
        """The field's limits as pydantic `Field` arguments (the Product model and the API form share them).
        `maximum` is not among them: rows stored before it existed stay readable, so the model checks it itself."""
        limits: dict[str, object] = {}
        if self.kind in ("line", "text"):
            if self.required:
                limits["min_length"] = 1
            if self.max_length is not None:
                limits["max_length"] = self.max_length
        if self.kind == "price":
            limits["ge"] = self.minimum
            limits["allow_inf_nan"] = False  # 1e309 parses to inf, which passes ge=0 and breaks strict JSON
        return limits


FIELDS: tuple[ProductField, ...] = (
    ProductField(
        "id", "id", "product id (letters, digits, - and _)", editable=False, csv=("id", "product_id"), in_results=True
    ),
    ProductField(
        "name",
        "line",
        "the product's name",
        required=True,
        max_length=200,
        csv=("name",),
        casefolded=True,
        in_results=True,
    ),
    ProductField(
        "category",
        "line",
        "its category",
        required=True,
        max_length=100,
        csv=("category",),
        casefolded=True,
        in_results=True,
    ),
    ProductField(
        "price", "price", "its price, 0 or more", minimum=0, maximum=MAX_PRICE, csv=("price",), in_results=True
    ),
    ProductField("description", "text", "a longer description", max_length=5000, csv=("description",)),
    # Not a flag or a form field: a CSV's columns beyond these become attributes (and the API takes none).
    ProductField("attributes", "json", "other facts, as a JSON object", on_cli=False, on_api=False),
)

BY_NAME = {field.name: field for field in FIELDS}
EDITABLE = tuple(f.name for f in FIELDS if f.editable)
REQUIRED = tuple(f.name for f in FIELDS if f.required)
CLI_FIELDS = tuple(f for f in FIELDS if f.on_cli)
API_FIELDS = tuple(f for f in FIELDS if f.on_api)
CSV_FIELDS = tuple(f for f in FIELDS if f.csv)
RESULT_FIELDS = tuple(f.name for f in FIELDS if f.in_results)
# A CSV import's columns: the image's path first, then the fields (the CLI's help names them without importing
# the importer, which would load numpy and Pillow before any command runs).
REQUIRED_COLUMNS = ("image", *(f.csv_column for f in CSV_FIELDS if f.required))
OPTIONAL_COLUMNS = tuple(f.csv_column for f in CSV_FIELDS if not f.required)


def spec(name: str) -> ProductField:
    return BY_NAME[name]


def csv_aliases() -> dict[str, str]:
    """{alias: column}: the other names a CSV may give a column ("product_id" for "id")."""
    return {alias: f.csv[0] for f in CSV_FIELDS for alias in f.csv[1:]}


def key_column(name: str) -> str:
    """The table column holding the casefolded copy of a field."""
    return f"{name}_key"


__all__ = [
    "API_FIELDS",
    "BY_NAME",
    "CLI_FIELDS",
    "CSV_FIELDS",
    "EDITABLE",
    "FIELDS",
    "ID_PATTERN",
    "MAX_PRICE",
    "REQUIRED",
    "RESULT_FIELDS",
    "ProductField",
    "csv_aliases",
    "key_column",
    "spec",
]
