"""The catalog map (vpm.core.catalog_map): layout, near-duplicate pairs and sampling on synthetic vectors, then the
map of a real catalog's cached vectors (no model loaded) and the page that draws it."""

from __future__ import annotations

import numpy as np
import pytest

from vpm.core import catalog_map

from conftest import make_product_photo
from pagetools import shown


def unit_rows(rows) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def clusters(seed: int = 0, per: int = 20, dim: int = 32, spread: float = 0.05):
    """Three well-separated groups of photos, two photos a product."""
    rng = np.random.default_rng(seed)
    centres = np.eye(dim, dtype=np.float32)[:3] * 5
    rows, products = [], []
    for c, centre in enumerate(centres):
        for i in range(per):
            rows.append(centre + rng.normal(0, spread * 5, dim))
            products.append(f"g{c}-p{i // 2}")
    return unit_rows(rows), products


def test_pca_separates_the_groups_and_keeps_its_orientation():
    vectors, _products = clusters()
    coords = catalog_map.pca_2d(vectors)
    assert coords.shape == (60, 2)
    centres = np.array([coords[i * 20:(i + 1) * 20].mean(axis=0) for i in range(3)])
    spread = max(np.linalg.norm(coords[i * 20:(i + 1) * 20] - centres[i], axis=1).max() for i in range(3))
    gaps = min(np.linalg.norm(centres[a] - centres[b]) for a in range(3) for b in range(a + 1, 3))
    assert gaps > 2 * spread  # each group is a cluster of its own on the map
    assert np.allclose(catalog_map.pca_2d(vectors[::-1])[::-1], coords, atol=1e-4)  # no flips between runs


def test_pca_fitted_on_a_sample_still_projects_every_point():
    vectors, _ = clusters(per=200)
    coords = catalog_map.pca_2d(vectors, sample=50)
    assert coords.shape == (600, 2) and np.isfinite(coords).all()


def test_tiny_inputs_do_not_break_the_layout():
    assert catalog_map.pca_2d(np.empty((0, 4), dtype=np.float32)).shape == (0, 2)
    assert catalog_map.pca_2d(unit_rows([[1, 0, 0]])).tolist() == [[0.0, 0.0]]
    assert catalog_map.pca_2d(unit_rows([[1, 0, 0], [0, 1, 0]])).shape == (2, 2)


def test_duplicates_are_pairs_of_different_products_never_a_products_own_photos():
    rng = np.random.default_rng(1)
    base = unit_rows(rng.normal(size=(6, 16)))
    vectors = np.vstack([
        base[0], base[0] + 0.001,  # product a: two near-identical photos of itself (not a duplicate)
        base[1], base[1] + 0.002,  # product b's photo and product c's near-identical one: a duplicate pair
        base[2], base[3],           # d and e: unrelated
    ])
    vectors = unit_rows(vectors)
    codes = np.array([0, 0, 1, 2, 3, 4])
    found = catalog_map.near_duplicates(vectors, codes, threshold=0.99)
    assert list(found) == [(1, 2)]
    score, first, second = found[(1, 2)]
    assert score > 0.99 and (first, second) == (2, 3)


def test_the_duplicate_search_is_exact_whatever_the_block_size():
    vectors, products = clusters(per=30, spread=0.02)
    _order, _per_product, codes = catalog_map.product_vectors(products, vectors)
    whole = catalog_map.near_duplicates(vectors, codes, threshold=0.9, block_scores=10**9)
    blocked = catalog_map.near_duplicates(vectors, codes, threshold=0.9, block_scores=len(vectors) * 7)
    assert whole and whole.keys() == blocked.keys()
    assert all(abs(whole[k][0] - blocked[k][0]) < 1e-6 for k in whole)


