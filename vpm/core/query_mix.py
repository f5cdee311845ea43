"""Queries made of more than one thing: several photos of one product, a photo refined by words, "not this one".

Every part becomes one query vector by rclip's arithmetic (`combine`): each term's embedding L2-normalised,
weighted and summed, negatives subtracted, the sum normalised again. The catalog is then ranked against that one
vector exactly as against a photo's (vpm/core/ranking.py: projection, keypoints, package text, one calibrated score and
its order), so a mixed query needs no ranking of its own.

- Several photos (front, back, side): their mean vector. Measured on the shared photos with the built-in model
  (bench/bench_queries.py: pairs and triples of a product's photos as the query, its other photos left in the
  catalog, seeds 13 and 7) against a product scoring by its best match to any query photo (max) or by the mean of
  its best matches to each (mean): recall@1 with two photos 0.671 / 0.668 (max 0.648 / 0.638, mean 0.665 / 0.652,
  one photo 0.565 / 0.551), with three 0.622 / 0.615 (max 0.595 / 0.574, mean 0.565 / 0.547, one photo 0.461 /
  0.439). Keypoint verification and the package text use the first photo (the page's main upload, the CLI's first
  IMAGE, the API's first `image` part), which `verified_with` names.
- Words beside a photo: added with TEXT_WEIGHT, relative to the photos' part (only with a model that reads words).
- Not this one: the rejected product leaves the list, and its look (the mean of its stored photo vectors, so it
  works with every model) is subtracted with NEGATIVE_WEIGHT, once for each rejected product.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from vpm.core.errors import InvalidRequest
from vpm.core.results import EmbeddedQuery, SearchResponse

if TYPE_CHECKING:
    from vpm.core.matcher import Matcher

FUSION = "mean vector"  # how several photos become one query (measured: see the module's docstring)
# Words' weight beside the photos. Not measured here: no model that reads words can be loaded offline (the tests'
# tiny CLIP has random weights), so this is rclip's default of an equal weight for every term;
# bench/bench_queries.py --model CLIP_FOLDER measures it where a real CLIP is at hand.
TEXT_WEIGHT = 1.0
# A rejected look's weight. Measured with the built-in model on the shared photos (bench/bench_queries.py, seeds 13
# and 7: the first result rejected where it was wrong, the second where the first was right): no weight found the
# right product first clearly more often than leaving the rejected one out alone (at best 3 queries of 142, on one
# seed; a wrong first result usually looks like the right one), so the push is kept gentle. 0.1 is the strongest
# that cost at most one query of 142 (first wrong, recall@1 after 0.479 / 0.472 against 0.486 / 0.472) and of 256
# (first right, still first 1.000 / 0.996); from 0.3 on it cost 5-15% of both.
NEGATIVE_WEIGHT = 0.1
MAX_WEIGHT = 3.0
MAX_PHOTOS = 5  # photos in one query: every one is decoded before any is embedded, so this bounds memory
MAX_NOT = 50  # rejected products one query carries
_TEXT_CACHE = 256  # words embedded once per model, so a weight slider never embeds them again


def unit(vector: np.ndarray) -> np.ndarray:
    v = np.asarray(vector, dtype=np.float32)
    norm = float(np.linalg.norm(v))
    return v / norm if norm > 1e-12 else v


def combine(terms: Sequence[tuple[np.ndarray, float]]) -> np.ndarray:
    """rclip's arithmetic: each term L2-normalised, weighted and summed (a negative weight subtracts), normalised."""
    total = sum(weight * unit(vector) for vector, weight in terms)
    return unit(total)


def look_of(vectors: Iterable[np.ndarray]) -> np.ndarray | None:
    """A product's look: the mean of its photos' vectors (None for a product without one)."""
    stacked = [unit(v) for v in vectors]
    return combine([(v, 1.0) for v in stacked]) if stacked else None


def check_weight(value: float | None, what: str, default: float) -> float:
    """A weight from a person: a number from 0 to MAX_WEIGHT (None: the default)."""
    if value is None:
        return default
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InvalidRequest(f"{what} must be a number from 0 to {MAX_WEIGHT:g}, not {value!r}") from None
    if math.isnan(number) or not 0.0 <= number <= MAX_WEIGHT:
        raise InvalidRequest(f"{what} must be a number from 0 to {MAX_WEIGHT:g} (e.g. {default:g}), not {value!r}")
    return number


