"""Cost estimator: hand-computed figures for tiers, free allowances, migration, CDN and formatting."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import date

import pytest

from vpm.core.costs import (
    BYTES_PER_GB,
    DEFAULT_PRICES,
    CatalogSize,
    PriceError,
    PriceTable,
    Traffic,
    estimate,
    format_usd,
    storage_cost,
    transfer_out_cost,
)

MiB = 1024**2
TB = 1024  # GB


def line(est, item):
    matches = [x for x in est.one_time + est.monthly if x.item == item]
    assert len(matches) == 1, f"expected one line {item!r}, got {[x.item for x in est.one_time + est.monthly]}"
    return matches[0]


def items(est):
    return [x.item for x in est.monthly]


# ------------------------------------------------------------------------------------------ price table


def test_default_prices_are_dated_and_match_the_s3_pricing_page():
    p = DEFAULT_PRICES
    assert isinstance(p.as_of, date) and p.region == "us-east-1" and "S3" in p.source
    assert p.storage_tiers == ((50 * TB, 0.023), (500 * TB, 0.022), (None, 0.021))
    assert (p.put_per_1000, p.get_per_1000) == (0.005, 0.0004)
    assert (p.transfer_out_per_gb, p.transfer_out_free_gb) == (0.09, 100)
    assert (p.cdn_per_gb, p.cdn_free_gb, p.cdn_free_requests, p.cdn_per_10k_requests) == (0.085, 1024, 10_000_000, 0.01)


def test_compute_prices_are_dated_and_name_their_instances():
    """The whole bill's replicas, re-embed and index build: EC2 On-Demand, Linux, us-east-1, on their own date."""
    p = DEFAULT_PRICES
    assert isinstance(p.compute_as_of, date) and "EC2" in p.compute_source and "us-east-1" in p.compute_source
    assert p.cpu_instance.startswith("c7i.large") and (p.cpu_instance_vcpus, p.cpu_instance_memory_gb) == (2, 4)
    assert p.cpu_per_hour == 0.08925
    assert p.gpu_instance.startswith("g5.xlarge") and p.gpu_per_hour == 1.006


@pytest.mark.parametrize(
    "gb, usd",
    [
        (0, 0.0),
        (1, 0.023),
        (50 * TB, 51_200 * 0.023),  # exactly 50 TB: all at the first tier = 1,177.60
        (50 * TB + 1, 1_177.6 + 0.022),
        (500 * TB, 1_177.6 + 460_800 * 0.022),  # = 11,315.20
        (500 * TB + 1, 11_315.2 + 0.021),
        (1_000_000, 11_315.2 + 488_000 * 0.021),  # = 21,563.20
    ],
)
def test_storage_is_tiered(gb, usd):
    assert storage_cost(gb) == pytest.approx(usd)


@pytest.mark.parametrize("gb, usd", [(0, 0.0), (50, 0.0), (100, 0.0), (101, 0.09), (1100, 90.0)])
def test_transfer_out_first_100_gb_free(gb, usd):
    assert transfer_out_cost(gb) == pytest.approx(usd)


@pytest.mark.parametrize(
    "views, view_bytes, requests_usd, transfer_usd",
    [
        (10_000_000, 1, 0.0, 0.0),  # exactly the free requests
        (10_010_000, 1, 0.01, 0.0),  # 10k requests over the free 10M
        (1024 * 1024, MiB, 0.0, 0.0),  # 1 MiB views: exactly the free 1,024 GB
        (1025 * 1024, MiB, 0.0, 0.085),  # one GB over
    ],
)
def test_cdn_free_tier_edges(views, view_bytes, requests_usd, transfer_usd):
    traffic = Traffic(searches_per_month=views, images_per_search=1, use_cdn=True, serve_thumbnails=False,
                      avg_image_bytes=view_bytes, app_starts_per_month=0)
    est = estimate(CatalogSize(images=1, image_bytes=MiB), traffic)
    assert line(est, "CloudFront HTTPS requests").usd == pytest.approx(requests_usd)
    assert line(est, "CloudFront data transfer out").usd == pytest.approx(transfer_usd)


