"""Searching the catalog, for the Matcher: a query embedded once (a photo, a region of it, an image link, words),
the catalog ranked against its vector (the index's candidates, then vpm/core/ranking.py: one score, one order), several
photos searched in one batch, "Why this match?", and more like this. The Matcher's search methods are doors to
these functions; they take the Matcher, so every part (model, index, catalog, storage) stays the Matcher's own.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from vpm.core.errors import InvalidRequest
from vpm.core.images import Box, decode_image, parse_box
from vpm.core.results import EmbeddedQuery, Match, SearchResponse

if TYPE_CHECKING:
    from PIL import Image

    from vpm.core.matcher import Matcher

log = logging.getLogger(__name__)

# A search asks the index for a few more products than shown: a vector written just before its product row
# (an add in flight) or left by an add that never landed is skipped without leaving the page short.
SPARE_HITS = 5
QUERY_BATCH = 32  # photos of one batch of searches embedded in one model call


def embed_query(
    matcher: Matcher, *, data: bytes | None = None, filename: str = "image", url: str | None = None,
    text: str | None = None, box: Box | str | Sequence[int] | None = None,
) -> EmbeddedQuery:
    """Embed one query (photo bytes, an image URL, or words; of a photo, only the region `box` if given) once,
    with the photo's keypoints, for ranking with `rank` later."""
    started = time.perf_counter()
    features = None
    if text is not None:
        if box is not None:
            raise InvalidRequest("a region (box) only applies to a photo, not to words")
        vector, label, image = matcher.embed_query_text(text), text.strip(), None
    else:
        if url is not None:
            data, filename = matcher.fetch_url_image(url)
        if data is None:
            raise InvalidRequest("a query needs a photo, an image URL or a text")
        box = None if box is None else parse_box(box)
        picture = matcher._query_image(data, filename, box)
        vector, image = matcher._embed_one_image(picture), data
        features = matcher.query_features(picture)
        label = url if url is not None else filename
    took_ms = (time.perf_counter() - started) * 1000
    return EmbeddedQuery("text" if text is not None else "image", vector, label, image, took_ms, features,
                         box if text is None else None)


def query_text_reader(matcher: Matcher, data: bytes, filename: str,
                      box: Box | str | Sequence[int] | None = None) -> Callable[[], str]:
    """Reads the query photo's package text the first time it is asked for, then remembers it."""
    read: dict[str, Callable[[], str]] = {}

    def reader() -> str:  # decoded only when asked: most queries never need their text
        if "reader" not in read:
            read["reader"] = text_reader(matcher._query_image(data, filename, None if box is None
                                                            else parse_box(box)))
        return read["reader"]()

    return reader


def rank_many(matcher: Matcher, vectors, queries, top_k, threshold, categories, embed_ms, features=None, rerank=None,
               boxes=None, text_readers=None, kind: str = "image",
               exclude: frozenset[str] = frozenset()) -> list[SearchResponse]:
    from vpm.core import ranking
    from vpm.core import rerank as verification
    from vpm.core.projection import POOL

    if top_k < 1:
        raise InvalidRequest(f"top_k must be at least 1 (got {top_k})")
    features = features or [None] * len(queries)
    boxes = boxes or [None] * len(queries)
    text_readers = text_readers or [None] * len(queries)
    verify = matcher.rerank_default if rerank is None else bool(rerank)
    photo = kind == "image"
    started = time.perf_counter()
    matcher._embed_missing_once()
    calibration = matcher.calibration() if photo else None
    wanted_k = top_k
    if photo:  # the candidates every signal looks at, so the score orders the same list whatever top_k is
        wanted_k = max(top_k, verification.RERANK_TOP, POOL if calibration.projection is not None else 0)
    results = matcher.vectors.query(vectors, k=wanted_k + SPARE_HITS + len(exclude), threshold=None,
                                 categories=categories)
    ids = sorted({hit.product_id for result in results for hit in result.hits})
    products = matcher.catalog.get_many(ids)
    wanted = {c.strip().casefold() for c in categories or () if c and c.strip()}
    shared_ms = (time.perf_counter() - started) * 1000 / max(1, len(queries))
    stores = matcher._ranking_stores(verify)
    read_text = photo and matcher.package_text_default and matcher.has_text_table()
    responses = []
    for j, (result, query, ms, query_features, box, reader) in enumerate(
            zip(results, queries, embed_ms, features, boxes, text_readers, strict=True)):
        one_started = time.perf_counter()
        matches = []
        for hit in result.hits:
            product = products.get(hit.product_id)
            if hit.product_id in exclude:
                continue  # "not this one"
            if product is None or (wanted and product.category.casefold() not in wanted):
                continue  # an add in flight, or one that never landed; or a category changed just now
            photo_row = next((p for p in product.photos if p.key == hit.photo_key), None)
            if photo_row is None:
                continue  # a photo removed just now
            matches.append(Match(product, hit.score, photo_row.key, None, None, similarity=hit.score))
            if len(matches) == wanted_k:
                break
        verified = reranked = text_read = False
        if photo:
            ranked = ranking.rank_photo_query(
                matches, vectors[j], calibration.score, stores, projection=calibration.projection,
                query_features=query_features if verify else None,
                read_query_text=reader if read_text else None,
            )
            matches, verified, reranked, text_read = (ranked.matches, ranked.verified, ranked.reranked,
                                                      ranked.text_read)
        best = with_urls(matcher, matches[0]) if matches else None
        if threshold is not None:
            matches = [m for m in matches if m.score >= threshold - 1e-9]
        matches = [with_urls(matcher, m) for m in matches[:top_k]]  # URLs (presigned: a signature each) shown only
        took = ms + shared_ms + (time.perf_counter() - one_started) * 1000
        responses.append(SearchResponse(
            matcher.embedder.model_id, took, matches, None if best is None else best.score, query, threshold,
            verified, reranked, box, "match" if photo else "similarity", best,
            calibration.score.described if photo else "", text_read,
        ))
    return responses


