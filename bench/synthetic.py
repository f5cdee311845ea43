"""Synthetic catalogs for benchmarks: products, photos and vectors shaped like real CLIP embeddings.

Uniformly random 512-d vectors have no near neighbours (every pair has cosine ~0 +- 0.04), which makes every
approximate index look blind. Real embeddings crowd around what they show, so here each photo's vector is a
centre (one of a few thousand random directions, "things") plus Gaussian noise scaled so its cosine to the
centre is about `spread` (0.85 by default): two photos of one centre then have cosine ~0.72, photos of
different centres ~0. Products of one centre mostly share one category (90%), as a category groups things that
look alike; the rest get a random one.

Everything is deterministic for a seed and vectorised: a million 512-d vectors take a few seconds.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

CATEGORY_WORDS = ["mug", "cup", "bowl", "plate", "jar", "bottle", "lamp", "chair", "table", "shelf", "sofa", "rug", "pillow", "towel", "shoe", "boot", "sandal", "sneaker", "hat", "cap", "scarf", "glove", "sock", "shirt", "dress", "skirt", "jacket", "coat", "bag", "wallet", "belt", "watch", "ring", "necklace", "earring", "phone", "case", "cable", "charger", "speaker", "headphone", "camera", "lens", "tripod", "book", "pen", "pencil", "notebook", "folder", "stapler", "toy", "puzzle", "ball", "racket", "bike", "helmet", "tent", "knife", "pan", "pot", "kettle", "toaster", "blender", "spoon", "fork", "tea", "coffee", "cereal", "pasta", "rice", "sauce", "soap", "shampoo", "brush", "comb", "razor", "candle", "vase", "frame", "clock", "mirror", "plant", "seed", "tool", "drill", "hammer"]
CATEGORY_KINDS = ("", "kids ", "outdoor ", "premium ", "travel ")


def category_names(n: int) -> list[str]:
    """`n` distinct, readable category names ("Mug", "Kids mug", "Outdoor mug 2", ...)."""
    names = []
    for i in range(n):
        word = CATEGORY_WORDS[i % len(CATEGORY_WORDS)]
        kind = CATEGORY_KINDS[(i // len(CATEGORY_WORDS)) % len(CATEGORY_KINDS)]
        round_ = i // (len(CATEGORY_WORDS) * len(CATEGORY_KINDS))
        names.append((kind + word).capitalize() + (f" {round_ + 1}" if round_ else ""))
    return names


def noise_sigma(spread: float, dim: int) -> float:
    """Per-component noise for which |c + noise| has cosine `spread` with a unit centre c (in expectation)."""
    return math.sqrt((1.0 / spread**2 - 1.0) / dim)


def unit_rows(block: np.ndarray) -> np.ndarray:
    block /= np.linalg.norm(block, axis=1, keepdims=True)
    return block


@dataclass
class SyntheticCatalog:
    """N products with K photos each; photo j of product i is row i*K + j of `vectors`."""

    n_products: int
    photos_per_product: int
    dim: int
    centres: np.ndarray  # (C, dim) unit
    photo_centre: np.ndarray  # (N*K,) int32: each photo's centre
    product_category: np.ndarray  # (N,) int32 index into `categories`
    categories: list[str]
    vectors: np.ndarray  # (N*K, dim) float32 unit
    seed: int

    @property
    def n_photos(self) -> int:
        return self.n_products * self.photos_per_product

    def product_id(self, i: int) -> str:
        return f"product_{i:012d}"

    def product_ids(self, start: int, stop: int) -> list[str]:
        return [f"product_{i:012d}" for i in range(start, stop)]

    def photo_key(self, i: int, j: int) -> str:
        return f"images/synthetic/{i:012d}-{j}.jpg"

    def thumbnail_key(self, i: int, j: int) -> str:
        return f"thumbnails/synthetic/{i:012d}-{j}.webp"

    def category_of(self, i: int) -> str:
        return self.categories[int(self.product_category[i])]

    def product_codes(self) -> np.ndarray:
        """Each photo row's product number (for ranking products by their best photo)."""
        return np.repeat(np.arange(self.n_products, dtype=np.int32), self.photos_per_product)

    def perturbed_queries(self, n: int, *, similarity: float = 0.95, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """`n` queries, each a noisy copy of a random catalog photo (cosine ~`similarity` to it): a new photo of
        a product in the catalog. Returns (queries, source photo rows)."""
        rng = np.random.default_rng([self.seed, seed])
        rows = rng.choice(self.n_photos, size=min(n, self.n_photos), replace=False)
        noise = rng.standard_normal((len(rows), self.dim), dtype=np.float32) * noise_sigma(similarity, self.dim)
        return unit_rows(self.vectors[rows] + noise).astype(np.float32), rows


def make_catalog(
    n_products: int, *, photos_per_product: int = 1, dim: int = 512, centres: int = 2000, spread: float = 0.85,
    n_categories: int = 300, category_purity: float = 0.9, seed: int = 7, progress=None,
) -> SyntheticCatalog:
    """Generate the vectors and categories of a catalog (ids, keys and hashes are made on demand per batch)."""
    rng = np.random.default_rng(seed)
    n_photos = n_products * photos_per_product
    n_centres = max(1, min(centres, n_products))
    centre_vectors = unit_rows(rng.standard_normal((n_centres, dim), dtype=np.float32))
    # A product's photos show one thing: all its photos share its centre.
    product_centre = rng.integers(0, n_centres, size=n_products, dtype=np.int32)
    photo_centre = np.repeat(product_centre, photos_per_product)
    centre_category = rng.integers(0, n_categories, size=n_centres, dtype=np.int32)
    product_category = centre_category[product_centre]
    stray = rng.random(n_products) > category_purity
    product_category[stray] = rng.integers(0, n_categories, size=int(stray.sum()), dtype=np.int32)

    sigma = noise_sigma(spread, dim)
    vectors = np.empty((n_photos, dim), dtype=np.float32)
    step = 100_000
    for start in range(0, n_photos, step):  # in blocks: bounded temporaries
        stop = min(n_photos, start + step)
        block = rng.standard_normal((stop - start, dim), dtype=np.float32)
        block *= sigma
        block += centre_vectors[photo_centre[start:stop]]
        vectors[start:stop] = unit_rows(block)
        if progress:
            progress(stop, n_photos)
    return SyntheticCatalog(
        n_products, photos_per_product, dim, centre_vectors, photo_centre, product_category,
        category_names(n_categories), vectors, seed,
    )


def fake_sha256s(n: int) -> list[str]:
    """`n` made-up SHA-256 hex digests (random, so distinct)."""
    raw = os.urandom(32 * n).hex()
    return [raw[i * 64 : (i + 1) * 64] for i in range(n)]
