"""What the faces get back from the Matcher: products with the URLs to show them, search results, imports."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from .catalog import Photo, Product
from .images import Box
from .importer import ImportIssue

if TYPE_CHECKING:
    from .rerank import LocalFeatures


@dataclass(frozen=True)
class PhotoView:
    photo: Photo
    url: str | None
    thumbnail_url: str | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "key": self.photo.key, "sha256": self.photo.sha256, "url": self.url, "thumbnail_url": self.thumbnail_url,
            "width": self.photo.width, "height": self.photo.height,
        }


@dataclass(frozen=True)
class ProductView:
    """A product plus the URLs a client needs to show it (its first photo, and every photo)."""

    product: Product
    images: list[PhotoView]

    @property
    def image_url(self) -> str | None:
        return self.images[0].url if self.images else None

    @property
    def thumbnail_url(self) -> str | None:
        return self.images[0].thumbnail_url if self.images else None

    def as_dict(self) -> dict[str, Any]:
        return {
            **self.product.as_json(),
            "image_url": self.image_url,
            "thumbnail_url": self.thumbnail_url,
            "images": [view.as_dict() for view in self.images],
        }


@dataclass(frozen=True)
class EmbeddedQuery:
    """A query embedded once: re-rank it with `Matcher.rank` as filters change, without embedding again."""

    kind: Literal["image", "text"]
    vector: np.ndarray
    label: str  # the file name, URL or words, for people
    image: bytes | None  # the query photo's bytes, to show it; None for words
    embed_ms: float
    features: LocalFeatures | None = None  # the query's keypoints, for verification; None for words
    box: Box | None = None  # the region of the photo searched with; None: the whole photo


@dataclass(frozen=True)
class Match:
    """One search result: a product, its cosine similarity to the query (its best photo's), and which photo."""

    product: Product
    score: float  # cosine, in [-1, 1]
    photo_key: str  # the photo that matched best
    image_url: str | None  # of that photo
    thumbnail_url: str | None
    inliers: int | None = None  # keypoint matches verified between the query and that photo; None: not verified

    def as_dict(self) -> dict[str, Any]:
        p = self.product
        return {
            "id": p.id, "name": p.name, "category": p.category, "price": p.price, "score": round(self.score, 6),
            "matched_image": self.photo_key, "image_url": self.image_url, "thumbnail_url": self.thumbnail_url,
            "photo_count": len(p.photos), "verified_matches": self.inliers,
        }


@dataclass(frozen=True)
class SearchResponse:
    model: str  # the model id that embedded the query and the catalog
    took_ms: float
    results: list[Match]
    best_score: float | None  # best score after the category filter, ignoring the threshold
    query: str | None = None  # the file name, URL or text searched for
    threshold: float | None = None  # the threshold applied (None: none)
    verified: bool = False  # whether the top candidates were verified by local features (re-ranking)
    reranked: bool = False  # whether that verification changed the order the cosine gave
    box: Box | None = None  # the region of the query photo searched with

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "took_ms": round(self.took_ms, 2),
            "results": [m.as_dict() for m in self.results],
            "best_score": None if self.best_score is None else round(self.best_score, 6),
            "query": self.query,
            "threshold": self.threshold,
            "rerank": self.verified,
            "reranked": self.reranked,
            "box": None if self.box is None else self.box.as_list(),
        }


@dataclass
class ImportReport:
    imported: list[Product] = field(default_factory=list)  # products created
    photos_added: int = 0  # photos added to products that existed already
    skipped: list[ImportIssue] = field(default_factory=list)
    failed: list[ImportIssue] = field(default_factory=list)
    source: str = ""

    @property
    def duplicates(self) -> list[ImportIssue]:
        """Skipped because the catalog has them already (running an import twice skips everything)."""
        return [issue for issue in self.skipped if issue.duplicate]

    @property
    def ignored(self) -> list[ImportIssue]:
        """Skipped for another reason: not an image (a README.txt in a zip), a symbolic link."""
        return [issue for issue in self.skipped if not issue.duplicate]

    @property
    def photos_imported(self) -> int:
        return sum(len(p.photos) for p in self.imported) + self.photos_added

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "imported": [p.as_json() for p in self.imported],
            "photos": self.photos_imported,
            "photos_added_to_existing": self.photos_added,
            "skipped": [i.as_dict() for i in self.skipped],
            "duplicates": len(self.duplicates),
            "failed": [i.as_dict() for i in self.failed],
            "summary": self.summary(),
        }

    def summary(self) -> str:
        created_photos = sum(len(p.photos) for p in self.imported)
        text = f"imported {_plural(len(self.imported), 'product')} ({_plural(created_photos, 'photo')})"
        if self.photos_added:
            text += f", added {_plural(self.photos_added, 'photo')} to existing products"
        text += f", skipped {_plural(len(self.duplicates), 'duplicate')}"
        if self.ignored:
            text += f", ignored {_plural(len(self.ignored), 'other file')}"  # not images, links: each says why
        return text + f", failed {len(self.failed)}"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"
