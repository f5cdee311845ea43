"""Words without a text model: an in-memory full-text index over what the catalog says in words.

One document a product, in fields: its name, brand, category, description, other descriptive attributes, and the
package text read from its photos (vpm/backends/lance_text.py). Ranking is BM25F (each field weighted and length-normalised
on its own, so a long package text does not bury a name) over two kinds of term:
- words, folded (case and accents) and lightly stemmed ("apples" finds "apple"), with typo tolerance: a query word
  the catalog does not have is matched to catalog words one or two edits away ("kiwu", "tropicna");
- character 3-grams of each word, so a shortened word ("tropic"), two words run together ("oatmilk") or a misread
  word still count in proportion to the letters they share.

`Builder` takes products and texts one at a time (a caller pages through the catalog; nothing here reads it) and
`build()` packs the postings into numpy arrays: about 9 bytes a posting (see bench/bench_words.py for the measured
memory a product). `WordIndex.search` scores only the postings of the query's terms.

The order of results puts the product the query names first: one whose name has exactly the query's words (any
order, any case), then products whose name or brand holds every query word, then the rest by score.
"""

from __future__ import annotations

import functools
import itertools
import re
import unicodedata
from array import array
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vpm.core.errors import InvalidRequest

FIELDS = ("name", "brand", "category", "description", "attributes", "package text")
# How much a match in each field counts (BM25F field weights): the name says what the product is, the package text
# is read by OCR and is noisy. Chosen on the sample catalog (bench/bench_words.py prints the alternatives).
WEIGHTS = {"name": 3.0, "brand": 2.0, "category": 1.0, "description": 1.0, "attributes": 0.7, "package text": 0.5}
NAME, BRAND = 1 << FIELDS.index("name"), 1 << FIELDS.index("brand")
PACKAGE_TEXT = FIELDS.index("package text")
# Fields whose words are also indexed by their 3-grams: the short ones that say what the product is. A description
# or package text would multiply the index's size (a posting a letter) for typos the word matching finds anyway.
GRAM_FIELDS = frozenset(FIELDS.index(name) for name in ("name", "brand", "category"))
K1, B = 1.2, 0.75  # BM25's usual term saturation and length normalisation
GRAM_WEIGHT = 0.6  # a query word's 3-grams together count this much beside the word itself
FUZZY_WEIGHT = (1.0, 0.75, 0.5)  # a catalog word 0, 1 or 2 edits from the query word counts this much
MAX_NEAR = 8  # near spellings a query word may stand for
MIN_COVERAGE = 0.5  # a word with no exact or near match still matches when this share of its 3-grams is found
PACK_CHUNKS = 8  # ranges of terms packed one at a time by Builder.build
MAX_QUERY_CHARS = 500
MAX_QUERY_WORDS = 32
# Attribute keys that say where a record came from, not what the product is: never searched.
_NOT_DESCRIPTIVE = re.compile(r"licen[cs]e|source|url|link|credit|attribution|copyright|sha|hash|path|file|image|"
                              r"^id$|_id$|token|secret|password", re.IGNORECASE)
_BRAND_KEYS = {"brand", "manufacturer", "maker", "make"}
# Words that say nothing about which product: left out of "every word" and "names it", still scored (low idf).
_STOP = frozenset({"a", "an", "and", "as", "at", "by", "for", "from", "in", "of", "on", "or", "the", "to", "with",
                   "de", "la", "le", "und", "der", "die", "das", "och", "med"})
_WORD = re.compile(r"[^\W_]+")


# ------------------------------------------------------------------------------------------- words and grams