@dataclass(frozen=True)
class Mix:
    """One query's parts: photos (embedded once), words, rejected products; `vector` is what the catalog is
    ranked against."""

    photos: tuple[EmbeddedQuery, ...] = ()
    text: str | None = None  # the words used (None: none, or the model cannot read them: see `notice`)
    text_vector: np.ndarray | None = None
    text_weight: float = TEXT_WEIGHT
    not_ids: tuple[str, ...] = ()
    looks: tuple[np.ndarray, ...] = ()  # the rejected products' looks (one without stored vectors has none)
    negative_weight: float = NEGATIVE_WEIGHT
    notice: str | None = None  # a part that could not be used, in one line for people
    embed_ms: float = 0.0

    @property
    def kind(self) -> str:
        return "image" if self.photos else "text"

    def vector(self) -> np.ndarray:
        if self.photos:
            if len(self.photos) == 1 and self.text_vector is None and not self.looks:
                return self.photos[0].vector  # exactly the photo's: a plain search is unchanged
            terms = [(combine([(p.vector, 1.0) for p in self.photos]), 1.0)]
            if self.text_vector is not None:
                terms.append((self.text_vector, self.text_weight))
        elif self.text_vector is not None:
            terms = [(self.text_vector, 1.0)]
        else:
            raise InvalidRequest("a query needs a photo, an image URL or words")
        terms += [(look, -self.negative_weight) for look in self.looks]
        return combine(terms)

    @property
    def label(self) -> str:
        """What was searched for, for people: "front.jpg + back.jpg + “in red”"."""
        parts = [p.label for p in self.photos]
        if self.text is not None:
            parts.append(f"“{self.text}”" if self.photos else self.text)
        label = " + ".join(parts)
        if self.not_ids:
            label += f" (not {', '.join(self.not_ids)})"
        return label


@dataclass(frozen=True)
class MixedResponse(SearchResponse):
    """A search response that also says what the query was made of."""

    photos: tuple[str, ...] = ()
    verified_with: str | None = None  # the query photo whose keypoints verified the results
    text: str | None = None
    text_weight: float | None = None
    not_ids: tuple[str, ...] = ()
    negative_weight: float | None = None
    notice: str | None = None
    fusion: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            **super().as_dict(),
            "query_mix": {
                "photos": list(self.photos), "fusion": self.fusion, "verified_with": self.verified_with,
                "text": self.text, "text_weight": self.text_weight, "not_ids": list(self.not_ids),
                "negative_weight": self.negative_weight, "notice": self.notice,
            },
        }


# ------------------------------------------------------------------------------------------- building


def embed_photos(matcher: Matcher, images: Sequence[tuple[bytes, str]],
                 box=None) -> list[EmbeddedQuery]:
    """Several photos of one product, each embedded once (one model call), with their keypoints: all are decoded
    first, so a bad one fails the call, naming it. `box` is a region of the first photo."""
    from vpm.core.images import parse_box

    if not images:
        raise InvalidRequest("a query needs at least one photo")
    if len(images) > MAX_PHOTOS:
        raise InvalidRequest(f"{len(images)} photos in one query; search with at most {MAX_PHOTOS} photos of one "
                             "product at a time")
    box = None if box is None else parse_box(box)
    started = time.perf_counter()
    pictures = [matcher._query_image(data, name, box if i == 0 else None) for i, (data, name) in enumerate(images)]
    vectors = matcher.embedder.embed_images(pictures, batch_size=len(pictures))
    each_ms = (time.perf_counter() - started) * 1000 / len(images)
    # The keypoints of the first photo only: it is the one that verifies (see the module's docstring).
    return [EmbeddedQuery("image", vectors[i], name, data, each_ms,
                          matcher.query_features(pictures[0]) if i == 0 else None, box if i == 0 else None)
            for i, (data, name) in enumerate(images)]


