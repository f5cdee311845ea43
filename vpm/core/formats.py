"""The photo formats the app accepts, and the SHA-256 that names a photo's bytes.

Kept apart from vpm.core.images (which imports numpy and Pillow) so the modules that only name or hash photos (the
pages' help texts, the migration) start without them: a migration re-run is mostly interpreter start-up.
"""

from __future__ import annotations

import hashlib

# The one list of what is accepted, for messages, file pickers and the importer's folder walk.
ACCEPTED_NAMES = "JPEG, PNG, WebP, GIF, BMP, TIFF or HEIC"
ACCEPTED_EXTENSIONS = frozenset({"jpg", "jpeg", "jpe", "png", "webp", "gif", "bmp", "tif", "tiff", "heic", "heif"})


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
