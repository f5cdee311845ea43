"""A new photo's derived data (its vector, keypoints and package text), written with it and removed with it.

Derived data is made from the pixels alone, so it is written before the product row that points at its photo
(an add one writes the photos' files, then this, then the row) and a failure to make or store the keypoints or
the text never fails an add: `vpm index` fills them in later. What a write that did not land made is removed again;
removing derived data only ever logs a failure (the next `vpm index` tidies up). A photo whose bytes the catalog
already holds is refused before anything is written, unless added on purpose.

The functions take the stores they write; `DerivedStores` is what the facade hands over, each store opened on first
use (keypoints and text tables that were never made are not made by a discard).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from vpm.backends.lance_features import PhotoFeatures  # row types; the stores themselves come from vpm.core.wiring
from vpm.backends.lance_text import PhotoText
from vpm.core import photos
from vpm.core.catalog import CatalogError, CatalogStore, Product
from vpm.core.storage import Storage, StorageError
from vpm.core.vector_index import PhotoVector, VectorIndex

if TYPE_CHECKING:
    from vpm.core.images import DecodedImage
    from vpm.models.embedder_base import Embedder

log = logging.getLogger(__name__)

BATCH_SIZE = 32  # photos embedded in one model call
# Several products' new photos: each product with the photos prepared for it (vpm/core/photos.py).
Batch = list[tuple[Product, list[photos.PreparedPhoto]]]


class DuplicatePhoto(CatalogError):
    """A photo whose bytes are already a photo of a product in the catalog (add it anyway on purpose only)."""


class DerivedStores(Protocol):
    """Where a photo's derived data goes: the active model's vectors (made by `embedder`), the keypoints and the
    package text (read while `package_text_default`). The `has_*` questions say whether those two tables exist."""

    @property
    def vectors(self) -> VectorIndex: ...

    @property
    def embedder(self) -> Embedder: ...

    @property
    def features(self) -> Any: ...

    @property
    def texts(self) -> Any: ...

    @property
    def package_text_default(self) -> bool: ...

    def has_features_table(self) -> bool: ...

    def has_text_table(self) -> bool: ...


def refuse_duplicates(catalog: CatalogStore, decoded: list[DecodedImage], filenames: list[str]) -> None:
    """A photo already in the catalog (or twice in this request) is named, not silently added again."""
    seen: dict[str, str] = {}
    for image, filename in zip(decoded, filenames, strict=True):
        if image.sha256 in seen:
            raise DuplicatePhoto(f"{filename} and {seen[image.sha256]} are the same photo: choose it once")
        seen[image.sha256] = filename
    owners = catalog.owners_of(seen)
    if owners:
        sha, owner_id = next(iter(owners.items()))
        owner = catalog.get_many([owner_id]).get(owner_id)
        what = f"{owner.name} ({owner_id})" if owner else owner_id
        raise DuplicatePhoto(
            f"{seen[sha]} is already in the catalog: it is a photo of {what}. Add it anyway only if it really "
            "shows another product"
        )


def write_photos_then(
    storage: Storage, stores: DerivedStores, product: Product, prepared: list[photos.PreparedPhoto],
    commit: Callable[[], None],
) -> None:
    """Files, then vectors, keypoints and text, then `commit` (the row). If any step fails, remove what this call
    wrote."""
    written: list[str] = []
    derived: list[str] = []
    try:
        for item in prepared:
            photos.store(storage, item, written)
        store_derived(stores, [(product, prepared)], derived)
        commit()
    except BaseException:
        discard_derived(stores, derived, product.id)
        photos.discard(storage, written)
        raise


def store_derived(stores: DerivedStores, batch: Batch, written: list[str]) -> None:
    """The vectors, then the keypoints, then the package text of several products' new photos; the photo keys are
    appended to `written` before the first of them is stored, so a caller cleaning up removes exactly those."""
    from vpm.models import package_text

    written.extend(p.photo.key for _product, prepared in batch for p in prepared)
    store_vectors(stores.vectors, stores.embedder, batch)
    store_features(stores.features, batch)
    # Nothing is read while VPM_PACKAGE_TEXT is off or OCR is unavailable (`vpm index` reads them later).
    if stores.package_text_default and package_text.available():
        store_texts(stores.texts, batch)


def discard_derived(stores: DerivedStores, photo_keys: Sequence[str], whom: str) -> None:
    """Remove the vectors, keypoints and package text of photos whose product row never landed."""
    keys = list(photo_keys)
    if not keys:
        return
    quietly(lambda: stores.vectors.delete_photos(keys), "remove the vectors of", whom)
    if stores.has_features_table():
        quietly(lambda: stores.features.delete_photos(keys), "remove the keypoints of", whom)
    if stores.has_text_table():
        quietly(lambda: stores.texts.delete_photos(keys), "remove the package text of", whom)


def quietly(operation: Callable[[], Any], what: str, whom: str) -> None:
    """Derived data: a failure is logged (the next `vpm index` tidies up), never the reason a change fails."""
    try:
        operation()
    except (StorageError, CatalogError) as err:
        log.warning("could not %s %s: %s", what, whom, err)


def store_vectors(index: VectorIndex, embedder: Embedder, batch: Batch) -> list[str]:
    """Embed the photos of several products in one call (reusing a vector this model made for the same bytes),
    store them, and return the photo keys written."""
    every = [p for _product, prepared in batch for p in prepared]
    known = index.vectors_for_shas({p.photo.sha256 for p in every})
    fresh = list({p.photo.sha256: p for p in every if p.photo.sha256 not in known}.values())
    if fresh:
        vectors = embedder.embed_images([p.image.image for p in fresh], batch_size=BATCH_SIZE)
        known.update({p.photo.sha256: v for p, v in zip(fresh, vectors, strict=True)})
    entries = [
        PhotoVector(p.photo.key, product.id, p.photo.sha256, product.category, known[p.photo.sha256])
        for product, prepared in batch
        for p in prepared
    ]
    index.upsert(entries)
    return [e.photo_key for e in entries]


def store_features(features: Any, batch: Batch) -> list[str]:
    """Compute (or reuse, for bytes seen before) and store the keypoints of these photos; returns their keys.

    A photo whose keypoints cannot be computed is logged and stored without them: it is then simply not
    verified (`vpm index` tries again)."""
    from vpm.core import rerank

    every = [p for _product, prepared in batch for p in prepared]
    if not every:
        return []
    try:
        known = features.features_for_shas({p.photo.sha256 for p in every})
    except StorageError as err:  # derived data: an add never fails for want of keypoints
        log.warning("could not read the keypoints table (%s): these photos get theirs from `vpm index`", err)
        return []
    for item in {p.photo.sha256: p for p in every if p.photo.sha256 not in known}.values():
        try:
            known[item.photo.sha256] = rerank.extract(item.image.image)
        except Exception as err:  # noqa: BLE001 - derived data: never the reason an add fails
            log.warning("no keypoints for %s: %s", item.photo.key, err)
    entries = [
        PhotoFeatures(p.photo.key, product.id, p.photo.sha256, known[p.photo.sha256])
        for product, prepared in batch for p in prepared if p.photo.sha256 in known
    ]
    try:
        features.upsert(entries)
    except StorageError as err:  # derived data: the photos are searched unverified until `vpm index` runs
        log.warning("could not store the keypoints of %d photos (%s): `vpm index` fills them in", len(entries), err)
        return []
    return [e.photo_key for e in entries]


def store_texts(texts: Any, batch: Batch) -> list[str]:
    """Read (or reuse, for bytes read before) and store the package text of these photos; returns their keys."""
    from vpm.models import package_text

    every = [p for _product, prepared in batch for p in prepared]
    if not every:
        return []
    try:
        known = texts.texts_for_shas({p.photo.sha256 for p in every})
    except StorageError as err:  # derived data: an add never fails for want of text
        log.warning("could not read the package text table (%s): these photos get theirs from `vpm index`", err)
        return []
    for item in {p.photo.sha256: p for p in every if p.photo.sha256 not in known}.values():
        known[item.photo.sha256] = package_text.read(item.image.image)
    entries = [PhotoText(p.photo.key, product.id, p.photo.sha256, known[p.photo.sha256])
               for product, prepared in batch for p in prepared]
    try:
        texts.upsert(entries)
    except StorageError as err:
        log.warning("could not store the package text of %d photos (%s): `vpm index` fills it in",
                    len(entries), err)
        return []
    return [e.photo_key for e in entries]
