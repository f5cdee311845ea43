"""The embedding cache and the exact cosine search over it.

Vectors are keyed by (model id, image SHA-256) and stored beside the catalog, so a restart, a second replica
or a new machine pointed at the same bucket never re-embeds what is already there:

    <embeddings_prefix><model-id>/<time-ns>-<random>.npz     e.g. metadata/embeddings/clip-ViT-B-32/...npz

Each write adds a new, uniquely named *segment* (written with if-none-match) holding only the new vectors, so two
writers never overwrite each other's vectors and nothing has to be merged on a conflict. Readers list the folder
and load the segments they have not seen yet. When segments pile up they are *compacted*: one segment with every
vector is written first, then the segments it replaces are deleted (only those, so a segment written meanwhile
survives). Two compactions at once leave harmless duplicates that the next one merges.

The cache is derived data and never trusted blindly: a segment that does not parse, is truncated, was written for
another model or dimension, or holds non-unit vectors is skipped with a WARNING; the products it covered are
re-embedded and the bad segment is removed at the next compaction. A folder per model means vectors of two models
are never mixed in one search.

Vectors of deleted products stay until `prune` (python -m vpm index) drops them: a search only ranks products in
the catalog, so they are never returned, and pruning on every delete would race with concurrent adds (whose
vector is written before their metadata). If a prune does race an add, that product is re-embedded on the next
search.
"""

from __future__ import annotations

import io
import logging
import re
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from .storage import ObjectNotFound, PreconditionFailed, Storage, StorageError

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
# Segments this process could not save (read-only storage) are kept under keys no listing returns.
_MEMORY_ONLY = "memory-only:"
# More segments than this and the next write compacts them into one.
MAX_SEGMENTS = 32
_NORM_TOLERANCE = 1e-3


class CorruptSegment(ValueError):
    """A cache segment that cannot be trusted; the message says why."""


@dataclass(frozen=True)
class Segment:
    key: str
    shas: list[str]
    vectors: np.ndarray  # (n, dim) float32, unit rows


def cache_prefix(embeddings_prefix: str, model_id: str) -> str:
    """The folder holding one model's vectors."""
    if not re.fullmatch(r"[A-Za-z0-9._-]+", model_id) or model_id in (".", ".."):
        raise ValueError(f"model id {model_id!r} cannot name a cache folder")
    return f"{embeddings_prefix}{model_id}/"


def encode_segment(model_id: str, dim: int, shas: Sequence[str], vectors: np.ndarray) -> bytes:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.shape != (len(shas), dim):
        raise ValueError(f"expected {len(shas)} vectors of {dim} values, got shape {vectors.shape}")
    buffer = io.BytesIO()
    np.savez(
        buffer,
        format=np.array(FORMAT_VERSION),
        model_id=np.array(model_id),
        dim=np.array(dim),
        sha256=np.array(list(shas), dtype="S64"),
        vectors=vectors,
    )
    return buffer.getvalue()


