"""The catalog's products and their photos: list a page, read, add (with one or more photos), add and remove
photos, delete; and the categories.

Every listing is a page read from the catalog table (`limit`, `offset`): nothing here loads the whole catalog.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, Query, UploadFile
from pydantic import BaseModel, Field, create_model

from vpm.core import product_schema
from vpm.core.catalog import MAX_PAGE, MAX_PHOTOS, sort_categories
from vpm.core.config import Settings
from vpm.core.images import ACCEPTED_NAMES
from vpm.faces.api.deps import LinksDep, MatcherDep, SettingsDep, require_api_key
from vpm.faces.api.errors import ApiError

router = APIRouter(prefix="/api", tags=["products"], dependencies=[Depends(require_api_key)])

# Every photo of one request is decoded before any is stored (so a bad one stores nothing): this bounds how
# many decoded photos one request can hold in memory at once.
MAX_PHOTOS_PER_REQUEST = min(10, MAX_PHOTOS)

PHOTOS_HELP = f"one or more photos ({ACCEPTED_NAMES}): repeat the `image` part for each"
ALLOW_DUPLICATE_HELP = "add a photo even when the same bytes are already a photo in the catalog (else 409)"
Photos = Annotated[list[UploadFile], File(description=PHOTOS_HELP)]
AllowDuplicate = Annotated[bool, Form(description=ALLOW_DUPLICATE_HELP)]


def _upload_form() -> type[BaseModel]:
    """The upload's multipart form: the photos, the product's fields from product_schema, allow_duplicate.

    One model for the whole form (FastAPI documents a form model only when it is the request's only form part).
    Text is only typed here: the Product model checks its length once line breaks and control characters are
    gone, so each message comes from one place."""
    fields: dict[str, Any] = {
        "image": (list[UploadFile], Field(description=PHOTOS_HELP)),
    }
    for spec in product_schema.API_FIELDS:
        kind = float if spec.kind == "price" else str
        limits = spec.limits() if spec.kind == "price" else {}
        if spec.required:
            fields[spec.name] = (kind, Field(description=spec.help, **limits))
        else:
            note = "generated when omitted" if spec.kind == "id" else "optional"
            fields[spec.name] = (kind | None, Field(default=None, description=f"{spec.help}; {note}", **limits))
    fields["allow_duplicate"] = (bool, Field(default=False, description=ALLOW_DUPLICATE_HELP))
    return create_model("UploadForm", **fields)


UploadForm = _upload_form()


def read_photos(uploads: list[UploadFile], settings: Settings) -> list[tuple[bytes, str]]:
    """The uploaded photos as (bytes, file name), each read to at most one byte past the limit: enough for
    decode_image to say 'too large' without holding more."""
    if len(uploads) > MAX_PHOTOS_PER_REQUEST:
        raise ApiError(
            422, f"send at most {MAX_PHOTOS_PER_REQUEST} photos in one request (got {len(uploads)}); "
            "add more with POST /api/products/{id}/images",
        )
    return [(upload.file.read(settings.max_upload_bytes + 1), upload.filename or "upload") for upload in uploads]


@router.get("/products", summary="a page of products (most recently added or changed first), filtered")
def list_products(
    matcher: MatcherDep,
    links: LinksDep,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description="products on the page")] = 50,
    offset: Annotated[int, Query(ge=0, description="products to skip")] = 0,
    category: Annotated[
        list[str] | None, Query(description="only these categories (repeat for several; case-insensitive)")
    ] = None,
    q: Annotated[str | None, Query(max_length=200, description="only names containing this (case-insensitive)")] = None,
) -> dict[str, Any]:
    page = matcher.page_products(offset=offset, limit=limit, categories=category, name_contains=q)
    return {
        "success": True,
        "total": page.total,
        "limit": limit,
        "offset": offset,
        "items": [links.product(p) for p in page.items],
    }


@router.get("/products/{product_id}", summary="one product with all its photos")
def get_product(product_id: str, matcher: MatcherDep, links: LinksDep) -> dict[str, Any]:
    return {"success": True, "product": links.product(matcher.get_product(product_id))}


@router.delete("/products/{product_id}", summary="delete a product and its photos")
def delete_product(product_id: str, matcher: MatcherDep) -> dict[str, Any]:
    return {"success": True, "deleted": matcher.delete_product(product_id).id}


@router.get("/categories", summary="the catalog's categories, with how many products each has")
def categories(matcher: MatcherDep) -> dict[str, Any]:
    counts = matcher.category_counts()
    return {"success": True, "categories": sort_categories(counts), "counts": counts}


@router.post(
    "/upload", status_code=201,
    summary="add a product with one or more photos (multipart: image..., "
    f"{', '.join(product_schema.REQUIRED)}[, {', '.join(f.name for f in product_schema.API_FIELDS if not f.required)}])",
)
def upload(
    matcher: MatcherDep,
    settings: SettingsDep,
    links: LinksDep,
    form: Annotated[UploadForm, Form(media_type="multipart/form-data")],
) -> dict[str, Any]:
    fields = {spec.name: getattr(form, spec.name) for spec in product_schema.API_FIELDS}
    product_id = fields.pop("id", None) or None  # generated when omitted
    product = matcher.create_product(
        read_photos(form.image, settings), **fields, product_id=product_id, allow_duplicate=form.allow_duplicate,
    )
    return {"success": True, "product": links.product(product)}


@router.post("/products/{product_id}/images", status_code=201, summary="add photos to a product (multipart: image...)")
def add_photos(
    product_id: str,
    matcher: MatcherDep,
    settings: SettingsDep,
    links: LinksDep,
    image: Photos,
    allow_duplicate: AllowDuplicate = False,
) -> dict[str, Any]:
    photos = read_photos(image, settings)
    product = matcher.add_photos(product_id, photos, allow_duplicate=allow_duplicate)
    added = [photo.key for photo in product.photos[-len(photos):]]  # appended, in the order sent
    return {"success": True, "added": added, "product": links.product(product)}


@router.delete(
    "/products/{product_id}/images/{key:path}",
    summary="remove one photo and its files (a product keeps at least one: 422 for the last)",
)
def remove_photo(product_id: str, key: str, matcher: MatcherDep, links: LinksDep) -> dict[str, Any]:
    product = matcher.remove_photo(product_id, key)
    return {"success": True, "removed": key, "product": links.product(product)}
