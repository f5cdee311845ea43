"""The catalog's own projection of the image vectors: what its products' photos teach about which directions of the
descriptor tell products apart and which are only light, angle and framing (learned whitening, Radenović et al.).

Photos of one product differ by viewpoint and light; the covariance of those differences says which directions to
shrink. The projection whitens by it: `normalise((v - mean) @ W)`, W = C^(-1/2) with C the covariance of the
differences, shrunk towards its mean eigenvalue (so a small catalog cannot overfit a 1280-d space). Measured on the
sample photos with each query's own photo left out of the fit: recall@1 0.64 -> 0.76 (image alone). A projection
fitted on *other* products does not help (it learns these products, not photos in general), which is why each
catalog fits its own, and keeps it only when its held-out photos say it helps (vpm/core/calibration.py).

A search uses it as a second stage: the vector index finds the closest products by the plain cosine, then their
photos are compared again through the projection, so the index itself never has to be rewritten when the
projection is refitted.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

SHRINK = 0.3  # added to every eigenvalue, as a share of their mean: measured best of 0.1-10 on the sample photos
MIN_PAIRS = 20  # fewer pairs of one product's photos than this teach nothing reliable
MAX_PAIRS_PER_PRODUCT = 15  # a product with many photos must not dominate the fit (6 photos give 15 pairs)
MAX_PAIRS = 50_000  # a seeded sample beyond: the covariance is as good, and memory and time stay bounded
_CHUNK = 4096  # pairs differenced at a time
POOL = 50  # products re-compared through the projection per search (the index's best by the plain cosine)


@dataclass(frozen=True)
class Projection:
    mean: np.ndarray  # (d,) float32
    matrix: np.ndarray  # (d, d) float32
    pairs: int  # pairs of photos of one product it was fitted on

    @property
    def dim(self) -> int:
        return len(self.mean)

    def apply(self, vectors: np.ndarray) -> np.ndarray:
        """The vectors through the projection, each of unit length (rows of a 2-d array, or one 1-d vector)."""
        v = np.asarray(vectors, dtype=np.float32)
        out = (v - self.mean) @ self.matrix
        norms = np.linalg.norm(out, axis=-1, keepdims=True)
        return out / np.maximum(norms, 1e-12)

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.mean.tobytes() + self.matrix.tobytes()).hexdigest()[:16]

    def to_bytes(self) -> bytes:
        out = io.BytesIO()
        np.savez(out, mean=self.mean, matrix=self.matrix, pairs=np.int64(self.pairs))
        return out.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> Projection:
        with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
            mean = np.asarray(arrays["mean"], dtype=np.float32)
            matrix = np.asarray(arrays["matrix"], dtype=np.float32)
            pairs = int(arrays["pairs"])
        if mean.ndim != 1 or matrix.shape != (len(mean), len(mean)) or not np.isfinite(matrix).all():
            raise ValueError("not a projection of this release")
        return cls(mean, matrix, pairs)


def same_product_pairs(codes: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Row pairs (a, b) of photos of one product, at most MAX_PAIRS_PER_PRODUCT each (a seeded sample beyond)."""
    rng = np.random.default_rng(seed)
    order = np.argsort(codes, kind="stable")
    bounds = np.flatnonzero(np.diff(codes[order])) + 1
    left: list[int] = []
    right: list[int] = []
    for rows in np.split(order, bounds):
        if len(rows) < 2:
            continue
        a, b = np.triu_indices(len(rows), k=1)
        if len(a) > MAX_PAIRS_PER_PRODUCT:
            keep = rng.choice(len(a), MAX_PAIRS_PER_PRODUCT, replace=False)
            a, b = a[keep], b[keep]
        left += rows[a].tolist()
        right += rows[b].tolist()
    return np.asarray(left, dtype=np.int64), np.asarray(right, dtype=np.int64)


def fit(vectors: np.ndarray, codes: Sequence[int] | np.ndarray, *, shrink: float = SHRINK) -> Projection | None:
    """Fit on the catalog's photos (`vectors`, one row a photo; `codes`, its product): None when its products have
    fewer than MIN_PAIRS pairs of photos between them."""
    x = np.asarray(vectors, dtype=np.float32)
    codes = np.asarray(codes)
    a, b = same_product_pairs(codes)
    if len(a) < MIN_PAIRS:
        return None
    if len(a) > MAX_PAIRS:
        keep = np.sort(np.random.default_rng(0).choice(len(a), MAX_PAIRS, replace=False))
        a, b = a[keep], b[keep]
    covariance = np.zeros((x.shape[1], x.shape[1]), dtype=np.float64)
    for start in range(0, len(a), _CHUNK):
        d = (x[a[start : start + _CHUNK]] - x[b[start : start + _CHUNK]]).astype(np.float64)
        covariance += d.T @ d
    covariance /= len(a)
    values, vectors_ = np.linalg.eigh(covariance)
    values = np.maximum(values, 0.0) + shrink * max(float(values.mean()), 1e-12)
    matrix = (vectors_ * values ** -0.5) @ vectors_.T
    return Projection(x.mean(axis=0, dtype=np.float64).astype(np.float32), matrix.astype(np.float32), len(a))