def test_reading_more_vectors_than_the_limit_keeps_a_uniform_sample_of_the_limit():
    def batches():
        for start in range(0, 1000, 64):
            n = min(64, 1000 - start)
            yield ([f"k{start + i}" for i in range(n)], [f"p{(start + i) // 3}" for i in range(n)],
                   np.full((n, 2), start, dtype=np.float32))

    keys, products, matrix, total = catalog_map.read_vectors(batches(), limit=100)
    assert total == 1000 and len(keys) == len(products) == len(matrix) == 100
    numbers = sorted(int(k[1:]) for k in keys)
    assert len(set(numbers)) == 100 and numbers[-1] > 500  # drawn from the whole stream, not its head
    for key, product, row in zip(keys, products, matrix, strict=True):
        assert product == f"p{int(key[1:]) // 3}" and row[0] == (int(key[1:]) // 64) * 64  # rows stay together

    keys, _, matrix, total = catalog_map.read_vectors(batches(), limit=5000)
    assert total == len(keys) == 1000 and matrix.shape == (1000, 2)


def test_umap_is_used_for_a_large_catalog_when_it_is_installed(monkeypatch):
    import sys
    import types

    calls = []

    class FakeUMAP:
        def __init__(self, **options):
            calls.append(options)

        def fit_transform(self, vectors):
            return np.zeros((len(vectors), 2))

    monkeypatch.setitem(sys.modules, "umap", types.SimpleNamespace(UMAP=FakeUMAP))
    vectors, _ = clusters(per=20)
    assert catalog_map.layout_2d(vectors)[1] == "PCA"  # small: PCA
    monkeypatch.setattr(catalog_map, "UMAP_FROM", 10)
    coords, method = catalog_map.layout_2d(vectors)
    assert method == "UMAP" and coords.shape == (60, 2) and calls[0]["metric"] == "cosine"


# ------------------------------------------------------------------------------------ a real catalog


@pytest.fixture
def colour_catalog(app_settings):
    """Products embedded by the instant ColourMeanEmbedder (the map reads its vectors; no model is loaded)."""
    from vpm.core.matcher import Matcher

    from fakes import ColourMeanEmbedder

    seeder = Matcher(app_settings, embedder=ColourMeanEmbedder())
    mug = seeder.create_product([(make_product_photo(1), "a.png"), (make_product_photo(2), "b.png")],
                                name="Red mug", category="Kitchen")
    copy = seeder.create_product([(make_product_photo(1, size=97), "c.png")], name="Red mug (copy)",
                                 category="Kitchen")
    lamp = seeder.create_product([(make_product_photo(5), "d.png")], name="Desk lamp", category="Lighting")
    return seeder, mug, copy, lamp


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_the_map_of_a_catalog_comes_from_its_cached_vectors(colour_catalog, app_settings):
    from vpm.core.matcher import Matcher

    _seeder, mug, copy, lamp = colour_catalog
    matcher = Matcher(app_settings)  # configured with the tiny CLIP, which must not load
    index = matcher.vector_index("fake-colour")
    made = catalog_map.build_map(matcher, threshold=0.999, index=index)
    assert matcher.model_loaded is False
    assert {p.product_id: p.photos for p in made.points} == {mug.id: 2, copy.id: 1, lamp.id: 1}
    assert [(d.first_name, d.second_name) for d in made.pairs] in (
        [("Red mug", "Red mug (copy)")], [("Red mug (copy)", "Red mug")],
    )
    assert made.photos_total == made.photos_used == 4 and not made.sampled
    assert made.points[0].picture_key.startswith("thumbnails/")


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_without_vectors_for_the_running_model_the_map_says_what_to_do(app_settings, seed_catalog):
    from vpm.core.matcher import Matcher

    assert "empty" in _unavailable(Matcher(app_settings))
    seed_catalog([("Red mug", "Kitchen", 1)])  # embedded by the tiny CLIP: its vectors exist
    made = catalog_map.build_map(Matcher(app_settings))
    assert [p.name for p in made.points] == ["Red mug"]


def _unavailable(matcher) -> str:
    with pytest.raises(catalog_map.MapUnavailable) as caught:
        catalog_map.build_map(matcher)
    return str(caught.value)


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_the_map_page_draws_the_points_and_lists_possible_duplicates(app_settings, seed_catalog, open_page):
    from vpm.core.matcher import Matcher

    seed_catalog([("Red mug", "Kitchen", 1), ("Trail shoe", "Shoes", 3)])
    Matcher(app_settings).add_product(  # the very same photo filed again under another product
        make_product_photo(1), "again.png", name="Red mug again", category="Kitchen", allow_duplicate=True,
    )
    at = open_page("pages/catalog_map.py")
    at.slider[0].set_value(99.5).run()  # the tiny random test model finds every pair of photos quite alike

    assert not at.exception
    assert len(at.get("vega_lite_chart")) == 1
    # Whole names in lines that wrap (a table in this narrow column cut them, and its "looks like" header).
    assert not at.dataframe
    pairs = [shown(m.value) for m in at.markdown if "looks like" in m.value]
    assert len(pairs) == 1
    assert pairs[0] in ("1. Red mug looks like Red mug again · 100.0% alike",
                        "1. Red mug again looks like Red mug · 100.0% alike")
    assert any("3 products" in c.value for c in at.caption)


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_the_map_page_on_an_empty_catalog_says_what_to_do(app_settings, open_page):
    at = open_page("pages/catalog_map.py")
    assert not at.exception
    assert any("The catalog is empty" in i.value for i in at.info)
