"""The part of a cluster job that runs on Ray workers: read photos, decode them, embed them, store an import's files.

Nothing here imports Ray. Each stage is a plain function (or, for the model, a class built once per worker) from
one pyarrow batch to the next, using the single-machine code for every step: `vpm.core.storage` reads and writes,
`vpm.core.importer.read_origin` reads an import source, `vpm.core.images.decode_image` decodes, `vpm.core.photos` names and
stores files, `vpm.models.embeddings.load_embedder` loads the model (VPM_MODEL / VPM_DEVICE). Every row carries its
own `error`: a photo that cannot be read, decoded, embedded or stored fails its row, never the batch or the job.

Workers never write a catalog table: the driver commits vectors and rows in bulk (vpm/backends/cluster.py). The only
writes here are an import's photo files, under keys no other writer can produce (product id + a random token),
created with if-none-match, exactly as `Matcher` writes them before the row that will point at them.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import numpy as np
import pyarrow as pa

from vpm.core import photos
from vpm.core.catalog import CatalogError
from vpm.core.images import DecodedImage, ImageError, decode_image, sha256_hex
from vpm.core.importer import ImportLimits, ItemUnreadable, read_origin
from vpm.core.storage import StorageError, make_storage

log = logging.getLogger(__name__)

URL_TIMEOUT_S = 15.0
_cache: dict[tuple, Any] = {}  # one storage client / catalog handle per worker process
_cache_lock = threading.Lock()


def _cached(kind: str, settings, make):
    key = (kind, settings.s3_enabled, settings.s3_bucket_name, settings.s3_endpoint_url, str(settings.vpm_data_dir),
           settings.s3_metadata_key)
    with _cache_lock:
        if key not in _cache:
            _cache[key] = make()
        return _cache[key]


def _storage(settings):
    return _cached("storage", settings, lambda: make_storage(settings))


def _catalog(settings):
    from vpm.core.wiring import stores_for

    storage = _storage(settings)  # asked before _cached takes its lock, which is not reentrant
    # known=True: the driver made the table before the job started, so a worker only ever reads it.
    return _cached("catalog", settings, lambda: stores_for(settings, storage, known=True).catalog)


def _with(batch: pa.Table, **columns: pa.Array) -> pa.Table:
    for name, values in columns.items():
        if name in batch.column_names:
            batch = batch.set_column(batch.column_names.index(name), name, values)
        else:
            batch = batch.append_column(name, values)
    return batch


# ----------------------------------------------------------------------------------------------- reading


def read_stored(batch: pa.Table, settings) -> pa.Table:
    """Index: each row's stored photo (`key`) read from the catalog's storage into `data`."""
    storage = _storage(settings)
    data: list[bytes | None] = []
    errors: list[str | None] = []
    for key in batch.column("key").to_pylist():
        try:
            data.append(storage.get(key))
            errors.append(None)
        except StorageError as err:
            data.append(None)
            errors.append(f"cannot read the stored photo: {err}")
    return _with(batch, data=pa.array(data, pa.large_binary()), error=pa.array(errors, pa.string()))


def read_source(batch: pa.Table, settings, limits: ImportLimits) -> pa.Table:
    """Import: each row's bytes read from the source (`origin`) and hashed; a photo already in the catalog (same
    bytes) is skipped here, before it costs a decode, an embedding or an upload (the driver checks again when it
    commits, for duplicates within the source and for other writers)."""

    def fetch(url: str) -> bytes:
        from vpm.core.urlfetch import fetch_image_bytes

        return fetch_image_bytes(url, max_bytes=limits.max_file_bytes, timeout=URL_TIMEOUT_S).data

    data: list[bytes | None] = []
    shas: list[str | None] = []
    errors: list[str | None] = []
    for origin in batch.column("origin").to_pylist():
        try:
            raw = read_origin(tuple(origin), limits, fetch)
        except ItemUnreadable as err:
            data.append(None)
            shas.append(None)
            errors.append(str(err))
            continue
        data.append(raw)
        shas.append(sha256_hex(raw))
        errors.append(None)
    skipped: list[str | None] = [None] * len(data)
    try:
        owners = _catalog(settings).owners_of({s for s in shas if s})
    except (StorageError, CatalogError) as err:  # only an early skip: the driver's commit checks again
        log.warning("could not look for photos already in the catalog: %s", err)
        owners = {}
    for i, sha in enumerate(shas):
        if sha and sha in owners:
            skipped[i] = f"duplicate: the same image is already product {owners[sha]}"
            data[i] = None
    return _with(
        batch, data=pa.array(data, pa.large_binary()), sha256=pa.array(shas, pa.string()),
        error=pa.array(errors, pa.string()), skipped=pa.array(skipped, pa.string()),
    )


# ------------------------------------------------------------------------------------ decoding, embedding


class EmbedPhotos:
    """Ray Data builds one of these per worker (one model load per worker) and calls it batch after batch.

    `mode="index"` decodes stored photos as `Indexer` does (no upload limit: they are in the catalog already);
    `mode="import"` decodes as an upload (VPM_MAX_UPLOAD_MB), then names and stores the photo and its thumbnail
    as `Matcher` does. The output drops the bytes (they never travel back to the driver) and adds `vector`,
    `model_id` and, for an import, the stored photo's `key`, `thumbnail_key`, `width` and `height`.
    """

    def __init__(self, settings, mode: str, threads: int = 1):
        import torch

        from vpm.models.embeddings import load_embedder

        if threads > 0:
            torch.set_num_threads(threads)
        self.settings = settings
        self.mode = mode
        self.embedder = load_embedder(settings.vpm_model, settings.vpm_device)
        log.info("cluster worker: %r", self.embedder)

    def __call__(self, batch: pa.Table) -> pa.Table:
        n = batch.num_rows
        errors = batch.column("error").to_pylist()
        data = batch.column("data").to_pylist()
        filenames = batch.column("filename").to_pylist()
        decoded: dict[int, DecodedImage] = {}
        for i in range(n):
            if errors[i] is not None or data[i] is None:
                continue
            try:
                limit = self.settings.max_upload_bytes if self.mode == "import" else max(len(data[i]), 1)
                decoded[i] = decode_image(data[i], filenames[i], max_bytes=limit)
            except ImageError as err:
                errors[i] = str(err)
        vectors = np.zeros((n, self.embedder.dim), dtype=np.float32)
        for i, vector in self._embed(decoded, errors).items():
            vectors[i] = vector
        columns: dict[str, pa.Array] = {}
        if self.mode == "import":
            columns.update(self._store(batch, decoded, errors))
        done = {i for i in decoded if errors[i] is None}
        batch = batch.drop_columns(["data"])
        return _with(
            batch, **columns, error=pa.array(errors, pa.string()), embedded=pa.array([i in done for i in range(n)]),
            model_id=pa.array([self.embedder.model_id] * n, pa.string()),
            vector=pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), self.embedder.dim),
        )

    def _embed(self, decoded: dict[int, DecodedImage], errors: list[str | None]) -> dict[int, np.ndarray]:
        """One embedding call for the batch; if it fails, photo by photo, so only the culprit fails."""
        from vpm.models.embeddings import EmbeddingError

        order = sorted(decoded)
        if not order:
            return {}
        try:
            vectors = self.embedder.embed_images([decoded[i].image for i in order], batch_size=len(order))
            return dict(zip(order, vectors, strict=True))
        except (EmbeddingError, ValueError, RuntimeError, OSError) as err:
            log.warning("a batch of %d photos failed to embed (%s); embedding them one at a time", len(order), err)
        out: dict[int, np.ndarray] = {}
        for i in order:
            try:
                out[i] = self.embedder.embed_images([decoded[i].image], batch_size=1)[0]
            except (EmbeddingError, ValueError, RuntimeError, OSError) as err:
                errors[i] = f"cannot be embedded: {err}"
                del decoded[i]
        return out

    def _store(self, batch: pa.Table, decoded: dict[int, DecodedImage], errors: list[str | None]) -> dict:
        """An import's files: the original, then its thumbnail, under the product's fresh keys (as Matcher)."""
        storage = _storage(self.settings)
        product_ids = batch.column("product_id").to_pylist()
        n = batch.num_rows
        keys: list[str | None] = [None] * n
        thumbs: list[str | None] = [None] * n
        widths: list[int | None] = [None] * n
        heights: list[int | None] = [None] * n
        for i, image in decoded.items():
            if errors[i] is not None:
                continue
            prepared = photos.prepare(image, product_ids[i], self.settings.s3_image_prefix,
                                      self.settings.s3_thumbnail_prefix)
            written: list[str] = []
            try:
                photos.store(storage, prepared, written)
            except (StorageError, ImageError) as err:
                photos.discard(storage, written, "after a failed upload")
                errors[i] = f"cannot be stored: {err}"
                continue
            keys[i], thumbs[i] = prepared.photo.key, prepared.photo.thumbnail_key
            widths[i], heights[i] = prepared.photo.width, prepared.photo.height
        return {
            "key": pa.array(keys, pa.string()), "thumbnail_key": pa.array(thumbs, pa.string()),
            "width": pa.array(widths, pa.int32()), "height": pa.array(heights, pa.int32()),
        }