def fold(text: str) -> str:
    """Casefolded, accents removed (é -> e, ß -> ss): what a person types need not match how it is printed."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch)).casefold()


def words(text: str) -> list[str]:
    """The folded words of a text: runs of letters (any script) and digits."""
    return _WORD.findall(text.lower() if text.isascii() else fold(text))


@functools.lru_cache(maxsize=65536)  # a catalog repeats its words: each is stemmed once
def stem(word: str) -> str:
    """A light English stem: plurals and a few inflections ("apples" -> "apple", "berries" -> "berry").

    Deliberately mild: a brand or a foreign word is left alone unless it ends like an English plural, and what this
    misses, the 3-grams of the word still match."""
    if len(word) < 4 or not word.isalpha():
        return word
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith(("sses", "shes", "ches", "xes", "zes")):
        return word[:-2]
    if word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


@functools.lru_cache(maxsize=65536)
def grams(word: str) -> tuple[str, ...]:
    """Character 3-grams of a word padded by a space each side (its first and last letters count too); none for
    numbers (400 is not almost 401) or one-letter words."""
    if len(word) < 2 or not any(ch.isalpha() for ch in word):
        return ()
    padded = f" {word} "
    return tuple(padded[i:i + 3] for i in range(len(padded) - 2))


def edits_allowed(word: str) -> int:
    """How many typos a query word may carry and still match (Lucene's AUTO fuzziness): none under 3 letters, 1 up
    to 5, 2 from 6; none in numbers."""
    return 0 if len(word) < 3 or not word.isalpha() else 1 if len(word) < 6 else 2


def edit_distance(a: str, b: str, limit: int) -> int:
    """Optimal-string-alignment distance (an adjacent swap is one edit), or limit + 1 when it is over `limit`."""
    if abs(len(a) - len(b)) > limit:
        return limit + 1
    previous2: list[int] = []
    previous = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        current = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cost = a[i - 1] != b[j - 1]
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                current[j] = min(current[j], previous2[j - 2] + 1)
        if min(current) > limit:
            return limit + 1
        previous2, previous = previous, current
    return previous[-1]


def query_words(text: str) -> list[str]:
    """The distinct folded words of a query, checked: InvalidRequest says what is wrong with an unusable one."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidRequest("the words query is empty: type a product's name, brand or words on its package, "
                             "e.g. 'oat milk'")
    if len(text) > MAX_QUERY_CHARS:
        raise InvalidRequest(f"the words query is {len(text)} characters long; use at most {MAX_QUERY_CHARS} "
                             "(a product's name or a few words on it)")
    folded = list(dict.fromkeys(words(text)))
    if not folded:
        raise InvalidRequest(f"the words query {text.strip()[:40]!r} has no letters or digits to look for")
    return folded


def product_fields(product: Any) -> dict[str, str]:
    """The searchable text of a catalog product (vpm.core.catalog.Product), by field: package text comes separately."""
    brand, other = [], []
    for key, value in (product.attributes or {}).items():
        values = value if isinstance(value, list) else [value]
        texts = [str(v) for v in values if isinstance(v, (str, int, float)) and not isinstance(v, bool)]
        texts = [t for t in texts if len(t) <= 200 and "://" not in t and "/" not in t.strip("/ ")]
        if str(key).casefold() in _BRAND_KEYS:
            brand.extend(texts)
        elif not _NOT_DESCRIPTIVE.search(str(key)):
            other.extend(texts)
    return {"name": product.name, "brand": " ".join(brand), "category": product.category,
            "description": product.description or "", "attributes": " ".join(other)}


# ------------------------------------------------------------------------------------------- building