def with_urls(matcher: Matcher, match: Match) -> Match:
    photo = next((p for p in match.product.photos if p.key == match.photo_key), None)
    thumbnail = photo.thumbnail_key if photo is not None else None
    return dataclasses.replace(match, image_url=matcher.url_for(match.photo_key),
                               thumbnail_url=matcher.url_for(thumbnail))


def search_images(
    matcher: Matcher, images: Sequence[tuple[bytes, str]], *, top_k: int = 10, threshold: float | None = None,
    categories: Iterable[str] | None = None, rerank: bool | None = None,
    box: Box | str | Sequence[int] | None = None,
) -> list[SearchResponse]:
    """Search with several photos at once: all are decoded first (a bad one fails the call, naming it),
    then embedded in batches by one model. `box` searches that region of every photo; `rerank` verifies the
    top candidates by keypoints (None: VPM_RERANK)."""
    threshold = matcher._resolve_threshold(threshold, "image")
    box = None if box is None else parse_box(box)
    verify = matcher.rerank_default if rerank is None else bool(rerank)
    started = time.perf_counter()
    pictures = [matcher._query_image(data, filename, box) for data, filename in images]
    if len(pictures) == 1 and matcher._batch_queries:  # one photo: batched with the other requests' photos
        vectors = np.atleast_2d(matcher._embed_one_image(pictures[0]))
    else:
        vectors = matcher.embedder.embed_images(pictures, batch_size=QUERY_BATCH)
    # Keypoints only when a list is close enough to need verifying (vpm/core/ranking.py asks for them then).
    features = [functools.partial(matcher.query_features, p) if verify else None for p in pictures]
    per_query_ms = (time.perf_counter() - started) * 1000 / max(1, len(images))
    return rank_many(
        matcher, vectors, [name for _data, name in images], top_k, threshold, categories,
        [per_query_ms] * len(images), features, verify, [box] * len(images), [text_reader(p) for p in pictures],
    )


def explain_match(
    matcher: Matcher, data: bytes, filename: str, product_id: str, photo_key: str,
    box: Box | str | Sequence[int] | None = None,
) -> tuple[bytes, int]:
    """"Why this match": the query photo (its region `box`) and the product's photo side by side, with the
    keypoint matches that one geometric transform explains drawn between them (PNG), and how many there are."""
    from vpm.core import rerank

    query = matcher._query_image(data, filename, box)
    product = matcher.catalog.get(product_id)
    photo = product.photo(photo_key)
    stored = matcher.storage.get(photo.key)
    candidate = decode_image(stored, photo.key, max_bytes=max(len(stored), 1)).image
    return rerank.draw_matches(query, candidate)