def test_storage_line_quotes_the_rate_of_the_tier_reached():
    def rate(gb):
        return line(estimate(CatalogSize(images=1, image_bytes=int(gb * BYTES_PER_GB))), "S3 Standard storage").unit_price

    assert (rate(50 * TB), rate(50 * TB + 1), rate(500 * TB), rate(500 * TB + 1)) == (0.023, 0.022, 0.022, 0.021)


def test_negative_quantities_are_refused():
    with pytest.raises(PriceError, match="storage GB"):
        storage_cost(-1)
    with pytest.raises(PriceError, match="transfer GB"):
        transfer_out_cost(float("nan"))


def test_price_table_round_trips_through_json():
    data = json.loads(json.dumps(DEFAULT_PRICES.as_dict(), allow_nan=False))
    assert data["as_of"] == DEFAULT_PRICES.as_of.isoformat()
    assert data["storage_tiers"][-1] == [None, 0.021]
    assert PriceTable.from_dict(data) == DEFAULT_PRICES


@pytest.mark.parametrize(
    "change, message",
    [
        ({"storage_tiers": [[51200, 0.023]]}, "must end with an open tier"),
        ({"storage_tiers": [[None, 0.023], [51200, 0.022]]}, "only the last tier"),
        ({"storage_tiers": [[512000, 0.022], [51200, 0.023], [None, 0.021]]}, "must increase"),
        ({"storage_tiers": []}, "storage_tiers is empty"),
        ({"put_per_1000": -0.005}, "PriceTable.put_per_1000 must be a number >= 0"),
        ({"cdn_free_requests": 1.5}, "cdn_free_requests must be a whole number"),
        ({"as_of": "last tuesday"}, "as_of must be a date"),
        ({"compute_as_of": "2026-13-01"}, "compute_as_of must be a date"),
        ({"cpu_per_hour": -0.1}, "PriceTable.cpu_per_hour must be a number >= 0"),
        ({"gpu_per_hour": "cheap"}, "PriceTable.gpu_per_hour must be a number >= 0"),
        ({"cpu_instance_vcpus": 0}, "cpu_instance_vcpus must be at least 1"),
        ({"cpu_instance": " "}, "cpu_instance must be a non-empty text"),
        ({"surprise": 1}, "unknown field.*surprise"),
    ],
)
def test_bad_price_table_says_what_is_wrong(change, message):
    with pytest.raises(PriceError, match=message):
        PriceTable.from_dict({**DEFAULT_PRICES.as_dict(), **change})


def test_price_table_from_dict_requires_every_price():
    data = DEFAULT_PRICES.as_dict()
    del data["get_per_1000"], data["as_of"]
    with pytest.raises(PriceError, match="missing field.*as_of, get_per_1000"):
        PriceTable.from_dict(data)
    older = DEFAULT_PRICES.as_dict()
    del older["cpu_per_hour"], older["compute_as_of"]  # a table saved before compute was priced
    with pytest.raises(PriceError, match="missing field.*compute_as_of, cpu_per_hour"):
        PriceTable.from_dict(older)


# ---------------------------------------------------------------------------------------------- catalog


def test_catalog_size_from_storage_listing():
    listing = [("images/a.jpg", 1000), ("images/b.png", 3000), ("thumbnails/a.webp", 100),
               ("metadata/products.json", 50), ("metadata/embeddings/clip.npy", 2048)]
    c = CatalogSize.from_objects(listing)
    assert c == CatalogSize(images=2, image_bytes=4000, thumbnails=1, thumbnail_bytes=100,
                            metadata_objects=2, metadata_bytes=2098, parts=(("first-release catalog", 2, 2098),))
    assert (c.objects, c.bytes) == (5, 6198)


