"""One declaration of the product's fields (vpm/core/product_schema.py): every piece derived from it agrees with it, and
the products table records the schema version it was written at (older tables are upgraded, newer ones refused)."""

from __future__ import annotations

import hashlib

import pyarrow as pa
import pytest

from vpm.backends import engine, lance_catalog
from vpm.backends.lance_catalog import SCHEMA, SCHEMA_VERSION, LanceCatalogStore, TableTooNew, stored_version
from vpm.core import product_schema
from vpm.core.catalog import EDITABLE_FIELDS, InvalidProduct, Product, validate_product

FIELDS = product_schema.FIELDS


# ------------------------------------------------------------------------------------------ derived pieces


def test_every_field_is_a_column_of_the_products_table_typed_by_its_kind():
    types = {"id": pa.string(), "line": pa.string(), "text": pa.string(), "price": pa.float64(), "json": pa.string()}
    for spec in FIELDS:
        column = SCHEMA.field(spec.name)
        assert column.type == types[spec.kind], spec.name
        assert column.nullable == (not spec.required and spec.kind != "id"), spec.name
        if spec.casefolded:
            assert product_schema.key_column(spec.name) in SCHEMA.names


def test_the_product_model_has_every_field_with_its_limits():
    for spec in FIELDS:
        model_field = Product.model_fields[spec.name]
        limits = {type(m).__name__: m for m in model_field.metadata}
        assert model_field.is_required() == spec.required, spec.name
        if spec.max_length is not None:
            assert limits["MaxLen"].max_length == spec.max_length, spec.name
        if spec.minimum is not None:
            assert limits["Ge"].ge == spec.minimum, spec.name
    assert {f.name for f in FIELDS if f.editable} == EDITABLE_FIELDS


@pytest.mark.parametrize("spec", [f for f in FIELDS if f.max_length], ids=lambda f: f.name)
def test_validate_product_refuses_text_past_its_field_limit(spec):
    fields = {"name": "Mug", "category": "Kitchen", spec.name: "x" * (spec.max_length + 1)}
    with pytest.raises(InvalidProduct, match=f"invalid {spec.name}: String should have at most {spec.max_length}"):
        validate_product(**fields)


@pytest.mark.parametrize("missing", product_schema.REQUIRED)
def test_validate_product_names_a_missing_required_field(missing):
    fields = {name: "Something" for name in product_schema.REQUIRED if name != missing}
    with pytest.raises(InvalidProduct, match=f"invalid {missing}: Field required"):
        validate_product(**fields)


def test_validate_product_refuses_a_price_past_the_schema_maximum():
    maximum = product_schema.spec("price").maximum
    assert validate_product(name="Mug", category="Kitchen", price=maximum).price == maximum
    with pytest.raises(InvalidProduct, match="more than the largest price accepted"):
        validate_product(name="Mug", category="Kitchen", price=maximum * 2)


def test_vpm_add_has_a_flag_for_every_field_the_command_line_takes():
    from vpm.faces.cli import build_parser

    argv = ["add", "photo.jpg"]
    for spec in product_schema.CLI_FIELDS:
        argv += [f"--{spec.name}", "12.5" if spec.kind == "price" else f"a-{spec.name}"]
    args = build_parser().parse_args(argv)
    for spec in product_schema.CLI_FIELDS:
        assert getattr(args, spec.name) == (12.5 if spec.kind == "price" else f"a-{spec.name}")
    for spec in FIELDS:
        if not spec.on_cli:
            assert not hasattr(args, spec.name), f"--{spec.name} is offered, but the schema says it is not"