def decode_segment(data: bytes, key: str, model_id: str, dim: int | None) -> Segment:
    """Parse and check a segment; raise CorruptSegment saying what is wrong. dim=None accepts any dimension."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            fields = {name: npz[name] for name in ("format", "model_id", "dim", "sha256", "vectors")}
    except KeyError as err:
        raise CorruptSegment(f"{key} lacks the field {err}") from None
    except Exception as err:  # BadZipFile, EOFError, ValueError, OSError...: a truncated or foreign file
        raise CorruptSegment(f"{key} is not a readable vector file ({type(err).__name__}: {err})") from None
    if fields["format"].shape != () or int(fields["format"]) != FORMAT_VERSION:
        raise CorruptSegment(f"{key} has format {fields['format']!r}, expected {FORMAT_VERSION}")
    if str(fields["model_id"]) != model_id:
        raise CorruptSegment(f"{key} holds vectors of model {str(fields['model_id'])!r}, not {model_id!r}")
    vectors = fields["vectors"]
    if vectors.dtype != np.float32 or vectors.ndim != 2:
        raise CorruptSegment(f"{key} holds {vectors.dtype} values of shape {vectors.shape}, not a float32 matrix")
    if dim is not None and (vectors.shape[1] != dim or int(fields["dim"]) != dim):
        raise CorruptSegment(f"{key} holds {vectors.shape[1]}-d vectors; the model makes {dim}-d ones")
    raw_shas = fields["sha256"]
    if raw_shas.ndim != 1 or raw_shas.shape[0] != vectors.shape[0]:
        raise CorruptSegment(f"{key} has {raw_shas.shape} keys for {vectors.shape[0]} vectors")
    if len(raw_shas) and (raw_shas.dtype != np.dtype("S64") or not _all_hex(raw_shas)):
        raise CorruptSegment(f"{key} has keys that are not SHA-256 hex digests")
    shas = [s.decode("ascii") for s in raw_shas.tolist()]
    if len(shas) and not np.isfinite(vectors).all():
        raise CorruptSegment(f"{key} holds NaN or infinite values")
    norms = np.linalg.norm(vectors, axis=1)
    if len(shas) and np.abs(norms - 1.0).max() > _NORM_TOLERANCE:
        raise CorruptSegment(f"{key} holds vectors that are not unit length")
    return Segment(key, shas, vectors)


def _all_hex(raw_shas: np.ndarray) -> bool:
    """Every key is 64 lowercase hex characters (checked on the bytes at once: 1M keys in a few ms)."""
    chars = np.frombuffer(raw_shas.tobytes(), dtype=np.uint8)
    return bool((((chars >= 48) & (chars <= 57)) | ((chars >= 97) & (chars <= 102))).all())


def _new_segment_key(prefix: str) -> str:
    # Time first so names sort oldest to newest; the random part keeps two writers apart.
    return f"{prefix}{time.time_ns():020d}-{uuid.uuid4().hex[:12]}.npz"


class VectorCache:
    """One model's persisted vectors, with an in-memory copy. Thread-safe."""

    def __init__(self, storage: Storage, embeddings_prefix: str, model_id: str, dim: int):
        self.storage = storage
        self.model_id = model_id
        self.dim = dim
        self.prefix = cache_prefix(embeddings_prefix, model_id)
        self._segments: dict[str, Segment] = {}  # key -> segment, loaded and valid
        self.corrupt: dict[str, str] = {}  # key -> why it was not trusted
        self._where: dict[str, tuple[str, int]] = {}  # sha -> (segment key, row); later segments win
        self._lock = threading.RLock()

    # ------------------------------------------------------------------------------------------ reading

    def refresh(self) -> int:
        """Pick up segments written (or compacted away) by others; return how many new ones were loaded."""
        with self._lock:
            listed = sorted(info.key for info in self.storage.iter_objects(self.prefix) if info.key.endswith(".npz"))
            listed_set = set(listed)
            gone = [k for k in self._segments if k not in listed_set and not k.startswith(_MEMORY_ONLY)]
            for key in gone:
                del self._segments[key]
            for key in [k for k in self.corrupt if k not in listed_set]:
                del self.corrupt[key]
            loaded = 0
            for key in listed:
                if key in self._segments or key in self.corrupt:
                    continue  # segments are immutable: a key seen once need not be read again
                try:
                    data = self.storage.get(key)
                except ObjectNotFound:  # compacted away between list and get
                    continue
                try:
                    self._segments[key] = decode_segment(data, key, self.model_id, self.dim)
                    loaded += 1
                except CorruptSegment as err:
                    self.corrupt[key] = str(err)
                    log.warning("embedding cache: ignoring %s; its products will be re-embedded", err)
            if loaded or gone:
                self._reindex()
            return loaded

    def _reindex(self) -> None:
        where: dict[str, tuple[str, int]] = {}
        for key in sorted(self._segments):
            for row, sha in enumerate(self._segments[key].shas):
                where[sha] = (key, row)
        self._where = where

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, sha: object) -> bool:
        return sha in self._where

    def shas(self) -> set[str]:
        return set(self._where)

    @property
    def segment_count(self) -> int:
        return len(self._segments)

    def get(self, shas: Sequence[str]) -> np.ndarray:
        """The vectors of `shas` (all must be cached), as one (n, dim) matrix in that order."""
        with self._lock:
            if not shas:
                return np.empty((0, self.dim), dtype=np.float32)
            where = self._where
            locations = [where[sha] for sha in shas]
            rows = np.fromiter((row for _key, row in locations), dtype=np.int64, count=len(locations))
            keys = sorted({key for key, _row in locations})
            if len(keys) == 1:  # the usual case after a compaction: one fancy-index, no grouping
                return self._segments[keys[0]].vectors[rows]
            number = {key: i for i, key in enumerate(keys)}
            owner = np.fromiter((number[key] for key, _row in locations), dtype=np.int32, count=len(locations))
            out = np.empty((len(shas), self.dim), dtype=np.float32)
            for key, i in number.items():
                mask = owner == i
                out[mask] = self._segments[key].vectors[rows[mask]]
            return out

    # ------------------------------------------------------------------------------------------ writing

    def add(
        self, shas: Sequence[str], vectors: np.ndarray, *, replace: bool = False, best_effort: bool = False
    ) -> str | None:
        """Persist vectors as one segment (before any metadata points at them); return its key.

        Vectors already cached are skipped unless `replace` (a rebuild): the new segment then overrides them.
        With `best_effort` (a search filling gaps), a failed write is logged and the vectors are kept in memory
        only, so a read-only bucket still searches.
        """
        with self._lock:
            pairs = {sha: i for i, sha in enumerate(shas) if replace or sha not in self._where}
            if not pairs:
                return None
            new_shas = list(pairs)
            new_vectors = np.asarray(vectors, dtype=np.float32)[list(pairs.values())]
            try:
                key = self._write(new_shas, new_vectors)
            except StorageError as err:
                if not best_effort:
                    raise
                log.warning("embedding cache %s: could not save %d vectors (%s); kept in memory only",
                            self.prefix, len(new_shas), err)
                key = f"{_MEMORY_ONLY}{uuid.uuid4().hex}"
                self._segments[key] = Segment(key, new_shas, new_vectors)
                for row, sha in enumerate(new_shas):
                    self._where[sha] = (key, row)
                return None
            self._segments[key] = Segment(key, new_shas, new_vectors)
            for row, sha in enumerate(new_shas):
                self._where[sha] = (key, row)
            if len(self._segments) + len(self.corrupt) > MAX_SEGMENTS:
                self.compact()
            return key

    def _write(self, shas: Sequence[str], vectors: np.ndarray) -> str:
        body = encode_segment(self.model_id, self.dim, shas, vectors)
        for _ in range(5):
            key = _new_segment_key(self.prefix)
            try:
                self.storage.put(key, body, "application/octet-stream", if_none_match=True)
                return key
            except PreconditionFailed:  # a name clash is astronomically unlikely; pick another name
                continue
        raise PreconditionFailed(f"could not find a free segment name under {self.prefix}")

    def compact(self, keep: Iterable[str] | None = None) -> int:
        """Rewrite every segment as one (only the vectors in `keep`, when given); drop corrupt segments.

        Returns how many vectors were pruned. The new segment is written before any old one is deleted.
        """
        with self._lock:
            self.refresh()
            old_keys = sorted(k for k in self._segments if not k.startswith(_MEMORY_ONLY)) + sorted(self.corrupt)
            shas = sorted(self._where)
            if keep is not None:
                wanted = set(keep)
                shas = [s for s in shas if s in wanted]
            pruned = len(self._where) - len(shas)
            if len(old_keys) <= 1 and not pruned and not self.corrupt:
                return 0
            vectors = self.get(shas)
            new_key = self._write(shas, vectors) if shas else None
            for key in old_keys:
                self.storage.delete(key)
            self._segments = {new_key: Segment(new_key, shas, vectors)} if new_key else {}
            self.corrupt = {}
            self._reindex()
            if pruned:
                log.info("embedding cache %s: pruned %d vectors of deleted products", self.prefix, pruned)
            return pruned


