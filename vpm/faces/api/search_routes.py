"""POST /api/search: by photo (multipart `image`, repeated for several photos of one product: one query), or by
JSON {image_url | text}; a photo may be refined by `text`, and `not_ids` leaves products out and moves away from
their look (vpm/core/query_mix.py). Each product at most once, ranked by its best-matching photo (`matched_image`)."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.datastructures import UploadFile as StarletteUploadFile

from vpm.core import query_mix
from vpm.core.config import Settings
from vpm.core.images import parse_box
from vpm.core.matcher import Matcher
from vpm.core.results import SearchResponse
from vpm.faces.api.deps import LinksDep, MatcherDep, SettingsDep, require_api_key
from vpm.faces.api.errors import ApiError, client_message, first_problem

router = APIRouter(prefix="/api", tags=["search"], dependencies=[Depends(require_api_key)])

MAX_TOP_K = 200
_MAX_FILE_PARTS = 100


class SearchQuery(BaseModel):
    """The JSON body of POST /api/search (the multipart form takes the same fields beside `image`)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    image_url: str | None = Field(None, max_length=8192, description="http(s) URL of a photo to search with")
    text: str | None = Field(
        None, max_length=1000,
        description="words to search with: with CLIP fused with a search of the products' names, brands and package "
                    "text (`answered_by` says which answered); with a model that reads photos only, that search alone")
    top_k: int = Field(10, ge=1, le=MAX_TOP_K, description="at most this many products")
    threshold: float | None = Field(
        None, allow_inf_nan=False,
        description="minimum score, 0 to 1 (0.25, not 25): for a photo how often such a match is right (the "
                    "catalog's calibration), for text the text-image cosine; default: the calibration's",
    )
    category: str | list[str] | None = Field(None, description="only these categories")
    rerank: bool | None = Field(
        None, description="verify the top candidates by keypoint matches (photos only; default: VPM_RERANK)"
    )
    box: str | list[int] | None = Field(
        None, description='search only this region of the photo: "x,y,w,h" or [x, y, w, h] in pixels (photos only; '
                          'of the first photo when there are several)'
    )
    text_weight: float | None = Field(
        None, ge=0.0, le=query_mix.MAX_WEIGHT, allow_inf_nan=False,
        description=f"how much `text` weighs beside the photo (default {query_mix.TEXT_WEIGHT:g}: as much as it)",
    )
    not_ids: str | list[str] | None = Field(
        None, description="not these products: left out, and the ranking moved away from their look"
    )

    @field_validator("box")
    @classmethod
    def _region(cls, v: str | list[int] | None) -> str | list[int] | None:
        if v is not None:
            parse_box(v)  # the shape only; whether it lies inside the photo is checked once it is decoded
        return v

    @field_validator("threshold")
    @classmethod
    def _cosine(cls, v: float | None) -> float | None:
        if v is not None and not -1.0 <= v <= 1.0:
            raise ValueError("must be a score between 0 and 1 (e.g. 0.25 for 25%)")
        return v

    def categories(self) -> list[str] | None:
        if self.category is None:
            return None
        wanted = [self.category] if isinstance(self.category, str) else self.category
        return [c.strip() for c in wanted if c and c.strip()] or None

    def options(self) -> dict[str, Any]:
        return {"top_k": self.top_k, "threshold": self.threshold, "categories": self.categories()}

    def rejected(self) -> list[str]:
        wanted = [self.not_ids] if isinstance(self.not_ids, str) else self.not_ids or []
        if len(wanted) > query_mix.MAX_NOT:
            raise ApiError(422, f"not_ids: at most {query_mix.MAX_NOT} products (got {len(wanted)})")
        return [i.strip() for i in wanted if i and i.strip()]

    def mix(self) -> dict[str, Any]:
        """The query's other parts beside its photos (words, rejected products)."""
        return {"text": self.text, "text_weight": self.text_weight, "not_ids": self.rejected()}

    def photo_options(self) -> dict[str, Any]:
        return {**self.options(), "rerank": self.rerank, "box": None if self.box is None else parse_box(self.box)}


_SEARCH_BODY_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["image"],
                    "properties": {
                        "image": {"type": "array", "items": {"type": "string", "format": "binary"},
                                  "description": f"one photo, or up to {query_mix.MAX_PHOTOS} of one product "
                                                 "(front, back, side) searched as one query"},
                        "text": {"type": "string", "description": "words that refine the photo (CLIP models)"},
                        "text_weight": {"type": "number", "default": query_mix.TEXT_WEIGHT},
                        "not_ids": {"type": "array", "items": {"type": "string"}},
                        "top_k": {"type": "integer", "default": 10},
                        "threshold": {"type": "number"},
                        "category": {"type": "array", "items": {"type": "string"}},
                        "rerank": {"type": "boolean"},
                        "box": {"type": "string", "description": "x,y,w,h in pixels"},
                    },
                }
            },
            "application/json": {"schema": SearchQuery.model_json_schema()},
        },
    }
}


@router.post(
    "/search", openapi_extra=_SEARCH_BODY_DOC,
    summary="search by photo (multipart `image`, several for one query) or by JSON {image_url | text, ...}",
)
async def search(request: Request, matcher: MatcherDep, settings: SettingsDep, links: LinksDep) -> dict[str, Any]:
    # The body is parsed here, not by FastAPI: one route takes a form or JSON, and the form's file count is capped.
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        response = await _search_by_photo(request, matcher, settings)
    elif content_type in ("application/json", ""):
        response = await _search_by_json(request, matcher)
    else:
        raise ApiError(415, "send multipart/form-data with an 'image' file, or JSON with 'image_url' or 'text'")
    return {"success": True, **response.as_dict(), "results": [links.match(m) for m in response.results]}


