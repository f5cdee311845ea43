"""`vpm index --cluster`: the IVF-PQ index built by Ray tasks is one index over every row, each task encodes only
its share of the fragments, and a search through it finds what a search through the single-machine index finds.

A local Ray (2 CPUs, no dashboard) is started once for this module; the tables are in a local folder and in a bucket
on moto's HTTP server (conftest's `settings`). The vectors are bench/synthetic.py's clustered ones, no model.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.cluster

if os.environ.get("CI"):
    import ray  # the test command installs it (requirements-dev.txt includes requirements-cluster.txt)
else:
    ray = pytest.importorskip("ray", reason="pip install -r requirements-cluster.txt (requirements-dev.txt has it)")

REPO_ROOT = Path(__file__).resolve().parent.parent
ROWS = 12_000  # 12 IVF partitions at lance_vectors.ANN_PARTITION_ROWS
WRITE_BATCH = 1_000  # one fragment a write: 12 fragments to share out
QUERIES = 100
K = 10
RECALL_TOLERANCE = 0.1  # at 1 probe the two builds' k-means starts alone moved recall by up to 0.048 (0.364 vs 0.412 in CI); a lost share costs far more


def synthetic():
    """bench/synthetic.py (clustered vectors shaped like CLIP's), loaded from its file."""
    spec = importlib.util.spec_from_file_location("bench_synthetic", REPO_ROOT / "bench" / "synthetic.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def catalog():
    return synthetic().make_catalog(ROWS, centres=300, seed=11)


@pytest.fixture(scope="module")
def ray_cluster():
    from vpm.backends import cluster

    ray.init(num_cpus=2, include_dashboard=False, runtime_env=cluster.runtime_env(), logging_level="WARNING")
    try:
        yield
    finally:
        ray.shutdown()


def entries(catalog, start: int, stop: int):
    from vpm.core.vector_index import PhotoVector

    return [
        PhotoVector(
            catalog.photo_key(i, 0), catalog.product_id(i), f"{i:064x}", catalog.category_of(i), catalog.vectors[i]
        )
        for i in range(start, stop)
    ]


def filled_index(where, model_id: str, catalog):
    from vpm.backends.lance_vectors import LanceVectorIndex

    index = LanceVectorIndex(where, model_id, catalog.dim, exists=False)
    for start in range(0, catalog.n_photos, WRITE_BATCH):
        index.upsert(entries(catalog, start, min(catalog.n_photos, start + WRITE_BATCH)))
    return index


def exact_top(catalog, queries: np.ndarray) -> list[set[str]]:
    """The true K nearest photos of each query (the vectors are unit: cosine is a dot product)."""
    best = np.argsort(-(queries @ catalog.vectors.T), axis=1)[:, :K]
    return [{catalog.photo_key(int(i), 0) for i in row} for row in best]


def recall(index, queries: np.ndarray, truth: list[set[str]], *, nprobes: int, refine: int | None) -> float:
    """recall@K of searches through the index, asked as vpm/backends/lance_vectors.py asks (cosine, nprobes, refine)."""
    table = index.table  # one handle: the searches read the index, not the table's freshness
    found = 0
    for query, true in zip(queries, truth, strict=True):
        request = table.search(query, vector_column_name="vector").distance_type("cosine").select(["photo_key"])
        request = request.limit(K).nprobes(nprobes)
        if refine:
            request = request.refine_factor(refine)
        found += len(true & set(request.to_arrow().column("photo_key").to_pylist()))
    return found / (K * len(queries))


def segments(index):
    (description,) = index.table.to_lance().describe_indices()
    return description


def test_shares_split_the_fragments_evenly_each_into_one_share():
    from vpm.backends.cluster_index import plan_shares

    fragments = [(0, 900), (1, 100), (2, 500), (3, 500), (4, 400), (7, 600)]
    shares = plan_shares(fragments, 3)
    assert len(shares) == 3
    ids = [i for share in shares for i in share.fragment_ids]
    assert sorted(ids) == [0, 1, 2, 3, 4, 7]  # every fragment once
    assert [share.rows for share in shares] == [1000, 1000, 1000]
    assert len(plan_shares(fragments[:2], 8)) == 2  # never an empty share
    assert [s.fragment_ids for s in plan_shares(fragments, 1)] == [(0, 1, 2, 3, 4, 7)]


def test_the_index_built_on_ray_covers_every_row_and_finds_what_the_single_machine_index_finds(
    ray_cluster, settings, catalog
):
    from vpm.backends import cluster_index, engine
    from vpm.backends.lance_vectors import ANN_NPROBES, ANN_REFINE

    where = engine.location(settings)
    single = filled_index(where, "single", catalog)
    single.build_ann()
    spread = filled_index(where, "ray", catalog)
    fragments = {f.fragment_id: f.count_rows() for f in spread.table.to_lance().get_fragments()}
    assert len(fragments) == ROWS // WRITE_BATCH

    built = cluster_index.build(spread, settings, tasks=2)

    assert spread.has_ann()
    (config,) = spread.table.list_indices()
    assert (config.name, config.num_indexed_rows, config.num_unindexed_rows) == ("vector_idx", ROWS, 0)
    # One segment a task, each over exactly its share's fragments: no task encoded a row outside its share.
    assert len(built.shares) == 2 and built.rows == ROWS and built.sample_rows < ROWS
    covered = sorted(sorted(segment.fragment_ids) for segment in segments(spread).segments)
    assert covered == sorted(sorted(share.fragment_ids) for share in built.shares)
    assert all(
        share.rows == sum(fragments[i] for i in share.fragment_ids) <= ROWS // 2 + WRITE_BATCH for share in built.shares
    )
    plan = spread.table.search(catalog.vectors[0], vector_column_name="vector").nprobes(1).explain_plan(True)
    assert "ANNIvfPartition" in plan  # the search goes through the index, not a scan

    queries, _rows = catalog.perturbed_queries(QUERIES)
    truth = exact_top(catalog, queries)
    # As the search runs (vpm/backends/lance_vectors.py): results stay right with either build.
    assert recall(spread, queries, truth, nprobes=ANN_NPROBES, refine=ANN_REFINE) >= 0.97
    assert recall(single, queries, truth, nprobes=ANN_NPROBES, refine=ANN_REFINE) >= 0.97
    # One partition, PQ distances only: where the centroids and codebook show; the two builds are alike.
    ray_recall, single_recall = (recall(index, queries, truth, nprobes=1, refine=None) for index in (spread, single))
    assert abs(ray_recall - single_recall) <= RECALL_TOLERANCE, (ray_recall, single_recall)
    engine.forget(where)


def synthetic_products(catalog):
    """Products with one photo each, and their vectors (no image files: the index build reads vectors only)."""
    from vpm.core.catalog import Photo, Product

    created = "2026-01-01T00:00:00+00:00"  # as stored (model_construct skips the parsing)
    products = [
        Product.model_construct(
            id=catalog.product_id(i),
            name=f"Synthetic {i}",
            category=catalog.category_of(i),
            price=1.0,
            description=None,
            attributes={},
            created_at=created,
            updated_at=None,
            revision=0,
            photos=[
                Photo.model_construct(
                    key=catalog.photo_key(i, 0),
                    thumbnail_key=catalog.thumbnail_key(i, 0),
                    sha256=f"{i:064x}",
                    width=800,
                    height=800,
                    added_at=created,
                )
            ],
        )
        for i in range(catalog.n_products)
    ]
    return products, entries(catalog, 0, catalog.n_photos)


def segment_ids(vectors) -> set[str]:
    return {segment.uuid for segment in segments(vectors).segments}


def test_reindex_on_ray_builds_the_index_once_the_table_is_big_enough_and_rebuild_replaces_it(
    ray_cluster, search_settings
):
    from vpm.backends import cluster, cluster_index
    from vpm.core.matcher import Matcher

    matcher = Matcher(search_settings)
    small = synthetic().make_catalog(1_200, dim=matcher.embedder.dim, centres=60, seed=5)
    products, vectors = synthetic_products(small)
    for start in range(0, len(vectors), 300):
        matcher.vectors.upsert(vectors[start : start + 300])
    assert not matcher.catalog.add(products)

    status = cluster.reindex(matcher, options=cluster.ClusterOptions(workers=2))
    assert status.ok and status.vectors == 1_200
    assert not matcher.vectors.has_ann()  # under ANN_FROM_PHOTOS: exact search, no index, as on one machine

    options = cluster.ClusterOptions(workers=2, index_from=1_000)
    assert cluster.reindex(matcher, options=options).ok
    (config,) = matcher.vectors.table.list_indices()
    assert (config.num_indexed_rows, config.num_unindexed_rows) == (1_200, 0)
    first = segment_ids(matcher.vectors)
    assert len(first) == 2  # one segment a task

    cluster.reindex(matcher, options=options)
    assert segment_ids(matcher.vectors) == first  # an index is there: a plain run keeps it

    rebuilt = cluster_index.build_when_due(matcher.vectors, matcher.settings, rebuild=True, from_rows=1_000, tasks=2)
    assert rebuilt is not None and rebuilt.rows == 1_200
    assert not segment_ids(matcher.vectors) & first  # the old segments are replaced, not added to
    (config,) = matcher.vectors.table.list_indices()
    assert config.num_indexed_rows == 1_200


def test_while_the_cluster_owns_the_index_this_process_starts_no_build_of_its_own(tmp_path, monkeypatch, catalog):
    from vpm.backends import engine, lance_vectors
    from vpm.core.config import load_settings

    monkeypatch.setattr(lance_vectors, "ANN_FROM_PHOTOS", 1_000)
    where = engine.location(load_settings(vpm_data_dir=tmp_path / "data", s3_enabled=False))
    index = lance_vectors.LanceVectorIndex(where, "held", catalog.dim, exists=False)
    index.upsert(entries(catalog, 0, 1_200))
    with index.ann_built_elsewhere():
        index._build_ann_when_due(wait=True)
        assert not index.has_ann()
    index._build_ann_when_due(wait=True)  # released: the single-machine build goes on as before
    assert index.has_ann()
    engine.forget(where)
