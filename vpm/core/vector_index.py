"""The vector index contract: one vector a photo, for one model; queries rank products by their best photo.

`vpm/backends/lance_vectors.py` implements it on a LanceDB table per model; one contract suite
(tests/test_vector_index.py) runs against every implementation, local and S3. Vectors are unit length, so the
cosine similarity is their dot product. Each photo's vector is keyed by its storage key, and stores the
image's SHA-256 so a photo whose bytes were embedded before (by this model) is never embedded again.

`best_per_product` is the exact ranking shared by every implementation's in-memory path.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PhotoVector:
    """What the index stores for one photo."""

    photo_key: str
    product_id: str
    sha256: str
    category: str
    vector: np.ndarray  # (dim,) float32, unit length


@dataclass(frozen=True)
class ProductHit:
    product_id: str
    score: float  # cosine of the best-matching photo
    photo_key: str  # that photo


@dataclass(frozen=True)
class QueryResult:
    hits: list[ProductHit]  # best first, score >= threshold, at most k, one per product
    best_score: float | None  # best score among the allowed categories, ignoring the threshold; None: none


class VectorIndex(ABC):
    model_id: str
    dim: int

    @property
    @abstractmethod
    def description(self) -> str: ...

    @abstractmethod
    def upsert(self, entries: Sequence[PhotoVector]) -> None:
        """Store (or replace) the vectors of these photos."""

    @abstractmethod
    def vectors_for_shas(self, shas: Iterable[str]) -> dict[str, np.ndarray]:
        """Vectors already computed for these image hashes (by this model), to reuse instead of embedding."""

    @abstractmethod
    def vectors_for_keys(self, keys: Iterable[str]) -> dict[str, np.ndarray]:
        """These photos' vectors, by photo key (a photo without one is left out)."""

    @abstractmethod
    def photo_keys_with_vectors(self, keys: Iterable[str]) -> set[str]:
        """Which of these photos have a vector."""

    @abstractmethod
    def delete_products(self, product_ids: Sequence[str]) -> None: ...

    @abstractmethod
    def delete_photos(self, photo_keys: Sequence[str]) -> None: ...

    @abstractmethod
    def set_category(self, product_id: str, category: str) -> None:
        """Follow a product's new category, so the category filter stays right."""

    @abstractmethod
    def query(
        self, vectors: np.ndarray, *, k: int = 10, threshold: float | None = None,
        categories: Iterable[str] | None = None,
    ) -> list[QueryResult]:
        """For each query row: the k best products (by their best photo), filtered by category before the
        top-k, then by the threshold."""

    @abstractmethod
    def count(self) -> int:
        """How many photos have a vector."""

    @abstractmethod
    def iter_keys(self, batch_size: int = 1000) -> Iterator[list[tuple[str, str]]]:
        """(photo key, product id) of every stored vector, a bounded batch at a time."""

    @abstractmethod
    def iter_vectors(self, batch_size: int = 10_000) -> Iterator[tuple[list[str], list[str], np.ndarray]]:
        """(photo keys, product ids, vectors as a (n, dim) float32 matrix) of every stored vector, a bounded batch
        at a time (for maps and reports that read the vectors without embedding anything)."""


def best_per_product(
    scores: np.ndarray, product_codes: np.ndarray, product_ids: Sequence[str], photo_keys: Sequence[str],
    rows: np.ndarray, k: int, threshold: float | None,
) -> QueryResult:
    """The k best products among `rows` of one query's `scores`, each by its best photo.

    Looks at the best rows first (a few per wanted product), and only when they hold fewer than k distinct
    products at every row, so a typical query costs one partial sort of the candidate rows.
    """
    if len(rows) == 0:
        return QueryResult([], None)
    column = scores[rows]
    best_row = int(np.argmax(column))
    best_score = float(column[best_row])
    take = min(len(rows), max(4 * k, 64))
    while True:
        if take < len(rows):
            candidates = np.argpartition(-column, take - 1)[:take]
        else:
            candidates = np.arange(len(rows))
        candidates = candidates[np.argsort(-column[candidates], kind="stable")]
        hits: list[ProductHit] = []
        seen: set[int] = set()
        for i in candidates:
            code = int(product_codes[rows[i]])
            if code in seen:
                continue
            seen.add(code)
            hits.append(ProductHit(product_ids[code], float(column[i]), photo_keys[rows[i]]))
            if len(hits) == k:
                break
        if len(hits) == k or take >= len(rows):
            break
        take = min(len(rows), take * 4)
    if threshold is not None:
        hits = [h for h in hits if h.score >= threshold]
    return QueryResult(hits, best_score)
