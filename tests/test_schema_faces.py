"""The faces that draw a product's fields take them from vpm/core/product_schema.py: the Catalog page's add and edit forms
(limits, which fields are optional, the CSV columns it names), the results' CSV and the edit's diff."""

from __future__ import annotations

import csv
import dataclasses
import io
from types import SimpleNamespace

import pytest

from vpm.core import importer, presentation, product_schema

CATALOG_PAGE = "pages/catalog.py"


def reshaped(monkeypatch, name: str, **changes) -> None:
    """The schema as if field `name` were declared with these changes (what the page reads when it draws)."""
    monkeypatch.setitem(product_schema.BY_NAME, name, dataclasses.replace(product_schema.spec(name), **changes))


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_the_catalog_forms_take_their_limits_and_labels_from_the_schema(
    app_settings, seed_catalog, open_page, monkeypatch
):
    (mug,) = seed_catalog([("Red mug", "Kitchen", 1, 4.5)])
    # Numbers no literal in the page spells: each can only come from the schema.
    reshaped(monkeypatch, "name", max_length=123)
    reshaped(monkeypatch, "category", max_length=45)
    reshaped(monkeypatch, "description", max_length=678)
    reshaped(monkeypatch, "price", minimum=2, required=True)  # required: the add form no longer says "(optional)"

    at = open_page(CATALOG_PAGE)
    at.selectbox(key="catalog_selected").set_value(mug.id).run()

    assert not at.exception
    names = [t for t in at.text_input if t.label == "Name"]
    assert [t.max_chars for t in names] == [123, 123]  # the add form's and the edit form's
    assert {t.max_chars for t in at.text_input if t.label in ("…or a new category", "Category")} == {45}
    assert next(t for t in at.text_area if t.label == "Description (optional)").max_chars == 678
    prices = [n for n in at.number_input if n.label == "Price"]
    assert [n.min for n in prices] == [2.0, 2.0]
    assert not any(n.label == "Price (optional)" for n in at.number_input)


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_the_import_help_names_the_importers_csv_columns(app_settings, open_page):
    at = open_page(CATALOG_PAGE)

    help_text = next(m.value for m in at.markdown if "**.csv**" in m.value)
    assert f"`{','.join(importer.REQUIRED_COLUMNS)}`" in help_text
    assert f"`{','.join(importer.OPTIONAL_COLUMNS)}`" in help_text


def test_the_results_csv_has_a_column_for_each_field_a_result_shows():
    shown = product_schema.RESULT_FIELDS
    expected_columns = ("rank", *shown, "score_percent", "score", "image_url")
    assert expected_columns == presentation.CSV_COLUMNS
    # One value per field, of its kind: each must land in its own column, formatted as that kind is.
    values = {name: 12.5 if product_schema.spec(name).kind == "price" else f"{name} value" for name in shown}
    match = SimpleNamespace(as_dict=lambda: {**values, "score": 0.5, "image_url": None})

    (row,) = csv.DictReader(io.StringIO(presentation.results_csv([match]).decode("utf-8-sig")))

    assert {name: row[name] for name in shown} == {
        name: "12.50" if value == 12.5 else value for name, value in values.items()
    }


def test_an_edit_takes_only_the_fields_the_schema_lets_it_change():
    product = SimpleNamespace(id="mug", name="Mug", category="Kitchen", price=None, description="Blue")
    assert "id" not in product_schema.EDITABLE
    with pytest.raises(TypeError, match="not editable: id"):
        presentation.changed_fields(product, id="cup", name="Mug")
    # Blank means none for a field a product may go without, and stays blank (to be refused) for a required one.
    assert presentation.changed_fields(product, name=" ", description=" ") == {"name": "", "description": None}
