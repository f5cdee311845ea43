"""`vpm index --cluster`: the IVF-PQ index over a model's vectors, built by Ray tasks. Only `--cluster` imports it.

The single-machine build (`LanceVectorIndex.build_ann`) reads every vector in one process. Here no process holds
more than its part:

- the driver (this module) trains the IVF centroids and the PQ codebook on a bounded sample of the vectors
  (pylance's `IndicesBuilder`, the same k-means LanceDB runs, with its sample of 256 rows a partition up to
  TRAIN_SAMPLE_MAX_ROWS), and splits the table's fragments into shares of about equal rows, one a task;
- each Ray task (vpm/backends/cluster_index_work.py) reads only its share's fragments, assigns the rows to partitions
  and PQ-encodes them with the driver's model, and writes an uncommitted index segment;
- the driver commits the segments together as the one index LanceDB would have built (`vector_idx`, replacing
  an older one): one logical index whose segments share the centroids and codebook, so a search probes the same
  partitions in each, covering every row of the version the build planned on.

Rows written while the build runs are not in the index; the search reads them unindexed, as it reads any rows
added after a build, until maintenance folds them in.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import ray

from vpm.backends import lance_vectors, maintenance
from vpm.backends.cluster_index_work import COLUMN, INDEX_NAME, METRIC, SegmentJob, build_segment

log = logging.getLogger(__name__)

SAMPLE_PER_PARTITION = 256  # LanceDB's IvfPq sample rate: rows per partition (IVF) and per PQ code (PQ)
PQ_CODES = 256  # 8-bit PQ codes, as LanceDB's default
TRAIN_SAMPLE_MAX_ROWS = 262_144  # ~512 MB of 512-d vectors: what the driver may hold; reached past 1M rows
TASK_CPUS = 1.0


class IndexBuildError(RuntimeError):
    """The index could not be built on the cluster; the vectors are committed, an index built before is untouched."""


@dataclass(frozen=True)
class Share:
    fragment_ids: tuple[int, ...]
    rows: int


@dataclass(frozen=True)
class IndexBuild:
    """What a build did, for the log and the tests."""

    rows: int
    partitions: int
    sample_rows: int
    shares: list[Share]
    train_seconds: float  # on the driver: k-means on the samples (PQ's dominates: ~50 s at 65k rows on 2 cores)
    seconds: float


def build_when_due(vectors, settings, *, rebuild: bool, from_rows: int, tasks: int | None = None) -> IndexBuild | None:
    """Build the index on Ray when the table has `from_rows` vectors or more and no index yet (or `rebuild`)."""
    if not hasattr(vectors, "has_ann"):  # another engine than LanceDB: it keeps its own index
        return None
    rows = vectors.count()
    if rows < max(from_rows, 2 * PQ_CODES) or (vectors.has_ann() and not rebuild):
        return None
    return build(vectors, settings, tasks=tasks)


def build(vectors, settings, *, tasks: int | None = None) -> IndexBuild:
    """Sample and train here, encode on Ray (one task a share of the fragments), commit here. Needs Ray."""
    started = time.monotonic()
    maintenance.wait_idle()  # a compaction in flight would replace the fragments the tasks are about to read
    dataset = vectors.table.to_lance()  # this version is the one the tasks read and the commit covers
    rows = dataset.count_rows()
    partitions, sub_vectors = lance_vectors.ann_shape(rows, vectors.dim)
    shares = plan_shares([(f.fragment_id, f.count_rows()) for f in dataset.get_fragments()], tasks or _cluster_cpus())
    log.info(
        "building the approximate index of %s on Ray: %d rows, %d partitions, %d tasks",
        vectors.description,
        rows,
        partitions,
        len(shares),
    )
    centroids, codebook, sample_rows = train(dataset, rows, partitions, sub_vectors)
    trained = time.monotonic() - started
    centroids, codebook = ray.put(centroids), ray.put(codebook)  # once in the object store, not once a task
    remote = ray.remote(num_cpus=TASK_CPUS, max_retries=1)(build_segment)
    futures = [
        remote.remote(
            settings,
            SegmentJob(dataset.uri, dataset.version, share.fragment_ids, partitions, sub_vectors),
            centroids,
            codebook,
        )
        for share in shares
    ]
    try:
        segments = ray.get(futures)
    except ray.exceptions.RayError as err:
        reason = (str(err).strip().splitlines() or [type(err).__name__])[-1][:500]
        raise IndexBuildError(f"a task building the approximate index failed: {reason}") from err
    try:
        dataset.commit_existing_index_segments(INDEX_NAME, COLUMN, segments)
    except Exception as err:  # pylance's errors have no common base: say it in one line
        raise IndexBuildError(f"could not commit the approximate index of {vectors.description}: {err}") from err
    vectors.table.checkout_latest()  # this process's handle sees the index at once
    took = time.monotonic() - started
    log.info(
        "the approximate index of %s is built on Ray in %.1f s (%.1f s training here)",
        vectors.description,
        took,
        trained,
    )
    return IndexBuild(rows, partitions, sample_rows, shares, trained, took)


def _cluster_cpus() -> int:
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def plan_shares(fragments: list[tuple[int, int]], tasks: int) -> list[Share]:
    """Split (fragment id, rows) into at most `tasks` shares of about equal rows: the biggest fragment goes to
    the lightest share, in turn. Each fragment is in exactly one share; no share is empty."""
    shares: list[list[int]] = [[] for _ in range(max(1, min(tasks, len(fragments))))]
    loads = [0] * len(shares)
    for fragment_id, rows in sorted(fragments, key=lambda f: (-f[1], f[0])):
        lightest = loads.index(min(loads))
        shares[lightest].append(fragment_id)
        loads[lightest] += rows
    return [Share(tuple(sorted(ids)), load) for ids, load in zip(shares, loads, strict=True) if ids]


def train(dataset, rows: int, partitions: int, sub_vectors: int):
    """IVF centroids and PQ codebook from samples of at most TRAIN_SAMPLE_MAX_ROWS rows each (pylance draws
    them from the table: the driver never reads every vector). Returns (centroids, codebook, largest sample)."""
    from lance.indices import IndicesBuilder

    ivf_rate = _sample_rate(rows, partitions)
    pq_rate = _sample_rate(rows, PQ_CODES)
    builder = IndicesBuilder(dataset, COLUMN)
    ivf = builder.train_ivf(partitions, distance_type=METRIC, sample_rate=ivf_rate)
    pq = builder.train_pq(ivf, sub_vectors, sample_rate=pq_rate)
    return ivf.centroids, pq.codebook, max(ivf_rate * partitions, pq_rate * PQ_CODES)


def _sample_rate(rows: int, groups: int) -> int:
    """Rows per group (partition, or PQ code) to train on: LanceDB's 256, fewer when the table or the driver's
    budget has less; pylance needs at least 2."""
    return max(2, min(SAMPLE_PER_PARTITION, rows // groups, TRAIN_SAMPLE_MAX_ROWS // groups))
