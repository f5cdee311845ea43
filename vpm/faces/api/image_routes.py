"""GET /api/images/{key}: the photo files of the local backend (its `url`s point here).

Only photos and thumbnails are served: never the catalog tables, products.json or anything else in storage.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import Response

from vpm.core.config import Settings
from vpm.core.images import SUPPORTED_FORMATS
from vpm.core.storage import InvalidKey, ObjectNotFound, validate_key
from vpm.faces.api.deps import MatcherDep, SettingsDep, require_api_key
from vpm.faces.api.errors import ApiError

router = APIRouter(prefix="/api", tags=["images"], dependencies=[Depends(require_api_key)])

# Extension -> content type for the files served here (originals and .webp thumbnails).
IMAGE_TYPES: dict[str, str] = dict(SUPPORTED_FORMATS.values())
IMAGE_TYPES.update({"jpeg": "image/jpeg", "tif": "image/tiff", "heif": "image/heif"})


@router.get(
    "/images/{key:path}", response_class=Response,
    summary="a product photo or thumbnail (the local backend's image URLs point here)",
)
def get_image(key: str, matcher: MatcherDep, settings: SettingsDep) -> Response:
    try:
        validate_key(key)  # no '..', no leading '/', no backslash, no control characters
    except InvalidKey as err:
        raise ApiError(400, str(err)) from None
    content_type = servable_type(key, settings)
    if content_type is None:
        raise ApiError(404, f"no image at {key!r}")
    try:
        data = matcher.files.read(key)
    except ObjectNotFound:
        raise ApiError(404, f"no image at {key!r}") from None
    return Response(
        data, media_type=content_type,
        headers={"Cache-Control": "private, max-age=3600", "X-Content-Type-Options": "nosniff"},
    )


def servable_type(key: str, settings: Settings) -> str | None:
    """The content type of `key` when it is a photo or thumbnail this API may serve, else None."""
    name = key.rpartition("/")[2]
    extension = name.rpartition(".")[2].lower() if "." in name else ""
    prefixes = tuple(p for p in (settings.s3_image_prefix, settings.s3_thumbnail_prefix) if p)
    under_prefix = key.startswith(prefixes) if prefixes else "/" not in key
    in_metadata = bool(settings.metadata_prefix) and key.startswith(settings.metadata_prefix)
    # A table's files end in .lance, .manifest, .txn; a folder named *.lance is a table wherever it sits.
    in_a_table = any(part.endswith(".lance") for part in key.split("/")[:-1])
    if not under_prefix or in_metadata or in_a_table:
        return None
    return IMAGE_TYPES.get(extension)
