"""The vector index contract, run against every implementation and backend (local folder, S3 over HTTP).

Both ways the LanceDB index answers are exercised: the in-memory exact path (small tables) and LanceDB's own
search (forced by lowering the memory limit), whose answers must agree.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from vpm.backends import lance_vectors
from vpm.backends.lance_vectors import LanceVectorIndex
from vpm.core.vector_index import PhotoVector

DIM = 16


def unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float32)
    return v / np.linalg.norm(v)


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def entry(key: str, product: str, category: str, vector) -> PhotoVector:
    return PhotoVector(key, product, sha(key), category, unit(vector))


@pytest.fixture(params=["memory", "engine"])
def path(request, monkeypatch):
    """Which way queries are answered: exact in memory, or by LanceDB (memory limit set to zero)."""
    if request.param == "engine":
        monkeypatch.setattr(lance_vectors, "MEMORY_MAX_PHOTOS", 0)
    return request.param


@pytest.fixture
def index(engine_location, path) -> LanceVectorIndex:
    return LanceVectorIndex(engine_location, "test-model", DIM)


def basis(i: int, noise: float = 0.0, seed: int = 0) -> np.ndarray:
    v = np.zeros(DIM, dtype=np.float32)
    v[i] = 1.0
    if noise:
        v += np.random.default_rng(seed).normal(0, noise, DIM).astype(np.float32)
    return unit(v)


@pytest.fixture
def stocked(index):
    """Three products; p1 has two photos (one near axis 0, one near axis 1)."""
    index.upsert([
        entry("images/p1-a.jpg", "p1", "Shoes", basis(0)),
        entry("images/p1-b.jpg", "p1", "Shoes", basis(1)),
        entry("images/p2-a.jpg", "p2", "Shoes", basis(0, 0.3, 1)),
        entry("images/p3-a.jpg", "p3", "Kitchen", basis(2)),
    ])
    return index


def test_a_product_is_ranked_by_its_best_photo_and_listed_once(stocked):
    (result,) = stocked.query(basis(1), k=10)
    assert [h.product_id for h in result.hits][:1] == ["p1"]
    assert result.hits[0].photo_key == "images/p1-b.jpg"
    assert result.hits[0].score == pytest.approx(1.0, abs=1e-4)
    assert len({h.product_id for h in result.hits}) == len(result.hits) == 3


def test_scores_are_cosine_and_ordered(stocked):
    (result,) = stocked.query(basis(0), k=3)
    scores = [h.score for h in result.hits]
    assert scores == sorted(scores, reverse=True)
    assert result.hits[0].product_id == "p1" and scores[0] == pytest.approx(1.0, abs=1e-4)
    assert result.hits[-1].product_id == "p3" and scores[-1] == pytest.approx(0.0, abs=1e-4)


def test_the_category_filter_applies_before_the_top_k(index):
    # 30 shoes that all beat the one mug, and the mug still comes back when only mugs are asked for.
    index.upsert([entry(f"images/s{i}.jpg", f"s{i}", "Shoes", basis(0, 0.05, i)) for i in range(30)])
    index.upsert([entry("images/m.jpg", "m", "Mugs", basis(3))])
    (result,) = index.query(basis(0), k=5, categories=["mugs"])
    assert [h.product_id for h in result.hits] == ["m"]
    (shoes,) = index.query(basis(0), k=10, categories=["Shoes"])
    assert len(shoes.hits) == 10 and all(h.product_id.startswith("s") for h in shoes.hits)


def test_the_threshold_hides_weak_matches_and_best_score_says_how_close(stocked):
    (result,) = stocked.query(basis(2), k=10, threshold=0.99)
    assert [h.product_id for h in result.hits] == ["p3"]
    (none,) = stocked.query(basis(3), k=10, threshold=0.5)
    assert none.hits == [] and none.best_score == pytest.approx(0.0, abs=1e-4)
    (empty,) = stocked.query(basis(0), k=10, categories=["Garden"])
    assert empty.hits == [] and empty.best_score is None


def test_several_queries_at_once_keep_their_order(stocked):
    results = stocked.query(np.stack([basis(2), basis(1)]), k=1)
    assert [r.hits[0].product_id for r in results] == ["p3", "p1"]


def test_upsert_replaces_a_photos_vector(stocked):
    stocked.upsert([entry("images/p3-a.jpg", "p3", "Kitchen", basis(5))])
    (result,) = stocked.query(basis(5), k=1)
    assert result.hits[0].product_id == "p3" and result.hits[0].score == pytest.approx(1.0, abs=1e-4)
    assert stocked.count() == 4


def test_deleting_products_and_photos_removes_them_from_results(stocked):
    stocked.delete_products(["p2"])
    stocked.delete_photos(["images/p1-b.jpg"])
    (result,) = stocked.query(basis(1), k=10)
    assert {h.product_id for h in result.hits} == {"p1", "p3"}
    assert all(h.photo_key != "images/p1-b.jpg" for h in result.hits)
    assert stocked.count() == 2


def test_a_new_category_follows_the_product(stocked):
    stocked.set_category("p3", "Shoes")
    (result,) = stocked.query(basis(2), k=5, categories=["shoes"])
    assert "p3" in [h.product_id for h in result.hits]


def test_vectors_are_found_by_image_hash_for_reuse(stocked):
    found = stocked.vectors_for_shas([sha("images/p3-a.jpg"), sha("never-seen")])
    assert list(found) == [sha("images/p3-a.jpg")]
    assert np.allclose(found[sha("images/p3-a.jpg")], basis(2))
    assert stocked.photo_keys_with_vectors(["images/p3-a.jpg", "images/x.jpg"]) == {"images/p3-a.jpg"}


def test_vectors_are_found_by_photo_key_before_and_after_a_search(stocked):
    wanted = ["images/p1-b.jpg", "images/p3-a.jpg", "images/never-stored.jpg"]
    before = stocked.vectors_for_keys(wanted)
    stocked.query(basis(0), k=3)  # the memory path now holds the table
    after = stocked.vectors_for_keys(wanted)

    for found in (before, after):
        assert sorted(found) == ["images/p1-b.jpg", "images/p3-a.jpg"]
        assert np.allclose(found["images/p1-b.jpg"], basis(1)) and np.allclose(found["images/p3-a.jpg"], basis(2))


def test_bad_queries_and_bad_vectors_are_refused(stocked):
    with pytest.raises(ValueError, match="16-d"):
        stocked.query(np.ones(3, dtype=np.float32))
    with pytest.raises(ValueError, match="k must be"):
        stocked.query(basis(0), k=0)
    with pytest.raises(ValueError, match="NaN"):
        stocked.upsert([PhotoVector("images/bad.jpg", "p9", sha("bad"), "X", np.full(DIM, np.nan, np.float32))])


def test_a_model_id_never_sees_another_models_vectors(engine_location, stocked):
    other = LanceVectorIndex(engine_location, "another-model", DIM)
    assert other.count() == 0
    (result,) = other.query(basis(0), k=5)
    assert result.hits == [] and result.best_score is None


def test_a_new_index_object_sees_writes_made_through_another(engine_location, stocked):
    fresh = LanceVectorIndex(engine_location, "test-model", DIM)
    stocked.upsert([entry("images/p4.jpg", "p4", "Garden", basis(7))])
    (result,) = fresh.query(basis(7), k=1)
    assert result.hits[0].product_id == "p4"


def test_the_approximate_index_agrees_with_exact_search(engine_location, monkeypatch):
    """Above the size limit an IVF-PQ index answers, and refinement keeps the top results right."""
    rng = np.random.default_rng(7)
    centres = rng.normal(size=(20, DIM)).astype(np.float32)
    vectors = centres[rng.integers(0, 20, 2000)] + rng.normal(0, 0.4, (2000, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = LanceVectorIndex(engine_location, "ann-model", DIM)
    index.upsert([PhotoVector(f"images/{i}.jpg", f"p{i}", sha(str(i)), "All", v) for i, v in enumerate(vectors)])
    monkeypatch.setattr(lance_vectors, "ANN_PARTITION_ROWS", 100)
    index.build_ann()
    assert index.has_ann()
    queries = vectors[:20] + rng.normal(0, 0.05, (20, DIM)).astype(np.float32)
    exact = index.query(queries, k=10)
    monkeypatch.setattr(lance_vectors, "MEMORY_MAX_PHOTOS", 0)
    index._snapshot = None
    approx = index.query(queries, k=10)
    recall = np.mean([
        len({h.product_id for h in a.hits} & {h.product_id for h in e.hits}) / 10 for a, e in zip(approx, exact, strict=False)
    ])
    assert recall >= 0.95
    assert all(a.hits[0].product_id == e.hits[0].product_id for a, e in zip(approx, exact, strict=False))


def test_iter_keys_visits_every_vector_once(index):
    index.upsert([entry(f"images/{i}.jpg", f"p{i // 2}", "All", basis(i % DIM)) for i in range(25)])
    batches = list(index.iter_keys(batch_size=10))
    assert [len(b) for b in batches] == [10, 10, 5]
    assert sorted(k for b in batches for k, _p in b) == sorted(f"images/{i}.jpg" for i in range(25))


def test_iter_vectors_reads_every_vector_once_in_bounded_batches(index):
    entries = [entry(f"images/p{i}.jpg", f"p{i // 2}", "Shoes", basis(i % DIM, 0.1, i)) for i in range(25)]
    index.upsert(entries)
    batches = list(index.iter_vectors(batch_size=10))
    assert all(len(keys) == len(products) == len(vectors) <= 10 for keys, products, vectors in batches)
    seen = {key: (product, vector) for keys, products, vectors in batches
            for key, product, vector in zip(keys, products, vectors, strict=True)}
    assert sorted(seen) == sorted(e.photo_key for e in entries)
    for e in entries:
        assert seen[e.photo_key][0] == e.product_id
        assert np.allclose(seen[e.photo_key][1], e.vector)
