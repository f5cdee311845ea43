"""What the faces get back from the Matcher: products with the URLs to show them, search results, imports."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from vpm.core import product_schema
from vpm.core.catalog import Photo, Product
from vpm.core.images import Box
from vpm.core.importer import ImportIssue
from vpm.core.presentation import plural

if TYPE_CHECKING:
    from vpm.core.rerank import LocalFeatures


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
    """One search result: a product, its one score, the photo it matched by, and each signal behind the score.

    For a photo query `score` is the calibrated probability that this is the right product (vpm/core/scoring.py), and
    the list is ordered by it; for words it is the text-image cosine, or, answered by words alone (no model reads
    them), the words match relative to the best one (1.0), which ranks and is not shown as a percentage.
    `similarity` is the image cosine (through the catalog's projection when it has one), `inliers` the keypoints
    verified on `photo_key`, `text` how alike the package texts read (None: not compared), `reads` the telling
    words both photos read, `matched_fields` where a words query was found (name, brand, package text...).
    """

    product: Product
    score: float
    photo_key: str  # the photo that matched best (the one that verified, when one did)
    image_url: str | None  # of that photo
    thumbnail_url: str | None
    inliers: int | None = None  # keypoint matches verified between the query and that photo; None: not verified
    similarity: float = float("nan")  # the image cosine behind the score
    text: float | None = None
    reads: tuple[str, ...] = ()
    matched_fields: tuple[str, ...] = ()

    @property
    def words_only(self) -> bool:
        """Found by words with no model reading them: `score` ranks the words match, it is no percentage."""
        return bool(self.matched_fields) and math.isnan(self.similarity)

    @property
    def matched_in(self) -> str:
        """Where a words query was found, for people: "matched in: name, package text" ("" when not by words)."""
        fields = ", ".join(f.replace("_", " ") for f in self.matched_fields)
        return f"matched in: {fields}" if fields else ""

    def as_dict(self) -> dict[str, Any]:
        p = self.product
        return {
            **{name: getattr(p, name) for name in product_schema.RESULT_FIELDS}, "score": round(self.score, 6),
            "matched_image": self.photo_key, "image_url": self.image_url, "thumbnail_url": self.thumbnail_url,
            "photo_count": len(p.photos), "verified_matches": self.inliers,
            "signals": {"image": None if math.isnan(self.similarity) else round(self.similarity, 6),
                        "keypoints": self.inliers, "text": None if self.text is None else round(self.text, 4),
                        "reads": list(self.reads)},
            "matched_fields": list(self.matched_fields),
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
    reranked: bool = False  # whether the signals changed the order the plain cosine gave
    box: Box | None = None  # the region of the query photo searched with
    # match: calibrated (photos); similarity: cosine (words with CLIP); words: words alone, a relative words score
    score_kind: Literal["match", "similarity", "words"] = "similarity"
    best_match: Match | None = None  # the best result ignoring the threshold (to name it when nothing passes)
    calibration: str = ""  # where the score's curve comes from, for people
    text_read: bool = False  # whether the query photo's package text was read and compared
    answered_by: str = ""  # for a words query, what answered it (vpm.core.word_search.answered_by), for people

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
            "score_kind": self.score_kind,
            "calibration": self.calibration,
            "package_text": self.text_read,
            "answered_by": self.answered_by or None,
            "best_match": None if self.best_match is None else self.best_match.as_dict(),
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
        text = f"imported {plural(len(self.imported), 'product')} ({plural(created_photos, 'photo')})"
        if self.photos_added:
            text += f", added {plural(self.photos_added, 'photo')} to existing products"
        text += f", skipped {plural(len(self.duplicates), 'duplicate')}"
        if self.ignored:
            text += f", ignored {plural(len(self.ignored), 'other file')}"  # not images, links: each says why
        return text + f", failed {len(self.failed)}"