def test_the_objects_beside_the_photos_are_named_by_what_they_hold():
    """Not "99 other objects (14.9 MB)": the tables' files, by table, biggest first."""
    listing = [("images/a.jpg", 1000), ("thumbnails/a.webp", 100),
               ("metadata/features-sift.lance/data/0.lance", 5 * MiB), ("metadata/features-sift.lance/_versions/1", 1),
               ("metadata/vectors-clip-ViT-B-32.lance/data/0.lance", 2 * MiB),
               ("metadata/products.lance/data/0.lance", 300 * 1024), ("metadata/text-ppocrv6.lance/data/0.lance", 1024),
               ("metadata/calibration/clip-ViT-B-32.json", 370)]
    c = CatalogSize.from_objects(listing)
    assert [label for label, _n, _b in c.parts] == ["keypoints", "vectors", "products", "package text",
                                                    "score calibration"]
    assert c.metadata_text() == ("6 files of the catalog's tables and calibration (7.3 MB: keypoints 5.0 MB, "
                                 "vectors 2.0 MB, products 300.0 KB, package text 1.0 KB, score calibration 370 B)")
    note = line(estimate(c), "S3 GET requests: catalog tables at app start").note
    assert "products.json" not in note and "LanceDB tables (products, vectors, keypoints, package text)" in note


def test_bad_assumptions_say_which_field():
    with pytest.raises(PriceError, match="Traffic.searches_per_month must be a whole number >= 0, got -5"):
        Traffic(searches_per_month=-5)
    with pytest.raises(PriceError, match="Traffic.use_cdn must be true or false"):
        Traffic(use_cdn="yes")
    with pytest.raises(PriceError, match="CatalogSize.image_bytes"):
        CatalogSize(images=1, image_bytes=-1)


# --------------------------------------------------------------------------------------------- estimate


def test_migration_of_10000_objects_costs_five_cents_in_puts():
    est = estimate(CatalogSize(images=10_000, image_bytes=10_000 * MiB))
    assert line(est, "Migration: PUT requests").quantity == 10_000
    assert line(est, "Migration: PUT requests").usd == pytest.approx(0.05)
    assert line(est, "Migration: LIST requests").quantity == 10  # 1,000 keys a page
    assert line(est, "Migration: LIST requests").usd == pytest.approx(0.00005)
    assert est.one_time_total == pytest.approx(0.05005)


def test_migration_counts_thumbnails_and_metadata_and_rounds_list_pages_up():
    est = estimate(CatalogSize(images=1000, image_bytes=1, thumbnails=1000, thumbnail_bytes=1,
                               metadata_objects=2, metadata_bytes=1))
    assert line(est, "Migration: PUT requests").usd == pytest.approx(2002 / 1000 * 0.005)
    assert line(est, "Migration: LIST requests").quantity == 3


def test_zero_catalog_costs_nothing():
    est = estimate(CatalogSize(), Traffic(searches_per_month=1_000_000))
    assert est.one_time_total == 0 and est.monthly_total == 0
    assert all(x.usd == 0 for x in est.one_time + est.monthly)
    assert "no images" in line(est, "S3 GET requests: image views").note
    json.dumps(est.as_dict(), allow_nan=False)


def test_storage_line_uses_catalog_bytes_and_tier_rate():
    est = estimate(CatalogSize(images=1, image_bytes=60 * TB * BYTES_PER_GB))
    storage = line(est, "S3 Standard storage")
    assert storage.quantity == pytest.approx(61_440)
    assert storage.usd == pytest.approx(1_177.6 + 10_240 * 0.022)
    assert storage.unit_price == 0.022  # the tier it reaches
    assert "$0.023 up to 50 TB" in storage.note


ORIGINALS = CatalogSize(images=10_000, image_bytes=10_000 * MiB, thumbnails=10_000, thumbnail_bytes=10_000 * 16384)
BUSY = Traffic(searches_per_month=2_000_000, images_per_search=10, serve_thumbnails=False, app_starts_per_month=0)


