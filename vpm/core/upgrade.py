"""Upgrade a catalog written by the first release (products.json + .npz vector segments) into the tables.

Runs on the first start over such a catalog, before anything is served: every product is copied into the
products table (insert-if-absent, so two processes upgrading at once, or a run cut off and started again, never
duplicate or overwrite anything), every cached vector is copied into its model's vector table (nothing is
embedded again), and then a marker object records that the upgrade is done. products.json and the segments are
left exactly as they were: the old release can still read them, and `python -m vpm export` writes the format.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass

from vpm.core.catalog import CatalogStore, Product, now_iso
from vpm.core.legacy import CorruptSegment, decode_segment, iter_segment_vectors, model_folders, parse_products_json
from vpm.core.storage import ObjectNotFound, Storage, StorageError
from vpm.core.vector_index import PhotoVector, VectorIndex

log = logging.getLogger(__name__)

BATCH = 500


@dataclass(frozen=True)
class UpgradeReport:
    products: int
    vectors: dict[str, int]  # model id -> vectors copied

    def summary(self) -> str:
        copied = ", ".join(f"{n} {model} vectors" for model, n in self.vectors.items()) or "no vectors"
        return f"{self.products} products and {copied} copied from products.json into the catalog tables"


def marker_key(metadata_key: str) -> str:
    return metadata_key + ".upgraded"


def needs_upgrade(storage: Storage, metadata_key: str) -> bool:
    return storage.exists(metadata_key) and not storage.exists(marker_key(metadata_key))


def upgrade(
    storage: Storage, metadata_key: str, embeddings_prefix: str, catalog: CatalogStore,
    vector_index: Callable[[str, int], VectorIndex],
) -> UpgradeReport:
    """Copy products.json and its vectors into the tables; `vector_index(model_id, dim)` opens a model's table."""
    where = f"{metadata_key} in {storage.description}"
    raw = storage.get(metadata_key)
    products = parse_products_json(raw, where, sha_of=lambda key: _sha_of(storage, key))
    log.info("upgrading %s: %d products", where, len(products))
    for start in range(0, len(products), BATCH):
        catalog.add(products[start : start + BATCH])  # ids already there (an earlier, cut-off run) are kept
    copied = {
        model_id: _copy_vectors(storage, keys, model_id, products, vector_index)
        for model_id, keys in model_folders(_segment_keys(storage, embeddings_prefix), embeddings_prefix).items()
    }
    report = UpgradeReport(len(products), copied)
    document = {"upgraded_at": now_iso(), "from": metadata_key, "products": report.products, "vectors": copied}
    storage.put(marker_key(metadata_key), json.dumps(document).encode(), "application/json")
    log.info("upgrade done: %s", report.summary())
    return report


def _sha_of(storage: Storage, key: str) -> str | None:
    try:
        return hashlib.sha256(storage.get(key)).hexdigest()
    except (ObjectNotFound, StorageError) as err:
        log.warning("upgrade: %s cannot be read (%s); its product is kept without that photo", key, err)
        return None


def _segment_keys(storage: Storage, prefix: str) -> list[str]:
    return [info.key for info in storage.iter_objects(prefix) if info.key.endswith(".npz")]


def _copy_vectors(
    storage: Storage, keys: list[str], model_id: str, products: list[Product],
    vector_index: Callable[[str, int], VectorIndex],
) -> int:
    segments = []
    for key in keys:
        try:
            segments.append(decode_segment(storage.get(key), key, model_id))
        except (CorruptSegment, ObjectNotFound) as err:  # derived data: its photos are embedded again later
            log.warning("upgrade: skipping the vector file %s (%s)", key, err)
    vectors = dict(iter_segment_vectors(segments))
    if not vectors:
        return 0
    dim = len(next(iter(vectors.values())))
    index = vector_index(model_id, dim)
    entries = [
        PhotoVector(photo.key, product.id, photo.sha256, product.category, vectors[photo.sha256])
        for product in products
        for photo in product.photos
        if photo.sha256 in vectors
    ]
    for start in range(0, len(entries), BATCH):
        index.upsert(entries[start : start + BATCH])
    return len(entries)