def test_the_api_upload_form_has_every_field_the_api_takes():
    from fastapi import FastAPI

    from vpm.faces.api.product_routes import router

    app = FastAPI()
    app.include_router(router)
    document = app.openapi()
    body = document["paths"]["/api/upload"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    form = document["components"]["schemas"][body["$ref"].rsplit("/", 1)[-1]]
    wanted = {f.name for f in product_schema.API_FIELDS}
    assert wanted <= set(form["properties"])
    assert {f.name for f in FIELDS} - wanted == {f.name for f in FIELDS if not f.on_api}
    assert set(form["required"]) == {"image", *product_schema.REQUIRED}
    assert form["properties"]["price"]["anyOf"][0]["minimum"] == product_schema.spec("price").minimum


def test_a_csv_naming_every_field_column_imports_each_field(tmp_path):
    from vpm.core.importer import OPTIONAL_COLUMNS, REQUIRED_COLUMNS, open_source

    assert set(REQUIRED_COLUMNS) == {"image", *(f.csv_column for f in FIELDS if f.csv and f.required)}
    assert set(OPTIONAL_COLUMNS) == {f.csv_column for f in FIELDS if f.csv and not f.required}
    (tmp_path / "mug.jpg").write_bytes(b"not decoded here")
    values = {"id": "sku-1", "name": "Mug", "category": "Kitchen", "price": "$12.50", "description": "350 ml"}
    assert set(values) == {f.csv_column for f in product_schema.CSV_FIELDS}
    columns = ["image", *values, "colour"]
    (tmp_path / "products.csv").write_text(
        ",".join(columns) + "\n" + ",".join(["mug.jpg", *values.values(), "red"]) + "\n", encoding="utf-8"
    )
    with open_source(tmp_path / "products.csv") as source:
        (item,) = source.items
    assert (item.product_id, item.name, item.category, item.price, item.description) == (
        "sku-1",
        "Mug",
        "Kitchen",
        12.5,
        "350 ml",
    )
    assert item.attributes == {"colour": "red"}  # a column no field claims is an attribute


def test_a_csv_may_name_a_field_by_its_alias(tmp_path):
    from vpm.core.importer import open_source

    aliases = product_schema.csv_aliases()
    assert aliases == {"product_id": "id"}
    (tmp_path / "mug.jpg").write_bytes(b"x")
    (tmp_path / "products.csv").write_text("file,product_id,name,category\nmug.jpg,abo:B07,Mug,Kitchen\n")
    with open_source(tmp_path / "products.csv") as source:
        (item,) = source.items
    assert item.product_id == "abo-B07" and item.attributes == {"source_id": "abo:B07"}


# ------------------------------------------------------------------------------------------ schema version

# The products table exactly as the release before schema versions wrote it (a frozen copy: it must not follow
# lance_catalog.SCHEMA as that changes).
_PHOTO = pa.struct(
    [
        ("key", pa.string()),
        ("thumbnail_key", pa.string()),
        ("sha256", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("added_at", pa.string()),
    ]
)
RELEASE_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False, metadata=engine.PRIMARY_KEY),
        pa.field("name", pa.string(), nullable=False),
        pa.field("name_key", pa.string(), nullable=False),
        pa.field("category", pa.string(), nullable=False),
        pa.field("category_key", pa.string(), nullable=False),
        pa.field("price", pa.float64()),
        pa.field("description", pa.string()),
        pa.field("attributes", pa.string()),
        pa.field("photos", pa.list_(_PHOTO)),
        pa.field("photo_shas", pa.list_(pa.string())),
        pa.field("file_keys", pa.list_(pa.string())),
        pa.field("photo_count", pa.int32(), nullable=False),
        pa.field("created_at", pa.string()),
        pa.field("updated_at", pa.string()),
        pa.field("revision", pa.int64(), nullable=False),
    ]
)


def release_row(pid: str, name: str, **fields) -> dict:
    sha = hashlib.sha256(pid.encode()).hexdigest()
    photo = {
        "key": f"images/{pid}.jpg",
        "thumbnail_key": f"thumbnails/{pid}.webp",
        "sha256": sha,
        "width": 64,
        "height": 48,
        "added_at": "2026-01-01T00:00:00+00:00",
    }
    return {
        "id": pid,
        "name": name,
        "name_key": name.casefold(),
        "category": "Kitchen",
        "category_key": "kitchen",
        "price": 9.5,
        "description": "Line one\nLine two",
        "attributes": '{"colour": "red"}',
        "photos": [photo],
        "photo_shas": [sha],
        "file_keys": [photo["key"], photo["thumbnail_key"]],
        "photo_count": 1,
        "created_at": "2026-01-01T00:00:00+00:00",
        "updated_at": None,
        "revision": 3,
        **fields,
    }


