"""Local features of the catalog's photos (SIFT keypoints, for verifying the top candidates) in a LanceDB table.

`features-sift` sits beside the vector tables: one row a photo, keyed by its storage key, with the image's
SHA-256 so the same bytes are never computed twice. Rows are written with the vectors when a photo is added
(before the product row), removed with the photo or product, and filled for older photos by `vpm index`.
Like the vectors, they are derived data: a missing row only means that candidate is not verified.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import pyarrow as pa

from vpm.backends import engine
from vpm.backends.lance_catalog import ensure_scalar_indexes, sql_list
from vpm.backends.row_cache import VersionedRows
from vpm.core.rerank import FEATURES_ID, LocalFeatures

log = logging.getLogger(__name__)

TABLE = f"features-{FEATURES_ID}"
# Photos whose keypoints a process keeps (a search verifies up to 20 candidates' best photos): ~64 KB each on the
# sample catalog, so at most ~32 MB, small beside Community Cloud's smallest 690 MB; the sample's 252 all fit.
KEPT_PHOTOS = 500


@dataclass(frozen=True)
class PhotoFeatures:
    photo_key: str
    product_id: str
    sha256: str
    features: LocalFeatures


def schema() -> pa.Schema:
    return engine.with_primary_key(pa.schema(
        [
            pa.field("photo_key", pa.string(), nullable=False),
            pa.field("product_id", pa.string(), nullable=False),
            pa.field("sha256", pa.string(), nullable=False),
            pa.field("count", pa.int32(), nullable=False),
            pa.field("width", pa.int32(), nullable=False),
            pa.field("height", pa.int32(), nullable=False),
            pa.field("points", pa.binary(), nullable=False),  # count x 2 float32
            pa.field("descriptors", pa.binary(), nullable=False),  # count x 128 uint8
        ]
    ), "photo_key")


class LanceFeatureStore:
    def __init__(self, where: engine.Location, *, exists: bool | None = None):
        self.where = where
        self._exists = exists
        self._table = None
        self._kept: VersionedRows[LocalFeatures] = VersionedRows(KEPT_PHOTOS)

    @property
    def description(self) -> str:
        return f"the photos' keypoints ({TABLE}) in {self.where.description}"

    @property
    def table(self):
        engine.keep_fresh(self.where)  # other processes' commits: seen within engine.READ_CONSISTENCY
        if self._table is not None and engine.dropped(self.where, TABLE, self._table):
            self._table = None
        if self._table is None:
            try:
                self._table = engine.open_or_create_table(self.where, TABLE, schema(), exists=self._exists)
            except engine.TableUnreadable as err:
                raise engine.TableUnreadable(
                    f"{err}. The keypoints are made from the photos: move the table aside and run `python -m vpm "
                    "index` to make them again"
                ) from None
        return self._table

    def _read(self, query) -> pa.Table:
        try:
            return query.to_arrow()
        except engine.EngineError:
            raise
        except Exception as err:  # noqa: BLE001 - LanceDB raises many kinds; each becomes one clear message
            raise engine.EngineError(f"cannot read {self.description}: {engine._reason(err)}") from None

    def _reopen(self) -> None:
        engine.forget_table(self.where, TABLE)
        self._table = None

    def _write(self, operation, what: str) -> None:
        try:
            engine.retry_conflicts(operation, self._reopen)
        except engine.EngineError:
            raise
        except Exception as err:  # noqa: BLE001 - LanceDB raises many kinds; each becomes one clear message
            raise engine.EngineError(f"could not {what} {self.description}: {engine._reason(err)}") from None
        engine.compact_when_due(
            self.table, after=lambda: ensure_scalar_indexes(self.table, {"photo_key": "btree", "sha256": "btree"})
        )

    # ------------------------------------------------------------------------------------------ writing

    def upsert(self, entries: Sequence[PhotoFeatures]) -> None:
        if not entries:
            return
        blobs = [e.features.to_bytes() for e in entries]
        data = pa.table(
            {
                "photo_key": [e.photo_key for e in entries],
                "product_id": [e.product_id for e in entries],
                "sha256": [e.sha256 for e in entries],
                "count": pa.array([len(e.features) for e in entries], pa.int32()),
                "width": pa.array([e.features.width for e in entries], pa.int32()),
                "height": pa.array([e.features.height for e in entries], pa.int32()),
                "points": pa.array([b[0] for b in blobs], pa.binary()),
                "descriptors": pa.array([b[1] for b in blobs], pa.binary()),
            },
            schema=schema(),
        )
        self._write(
            lambda: self.table.merge_insert("photo_key").when_matched_update_all().when_not_matched_insert_all()
            .execute(data),
            "store keypoints in",
        )

    def delete_photos(self, photo_keys: Sequence[str]) -> None:
        for start in range(0, len(photo_keys), 500):
            chunk = list(photo_keys[start : start + 500])
            self._write(lambda chunk=chunk: self.table.delete(f"photo_key IN {sql_list(chunk)}"),
                        "delete keypoints from")

    def delete_products(self, product_ids: Sequence[str]) -> None:
        for start in range(0, len(product_ids), 500):
            chunk = list(product_ids[start : start + 500])
            self._write(lambda chunk=chunk: self.table.delete(f"product_id IN {sql_list(chunk)}"),
                        "delete keypoints from")

    # ------------------------------------------------------------------------------------------ reading

    def count(self) -> int:
        try:
            return self.table.count_rows()
        except engine.EngineError:
            raise
        except Exception as err:  # noqa: BLE001 - LanceDB raises many kinds; each becomes one clear message
            raise engine.EngineError(f"cannot read {self.description}: {engine._reason(err)}") from None

    def _rows(self, column: str, values: Iterable[str], columns: list[str]) -> Iterator[dict]:
        wanted = sorted(set(values))
        for start in range(0, len(wanted), 200):
            chunk = wanted[start : start + 200]
            rows = self._read(self.table.search().where(f"{column} IN {sql_list(chunk)}").select(columns).limit(None))
            yield from rows.to_pylist()

    def features_for(self, photo_keys: Iterable[str]) -> dict[str, LocalFeatures]:
        """The stored keypoints of these photos (photos without a row are left out); those read before at the
        table's current version from memory (a search verifies much the same candidates every time)."""
        columns = ["photo_key", "width", "height", "points", "descriptors"]

        def read(keys: list[str]) -> dict[str, LocalFeatures]:
            return {row["photo_key"]: _features(row) for row in self._rows("photo_key", keys, columns)}

        return self._kept.get_many(photo_keys, int(self.table.version), read)

    def features_for_shas(self, shas: Iterable[str]) -> dict[str, LocalFeatures]:
        """Keypoints already computed for these image hashes, to reuse instead of computing them again."""
        found: dict[str, LocalFeatures] = {}
        for row in self._rows("sha256", shas, ["sha256", "width", "height", "points", "descriptors"]):
            found.setdefault(row["sha256"], _features(row))
        return found

    def photo_keys_with_features(self, keys: Iterable[str]) -> set[str]:
        return {row["photo_key"] for row in self._rows("photo_key", keys, ["photo_key"])}

    def iter_keys(self, batch_size: int = 1000) -> Iterator[list[tuple[str, str]]]:
        return engine.iter_photo_keys(self.table, self._read, batch_size)


def _features(row: dict) -> LocalFeatures:
    return LocalFeatures.from_bytes(row["points"], row["descriptors"], row["width"], row["height"])