def similar(
    matcher: Matcher, product_id: str, *, top_k: int = 10, threshold: float | None = None,
    categories: Iterable[str] | None = None,
) -> SearchResponse:
    """More like this: the catalog ranked against a product's own stored vectors, every photo of it (a product
    scores by its best photo against any of them, as the catalog ranks by best photo); the product itself is
    left out. Nothing is embedded, so it works with every model, offline included. Scores are cosines."""
    if top_k < 1:
        raise InvalidRequest(f"top_k must be at least 1 (got {top_k})")
    started = time.perf_counter()
    product = matcher.catalog.get(product_id)
    matcher._embed_missing_once()
    stored = matcher.vectors.vectors_for_keys([p.key for p in product.photos])
    if not stored:
        raise InvalidRequest(f"{product.name} has no {matcher.embedder.model_id} vector yet, so there is nothing to "
                             "compare it with: run `python -m vpm index`")
    results = matcher.vectors.query(np.stack(list(stored.values())), k=top_k + 1 + SPARE_HITS, threshold=None,
                                 categories=categories)
    best: dict[str, Any] = {}
    for result in results:
        for hit in result.hits:
            if hit.product_id != product.id and (hit.product_id not in best or hit.score > best[hit.product_id].score):
                best[hit.product_id] = hit
    hits = sorted(best.values(), key=lambda hit: -hit.score)
    products = matcher.catalog.get_many([hit.product_id for hit in hits])
    wanted = {c.strip().casefold() for c in categories or () if c and c.strip()}
    matches = [Match(products[hit.product_id], hit.score, hit.photo_key, None, None, similarity=hit.score)
               for hit in hits if hit.product_id in products
               and (not wanted or products[hit.product_id].category.casefold() in wanted)
               and any(p.key == hit.photo_key for p in products[hit.product_id].photos)]
    first = with_urls(matcher, matches[0]) if matches else None
    if threshold is not None:
        matches = [m for m in matches if m.score >= threshold - 1e-9]
    took = (time.perf_counter() - started) * 1000
    return SearchResponse(matcher.embedder.model_id, took, [with_urls(matcher, m) for m in matches[:top_k]],
                          None if first is None else first.score, f"more like {product.name}", threshold,
                          best_match=first)


def text_reader(picture: Image.Image) -> Callable[[], str]:
    """Reads a decoded query photo's package text once, the first time ranking asks for it."""
    from vpm.models import package_text

    read: dict[str, str] = {}

    def reader() -> str:
        if "text" not in read:
            read["text"] = package_text.read(picture, quick=True)  # a person is waiting
        return read["text"]

    return reader


# ------------------------------------------------------------------------------------------------ words

CLIP_ONLY = "CLIP"  # "answered by", when the words index cannot answer beside CLIP (a catalog too big for it)
# Said on the Search page's Words tab when the model reads photos only: what words are looked up in instead.
WORDS_NOTE = ("this model reads photos only: words are looked up in product names, brands, descriptions, categories "
              "and package text")
NO_WORDS_MATCH = ("no product's name, brand, description, category or package text has these words (or near "
                  "spellings of them): try fewer or other words, or search with a photo")


def words_index(matcher: Matcher):
    """The catalog's words index (vpm/core/word_search.py), made on first use. Package text comes from the text table
    once it exists: a search never creates it."""
    if matcher._words is None:
        with matcher._lock:
            if matcher._words is None:
                from vpm.core.word_search import WordSearch

                matcher._words = WordSearch(
                    matcher.catalog, texts_from=lambda: matcher.texts if matcher.has_text_table() else None)
    return matcher._words


def words_note(matcher: Matcher) -> str | None:
    """The Words tab's one line when no model reads words (they are looked up in the catalog's text); None with
    CLIP."""
    return None if matcher.text_search_unavailable() is None else WORDS_NOTE


