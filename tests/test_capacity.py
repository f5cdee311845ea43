"""The capacity model and the whole bill (vpm.core.capacity): sizes as people type them, hand-computed figures from the
measured unit costs, the limits each size reaches, and docs/scaling.md printing the same numbers."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from vpm.core import capacity, capacity_units
from vpm.core.capacity import CapacityError, SystemSize, parse_count, system_estimate
from vpm.core.capacity_units import UNITS
from vpm.core.costs import BYTES_PER_GB, DEFAULT_PRICES, format_usd, storage_cost

REPO = Path(__file__).resolve().parents[1]
UNIT = {key: unit.value for key, unit in UNITS.items()}


def line(result, item):
    matches = [x for x in result.bill.one_time + result.bill.monthly if x.item == item]
    assert len(matches) == 1, [x.item for x in result.bill.one_time + result.bill.monthly]
    return matches[0]


# ------------------------------------------------------------------------------------------------- sizes


@pytest.mark.parametrize("text, value", [
    ("250000", 250_000), ("250,000", 250_000), (" 1_000_000 ", 1_000_000), ("2.5e5", 250_000), ("10M", 10_000_000),
    ("1B", 1_000_000_000), ("1.5k", 1_500), ("10m", 10_000_000), (42, 42),
])
def test_sizes_are_read_as_people_type_them(text, value):
    assert parse_count(text, "Products", maximum=capacity.MAX_PRODUCTS) == value


@pytest.mark.parametrize("text, message", [
    ("abc", "Products: 'abc' is not a number; write a whole number such as 250000"),
    ("", "Products: '' is not a number"),
    ("12 apples", "is not a number"),
    ("nan", "is not a number"),
    ("inf", "is not a number"),
    ("-5", "Products must be at least 1, got -5"),
    ("0", "Products must be at least 1, got 0"),
    ("1.5", "Products must be a whole number, got 1.5"),
    ("1e30", r"Products: 1e30 is more than this model covers \(at most 10,000,000,000\)"),
    ("20B", "more than this model covers"),
    (True, "must be a whole number"),
])
def test_bad_sizes_say_what_is_wrong(text, message):
    with pytest.raises(CapacityError, match=message):
        parse_count(text, "Products", maximum=capacity.MAX_PRODUCTS)


def test_a_count_may_be_zero_where_zero_makes_sense():
    assert parse_count("0", "searches a month", minimum=0, maximum=10) == 0
    with pytest.raises(CapacityError, match="searches a month must be 0 or more, got -1"):
        parse_count("-1", "searches a month", minimum=0, maximum=10)


@pytest.mark.parametrize("field, value, message", [
    ("products", 0, "products must be a whole number from 1 to 10,000,000,000, got 0"),
    ("products", 10**30, "products must be a whole number from 1"),
    ("products", 1e6, "products must be a whole number"),
    ("photos_per_product", 0, "photos per product must be"),
    ("searches_per_month", -1, "searches a month must be"),
    ("replicas", 0, "replicas must be a whole number from 1"),
    ("workers", 10**9, "workers must be"),
    ("photo_bytes", 0, "photo bytes must be"),
    ("use_cdn", "yes", "use_cdn must be true or false"),
])
def test_a_size_outside_the_model_is_refused(field, value, message):
    with pytest.raises(CapacityError, match=message):
        SystemSize(**{"products": 1000, field: value})


# ----------------------------------------------------------------------------------------------- figures


def test_every_unit_cost_says_where_it_comes_from():
    bases = {capacity_units.MEASURED, capacity_units.DERIVED, capacity_units.NOT_MEASURED}
    for unit in UNITS.values():
        assert unit.basis in bases, unit
        assert unit.source.strip() and unit.what.strip(), unit
        assert (unit.value is None) == (unit.basis == capacity_units.NOT_MEASURED), unit
    assert UNITS["gpu_images_per_s"].value is None  # nobody measured a GPU: the model must say so, not guess


def test_the_index_parameters_are_the_ones_the_code_builds_with():
    from vpm.backends import lance_vectors

    assert capacity_units.ROWS_PER_PARTITION == lance_vectors.ANN_PARTITION_ROWS
    assert capacity_units.NPROBES == lance_vectors.ANN_NPROBES
    assert capacity_units.REFINE == lance_vectors.ANN_REFINE
    assert capacity.MEMORY_MAX_PHOTOS == lance_vectors.MEMORY_MAX_PHOTOS


def test_storage_is_every_photo_part_times_the_photos():
    result = system_estimate(SystemSize(products=1_000_000, photos_per_product=3))
    per_photo = (UNIT["photo_bytes"] + UNIT["thumbnail_bytes"] + UNIT["keypoint_bytes"] + UNIT["text_bytes"]
                 + UNIT["table_bytes"])
    assert result.figure("stored_bytes").value == pytest.approx(3_000_000 * per_photo)
    storage = line(result, "S3 Standard storage")
    assert storage.quantity == pytest.approx(3_000_000 * per_photo / BYTES_PER_GB, rel=1e-6)
    assert storage.usd == pytest.approx(storage_cost(storage.quantity))


def test_a_given_photo_size_replaces_the_measured_one():
    small = system_estimate(SystemSize(products=1000))
    big = system_estimate(SystemSize(products=1000, photo_bytes=1_000_000))
    difference = big.figure("stored_bytes").value - small.figure("stored_bytes").value
    assert difference == pytest.approx(1000 * (1_000_000 - UNIT["photo_bytes"]))
    assert "given" in big.figure("stored_bytes").how


def test_a_full_re_embed_costs_instance_hours_at_the_measured_rate():
    result = system_estimate(SystemSize(products=1_000_000, workers=10))
    hours = 1_000_000 / UNIT["embed_images_per_s"] / 3600  # 5.28 h of one 2-core instance
    compute = line(result, "Full re-embed: compute")
    assert compute.quantity == pytest.approx(hours)
    assert compute.usd == pytest.approx(hours * DEFAULT_PRICES.cpu_per_hour)  # ~$0.47
    assert result.figure("reembed_s").value == pytest.approx(1_000_000 / (UNIT["embed_images_per_s"] * 10))
    assert "32 min on 10 workers" in result.figure("reembed_s").text
    assert line(result, "Full re-embed: S3 GET requests").usd == pytest.approx(1_000_000 / 1000 * 0.0004)


def test_the_gpu_is_not_measured_so_the_model_gives_its_break_even_instead():
    result = system_estimate(SystemSize(products=1_000_000))
    gpu = result.figure("reembed_gpu")
    assert gpu.value is None and gpu.basis == "not measured"
    break_even = DEFAULT_PRICES.gpu_per_hour / DEFAULT_PRICES.cpu_per_hour * UNIT["embed_images_per_s"]  # ~593
    assert f"above {break_even:,.0f} images/s" in gpu.text
    assert "not measured" in line(result, "Full re-embed: compute").note


def test_replicas_follow_the_search_load_unless_given():
    # 100M searches x 0.159 core-s = 15.9M core-s; one c7i.large at half load gives 730 h x 3600 x 2 x 0.5
    size = SystemSize(products=1_000_000, searches_per_month=100_000_000)
    needed = math.ceil(100_000_000 * UNIT["search_cpu_s"] / (730 * 3600 * 2 * 0.5))
    assert needed == 7
    replicas = line(system_estimate(size), f"Search replicas: {DEFAULT_PRICES.cpu_instance}")
    assert replicas.quantity == 7 * 730 and replicas.usd == pytest.approx(7 * 730 * 0.08925)
    assert replicas.group == "compute"
    few = line(system_estimate(replace(size, replicas=2)), f"Search replicas: {DEFAULT_PRICES.cpu_instance}")
    assert few.quantity == 2 * 730 and "too few: searches will queue" in few.note
    idle = system_estimate(SystemSize(products=1000, searches_per_month=0))
    assert idle.figure("replicas").value == 1  # one stays on to answer at all


def test_searches_read_the_bucket_only_past_the_in_memory_limit():
    small = system_estimate(SystemSize(products=100_000, searches_per_month=1_000_000))
    assert line(small, "S3 GET requests: searches reading the index").quantity == 0
    assert small.figure("bucket_read_bytes").value == 0
    large = system_estimate(SystemSize(products=1_000_000, searches_per_month=1_000_000))
    gets = line(large, "S3 GET requests: searches reading the index")
    assert gets.quantity == 1_000_000 * UNIT["search_requests"]
    # 30 partitions x 1,000 rows x (32 B code + 8 B row id) + 200 refine rows x 2,048 B
    assert large.figure("bucket_read_bytes").value == pytest.approx(30 * 1000 * 40 + 200 * 2048)


def test_the_index_build_grows_faster_than_the_catalog_with_a_partition_per_thousand_rows():
    one, ten, hundred = (capacity.index_build_core_s(n) for n in (1_000_000, 10_000_000, 100_000_000))
    assert ten > 10 * one and hundred > 90 * ten  # rows x partitions: the square of the catalog, once it dominates
    # the fit is the least-squares line of CPU against rows x partitions through every measured build
    points = capacity_units.build_points()
    assert [n for n, _ in points] == [100_000, 200_000, 500_000, 1_000_000]
    work = [n * capacity.partitions(n) for n, _ in points]
    slope, intercept = np.polyfit(work, [t for _, t in points], 1)
    for n, w in zip((n for n, _ in points), work, strict=True):
        assert capacity.index_build_core_s(n) == pytest.approx(intercept + slope * w)
    fewer = capacity.index_build_core_s(10_000_000, n_partitions=round(math.sqrt(10_000_000)))
    assert fewer < ten / 2
    assert capacity.index_build_core_s(10_000_000, workers=10) < ten / 5


def test_latency_from_the_bucket_adds_round_trips_to_the_local_search():
    parts = capacity.search_latency_ms(1_000_000)
    # the measured path waits 7 round trips (394 - 114 ms at 40 ms); the IVF path two more
    assert parts["round trips to the bucket"] == 9 * 40
    assert parts["search on local disk"] == UNIT["api_search_local_ms"]
    assert capacity.search_latency_ms(1000)["round trips to the bucket"] == 7 * 40


def test_memory_a_replica_needs_grows_with_the_photos_it_indexes():
    base = UNIT["replica_base_mb"] * 1e6
    assert capacity.replica_memory_bytes(0) == base
    assert capacity.replica_memory_bytes(1_000_000_000) == pytest.approx(base + 1e9 * (32 + 8 + 2048 / 1000))


def test_each_size_names_what_breaks_and_what_replaces_it():
    parts = {n: [x.part for x in system_estimate(SystemSize(products=n)).limits] for n in capacity.DOC_SIZES}
    assert parts[1_000_000] == ["searching the bucket"]  # the first to break, already at 1M
    for smaller, larger in zip(capacity.DOC_SIZES, capacity.DOC_SIZES[1:], strict=False):
        assert set(parts[smaller]) <= set(parts[larger])  # what broke stays broken as the catalog grows
    assert {"the index build on one machine", "one replica holding the whole index"} <= set(parts[1_000_000_000])
    three_billion = system_estimate(SystemSize(products=1_000_000_000, photos_per_product=3)).limits
    s3_vectors = next(x for x in three_billion if x.part == "one index")
    assert "2,000,000,000" in s3_vectors.why and "(published)" in s3_vectors.why
    for limit in system_estimate(SystemSize(products=1_000_000_000)).limits:
        assert limit.why and limit.replacement


# ----------------------------------------------------------------------------------------------- the bill


def test_the_bill_adds_up_and_round_trips_through_json():
    result = system_estimate(SystemSize(products=10_000_000, photos_per_product=2, searches_per_month=5_000_000,
                                        use_cdn=True))
    bill = result.bill
    assert bill.monthly_total == pytest.approx(sum(x.usd for x in bill.monthly))
    assert bill.one_time_total == pytest.approx(sum(x.usd for x in bill.one_time))
    assert set(bill.monthly_by_group()) == {"storage", "requests", "transfer", "CDN", "compute"}
    assert "S3 GET requests: catalog tables at app start" not in [x.item for x in bill.monthly]
    doc = result.as_dict()
    assert json.loads(json.dumps(doc, allow_nan=False)) == doc
    assert doc["size"]["photos"] == 20_000_000 and doc["monthly_total"] == pytest.approx(bill.monthly_total)
    assert {u["key"] for u in doc["units"]} == set(UNITS)
    assert {f["basis"] for f in doc["figures"]} <= {"given", "measured", "derived", "extrapolated", "not measured"}


def test_the_bill_follows_an_edited_compute_price():
    size = SystemSize(products=1_000_000, searches_per_month=100_000_000)
    before = system_estimate(size)
    dearer = system_estimate(size, replace(DEFAULT_PRICES, cpu_per_hour=2 * DEFAULT_PRICES.cpu_per_hour))
    for item in ("Full re-embed: compute", "Index build: compute", f"Search replicas: {DEFAULT_PRICES.cpu_instance}"):
        assert line(dearer, item).usd == pytest.approx(2 * line(before, item).usd)
    assert line(dearer, "S3 Standard storage").usd == line(before, "S3 Standard storage").usd


def test_the_text_says_how_each_figure_was_reached():
    text = system_estimate(SystemSize(products=1_000_000)).as_text()
    for words in ("[measured]", "[derived]", "[extrapolated]", "[not measured]", "What breaks at this size",
                  "Compute: as of " + DEFAULT_PRICES.compute_as_of.isoformat(), "bench/bench_scale.py"):
        assert words in text, words


# --------------------------------------------------------------------------------------------- the doc


def test_docs_scaling_shows_the_table_the_command_prints():
    """docs/scaling.md's comparison is what the model prints now: a changed unit cost or price shows up here."""
    doc = (REPO / "docs" / "scaling.md").read_text()
    assert capacity.comparison_markdown(**capacity.DOC_ASSUMPTIONS) in doc
    assert capacity.build_fit_text() in doc
    assert capacity._measured_sizes() in doc  # the sizes the builds were measured at
    for group in capacity.DOC_UNIT_GROUPS:
        assert capacity.units_markdown(group) in doc, group
    assert {k for keys in capacity.DOC_UNIT_GROUPS.values() for k in keys} == set(UNITS)  # every unit is shown
    for n in capacity.DOC_SIZES:
        total = system_estimate(SystemSize(products=n, **capacity.DOC_ASSUMPTIONS)).bill.monthly_total
        assert format_usd(total) in doc
