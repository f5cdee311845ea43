"""The catalog map: every product as a point in 2-D from its photos' vectors, and the pairs of different products
whose photos are near-identical ("possible duplicates").

Made from the vectors already in the index of the model that runs (or will run: vpm.models.model_outlook), without
loading the model and without embedding anything:
- the vectors are read in bounded batches; up to MAX_PHOTOS are held (about 200 MB of 512-d float32); a larger
  catalog is represented by a uniform sample of MAX_PHOTOS photos (reservoir sampling while reading), and the map
  says so;
- a product's point is the normalised mean of its photos' vectors, laid out in 2-D by PCA (numpy's SVD fitted on
  at most PCA_SAMPLE products, then every product projected), or by UMAP when the `umap-learn` package is
  installed and there are at least UMAP_FROM products;
- near-duplicates are exact: every photo against every photo of the (sampled) matrix, a block of rows at a time
  (BLOCK_SCORES scores held at once), a photo's own product left out, the best TOP_K neighbours kept per photo,
  and each pair of products reported once with its best photo-to-photo cosine.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from vpm.core.errors import VpmError

if TYPE_CHECKING:
    from vpm.core.matcher import Matcher
    from vpm.core.vector_index import VectorIndex

log = logging.getLogger(__name__)

MAX_PHOTOS = 100_000
PCA_SAMPLE = 5_000
UMAP_FROM = 3_000
TOP_K = 5
BLOCK_SCORES = 16_000_000  # scores per block of the duplicate search: 64 MB of float32
DEFAULT_THRESHOLD = 0.95  # cosine: two photos of one product are ~0.8-0.95 for CLIP; near-identical is above
MAX_PAIRS = 500


class MapUnavailable(VpmError):
    """The map cannot be drawn yet (no products, or no vectors for the model); the message says what to do."""


@dataclass(frozen=True)
class MapPoint:
    product_id: str
    name: str
    category: str
    x: float
    y: float
    photos: int  # photos of this product on the map
    picture_key: str  # its first photo's thumbnail (or the photo), for the tooltip


@dataclass(frozen=True)
class DuplicatePair:
    first_id: str
    first_name: str
    second_id: str
    second_name: str
    score: float  # the best cosine between a photo of one and a photo of the other
    first_photo: str
    second_photo: str


def pair_line(pair: DuplicatePair) -> str:
    """One possible duplicate in words, for a line that wraps ("Red mug looks like Red mug again · 99.6% alike"):
    names are never cut, as they are in a narrow table column."""
    return f"{pair.first_name} looks like {pair.second_name} · {pair.score:.1%} alike"


@dataclass
class CatalogMap:
    model_id: str
    method: str  # "PCA" or "UMAP"
    points: list[MapPoint]
    pairs: list[DuplicatePair]
    threshold: float
    photos_total: int  # vectors in the index
    photos_used: int  # vectors on the map (all, or a sample of MAX_PHOTOS)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def sampled(self) -> bool:
        return self.photos_used < self.photos_total


# ------------------------------------------------------------------------------------------------ reading


def read_vectors(
    batches: Iterable[tuple[list[str], list[str], np.ndarray]], limit: int = MAX_PHOTOS, seed: int = 0,
) -> tuple[list[str], list[str], np.ndarray, int]:
    """(photo keys, product ids, matrix, total read): every vector, or a uniform sample of `limit` of them
    (reservoir sampling: memory stays at `limit` rows whatever the catalog's size)."""
    rng = np.random.default_rng(seed)
    keys: list[str] = []
    products: list[str] = []
    chunks: list[np.ndarray] = []  # while everything fits
    matrix: np.ndarray | None = None  # once it does not: `limit` rows, replaced at random
    seen = 0
    for batch_keys, batch_products, vectors in batches:
        vectors = np.asarray(vectors, dtype=np.float32)
        start = 0
        if matrix is None:
            fits = min(len(batch_keys), limit - seen)
            chunks.append(vectors[:fits])
            keys += batch_keys[:fits]
            products += batch_products[:fits]
            seen += fits
            start = fits
            if start < len(batch_keys):  # full: from here on, each new row replaces one at random, or not
                matrix = np.concatenate(chunks)
                chunks = []
        for i in range(start, len(batch_keys)):
            slot = int(rng.integers(0, seen + 1))
            seen += 1
            if slot < limit:
                keys[slot], products[slot] = batch_keys[i], batch_products[i]
                matrix[slot] = vectors[i]  # type: ignore[index]
    if matrix is None:
        matrix = np.concatenate(chunks) if chunks else np.empty((0, 0), dtype=np.float32)
    return keys, products, matrix, seen


# ------------------------------------------------------------------------------------------------- layout


def product_vectors(product_ids: list[str], vectors: np.ndarray) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(unique product ids in first-seen order, one unit vector a product (its photos' mean), each photo's
    product index)."""
    order = list(dict.fromkeys(product_ids))
    index = {pid: i for i, pid in enumerate(order)}
    codes = np.fromiter((index[p] for p in product_ids), dtype=np.int64, count=len(product_ids))
    by_product = np.argsort(codes, kind="stable")
    starts = np.r_[0, np.flatnonzero(np.diff(codes[by_product])) + 1]
    sums = np.add.reduceat(vectors[by_product].astype(np.float64), starts, axis=0)  # codes are 0..len(order)-1
    norms = np.linalg.norm(sums, axis=1, keepdims=True)
    return order, (sums / np.maximum(norms, 1e-12)).astype(np.float32), codes


def pca_2d(vectors: np.ndarray, sample: int = PCA_SAMPLE, seed: int = 0, iterations: int = 60) -> np.ndarray:
    """The two principal components of `vectors` (fitted on at most `sample` rows), as (n, 2).

    Found by subspace iteration on the centred sample (each round two thin matrix products), not a full SVD:
    the same axes for a map, at a fraction of the cost when the vectors have hundreds of dimensions."""
    n = len(vectors)
    if n == 0:
        return np.empty((0, 2), dtype=np.float32)
    if n == 1:
        return np.zeros((1, 2), dtype=np.float32)
    rng = np.random.default_rng(seed)
    rows = vectors if n <= sample else vectors[rng.choice(n, sample, replace=False)]
    mean = rows.mean(axis=0)
    centred = (rows - mean).astype(np.float32)
    basis = rng.normal(size=(vectors.shape[1], 2)).astype(np.float32)
    for _ in range(iterations):
        basis, _r = np.linalg.qr(centred.T @ (centred @ basis))
    # Order the two axes by the variance they carry, then give each a fixed sign (its largest coordinate
    # positive), so the same catalog always draws the same map.
    variance = ((centred @ basis) ** 2).sum(axis=0)
    components = basis[:, np.argsort(-variance)].T
    signs = np.sign(components[np.arange(2), np.abs(components).argmax(axis=1)])
    components = components * np.where(signs == 0, 1, signs)[:, None]
    return ((vectors - mean) @ components.T).astype(np.float32)


def layout_2d(vectors: np.ndarray, method: str = "auto") -> tuple[np.ndarray, str]:
    """2-D coordinates and the method used: UMAP for large catalogs when installed (or asked), else PCA."""
    if method == "umap" or (method == "auto" and len(vectors) >= UMAP_FROM):
        try:
            import umap  # optional: pip install umap-learn
        except ImportError:
            if method == "umap":
                raise MapUnavailable("UMAP is not installed: pip install umap-learn, or use PCA") from None
        else:
            reducer = umap.UMAP(n_components=2, metric="cosine", random_state=0)
            return np.asarray(reducer.fit_transform(vectors), dtype=np.float32), "UMAP"
    return pca_2d(vectors), "PCA"


# ----------------------------------------------------------------------------------------- duplicates


def near_duplicates(
    vectors: np.ndarray, product_codes: np.ndarray, threshold: float = DEFAULT_THRESHOLD, k: int = TOP_K,
    block_scores: int = BLOCK_SCORES,
) -> dict[tuple[int, int], tuple[float, int, int]]:
    """{(product a, product b) with a < b: (best cosine, photo row of a, photo row of b)} for every pair of
    different products with two photos at least `threshold` alike. Exact: all rows against all rows, a block at
    a time; each photo's best neighbours are taken, its own product's photos dropped, the best `k` others kept."""
    n = len(vectors)
    found: dict[tuple[int, int], tuple[float, int, int]] = {}
    if n < 2:
        return found
    # Enough candidates that `k` of them belong to other products even when a photo's own product fills the top.
    own_most = int(np.bincount(product_codes).max())
    take = min(n, k + own_most)
    block = max(1, min(n, block_scores // n))
    for start in range(0, n, block):
        scores = vectors[start : start + block] @ vectors.T  # (block, n)
        rows, cols = _best_above(scores, threshold, take)
        values = scores[rows, cols]
        rows = rows + start
        other = product_codes[rows] != product_codes[cols]
        rows, cols, values = rows[other], cols[other], values[other]
        # The best k of each photo's neighbours in other products: sort by photo, then by score, best first.
        order = np.lexsort((-values, rows))
        rows, cols, values = rows[order], cols[order], values[order]
        starts = np.r_[0, np.flatnonzero(rows[1:] != rows[:-1]) + 1] if len(rows) else np.empty(0, dtype=np.int64)
        rank = np.arange(len(rows)) - np.repeat(starts, np.diff(np.r_[starts, len(rows)]))
        for i, j, score in zip(rows[rank < k].tolist(), cols[rank < k].tolist(), values[rank < k].tolist(),
                               strict=True):
            a, b = int(product_codes[i]), int(product_codes[j])
            key, photos = ((a, b), (i, j)) if a < b else ((b, a), (j, i))
            if key not in found or score > found[key][0]:
                found[key] = (score, *photos)
    return found


def _best_above(scores: np.ndarray, threshold: float, take: int) -> tuple[np.ndarray, np.ndarray]:
    """(row, column) of the scores at or above `threshold` among each row's best `take`. Near-duplicates are rare,
    so usually a comparison finds the few directly; when many pass (a low threshold), each row's best `take` are
    picked first, so what is kept stays bounded."""
    passing = scores >= threshold
    if int(passing.sum()) <= len(scores) * take:
        return np.nonzero(passing)
    n = scores.shape[1]
    best = np.argpartition(-scores, take - 1, axis=1)[:, :take] if take < n else np.tile(np.arange(n), (len(scores), 1))
    keep = np.take_along_axis(scores, best, axis=1) >= threshold
    rows = np.repeat(np.arange(len(scores)), take).reshape(len(scores), take)
    return rows[keep], best[keep]


# ---------------------------------------------------------------------------------------------- the map


def _names(matcher: Matcher, product_ids: list[str]) -> dict[str, tuple[str, str, str]]:
    """{id: (name, category, the first photo's thumbnail key)}, read a thousand products at a time."""
    out: dict[str, tuple[str, str, str]] = {}
    for start in range(0, len(product_ids), 1000):
        for pid, product in matcher.catalog.get_many(product_ids[start : start + 1000]).items():
            first = product.photos[0] if product.photos else None
            picture = (first.thumbnail_key or first.key) if first else ""
            out[pid] = (product.name, product.category, picture)
    return out


def map_index(matcher: Matcher) -> VectorIndex:
    """The vector index the map is drawn from: the model that runs, or will; never loads it."""
    from vpm.models.model_outlook import for_matcher

    model_id = for_matcher(matcher, probe=False).model_id
    if not matcher.count_products():
        raise MapUnavailable("The catalog is empty: load the sample products or add some on the Catalog page.")
    if not matcher.has_vector_index(model_id):
        raise MapUnavailable(
            f"No product has a vector for {model_id} yet: search once (the catalog is embedded first), or run "
            "python -m vpm index."
        )
    return matcher.vector_index(model_id)


def build_map(
    matcher: Matcher, *, threshold: float = DEFAULT_THRESHOLD, method: str = "auto", limit: int = MAX_PHOTOS,
    index: VectorIndex | None = None,
) -> CatalogMap:
    """The map of the catalog from the cached vectors (see the module's notes for sizes and limits)."""
    index = index or map_index(matcher)
    clock = time.perf_counter()
    seconds: dict[str, float] = {}
    keys, product_ids, vectors, total = read_vectors(index.iter_vectors(), limit=limit)
    seconds["read"] = time.perf_counter() - clock
    names = _names(matcher, list(dict.fromkeys(product_ids)))
    # Vectors whose product is gone (an add that never landed) stay off the map.
    keep = [i for i, pid in enumerate(product_ids) if pid in names]
    if len(keep) < len(product_ids):
        keys = [keys[i] for i in keep]
        product_ids = [product_ids[i] for i in keep]
        vectors = vectors[keep]
    seconds["names"] = time.perf_counter() - clock - seconds["read"]
    if not keys:
        raise MapUnavailable("No product has a vector yet: search once, or run python -m vpm index.")

    mark = time.perf_counter()
    order, per_product, codes = product_vectors(product_ids, vectors)
    coords, used = layout_2d(per_product, method)
    seconds["layout"] = time.perf_counter() - mark

    mark = time.perf_counter()
    found = near_duplicates(vectors, codes, threshold)
    seconds["duplicates"] = time.perf_counter() - mark

    counts = np.bincount(codes, minlength=len(order))
    points = [
        MapPoint(pid, names[pid][0], names[pid][1], float(coords[i, 0]), float(coords[i, 1]), int(counts[i]),
                 names[pid][2])
        for i, pid in enumerate(order)
    ]
    pairs = [
        DuplicatePair(order[a], names[order[a]][0], order[b], names[order[b]][0], score, keys[i], keys[j])
        for (a, b), (score, i, j) in sorted(found.items(), key=lambda item: -item[1][0])[:MAX_PAIRS]
    ]
    seconds["total"] = time.perf_counter() - clock
    log.info("catalog map of %d products (%d photos of %d) for %s in %.2f s", len(points), len(keys), total,
             index.model_id, seconds["total"])
    return CatalogMap(index.model_id, used, points, pairs, threshold, total, len(keys), seconds)


def chart_rows(points: Iterable[MapPoint], thumbnails: dict[str, str] | None = None) -> Iterator[dict]:
    """Rows for the chart: position, name, category, photos, and a thumbnail (a URL or data: URI) when given."""
    thumbnails = thumbnails or {}
    for p in points:
        yield {"x": p.x, "y": p.y, "name": p.name, "category": p.category, "photos": p.photos, "id": p.product_id,
               "image": thumbnails.get(p.product_id)}