def search_text(
    matcher: Matcher, text: str, *, top_k: int = 10, threshold: float | None = None,
    categories: Iterable[str] | None = None, vector: np.ndarray | None = None, took_ms: float = 0.0,
    exclude: Iterable[str] = (),
) -> SearchResponse:
    """Search by words. With a model that reads photos only, the words index answers alone (no threshold: its
    scores rank, they are no percentage). With CLIP, CLIP's ranking (of `vector`, the words' embedding unless
    given) and the words ranking are fused (vpm.core.word_search.fuse), so a product's own name always finds it; a
    product is shown when CLIP's cosine passes `threshold` (None: the model's default) or its words matched.
    The products in `exclude` are left out."""
    from vpm.core.word_search import FUSE_DEPTH, answered_by

    if top_k < 1:
        raise InvalidRequest(f"top_k must be at least 1 (got {top_k})")
    exclude = frozenset(exclude)
    if matcher.text_search_unavailable() is not None:
        return _words_alone(matcher, text, top_k, categories, exclude)
    threshold = matcher._resolve_threshold(threshold, "text")
    if vector is None:
        started = time.perf_counter()
        vector = matcher.embed_query_text(text)  # an empty text: EmbeddingError, as before
        took_ms = (time.perf_counter() - started) * 1000
    depth = max(top_k, FUSE_DEPTH)
    clip = rank_many(matcher, np.atleast_2d(vector), [text.strip()], depth, None, categories, [took_ms], kind="text",
                     exclude=exclude)[0]
    started = time.perf_counter()
    hits = _word_hits(matcher, text, depth, categories, exclude)
    if hits is None:  # the words index cannot answer: CLIP alone, as before words search existed
        shown = [m for m in clip.results if m.score >= threshold - 1e-9][:top_k]
        return dataclasses.replace(clip, results=shown, threshold=threshold, answered_by=CLIP_ONLY)
    from vpm.core.word_search import fuse

    by_clip = {m.product.id: m for m in clip.results}
    fused = fuse(list(by_clip), hits)
    extra = _clip_scored(matcher, vector, [f.product_id for f in fused if f.product_id not in by_clip])
    matches = []
    for f in fused:
        match = by_clip.get(f.product_id) or extra.get(f.product_id)
        if match is not None:
            matches.append(dataclasses.replace(match, matched_fields=f.word.fields if f.word else ()))
    best = matches[0] if matches else None
    shown = [m for m in matches if m.matched_fields or m.score >= threshold - 1e-9][:top_k]
    took = clip.took_ms + (time.perf_counter() - started) * 1000
    return dataclasses.replace(
        clip, took_ms=took, results=[m if m.image_url else with_urls(matcher, m) for m in shown],
        best_score=None if best is None else best.score, threshold=threshold, best_match=best,
        answered_by=answered_by(True))


def _word_hits(matcher: Matcher, text: str, k: int, categories, exclude: frozenset[str]):
    """The words ranking beside CLIP's, without the excluded products; None when the words index cannot answer
    (a query with no usable word, a catalog too big for it): CLIP then answers alone."""
    from vpm.core.word_search import CatalogTooBigForWords

    try:
        hits = words_index(matcher).search(text, k + len(exclude), categories)
    except (InvalidRequest, CatalogTooBigForWords) as err:
        log.info("words search left out beside CLIP: %s", err)
        return None
    return [h for h in hits if h.product_id not in exclude]


def _clip_scored(matcher: Matcher, vector: np.ndarray, product_ids: Sequence[str]) -> dict[str, Match]:
    """Products found by words only, scored by CLIP like the rest: their best photo's cosine with the query."""
    if not product_ids:
        return {}
    products = matcher.catalog.get_many(list(product_ids))
    stored = matcher.vectors.vectors_for_keys([p.key for product in products.values() for p in product.photos])
    query = vector / max(float(np.linalg.norm(vector)), 1e-12)
    found = {}
    for product_id, product in products.items():
        cosines = [(float(np.dot(query, stored[p.key]) / max(float(np.linalg.norm(stored[p.key])), 1e-12)), p.key)
                   for p in product.photos if p.key in stored]
        if cosines:
            cosine, key = max(cosines)
            found[product_id] = Match(product, cosine, key, None, None, similarity=cosine)
    return found


def _words_alone(matcher: Matcher, text: str, top_k: int, categories, exclude: frozenset[str]) -> SearchResponse:
    from vpm.core.word_search import answered_by

    started = time.perf_counter()
    hits = [h for h in words_index(matcher).search(text, top_k + len(exclude), categories)
            if h.product_id not in exclude][:top_k]
    products = matcher.catalog.get_many([h.product_id for h in hits])
    top = hits[0].score if hits and hits[0].score > 0 else 1.0
    matches = [with_urls(matcher, Match(products[h.product_id], h.score / top, products[h.product_id].photos[0].key,
                                        None, None, matched_fields=h.fields))
               for h in hits if h.product_id in products and products[h.product_id].photos]
    took = (time.perf_counter() - started) * 1000
    first = matches[0] if matches else None
    return SearchResponse(matcher.embedder.model_id, took, matches, None if first is None else first.score,
                          text.strip(), None, score_kind="words", best_match=first, answered_by=answered_by(False))