def cached_sha256s(storage: Storage, settings, model_id: str) -> set[str] | None:
    """The image SHA-256s with a valid vector for `model_id`, without loading any model; None when no cache.

    The dimension is not known without the model, so any dimension is accepted here (but each segment must be
    self-consistent). For reports only: a search checks the dimension too.
    """
    prefix = cache_prefix(settings.embeddings_prefix, model_id)
    keys = sorted(info.key for info in storage.iter_objects(prefix) if info.key.endswith(".npz"))
    if not keys:
        return None
    found: set[str] = set()
    for key in keys:
        try:
            found.update(decode_segment(storage.get(key), key, model_id, None).shas)
        except (CorruptSegment, ObjectNotFound):
            continue
    return found


# --------------------------------------------------------------------------------------------------- search


@dataclass(frozen=True)
class Hit:
    row: int
    score: float


@dataclass
class SearchIndex:
    """Exact cosine top-k over unit vectors, one row a product. Categories are matched case-insensitively."""

    vectors: np.ndarray  # (n, dim) float32, unit rows
    categories: Sequence[str]
    _codes: np.ndarray = field(init=False, repr=False)
    _code_of: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.vectors = np.ascontiguousarray(self.vectors, dtype=np.float32)
        if self.vectors.ndim != 2 or self.vectors.shape[0] != len(self.categories):
            raise ValueError(f"{len(self.categories)} categories for a matrix of shape {self.vectors.shape}")
        self._code_of = {}
        codes = [self._code_of.setdefault(c.casefold(), len(self._code_of)) for c in self.categories]
        self._codes = np.asarray(codes, dtype=np.int32)

    def __len__(self) -> int:
        return self.vectors.shape[0]

    @property
    def dim(self) -> int:
        return self.vectors.shape[1]

    def category_mask(self, categories: Iterable[str] | None) -> np.ndarray | None:
        """Rows whose category is one of `categories`; None means every row."""
        wanted = {c.casefold() for c in categories or () if c and c.strip()}
        if not wanted:
            return None
        codes = [self._code_of[c] for c in wanted if c in self._code_of]
        return np.isin(self._codes, codes)

    def search(
        self,
        queries: np.ndarray,
        *,
        top_k: int = 10,
        threshold: float | None = None,
        categories: Iterable[str] | None = None,
    ) -> list[tuple[list[Hit], float | None]]:
        """For each query row: hits (best first, score >= threshold, at most top_k) and the best score
        among the allowed categories regardless of the threshold (None when no product is allowed)."""
        queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        if queries.shape[1] != self.dim:
            raise ValueError(f"query vectors have {queries.shape[1]} values; the index holds {self.dim}-d vectors")
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1 (got {top_k})")
        mask = self.category_mask(categories)
        rows = np.arange(len(self)) if mask is None else np.flatnonzero(mask)
        if len(rows) == 0:
            return [([], None) for _ in range(len(queries))]
        scores = queries @ self.vectors.T  # (q, n): cosine, as every row is unit length; rows contiguous
        if mask is not None:
            scores = scores[:, rows]
        k = min(top_k, len(rows))
        out = []
        for j in range(queries.shape[0]):
            column = scores[j]
            top = np.argpartition(-column, k - 1)[:k] if k < len(rows) else np.arange(len(rows))
            top = top[np.argsort(-column[top], kind="stable")]
            best = float(column[top[0]])
            hits = [
                Hit(int(rows[i]), float(column[i]))
                for i in top
                if threshold is None or column[i] >= threshold
            ]
            out.append((hits, best))
        return out
