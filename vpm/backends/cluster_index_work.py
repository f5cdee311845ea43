"""What one Ray task does for `vpm index --cluster` (vpm/backends/cluster_index.py): one share of a vector table's IVF-PQ index.

The driver trained the IVF centroids and the PQ codebook on a sample and split the table's fragments into shares.
A task opens the table at the version the driver planned on, reads only its share's fragments, assigns each row
to its partition and PQ-encodes it with the driver's model, and writes the result as an uncommitted index segment
(files under the table's `_indices/`, in the bucket or the folder). It returns the segment's metadata, never rows;
only the driver commits, so tasks never fight over the table's manifest.

No Ray here: this is plain pylance, testable in one process.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from vpm.backends import engine

COLUMN = "vector"
INDEX_NAME = "vector_idx"  # LanceDB's name for `create_index("vector")`: either build replaces the other's index
METRIC = "cosine"


@dataclass(frozen=True)
class SegmentJob:
    """One task's work: its share of the fragments of the table at `uri` as of `version`."""

    uri: str
    version: int
    fragment_ids: tuple[int, ...]
    partitions: int
    sub_vectors: int


def open_table(settings, uri: str, version: int):
    """The vector table as a pylance dataset at `version`, with the catalog's storage options (a bucket's
    endpoint and credentials), made from `settings` on the worker as vpm/backends/cluster_work.py does."""
    import lance

    return lance.dataset(uri, version=version, storage_options=engine.location(settings).options() or None)


def build_segment(settings, job: SegmentJob, centroids: pa.FixedSizeListArray, codebook: pa.FixedSizeListArray):
    """Write the index segment of `job`'s fragments; returns its `lance.dataset.Index` (no rows)."""
    dataset = open_table(settings, job.uri, job.version)
    missing = set(job.fragment_ids) - {fragment.fragment_id for fragment in dataset.get_fragments()}
    if missing:  # planned on this very version, so only a damaged table lacks them
        raise ValueError(f"fragments {sorted(missing)} are not in version {job.version} of {job.uri}")
    return dataset.create_index_uncommitted(
        COLUMN,
        "IVF_PQ",
        name=INDEX_NAME,
        metric=METRIC,
        replace=True,
        num_partitions=job.partitions,
        num_sub_vectors=job.sub_vectors,
        ivf_centroids=centroids,
        pq_codebook=codebook,
        fragment_ids=list(job.fragment_ids),
    )