async def _search_by_photo(request: Request, matcher: Matcher, settings: Settings) -> SearchResponse:
    # Parts past the photos a query takes are counted and refused in words (a flood stops at Starlette's cap).
    async with request.form(max_files=_MAX_FILE_PARTS, max_fields=50 + query_mix.MAX_NOT) as form:
        uploads = form.getlist("image")
        if not uploads or not all(isinstance(u, StarletteUploadFile) for u in uploads):
            raise ApiError(422, "missing required field 'image' (a file part in multipart/form-data)")
        if len(uploads) > query_mix.MAX_PHOTOS:
            raise ApiError(422, f"send at most {query_mix.MAX_PHOTOS} photos of one product in one search (got "
                           f"{len(uploads)})")
        listed = ("image", "category", "not_ids")
        fields: dict[str, Any] = {k: v for k, v in form.multi_items() if k not in listed}
        for name in listed[1:]:
            if form.getlist(name):
                fields[name] = [str(c) for c in form.getlist(name)]
        query = parse_query(fields)
        # One byte past the limit: enough for decode_image to say 'too large' without holding more.
        images = [(await u.read(settings.max_upload_bytes + 1), u.filename or "query") for u in uploads]
    if query.image_url:
        raise ApiError(422, "send either image files or image_url, not both")
    if len(images) == 1 and not query.text and not query.rejected():
        if query.text_weight is not None:
            raise ApiError(422, "'text_weight' weighs 'text' beside the photo: send 'text' too")
        return await run_in_threadpool(matcher.search_image, *images[0], **query.photo_options())
    return await run_in_threadpool(_search_mixed, matcher, query, images)


async def _search_by_json(request: Request, matcher: Matcher) -> SearchResponse:
    body = parse_json_body(await request.body())
    if not isinstance(body, dict):
        raise ApiError(422, 'send a JSON object such as {"text": "red running shoes", "top_k": 5}')
    query = parse_query(body)
    if not query.image_url and not query.text:
        raise ApiError(422, "send 'image_url' or 'text' (or a multipart 'image' file); 'text' beside 'image_url' "
                       "refines the photo")
    if query.text_weight is not None and not (query.image_url and query.text):
        raise ApiError(422, "'text_weight' weighs 'text' beside a photo: send 'image_url' and 'text' together")
    if query.image_url and (query.text or query.rejected()):
        return await run_in_threadpool(_search_url_mixed, matcher, query)
    if query.image_url:
        return await run_in_threadpool(_search_url, matcher, query)
    return await run_in_threadpool(_search_text, matcher, query)


def parse_json_body(raw: bytes) -> Any:
    """The JSON document, or a 400 saying what is wrong with it; never a 500, whatever the bytes."""
    if not raw:
        return None
    try:
        return json.loads(raw)
    except RecursionError:  # e.g. 100000 nested '[': the parser gives up before the stack does
        raise ApiError(400, "the body is not valid JSON: it is nested too deeply") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ApiError(400, f"the body is not valid JSON ({err})") from None
    except ValueError:  # an integer of thousands of digits (Python's int conversion limit)
        raise ApiError(400, "the body is not valid JSON: it has a number too long to read") from None


def parse_query(fields: dict[str, Any]) -> SearchQuery:
    try:
        return SearchQuery.model_validate(fields)
    except ValidationError as err:
        raise ApiError(422, first_problem(err.errors())) from None


def _search_url(matcher: Matcher, query: SearchQuery) -> SearchResponse:
    from vpm.core.urlfetch import URLFetchError, URLRefused

    try:
        return matcher.search_url(query.image_url, **query.photo_options())
    except (URLRefused, URLFetchError) as err:  # the SSRF guard's refusal or a failed fetch: the reason is safe
        raise ApiError(400, client_message(err)) from None


def _search_url_mixed(matcher: Matcher, query: SearchQuery) -> SearchResponse:
    from vpm.core.urlfetch import URLFetchError, URLRefused

    try:
        return _search_mixed(matcher, query, url=query.image_url)
    except (URLRefused, URLFetchError) as err:
        raise ApiError(400, client_message(err)) from None


def _search_mixed(matcher: Matcher, query: SearchQuery, images=(), url: str | None = None) -> SearchResponse:
    """Several photos as one query, a photo refined by words, products left out. Words beside a photo with a model
    that reads photos only are left out, and the answer's query_mix.notice says so."""
    return matcher.search_mixed(images, url=url, **query.mix(), **query.photo_options())


def _search_text(matcher: Matcher, query: SearchQuery) -> SearchResponse:
    from vpm.models.embeddings import EmbeddingError

    if query.box is not None or query.rerank is not None:
        raise ApiError(422, "'box' and 'rerank' apply to a photo (an image file or image_url), not to 'text'")
    try:
        if query.rejected():  # words, away from the looks of the products left out
            return matcher.search_mixed(text=query.text, not_ids=query.rejected(), **query.options())
        return matcher.search_text(query.text, **query.options())
    except EmbeddingError as err:  # e.g. the active model embeds images only
        raise ApiError(400, client_message(err)) from None


@router.get("/products/{product_id}/similar", summary="more like this: the products most like this one")
async def similar(product_id: str, matcher: MatcherDep, links: LinksDep, top_k: int = Query(10, ge=1, le=MAX_TOP_K),
                  category: list[str] | None = Query(None)) -> dict[str, Any]:
    """Ranked by their best photo against every stored photo of this product (nothing embedded); the product
    itself is left out; each score is a cosine."""
    response = await run_in_threadpool(matcher.similar, product_id, top_k=top_k, categories=category)
    return {"success": True, **response.as_dict(), "results": [links.match(m) for m in response.results]}