def make(matcher: Matcher, photos: Sequence[EmbeddedQuery] = (), *, text: str | None = None,
         text_weight: float | None = None, not_ids: Iterable[str] = (), negative_weight: float | None = None,
         strict: bool = True) -> Mix:
    """A query of these photos, words and rejected products. Words beside a photo with a model that reads photos
    only are left out, and `notice` says so; words alone with such a model are searched for in the catalog's
    words (vpm/core/word_search.py), so they get no vector. A rejected
    id that is not in the catalog is refused (InvalidRequest) when `strict`, else dropped (deleted since)."""
    started = time.perf_counter()
    text_weight = check_weight(text_weight, "the words' weight", TEXT_WEIGHT)
    negative_weight = check_weight(negative_weight, "the weight of a rejected look", NEGATIVE_WEIGHT)
    ids = tuple(dict.fromkeys(str(i).strip() for i in not_ids if str(i).strip()))
    if len(ids) > MAX_NOT:
        raise InvalidRequest(f"{len(ids)} rejected products; a query carries at most {MAX_NOT}")
    words = text.strip() if isinstance(text, str) and text.strip() else None
    notice = None
    text_vector = None
    if words is not None:
        if photos and (notice := refine_unavailable(matcher)):
            words = None
        elif photos or matcher.text_search_unavailable() is None:
            text_vector = _texts.vector(matcher, words)  # words alone, no model reading them: the words index
    products = matcher.catalog.get_many(list(ids)) if ids else {}
    missing = [i for i in ids if i not in products]
    if missing and strict:
        raise InvalidRequest(f"no product with id {missing[0]!r} to leave out: check the id (the catalog's "
                             "products list shows them)")
    ids = tuple(i for i in ids if i in products)
    stored = matcher.vectors.vectors_for_keys([p.key for i in ids for p in products[i].photos]) if ids else {}
    looks = tuple(look for i in ids
                  if (look := look_of(stored[p.key] for p in products[i].photos if p.key in stored)) is not None)
    took = (time.perf_counter() - started) * 1000 + sum(p.embed_ms for p in photos)
    return Mix(tuple(photos), words, text_vector, text_weight, ids, looks, negative_weight, notice, took)


def refine_unavailable(matcher: Matcher) -> str | None:
    """Why words cannot refine a photo with the model that runs, in one line for people; None when they can."""
    unavailable = matcher.text_search_unavailable()
    return None if unavailable is None else f"Refine with words is off: {unavailable}"


class _TextVectors:
    """Words embedded once per model (bounded, most recent kept)."""

    def __init__(self, size: int):
        self.size = size
        self.known: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()
        self.lock = threading.Lock()

    def vector(self, matcher: Matcher, text: str) -> np.ndarray:
        key = (matcher.embedder.model_id, text)
        with self.lock:
            if key in self.known:
                self.known.move_to_end(key)
                return self.known[key]
        vector = matcher.embed_query_text(text)  # raises EmbeddingError, saying why, for a model without words
        with self.lock:
            self.known[key] = vector
            while len(self.known) > self.size:
                self.known.popitem(last=False)
        return vector


_texts = _TextVectors(_TEXT_CACHE)


# -------------------------------------------------------------------------------------------- ranking


def rank(matcher: Matcher, mix: Mix, *, top_k: int = 10, threshold: float | None = None,
         categories: Iterable[str] | None = None, rerank: bool | None = None) -> MixedResponse:
    """Rank the catalog against the mix's one vector (`Matcher.rank`: no threshold when None), leaving its
    rejected products out. Words alone are a words search (vpm.core.searching.search_text: fused with CLIP, the
    rejected looks subtracted from its vector; the words index alone without a model that reads them)."""
    first = mix.photos[0] if mix.photos else None
    read_text = None
    if first is not None and first.image is not None:
        read_text = matcher.query_text_reader(first.image, first.label, first.box)
    if first is None and mix.text is not None:
        from vpm.core.searching import search_text

        response = search_text(matcher, mix.text, top_k=top_k, threshold=threshold, categories=categories,
                               vector=None if mix.text_vector is None else mix.vector(), took_ms=mix.embed_ms,
                               exclude=mix.not_ids)
        response = dataclasses.replace(response, query=mix.label)
    else:
        response = matcher.rank(
            mix.vector(), top_k=top_k, threshold=threshold, categories=categories, query=mix.label,
            took_ms=mix.embed_ms, features=None if first is None else first.features, rerank=rerank,
            box=None if first is None else first.box, kind=mix.kind, read_text=read_text, exclude=mix.not_ids,
        )
    return MixedResponse(
        **{f.name: getattr(response, f.name) for f in dataclasses.fields(SearchResponse)},
        photos=tuple(p.label for p in mix.photos),
        verified_with=first.label if first is not None and response.verified else None,
        text=mix.text, text_weight=mix.text_weight if mix.text is not None and mix.photos else None,
        not_ids=mix.not_ids, negative_weight=mix.negative_weight if mix.not_ids else None, notice=mix.notice,
        fusion=FUSION if len(mix.photos) > 1 else None,
    )


def describe_weights(text_weight: float | None = None, negative_weight: float | None = None) -> str:
    """The weights in use (None: the default), for people."""
    text_weight = TEXT_WEIGHT if text_weight is None else text_weight
    negative_weight = NEGATIVE_WEIGHT if negative_weight is None else negative_weight
    return (f"words weigh {text_weight:g} beside the photos (1 = as much); each rejected product's look is "
            f"subtracted at {negative_weight:g}")
