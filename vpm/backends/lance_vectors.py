"""The vector index on a LanceDB table per model (`vectors-<model id>`): one row a photo.

Two ways to answer a query, chosen by size:
- up to MEMORY_MAX_PHOTOS: the vectors are held in memory while the table's version is unchanged, and the
  ranking is exact (a matrix product); a warm search costs a version check and milliseconds.
- beyond: LanceDB answers from disk or the bucket, with an IVF-PQ index built automatically once the table
  passes ANN_FROM_PHOTOS, the category filter applied before the search, and the candidates re-ranked by
  exact cosine (`refine_factor`) so results stay right. Memory stays bounded whatever the catalog's size.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import pyarrow as pa

from vpm.backends import engine
from vpm.backends.lance_catalog import ensure_scalar_indexes, sql_list, sql_string
from vpm.core.vector_index import PhotoVector, ProductHit, QueryResult, VectorIndex, best_per_product

log = logging.getLogger(__name__)

MEMORY_MAX_PHOTOS = 100_000  # ~200 MB of 512-d vectors
ANN_FROM_PHOTOS = 50_000  # built in the background, so it is there before the memory path stops
ANN_PARTITION_ROWS = 1_000  # rows per IVF partition (1M photos: 1,000 partitions)
ANN_NPROBES = 30
ANN_REFINE = 20  # candidates re-ranked by exact distance: refine * k rows
TABLE_PREFIX = "vectors-"
REBUILD_ADVICE = (
    "The vectors are made from the photos, so nothing is lost: run `python -m vpm index --rebuild` to make them again"
)


def table_name(model_id: str) -> str:
    return TABLE_PREFIX + model_id


def schema(dim: int) -> pa.Schema:
    return engine.with_primary_key(pa.schema(
        [
            pa.field("photo_key", pa.string(), nullable=False),
            pa.field("product_id", pa.string(), nullable=False),
            pa.field("sha256", pa.string(), nullable=False),
            pa.field("category_key", pa.string(), nullable=False),
            pa.field("vector", pa.list_(pa.float32(), dim), nullable=False),
        ]
    ), "photo_key")


def ann_shape(rows: int, dim: int) -> tuple[int, int]:
    """(IVF partitions, PQ sub-vectors) of the approximate index over `rows` vectors of `dim` values: the same
    for the build in this process and the one on Ray (vpm/backends/cluster_index.py)."""
    return max(1, rows // ANN_PARTITION_ROWS), next(n for n in (32, 16, 8, 4, 2, 1) if dim % n == 0)


def existing_model_ids(where: engine.Location) -> list[str]:
    """The models that have a vector table here."""
    names = engine.table_names(where)
    return sorted(name[len(TABLE_PREFIX):] for name in names if name.startswith(TABLE_PREFIX))


class _Snapshot:
    """Every vector of one table version, for exact in-memory ranking."""

    def __init__(self, version: int, table: pa.Table, dim: int):
        self.version = version
        self.photo_keys: list[str] = table.column("photo_key").to_pylist()
        products = table.column("product_id").to_pylist()
        self.product_ids: list[str] = list(dict.fromkeys(products))
        code_of = {pid: i for i, pid in enumerate(self.product_ids)}
        self.product_codes = np.fromiter((code_of[p] for p in products), dtype=np.int32, count=len(products))
        categories = table.column("category_key").to_pylist()
        self.category_of: dict[str, int] = {}
        self.category_codes = np.fromiter(
            (self.category_of.setdefault(c, len(self.category_of)) for c in categories), dtype=np.int32,
            count=len(categories),
        )
        flat = table.column("vector").combine_chunks().flatten().to_numpy(zero_copy_only=False)
        self.vectors = np.ascontiguousarray(flat, dtype=np.float32).reshape(len(self.photo_keys), dim)
        self._row_of: dict[str, int] | None = None

    def vectors_of(self, keys: Iterable[str]) -> dict[str, np.ndarray]:
        if self._row_of is None:
            self._row_of = {key: i for i, key in enumerate(self.photo_keys)}
        return {key: self.vectors[self._row_of[key]] for key in keys if key in self._row_of}

    def rows(self, categories: Iterable[str] | None) -> np.ndarray:
        wanted = {c.strip().casefold() for c in categories or () if c and c.strip()}
        if not wanted:
            return np.arange(len(self.photo_keys))
        codes = [self.category_of[c] for c in wanted if c in self.category_of]
        return np.flatnonzero(np.isin(self.category_codes, codes))


class LanceVectorIndex(VectorIndex):
    def __init__(self, where: engine.Location, model_id: str, dim: int | None, *, exists: bool | None = None):
        """`dim=None` opens an existing table with the dimension it was made with."""
        self.where = where
        self.model_id = model_id
        self._dim = int(dim) if dim is not None else None
        self._exists = exists
        self._table = None
        self._snapshot: _Snapshot | None = None
        self._snapshot_lock = threading.Lock()
        self._ann_building = False
        self._ann_elsewhere = 0  # > 0: another builder owns the approximate index (ann_built_elsewhere)

    @property
    def description(self) -> str:
        return f"the {self.model_id} vectors in {self.where.description}"

    @property
    def dim(self) -> int:
        if self._dim is None:
            self._dim = self.table.schema.field("vector").type.list_size
        return self._dim

    @property
    def table(self):
        engine.keep_fresh(self.where)  # other processes' commits: seen within engine.READ_CONSISTENCY
        if self._table is not None and engine.dropped(self.where, table_name(self.model_id), self._table):
            self._table = None
        if self._table is None:
            try:
                table = engine.open_or_create_table(
                    self.where, table_name(self.model_id), schema(self._dim or 1),
                    exists=True if self._dim is None else self._exists,
                )
            except engine.TableUnreadable as err:  # derived data: say how to make it again
                raise engine.TableUnreadable(f"{err}. {REBUILD_ADVICE}") from None
            stored_dim = table.schema.field("vector").type.list_size
            if self._dim is None:
                self._dim = stored_dim
            if stored_dim != self._dim:
                raise engine.TableUnreadable(
                    f"{self.description} hold {stored_dim}-d vectors but the model makes {self._dim}-d ones; the "
                    f"table was left untouched. {REBUILD_ADVICE}"
                )
            self._table = table
        return self._table

    def drop(self) -> None:
        """Delete this model's whole vector table (it is derived data); only `vpm index --rebuild` does this."""
        with engine.translated(f"could not remove {self.description}"):
            engine.connect(self.where).drop_table(table_name(self.model_id))
        engine.forget_table(self.where, table_name(self.model_id))
        self._table = None
        self._snapshot = None
        self._exists = False

    def _read(self, query) -> pa.Table:
        with engine.translated(f"cannot read {self.description}"):
            return query.to_arrow()

    def _reopen(self) -> None:
        engine.forget_table(self.where, table_name(self.model_id))
        self._table = None

    def _write(self, operation, what: str):
        with engine.translated(f"could not {what} {self.description}"):
            result = engine.retry_conflicts(operation, self._reopen)
        engine.compact_when_due(self.table, after=self._maintain)
        return result

    # ------------------------------------------------------------------------------------------ writing

    def upsert(self, entries: Sequence[PhotoVector]) -> None:
        if not entries:
            return
        vectors = np.asarray([e.vector for e in entries], dtype=np.float32).reshape(len(entries), self.dim)
        if not np.isfinite(vectors).all():
            raise ValueError("refusing to store vectors with NaN or infinite values")
        data = pa.table(
            {
                "photo_key": [e.photo_key for e in entries],
                "product_id": [e.product_id for e in entries],
                "sha256": [e.sha256 for e in entries],
                "category_key": [e.category.casefold() for e in entries],
                "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), self.dim),
            },
            schema=schema(self.dim),
        )
        self._write(
            lambda: self.table.merge_insert("photo_key").when_matched_update_all().when_not_matched_insert_all()
            .execute(data),
            "store vectors in",
        )

    def delete_products(self, product_ids: Sequence[str]) -> None:
        for chunk in engine.chunks(list(product_ids)):
            where = f"product_id IN {sql_list(chunk)}"
            self._write(lambda where=where: self.table.delete(where), "delete vectors from")

    def delete_photos(self, photo_keys: Sequence[str]) -> None:
        for chunk in engine.chunks(list(photo_keys)):
            where = f"photo_key IN {sql_list(chunk)}"
            self._write(lambda where=where: self.table.delete(where), "delete vectors from")

    def set_category(self, product_id: str, category: str) -> None:
        self._write(
            lambda: self.table.update(
                where=f"product_id = {sql_string(product_id)}", values={"category_key": category.casefold()}
            ),
            "update the category in",
        )

    # ------------------------------------------------------------------------------------------ reading

    def count(self) -> int:
        with engine.translated(f"cannot read {self.description}"):
            return self.table.count_rows()

    def iter_keys(self, batch_size: int = 1000) -> Iterator[list[tuple[str, str]]]:
        return engine.iter_photo_keys(self.table, self._read, batch_size)

    def iter_vectors(self, batch_size: int = 10_000) -> Iterator[tuple[list[str], list[str], np.ndarray]]:
        query = self.table.search().select(["photo_key", "product_id", "vector"]).limit(None)
        with engine.translated(f"cannot read {self.description}"):
            reader = query.to_batches(batch_size)
            for batch in reader:  # LanceDB streams the table: at most about batch_size rows held at once
                if not batch.num_rows:
                    continue
                flat = batch.column("vector").flatten().to_numpy(zero_copy_only=False)
                yield (batch.column("photo_key").to_pylist(), batch.column("product_id").to_pylist(),
                       np.ascontiguousarray(flat, dtype=np.float32).reshape(batch.num_rows, self.dim))

    def vectors_for_shas(self, shas: Iterable[str]) -> dict[str, np.ndarray]:
        wanted = sorted(set(shas))
        found: dict[str, np.ndarray] = {}
        for chunk in engine.chunks(wanted):
            rows = self._read(
                self.table.search().where(f"sha256 IN {sql_list(chunk)}").select(["sha256", "vector"]).limit(None)
            )
            for sha, vector in zip(rows.column("sha256").to_pylist(), rows.column("vector").to_pylist(), strict=True):
                found.setdefault(sha, np.asarray(vector, dtype=np.float32))
        return found

    def vectors_for_keys(self, keys: Iterable[str]) -> dict[str, np.ndarray]:
        """These photos' vectors: from memory when the table is held there (a search's re-ranking asks for a few
        dozen), else read from the table."""
        wanted = sorted(set(keys))
        snapshot = self._snapshot
        if snapshot is not None and snapshot.version == int(self.table.version):
            return snapshot.vectors_of(wanted)
        found: dict[str, np.ndarray] = {}
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            rows = self._read(
                self.table.search().where(f"photo_key IN {sql_list(chunk)}").select(["photo_key", "vector"]).limit(None)
            )
            for key, vector in zip(rows.column("photo_key").to_pylist(), rows.column("vector").to_pylist(), strict=True):
                found[key] = np.asarray(vector, dtype=np.float32)
        return found

    def photo_keys_with_vectors(self, keys: Iterable[str]) -> set[str]:
        wanted = sorted(set(keys))
        have: set[str] = set()
        for chunk in engine.chunks(wanted):
            rows = self._read(
                self.table.search().where(f"photo_key IN {sql_list(chunk)}").select(["photo_key"]).limit(None)
            )
            have.update(rows.column("photo_key").to_pylist())
        return have

    def query(self, vectors, *, k=10, threshold=None, categories=None) -> list[QueryResult]:
        queries = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
        if queries.shape[1] != self.dim:
            raise ValueError(f"query vectors have {queries.shape[1]} values; the index holds {self.dim}-d vectors")
        if k < 1:
            raise ValueError(f"k must be at least 1 (got {k})")
        snapshot = self._memory_snapshot()
        if snapshot is not None:
            return self._query_memory(snapshot, queries, k, threshold, categories)
        return [self._query_engine(q, k, threshold, categories) for q in queries]

    def warm(self) -> None:
        """Read what a search needs (the vectors into memory, when they fit), so the first search does not."""
        self._memory_snapshot()

    def _memory_snapshot(self) -> _Snapshot | None:
        """The in-memory copy for the current version; None when the table is too big to hold."""
        version = int(self.table.version)
        snapshot = self._snapshot
        if snapshot is not None and snapshot.version == version:
            return snapshot
        with self._snapshot_lock:
            snapshot = self._snapshot
            if snapshot is not None and snapshot.version == version:
                return snapshot
            if self.count() > MEMORY_MAX_PHOTOS:
                self._snapshot = None
                self._build_ann_when_due()
                return None
            columns = ["photo_key", "product_id", "category_key", "vector"]
            data = self._read(self.table.search().select(columns).limit(None))
            self._snapshot = _Snapshot(version, data, self.dim)
            if len(self._snapshot.photo_keys) >= ANN_FROM_PHOTOS:
                self._build_ann_when_due()
            return self._snapshot

    @staticmethod
    def _query_memory(snapshot: _Snapshot, queries, k, threshold, categories) -> list[QueryResult]:
        rows = snapshot.rows(categories)
        if len(rows) == 0:
            return [QueryResult([], None) for _ in range(len(queries))]
        scores = queries @ snapshot.vectors.T
        return [
            best_per_product(scores[j], snapshot.product_codes, snapshot.product_ids, snapshot.photo_keys, rows, k,
                             threshold)
            for j in range(len(queries))
        ]

    def _query_engine(self, query: np.ndarray, k: int, threshold, categories) -> QueryResult:
        """Ask LanceDB for the best photos, a few per wanted product, until k distinct products are found."""
        wanted = sorted({c.strip().casefold() for c in categories or () if c and c.strip()})
        where = f"category_key IN {sql_list(wanted)}" if wanted else None
        limit = max(4 * k, 40)
        while True:
            search = (
                self.table.search(query, vector_column_name="vector").distance_type("cosine")
                .select(["product_id", "photo_key"]).limit(limit).nprobes(ANN_NPROBES).refine_factor(ANN_REFINE)
            )
            if where:
                search = search.where(where, prefilter=True)
            rows = self._read(search).to_pylist()
            hits: list[ProductHit] = []
            seen: set[str] = set()
            for row in rows:  # best first
                if row["product_id"] in seen:
                    continue
                seen.add(row["product_id"])
                hits.append(ProductHit(row["product_id"], 1.0 - float(row["_distance"]), row["photo_key"]))
                if len(hits) == k:
                    break
            if len(hits) == k or len(rows) < limit or limit >= 64 * k:
                break
            limit *= 4
        best = hits[0].score if hits else None
        if threshold is not None:
            hits = [h for h in hits if h.score >= threshold]
        return QueryResult(hits, best)

    # --------------------------------------------------------------------------------------- maintenance

    def _maintain(self) -> None:
        ensure_scalar_indexes(self.table, {"photo_key": "btree", "sha256": "btree", "product_id": "btree"})
        self._build_ann_when_due(wait=True)

    def has_ann(self) -> bool:
        try:
            return any(
                "vector" in tuple(index.columns) and "IVF" in str(index.index_type).upper()
                for index in self.table.list_indices()
            )
        except Exception:  # noqa: BLE001 - not knowing means building it (again), which is harmless
            return False

    @contextmanager
    def ann_built_elsewhere(self) -> Iterator[None]:
        """While the approximate index is built elsewhere (`vpm index --cluster` builds it on Ray), this process
        starts no build of its own: two builds would race to commit it."""
        self._ann_elsewhere += 1
        try:
            yield
        finally:
            self._ann_elsewhere -= 1

    def _build_ann_when_due(self, wait: bool = False) -> None:
        """Build the approximate index once the table passes ANN_FROM_PHOTOS (in the background by default)."""
        if self._ann_building or self._ann_elsewhere or self.count() < ANN_FROM_PHOTOS or self.has_ann():
            return
        self._ann_building = True

        def build() -> None:
            try:
                self.build_ann()
            except Exception as err:  # noqa: BLE001 - the exact path keeps answering; logged, tried again later
                log.warning("could not build the approximate index of %s: %s", self.description, engine._reason(err))
            finally:
                self._ann_building = False

        if wait:
            build()
        else:
            threading.Thread(target=build, name=f"ann-{self.model_id}", daemon=True).start()

    def build_ann(self) -> None:
        rows = self.count()
        partitions, sub_vectors = ann_shape(rows, self.dim)
        log.info("building the approximate index of %s (%d photos, %d partitions)", self.description, rows,
                 partitions)
        from lancedb.index import IvfPq

        config = IvfPq(distance_type="cosine", num_partitions=partitions, num_sub_vectors=sub_vectors)
        self.table.create_index("vector", config=config, replace=True)
