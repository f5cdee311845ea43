"""The vector cache (persisted segments, on both backends) and the exact cosine search over it."""

from __future__ import annotations

import hashlib
import logging
import threading

import numpy as np
import pytest

from vpm import index
from vpm.index import CorruptSegment, SearchIndex, VectorCache, cached_sha256s, decode_segment, encode_segment

MODEL = "model-a"
DIM = 8


def sha(i: int) -> str:
    return hashlib.sha256(f"image {i}".encode()).hexdigest()


def unit_vectors(n: int, dim: int = DIM, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def new_cache(storage, settings, model_id: str = MODEL, dim: int = DIM) -> VectorCache:
    cache = VectorCache(storage, settings.embeddings_prefix, model_id, dim)
    cache.refresh()
    return cache


def segment_keys(storage, settings, model_id: str = MODEL) -> list[str]:
    return sorted(o.key for o in storage.iter_objects(f"{settings.embeddings_prefix}{model_id}/"))


# --- segments ------------------------------------------------------------------------------------------------


def test_a_segment_round_trips():
    vectors = unit_vectors(3)
    data = encode_segment(MODEL, DIM, [sha(0), sha(1), sha(2)], vectors)
    segment = decode_segment(data, "k.npz", MODEL, DIM)
    assert segment.shas == [sha(0), sha(1), sha(2)]
    np.testing.assert_array_equal(segment.vectors, vectors)


def _bad_segments() -> dict[str, tuple[bytes, str]]:
    good = encode_segment(MODEL, DIM, [sha(0), sha(1)], unit_vectors(2))
    not_unit = unit_vectors(2) * 3
    nan = unit_vectors(2)
    nan[0, 0] = np.nan
    return {
        "garbage": (b"this is not a vector file", "not a readable vector file"),
        "truncated": (good[: len(good) // 2], "not a readable vector file"),
        "other model": (encode_segment("model-b", DIM, [sha(0)], unit_vectors(1)), "model 'model-b'"),
        "other dim": (encode_segment(MODEL, 4, [sha(0)], unit_vectors(1, 4)), "4-d vectors"),
        "not unit": (encode_segment(MODEL, DIM, [sha(0), sha(1)], not_unit), "not unit length"),
        "nan": (encode_segment(MODEL, DIM, [sha(0), sha(1)], nan), "NaN"),
        "bad key": (encode_segment(MODEL, DIM, ["x" * 64], unit_vectors(1)), "not SHA-256"),
    }


@pytest.mark.parametrize("case", list(_bad_segments()))
def test_a_segment_that_cannot_be_trusted_is_refused_saying_why(case):
    data, why = _bad_segments()[case]
    with pytest.raises(CorruptSegment, match=why):
        decode_segment(data, "metadata/embeddings/model-a/x.npz", MODEL, DIM)


def test_cache_folder_names_are_checked():
    assert index.cache_prefix("metadata/embeddings/", "clip-ViT-B-32") == "metadata/embeddings/clip-ViT-B-32/"
    with pytest.raises(ValueError):
        index.cache_prefix("metadata/embeddings/", "../etc")


# --- the cache on storage (both backends) --------------------------------------------------------------------


def test_vectors_written_by_one_cache_are_read_by_another(storage, settings):
    vectors = unit_vectors(3)
    writer = new_cache(storage, settings)
    writer.add([sha(0), sha(1), sha(2)], vectors)

    reader = new_cache(storage, settings)  # a restart, another replica, another machine
    assert len(reader) == 3 and sha(1) in reader
    np.testing.assert_array_equal(reader.get([sha(2), sha(0)]), vectors[[2, 0]])


def test_adding_cached_vectors_again_writes_nothing(storage, settings):
    cache = new_cache(storage, settings)
    cache.add([sha(0)], unit_vectors(1))
    assert cache.add([sha(0)], unit_vectors(1, seed=5)) is None
    assert len(segment_keys(storage, settings)) == 1


def test_two_writers_do_not_lose_each_others_vectors(storage, settings):
    a, b = new_cache(storage, settings), new_cache(storage, settings)
    a.add([sha(0)], unit_vectors(1, seed=1))
    b.add([sha(1)], unit_vectors(1, seed=2))  # b never saw a's vector
    assert new_cache(storage, settings).shas() == {sha(0), sha(1)}
    b.refresh()
    assert sha(0) in b


def test_concurrent_writers_in_threads_keep_every_vector(storage, settings):
    errors = []

    def write(worker: int) -> None:
        try:
            cache = new_cache(storage, settings)
            for j in range(5):
                i = worker * 10 + j
                cache.add([sha(i)], unit_vectors(1, seed=i))
        except Exception as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert new_cache(storage, settings).shas() == {sha(w * 10 + j) for w in range(6) for j in range(5)}


def test_many_segments_are_compacted_into_one_without_losing_vectors(storage, settings, monkeypatch):
    monkeypatch.setattr(index, "MAX_SEGMENTS", 4)
    cache = new_cache(storage, settings)
    vectors = unit_vectors(10)
    for i in range(10):
        cache.add([sha(i)], vectors[i : i + 1])
    assert len(segment_keys(storage, settings)) <= 4
    fresh = new_cache(storage, settings)
    np.testing.assert_array_equal(fresh.get([sha(i) for i in range(10)]), vectors)


def test_compaction_with_keep_prunes_the_rest(storage, settings):
    cache = new_cache(storage, settings)
    cache.add([sha(0), sha(1), sha(2)], unit_vectors(3))
    assert cache.compact(keep={sha(0), sha(2)}) == 1
    assert new_cache(storage, settings).shas() == {sha(0), sha(2)}
    assert len(segment_keys(storage, settings)) == 1


def test_a_corrupt_segment_is_skipped_with_a_warning_and_removed_by_compaction(storage, settings, caplog):
    cache = new_cache(storage, settings)
    cache.add([sha(0)], unit_vectors(1))
    bad_key = f"{settings.embeddings_prefix}{MODEL}/0000-garbage.npz"
    storage.put(bad_key, b"\x00garbage")

    with caplog.at_level(logging.WARNING, logger="vpm.index"):
        reader = new_cache(storage, settings)
    assert reader.shas() == {sha(0)}
    assert bad_key in reader.corrupt
    assert "ignoring" in caplog.text and bad_key in caplog.text

    reader.compact()
    assert bad_key not in segment_keys(storage, settings)
    assert new_cache(storage, settings).corrupt == {}


def test_models_never_share_a_folder(storage, settings):
    new_cache(storage, settings, "model-a").add([sha(0)], unit_vectors(1))
    other = new_cache(storage, settings, "model-b")
    assert len(other) == 0
    # Even a segment copied into the wrong folder is refused: it says which model wrote it.
    (key,) = segment_keys(storage, settings, "model-a")
    storage.put(f"{settings.embeddings_prefix}model-b/copied.npz", storage.get(key))
    other.refresh()
    assert len(other) == 0 and other.corrupt


def test_a_vector_of_another_dimension_is_refused(storage, settings):
    new_cache(storage, settings, dim=DIM).add([sha(0)], unit_vectors(1))
    assert len(new_cache(storage, settings, dim=16)) == 0


def test_cached_sha256s_lists_cached_images_without_a_model(storage, settings):
    assert cached_sha256s(storage, settings, MODEL) is None
    new_cache(storage, settings).add([sha(0), sha(1)], unit_vectors(2))
    storage.put(f"{settings.embeddings_prefix}{MODEL}/junk.npz", b"junk")
    assert cached_sha256s(storage, settings, MODEL) == {sha(0), sha(1)}


# --- search --------------------------------------------------------------------------------------------------


def make_index() -> tuple[SearchIndex, np.ndarray]:
    vectors = unit_vectors(20, seed=3)
    categories = ["Shoes" if i % 2 else "bags" for i in range(20)]
    return SearchIndex(vectors, categories), vectors


def test_search_returns_the_top_k_by_cosine_best_first():
    idx, vectors = make_index()
    (hits, best), = idx.search(vectors[7], top_k=5)
    expected = np.argsort(-(vectors @ vectors[7]))[:5]
    assert [h.row for h in hits] == list(expected)
    assert hits[0].row == 7 and hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert best == pytest.approx(1.0, abs=1e-5)


def test_threshold_drops_weak_hits_but_best_score_still_reports_the_best():
    idx, vectors = make_index()
    query = unit_vectors(1, seed=99)[0]
    scores = vectors @ query
    (hits, best), = idx.search(query, top_k=20, threshold=float(scores.max()) + 0.01)
    assert hits == []
    assert best == pytest.approx(float(scores.max()), abs=1e-6)
    cut = float(np.sort(scores)[-3])
    (hits, _), = idx.search(query, top_k=20, threshold=cut)
    assert len(hits) == 3 and all(h.score >= cut for h in hits)


def test_category_filter_is_case_insensitive_and_accepts_several():
    idx, vectors = make_index()
    (hits, _), = idx.search(vectors[0], top_k=20, categories=["shoes"])
    assert hits and all(h.row % 2 == 1 for h in hits)
    assert 0 not in [h.row for h in hits]
    (hits, _), = idx.search(vectors[0], top_k=20, categories=["SHOES", "Bags"])
    assert len(hits) == 20
    assert idx.search(vectors[0], categories=["hats"]) == [([], None)]


def test_batch_queries_give_the_same_answers_as_single_ones():
    idx, vectors = make_index()
    batch = idx.search(vectors[[1, 4, 9]], top_k=3)
    single = [idx.search(vectors[i], top_k=3)[0] for i in (1, 4, 9)]
    for (hits_b, best_b), (hits_s, best_s) in zip(batch, single):
        assert [h.row for h in hits_b] == [h.row for h in hits_s]
        assert [h.score for h in hits_b] == pytest.approx([h.score for h in hits_s], abs=1e-6)
        assert best_b == pytest.approx(best_s, abs=1e-6)


def test_bad_queries_are_refused():
    idx, _ = make_index()
    with pytest.raises(ValueError, match="8-d"):
        idx.search(np.ones(5, dtype=np.float32))
    with pytest.raises(ValueError, match="top_k"):
        idx.search(unit_vectors(1)[0], top_k=0)
