"""A product photo from upload to storage: its keys, its files, and the cleanup when an add does not land.

Every upload gets keys no other writer can produce (the product id plus a random token) and its objects are
created with if-none-match, so the keys a writer wrote are exactly the objects it created, and those are the
only ones it ever deletes (a writer that loses a race for an id never touches the winner's files).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

from vpm.core.catalog import Photo
from vpm.core.images import DecodedImage, make_thumbnail
from vpm.core.storage import Storage, StorageError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreparedPhoto:
    """A decoded upload and the catalog photo it will become (nothing written yet)."""

    image: DecodedImage
    photo: Photo
    thumbnail: bytes | None = None  # its WebP thumbnail when already made (an import makes it ahead, off-thread)


def new_upload_token() -> str:
    return uuid.uuid4().hex[:12]


def prepare(image: DecodedImage, product_id: str, image_prefix: str, thumbnail_prefix: str,
            thumbnail: bytes | None = None) -> PreparedPhoto:
    token = new_upload_token()
    photo = Photo(
        key=f"{image_prefix}{product_id}-{token}.{image.extension}",
        thumbnail_key=f"{thumbnail_prefix}{product_id}-{token}.webp",
        sha256=image.sha256,
        width=image.width,
        height=image.height,
    )
    return PreparedPhoto(image, photo, thumbnail)


def store(storage: Storage, prepared: PreparedPhoto, written: list[str]) -> None:
    """Write the original, then its thumbnail; each key is appended to `written` once it exists, so a caller
    cleaning up after a failure removes exactly what this call created."""
    image, photo = prepared.image, prepared.photo
    storage.put(photo.key, image.data, image.content_type, metadata={"sha256": image.sha256}, if_none_match=True)
    written.append(photo.key)
    if photo.thumbnail_key:
        thumbnail = prepared.thumbnail if prepared.thumbnail is not None else make_thumbnail(image.image)
        storage.put(photo.thumbnail_key, thumbnail, "image/webp", if_none_match=True)
        written.append(photo.thumbnail_key)


def discard(storage: Storage, keys: Iterable[str], why: str = "after a failed add") -> None:
    """Delete objects this process created; a failure is logged (the consistency check lists leftovers)."""
    for key in keys:
        try:
            storage.delete(key)
        except StorageError as err:
            log.warning("could not remove %s %s: %s", key, why, err)
