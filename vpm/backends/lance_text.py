"""The text read on the catalog's photos (package text, for comparing the top candidates) in a LanceDB table.

`text-ppocrv6` sits beside the vector and keypoint tables and is kept like the keypoints (vpm/backends/lance_features.py):
one row a photo, keyed by its storage key, with the image's SHA-256 so the same bytes are never read twice;
written with the vectors when a photo is added (before the product row), removed with the photo or product,
filled for older photos by `vpm index`. A row with "" means "read, nothing found"; no row means "not read yet".
Derived data: a missing row only means that candidate gets no text score.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import pyarrow as pa

from vpm.backends import engine
from vpm.backends.lance_catalog import ensure_scalar_indexes, sql_list
from vpm.backends.row_cache import VersionedRows
from vpm.models.package_text import TEXT_ID

TABLE = f"text-{TEXT_ID}"
KEPT_PHOTOS = 20_000  # photos whose text a process keeps (a few hundred bytes each)


@dataclass(frozen=True)
class PhotoText:
    photo_key: str
    product_id: str
    sha256: str
    text: str  # as `package_text.read` returned it; "" when nothing was read


def schema() -> pa.Schema:
    return engine.with_primary_key(pa.schema(
        [
            pa.field("photo_key", pa.string(), nullable=False),
            pa.field("product_id", pa.string(), nullable=False),
            pa.field("sha256", pa.string(), nullable=False),
            pa.field("text", pa.string(), nullable=False),
        ]
    ), "photo_key")


class LanceTextStore:
    def __init__(self, where: engine.Location, *, exists: bool | None = None):
        self.where = where
        self._exists = exists
        self._table = None
        self._kept: VersionedRows[str] = VersionedRows(KEPT_PHOTOS)

    @property
    def description(self) -> str:
        return f"the text read on the photos ({TABLE}) in {self.where.description}"

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
                    f"{err}. The text is read from the photos: move the table aside and run `python -m vpm "
                    "index` to read it again"
                ) from None
        return self._table

    def _read(self, query) -> pa.Table:
        with engine.translated(f"cannot read {self.description}"):
            return query.to_arrow()

    def _reopen(self) -> None:
        engine.forget_table(self.where, TABLE)
        self._table = None

    def _write(self, operation, what: str) -> None:
        with engine.translated(f"could not {what} {self.description}"):
            engine.retry_conflicts(operation, self._reopen)
        engine.compact_when_due(
            self.table, after=lambda: ensure_scalar_indexes(self.table, {"photo_key": "btree", "sha256": "btree"})
        )

    # ------------------------------------------------------------------------------------------ writing

    def upsert(self, entries: Sequence[PhotoText]) -> None:
        """Store (or replace) the text of these photos."""
        if not entries:
            return
        data = pa.table(
            {
                "photo_key": [e.photo_key for e in entries],
                "product_id": [e.product_id for e in entries],
                "sha256": [e.sha256 for e in entries],
                "text": [e.text for e in entries],
            },
            schema=schema(),
        )
        self._write(
            lambda: self.table.merge_insert("photo_key").when_matched_update_all().when_not_matched_insert_all()
            .execute(data),
            "store text in",
        )

    def delete_photos(self, photo_keys: Sequence[str]) -> None:
        self._delete("photo_key", photo_keys)

    def delete_products(self, product_ids: Sequence[str]) -> None:
        self._delete("product_id", product_ids)

    def _delete(self, column: str, values: Sequence[str]) -> None:
        for chunk in engine.chunks(list(values)):
            self._write(lambda chunk=chunk: self.table.delete(f"{column} IN {sql_list(chunk)}"), "delete text from")

    # ------------------------------------------------------------------------------------------ reading

    def count(self) -> int:
        with engine.translated(f"cannot read {self.description}"):
            return self.table.count_rows()

    def _rows(self, column: str, values: Iterable[str], columns: list[str]) -> Iterator[dict]:
        for chunk in engine.chunks(sorted(set(values))):
            yield from self._read(
                self.table.search().where(f"{column} IN {sql_list(chunk)}").select(columns).limit(None)
            ).to_pylist()

    def texts_for(self, photo_keys: Iterable[str]) -> dict[str, str]:
        """The stored text of these photos ("" when read and nothing found; photos not read yet are left out);
        those read before at the table's current version from memory."""

        def read(keys: list[str]) -> dict[str, str]:
            return {row["photo_key"]: row["text"] for row in self._rows("photo_key", keys, ["photo_key", "text"])}

        return self._kept.get_many(photo_keys, int(self.table.version), read)

    def texts_for_shas(self, shas: Iterable[str]) -> dict[str, str]:
        """Text already read from these image hashes, to reuse instead of reading the same bytes again."""
        found: dict[str, str] = {}
        for row in self._rows("sha256", shas, ["sha256", "text"]):
            found.setdefault(row["sha256"], row["text"])
        return found

    def photo_keys_with_text(self, keys: Iterable[str]) -> set[str]:
        """Which of these photos have been read (with or without finding text)."""
        return {row["photo_key"] for row in self._rows("photo_key", keys, ["photo_key"])}

    def iter_keys(self, batch_size: int = 1000) -> Iterator[list[tuple[str, str]]]:
        return engine.iter_photo_keys(self.table, self._read, batch_size)