def write_table(where, schema: pa.Schema, rows: list[dict]):
    """A products table written with LanceDB directly, as another release would have written it."""
    table = engine.connect(where).create_table(lance_catalog.TABLE, schema=schema)
    table.add(pa.Table.from_pylist([{k: r[k] for k in schema.names} for r in rows], schema=schema))
    return table


@pytest.fixture
def where(engine_location):
    yield engine_location
    engine.forget()


def reopened(where) -> LanceCatalogStore:
    """The store as a fresh process opens it."""
    engine.forget(where)
    return LanceCatalogStore(where, exists=True)


def test_a_new_table_is_created_at_the_current_version(where):
    store = LanceCatalogStore(where, exists=False)
    assert store.count() == 0
    assert stored_version(store.table) == SCHEMA_VERSION


def test_a_table_of_the_release_before_versions_opens_whole_and_is_stamped(where):
    rows = [release_row("p1", "Blue Mug"), release_row("p2", "Straße Lamp", price=None, description=None)]
    old = write_table(where, RELEASE_SCHEMA, rows)
    assert stored_version(old) == 0

    store = reopened(where)
    products = store.get_many(["p1", "p2"])
    assert stored_version(store.table) == SCHEMA_VERSION
    assert set(store.table.schema.names) == set(SCHEMA.names)
    assert products["p1"].model_dump() == lance_catalog.from_row(rows[0], "").model_dump()
    assert (products["p1"].price, products["p1"].attributes, products["p1"].revision) == (9.5, {"colour": "red"}, 3)
    assert products["p2"].price is None and products["p2"].description is None
    assert store.page(name_contains="STRASSE").total == 1  # the stored casefolded copy is searched as it was
    assert reopened(where).table.version == store.table.version  # stamped once: the next start writes nothing


def test_a_table_without_a_newer_column_gets_it_and_keeps_its_rows(where):
    # An older layout, lacking two of today's nullable columns.
    older = pa.schema([f for f in RELEASE_SCHEMA if f.name not in ("description", "attributes")])
    write_table(where, older, [release_row("p1", "Blue Mug"), release_row("p2", "Red Mug")])

    store = reopened(where)
    assert {"description", "attributes"} <= set(store.table.schema.names)
    assert stored_version(store.table) == SCHEMA_VERSION
    p1 = store.get("p1")
    assert (p1.name, p1.price, p1.description, p1.attributes, p1.revision) == ("Blue Mug", 9.5, None, {}, 3)
    assert [p.key for p in p1.photos] == ["images/p1.jpg"]
    assert store.count() == 2 and store.photo_count() == 2
    changed = store.update("p1", description="350 ml", attributes={"colour": "blue"})
    assert reopened(where).get("p1") == changed  # the new columns are written like any other


def test_a_table_lacking_a_column_that_cannot_be_filled_is_refused_and_left_as_it_was(where):
    older = pa.schema([f for f in RELEASE_SCHEMA if f.name != "revision"])
    table = write_table(where, older, [release_row("p1", "Blue Mug")])
    version = table.version
    with pytest.raises(engine.TableUnreadable, match="lacks the column revision"):
        reopened(where).count()
    assert engine.connect(where).open_table(lance_catalog.TABLE).version == version


def test_a_table_from_a_newer_release_is_refused_and_left_untouched(where):
    future = pa.schema(
        [
            f.with_metadata({**f.metadata, lance_catalog.SCHEMA_VERSION_KEY: str(SCHEMA_VERSION + 1).encode()})
            if f.name == "id"
            else f
            for f in [*SCHEMA, pa.field("colourway", pa.string())]
        ]
    )
    row = {**release_row("p1", "Blue Mug"), "colourway": "ocean"}
    table = write_table(where, future, [row])
    version = table.version
    with pytest.raises(TableTooNew, match=f"newer release.*schema version {SCHEMA_VERSION + 1}.*upgrade vpm"):
        reopened(where).get("p1")
    after = engine.connect(where).open_table(lance_catalog.TABLE)
    assert after.version == version and "colourway" in after.schema.names