def test_without_cdn_views_are_s3_gets_and_transfer_out():
    est = estimate(ORIGINALS, BUSY)  # 20M views of 1 MiB = 19,531.25 GB
    assert "CloudFront data transfer out" not in items(est)
    gets = line(est, "S3 GET requests: image views")
    assert gets.quantity == 20_000_000 and gets.usd == pytest.approx(8.0)
    out = line(est, "S3 data transfer out to the internet")
    assert out.quantity == pytest.approx(19_531.25)
    assert out.usd == pytest.approx((19_531.25 - 100) * 0.09)  # 1,748.81
    assert "upper bound" in out.note  # over 10 TB AWS is cheaper per GB


def test_with_cdn_views_go_through_cloudfront_with_its_free_tier():
    est = estimate(ORIGINALS, replace(BUSY, use_cdn=True))
    assert "S3 GET requests: image views" not in items(est)
    requests = line(est, "CloudFront HTTPS requests")
    assert requests.usd == pytest.approx(10_000_000 / 10_000 * 0.01)  # 10M over the free 10M
    assert "assumed cached" in requests.note
    cdn = line(est, "CloudFront data transfer out")
    assert cdn.usd == pytest.approx((19_531.25 - 1024) * 0.085)  # 1,573.12
    assert line(est, "S3 data transfer out to the internet").quantity == 0  # S3 -> CloudFront is free
    assert est.monthly_total < estimate(ORIGINALS, BUSY).monthly_total


def test_small_traffic_through_cdn_fits_in_the_free_tier():
    traffic = Traffic(searches_per_month=100_000, serve_thumbnails=False, use_cdn=True, app_starts_per_month=0)
    est = estimate(ORIGINALS, traffic)  # 1M views, 976.56 GB
    assert line(est, "CloudFront HTTPS requests").usd == 0
    assert line(est, "CloudFront data transfer out").usd == 0
    assert est.monthly_total == pytest.approx(line(est, "S3 Standard storage").usd)


def test_thumbnails_cost_far_less_than_originals():
    originals = estimate(ORIGINALS, Traffic(searches_per_month=100_000, serve_thumbnails=False, app_starts_per_month=0))
    thumbs = estimate(ORIGINALS, Traffic(searches_per_month=100_000, serve_thumbnails=True, app_starts_per_month=0))
    out = "S3 data transfer out to the internet"
    assert line(originals, out).quantity == pytest.approx(976.5625)
    assert line(originals, out).usd == pytest.approx(876.5625 * 0.09)  # 78.89
    assert line(thumbs, out).quantity == pytest.approx(1_000_000 * 16384 / BYTES_PER_GB)  # catalog's 16 KiB average
    assert line(thumbs, out).usd == 0  # 15.26 GB, inside the free 100 GB
    # Both are a GET per view.
    assert line(thumbs, "S3 GET requests: image views").usd == pytest.approx(0.4)


def test_sizes_from_traffic_override_the_catalog_and_fall_back_to_15kb_thumbnails():
    no_thumbs = CatalogSize(images=10, image_bytes=10 * MiB)
    est = estimate(no_thumbs, Traffic(searches_per_month=1000, images_per_search=10, app_starts_per_month=0))
    assert line(est, "S3 data transfer out to the internet").quantity == pytest.approx(10_000 * 15_000 / BYTES_PER_GB)
    assert "assumed size" in line(est, "S3 GET requests: image views").note
    assert "no thumbnails yet" in line(est, "S3 Standard storage").note
    big = estimate(no_thumbs, Traffic(searches_per_month=1000, serve_thumbnails=False, avg_image_bytes=2 * MiB,
                                      app_starts_per_month=0))
    assert line(big, "S3 data transfer out to the internet").quantity == pytest.approx(10_000 * 2 / 1024)


def test_metadata_reads_at_app_start_share_the_free_transfer_allowance():
    catalog = CatalogSize(images=1, image_bytes=BYTES_PER_GB, metadata_objects=2, metadata_bytes=BYTES_PER_GB)
    traffic = Traffic(searches_per_month=80, images_per_search=1, serve_thumbnails=False, app_starts_per_month=30)
    est = estimate(catalog, traffic)
    gets = line(est, "S3 GET requests: catalog tables at app start")
    assert gets.quantity == 60 and gets.usd == pytest.approx(0.000024)
    out = line(est, "S3 data transfer out to the internet")
    assert out.quantity == pytest.approx(110)  # 80 GB of views + 30 GB of metadata
    assert out.usd == pytest.approx(0.9)