class Builder:
    """Collects products and package texts, then packs them into a WordIndex. Memory: the postings as they come
    (11 bytes each) until `build`."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.package_texts = 0  # photos whose text was added
        self._row: dict[str, int] = {}
        self._category_code: dict[str, int] = {}
        self._categories = array("i")
        self._name_words = array("H")  # distinct non-stop stems of the name (for "the query names it")
        self._terms: dict[str, int] = {}
        self._grams: dict[str, int] = {}
        # One row per (term, product, field): merged and weighted in build().
        self._t, self._d, self._f, self._tf = array("i"), array("i"), array("B"), array("H")
        self._lengths = [[array("f") for _ in FIELDS] for _ in range(2)]  # [words|grams][field][product]

    def __len__(self) -> int:
        return len(self.ids)

    def add_product(self, product: Any) -> None:
        """One catalog product (vpm.core.catalog.Product); a product seen already (pages overlapping) is skipped."""
        if product.id in self._row:
            return
        row = len(self.ids)
        self.ids.append(product.id)
        self._row[product.id] = row
        category = product.category.casefold()
        self._categories.append(self._category_code.setdefault(category, len(self._category_code)))
        for lengths in self._lengths:
            for field_lengths in lengths:
                field_lengths.append(0.0)
        fields = product_fields(product)
        name_stems = {stem(w) for w in words(fields["name"])} - _STOP
        self._name_words.append(min(len(name_stems), 65535))
        for name, text in fields.items():
            self._add_text(row, FIELDS.index(name), text)

    def add_package_text(self, product_id: str, text: str) -> None:
        """The text read on one photo of a product; a product not added (deleted since) is ignored."""
        row = self._row.get(product_id)
        if row is not None and text:
            self.package_texts += 1
            self._add_text(row, PACKAGE_TEXT, text)

    def _add_text(self, row: int, field_no: int, text: str) -> None:
        folded = words(text)
        if not folded:
            return
        stems = Counter(map(stem, folded))
        channels = [(stems, self._terms, 0)]
        if field_no in GRAM_FIELDS:
            channels.append((Counter(g for w in folded for g in grams(w)), self._grams, 1))
        for counts, vocabulary, channel in channels:
            ids = []
            for term in counts:
                tid = vocabulary.get(term)
                if tid is None:
                    tid = vocabulary[term] = len(self._terms) + len(self._grams)
                ids.append(tid)
            self._t.extend(ids)
            self._d.extend([row] * len(ids))
            self._f.extend([field_no] * len(ids))
            self._tf.extend(min(tf, 65535) for tf in counts.values())
            self._lengths[channel][field_no][row] += sum(counts.values())

    def build(self) -> WordIndex:
        """Pack the postings: one per (term, product), its BM25F weight precomputed, 9 bytes each. They are packed
        PACK_CHUNKS ranges of terms at a time, so the sort's working memory is a fraction of the whole."""
        n_terms, n = len(self._terms) + len(self._grams), max(len(self.ids), 1)
        t = np.frombuffer(self._t, dtype=np.int32)
        d = np.frombuffer(self._d, dtype=np.int32)
        f = np.frombuffer(self._f, dtype=np.uint8)
        tf = np.frombuffer(self._tf, dtype=np.uint16)
        is_gram = np.zeros(n_terms, dtype=bool)
        if self._grams:
            is_gram[np.fromiter(self._grams.values(), dtype=np.int64, count=len(self._grams))] = True
        # Each field weighted and normalised by its own average length (over the products that have the field):
        # one factor per (words|grams, field, product), looked up for every posting.
        lengths = np.array([[np.frombuffer(a, dtype=np.float32) for a in channel] for channel in self._lengths],
                           dtype=np.float32).reshape(2, len(FIELDS), len(self.ids))
        present = np.maximum((lengths > 0).sum(axis=2, keepdims=True), 1)
        average = np.maximum(lengths.sum(axis=2, keepdims=True) / present, 1e-6).astype(np.float32)
        weights = np.array([WEIGHTS[name] for name in FIELDS], dtype=np.float32).reshape(1, -1, 1)
        factor = (weights / (1 - B + B * lengths / average)).astype(np.float32).reshape(-1)
        del lengths
        # Term ranges holding about the same number of postings each.
        per_term = np.cumsum(np.bincount(t, minlength=n_terms))
        bounds = np.unique(np.r_[0, np.searchsorted(per_term, np.linspace(0, len(t), PACK_CHUNKS + 1)[1:-1]),
                                 n_terms])
        df = np.zeros(n_terms, dtype=np.int64)
        docs, scores, masks = [], [], []
        for lo, hi in itertools.pairwise(int(b) for b in bounds):
            pick = np.flatnonzero((t >= lo) & (t < hi))
            ct, cd, cf = t[pick], d[pick], f[pick]
            at = (is_gram[ct].astype(np.int64) * len(FIELDS) + cf) * len(self.ids) + cd
            weighted = tf[pick].astype(np.float32) * factor[at]
            del pick, at
            # One posting per (term, product): weighted frequencies summed, the fields kept as a bit mask.
            key = (ct - lo).astype(np.int64) * n + cd
            order = np.argsort(key, kind="stable")
            key = key[order]
            starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
            key = key[starts]
            terms = (key // n + lo).astype(np.int64)
            summed = np.add.reduceat(weighted[order], starts)
            masks.append(np.bitwise_or.reduceat(np.left_shift(np.uint8(1), cf[order]), starts).astype(np.uint8))
            df[lo:hi] = np.bincount(terms - lo, minlength=hi - lo)
            idf = np.log(1 + (n - df[terms] + 0.5) / (df[terms] + 0.5)).astype(np.float32)
            scores.append((idf * summed * np.float32(K1 + 1) / (np.float32(K1) + summed)).astype(np.float32))
            docs.append((key % n).astype(np.int32))
            del ct, cd, cf, weighted, key, order, starts, terms, summed, idf
        indptr = np.zeros(n_terms + 1, dtype=np.int64)
        np.cumsum(df, out=indptr[1:])
        docs = np.concatenate(docs) if docs else np.zeros(0, np.int32)
        score = np.concatenate(scores) if scores else np.zeros(0, np.float32)
        masks = np.concatenate(masks) if masks else np.zeros(0, np.uint8)
        categories = [""] * len(self._category_code)
        for name, code in self._category_code.items():
            categories[code] = name
        return WordIndex(
            ids=self.ids, terms=self._terms, grams=self._grams, indptr=indptr, docs=docs,
            scores=score, masks=masks,
            categories=np.array(self._categories, dtype=np.int32), category_names=categories,
            name_words=np.array(self._name_words, dtype=np.uint16), package_texts=self.package_texts,
        )


# ------------------------------------------------------------------------------------------- searching


@dataclass(frozen=True)
class WordHit:
    """One product found by words. `score` is BM25F: higher is better, comparable within one query only."""

    product_id: str
    score: float
    fields: tuple[str, ...]  # where the query's words (or near spellings of them) were found, in FIELDS order
    names_it: bool  # the product's name is the query's words (any order, any case, plurals aside)
    every_word: bool  # every query word is in its name or brand as typed (plurals aside), not a near spelling


@dataclass(frozen=True)
class _QueryWord:
    stem: str
    terms: tuple[tuple[int, float], ...]  # (term id, weight): the word itself or its near spellings
    exact: int | None  # term id of the word as typed, when the catalog has it
    grams: tuple[int, ...]  # gram term ids the catalog has
    all_grams: int  # how many 3-grams the word has


@dataclass
class WordIndex:
    ids: list[str]
    terms: dict[str, int]
    grams: dict[str, int]
    indptr: np.ndarray  # postings of term t: [indptr[t], indptr[t + 1])
    docs: np.ndarray  # int32 product rows, ascending within a term
    scores: np.ndarray  # float32 BM25F contribution of the term to the product
    masks: np.ndarray  # uint8 bit mask of the FIELDS the term is in
    categories: np.ndarray  # int32 category code of each product
    category_names: list[str]  # casefolded, by code
    name_words: np.ndarray  # uint16 distinct non-stop stems in each name
    package_texts: int = 0  # photos whose package text is in the index
    _by_letter: dict[tuple[str, int], list[str]] | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.ids)

    def nbytes(self) -> int:
        """The arrays' size in bytes (the vocabularies and ids are Python objects beside them)."""
        arrays = (self.indptr, self.docs, self.scores, self.masks, self.categories, self.name_words)
        return sum(a.nbytes for a in arrays)

    def _near(self, word: str) -> list[tuple[int, int]]:
        """(term id, edits) of catalog words within the word's typo allowance, nearest first. Candidates share the
        word's first or last letter and are within its allowance in length, then are checked by edit distance."""
        limit = edits_allowed(word)
        if limit == 0:
            return []
        buckets = self._buckets()
        near: dict[str, int] = {}
        for length in range(len(word) - limit, len(word) + limit + 1):
            for candidate in (*buckets.get((word[0], length), ()), *buckets.get((word[-1], -length), ())):
                if candidate not in near:
                    distance = edit_distance(word, candidate, limit)
                    if distance <= limit:
                        near[candidate] = distance
        # Nearest first, then the commonest (the likelier meant): a short typo near many words takes the few best.
        found = sorted(((self.terms[w], d) for w, d in near.items()),
                       key=lambda td: (td[1], -int(self.indptr[td[0] + 1] - self.indptr[td[0]]), td[0]))
        return found[:MAX_NEAR]

    def _buckets(self) -> dict[tuple[str, int], list[str]]:
        """Catalog words by (first letter, length) and by (last letter, -length): made on the first typo."""
        if self._by_letter is None:
            buckets: dict[tuple[str, int], list[str]] = {}
            for term in self.terms:
                if term.isalpha() and len(term) >= 3:
                    buckets.setdefault((term[0], len(term)), []).append(term)
                    buckets.setdefault((term[-1], -len(term)), []).append(term)
            self._by_letter = buckets
        return self._by_letter

    def _query(self, text: str) -> list[_QueryWord]:
        folded = query_words(text)
        out, seen = [], set()
        for word in folded[:MAX_QUERY_WORDS]:
            root = stem(word)
            if root in seen:  # "apple apples" is one word
                continue
            seen.add(root)
            exact = self.terms.get(root)
            terms = [(exact, FUZZY_WEIGHT[0])] if exact is not None else [
                (tid, FUZZY_WEIGHT[distance]) for tid, distance in self._near(root)]
            word_grams = grams(word)
            found = tuple(gid for gid in dict.fromkeys(self.grams.get(g) for g in word_grams) if gid is not None)
            out.append(_QueryWord(root, tuple(terms), exact, found, len(set(word_grams))))
        return out

    def _postings(self, term: int) -> slice:
        return slice(int(self.indptr[term]), int(self.indptr[term + 1]))

    def search(self, text: str, k: int = 10, categories: Iterable[str] | None = None) -> list[WordHit]:
        """The `k` products that best match the words, best first; only products matching at least one query word
        (as typed, near it, or by most of its letters). `categories` keeps those of any of these categories."""
        if k < 1:
            raise InvalidRequest(f"k must be at least 1 (got {k})")
        query = self._query(text)
        n = len(self.ids)
        if n == 0:
            return []
        score = np.zeros(n, dtype=np.float32)
        matched_words = np.zeros(n, dtype=np.int32)
        in_name_or_brand = np.zeros(n, dtype=np.int32)
        in_name = np.zeros(n, dtype=np.int32)
        for word in query:
            matched = np.zeros(n, dtype=bool)
            for tid, weight in word.terms:
                at = self._postings(tid)
                score[self.docs[at]] += weight * self.scores[at]
                matched[self.docs[at]] = True
            if word.grams:
                share = np.zeros(n, dtype=np.float32)
                gram_weight = GRAM_WEIGHT / word.all_grams
                for gid in word.grams:
                    at = self._postings(gid)
                    score[self.docs[at]] += gram_weight * self.scores[at]
                    share[self.docs[at]] += 1.0 / word.all_grams
                matched |= share >= MIN_COVERAGE
            matched_words += matched
            if word.stem not in _STOP and word.exact is not None:
                at = self._postings(word.exact)
                docs, masks = self.docs[at], self.masks[at]
                in_name_or_brand[docs[(masks & (NAME | BRAND)) > 0]] += 1
                in_name[docs[(masks & NAME) > 0]] += 1
        needed = sum(1 for word in query if word.stem not in _STOP)
        every = (in_name_or_brand == needed) & (needed > 0)
        names_it = (in_name == needed) & (self.name_words == needed) & (needed > 0)
        candidates = np.flatnonzero(matched_words > 0)
        wanted = {c.strip().casefold() for c in categories or () if c and c.strip()}
        if wanted:
            codes = [code for code, name in enumerate(self.category_names) if name in wanted]
            candidates = candidates[np.isin(self.categories[candidates], codes)]
        if not len(candidates):
            return []
        # Named first, then every word in the name or brand, then by score; ties by catalog order, so a run repeats.
        key = score[candidates].astype(np.float64) + 1e9 * every[candidates] + 2e9 * names_it[candidates]
        top = candidates[np.lexsort((candidates, -key))[:k]]
        return [WordHit(self.ids[row], float(score[row]), self._fields(row, query), bool(names_it[row]),
                        bool(every[row])) for row in top]

    def _fields(self, row: int, query: Sequence[_QueryWord]) -> tuple[str, ...]:
        """Which fields of one product the query matched: where its words (or near spellings) are, else where
        most of a word's 3-grams are."""
        mask = 0
        for word in query:
            word_mask = 0
            for tid, _weight in word.terms:
                word_mask |= self._mask_of(tid, row)
            if not word_mask and word.grams:
                per_field = Counter()
                for gid in word.grams:
                    bits = self._mask_of(gid, row)
                    per_field.update(i for i in range(len(FIELDS)) if bits & (1 << i))
                for i, count in per_field.items():
                    if count / word.all_grams >= MIN_COVERAGE:
                        word_mask |= 1 << i
            mask |= word_mask
        return tuple(name for i, name in enumerate(FIELDS) if mask & (1 << i))

    def _mask_of(self, term: int, row: int) -> int:
        at = self._postings(term)
        docs = self.docs[at]
        i = int(np.searchsorted(docs, row))
        return int(self.masks[at][i]) if i < len(docs) and docs[i] == row else 0


def build(products: Iterable[Any], package_texts: Iterable[tuple[str, str]] = ()) -> WordIndex:
    """A WordIndex of these products and (product id, text) pairs, for tests and benches; a catalog is indexed by
    vpm/core/word_search.py a page at a time."""
    builder = Builder()
    for product in products:
        builder.add_product(product)
    for product_id, text in package_texts:
        builder.add_package_text(product_id, text)
    return builder.build()