def test_edited_price_table_changes_the_estimate():
    traffic = Traffic(searches_per_month=100_000, app_starts_per_month=0)
    before = estimate(ORIGINALS, traffic)
    dearer = replace(DEFAULT_PRICES, get_per_1000=0.0008, put_per_1000=0.01, as_of=date(2027, 1, 1),
                     storage_tiers=((None, 0.05),))
    after = estimate(ORIGINALS, traffic, dearer)
    assert line(after, "S3 GET requests: image views").usd == pytest.approx(0.8)
    assert line(after, "Migration: PUT requests").usd == pytest.approx(2 * line(before, "Migration: PUT requests").usd)
    assert line(after, "S3 Standard storage").usd == pytest.approx(ORIGINALS.bytes / BYTES_PER_GB * 0.05)
    assert after.as_dict()["prices"]["as_of"] == "2027-01-01"


def test_totals_rows_and_json_round_trip():
    est = estimate(ORIGINALS, replace(BUSY, use_cdn=True))
    assert est.monthly_total == pytest.approx(sum(x.usd for x in est.monthly))
    rows = est.rows()
    assert {r["kind"] for r in rows} == {"one-time", "monthly"}
    assert sum(r["usd"] for r in rows if r["kind"] == "monthly") == pytest.approx(est.monthly_total)
    assert all(set(r) == set(rows[0]) for r in rows)  # one column set for a table
    d = est.as_dict()
    assert json.loads(json.dumps(d, allow_nan=False)) == d
    assert d["monthly_total"] == pytest.approx(est.monthly_total)
    assert d["catalog"]["objects"] == 20_000 and d["traffic"]["use_cdn"] is True
    assert PriceTable.from_dict(d["prices"]) == DEFAULT_PRICES


def test_text_table_shows_each_line_and_the_totals():
    est = estimate(ORIGINALS, BUSY)
    text = est.as_text()
    assert "as of " + DEFAULT_PRICES.as_of.isoformat() in text
    for x in est.one_time + est.monthly:
        assert x.item in text
    assert format_usd(est.monthly_total) in text and format_usd(est.one_time_total) in text


# ------------------------------------------------------------------------------------------- formatting


@pytest.mark.parametrize(
    "amount, text",
    [
        (0, "$0.00"),
        (1234.56, "$1,234.56"),
        (1_234_567.891, "$1,234,567.89"),
        (0.4, "$0.40"),
        (0.05, "$0.05"),
        (0.0023, "$0.0023"),
        (0.000024, "$0.000024"),
        (0.00000123, "$0.0000012"),
        (0.000005, "$0.000005"),
        (0.00999, "$0.01"),
        (1e-9, "<$0.000001"),
        (-2.5, "-$2.50"),
    ],
)
def test_format_usd(amount, text):
    assert format_usd(amount) == text


def test_format_usd_refuses_nan():
    with pytest.raises(ValueError, match="cannot format"):
        format_usd(float("nan"))


def test_monthly_cost_groups_add_up_to_the_total_for_the_chart():
    catalog = CatalogSize(images=1000, image_bytes=200 * 1024**3, thumbnails=1000, thumbnail_bytes=15_000_000)
    with_cdn = estimate(catalog, Traffic(searches_per_month=1_000_000, images_per_search=20, use_cdn=True))
    groups = with_cdn.monthly_by_group()
    assert set(groups) == {"storage", "CDN", "requests", "transfer"}
    assert sum(groups.values()) == pytest.approx(with_cdn.monthly_total)
    assert groups["storage"] == pytest.approx(storage_cost(catalog.bytes / BYTES_PER_GB))
    without = estimate(catalog, Traffic(searches_per_month=1_000_000, images_per_search=20)).monthly_by_group()
    assert "CDN" not in without and without["requests"] > groups["requests"]
