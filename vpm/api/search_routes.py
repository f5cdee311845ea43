"""POST /api/search: by photo (multipart `image`), or by JSON {image_url | text}; each product at most once,
ranked by its best-matching photo, which `matched_image` names."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.datastructures import UploadFile as StarletteUploadFile

from ..config import Settings
from ..images import parse_box
from ..matcher import Matcher
from ..results import SearchResponse
from .deps import LinksDep, MatcherDep, SettingsDep, require_api_key
from .errors import ApiError, client_message, first_problem

router = APIRouter(prefix="/api", tags=["search"], dependencies=[Depends(require_api_key)])

MAX_TOP_K = 200


class SearchQuery(BaseModel):
    """The JSON body of POST /api/search (the multipart form takes the same fields beside `image`)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    image_url: str | None = Field(None, max_length=8192, description="http(s) URL of a photo to search with")
    text: str | None = Field(None, max_length=1000, description="a description to search with (CLIP models)")
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
        None, description='search only this region of the photo: "x,y,w,h" or [x, y, w, h] in pixels (photos only)'
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
                        "image": {"type": "string", "format": "binary"},
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
    summary="search by photo (multipart `image`) or by JSON {image_url | text, top_k, threshold, category}",
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
    async with request.form(max_files=1, max_fields=50) as form:
        upload = form.get("image")
        if not isinstance(upload, StarletteUploadFile):
            raise ApiError(422, "missing required field 'image' (a file part in multipart/form-data)")
        fields: dict[str, Any] = {k: v for k, v in form.multi_items() if k not in ("image", "category")}
        if form.getlist("category"):
            fields["category"] = [str(c) for c in form.getlist("category")]
        query = parse_query(fields)
        # One byte past the limit: enough for decode_image to say 'too large' without holding more.
        data = await upload.read(settings.max_upload_bytes + 1)
        filename = upload.filename or "query"
    if query.image_url or query.text:
        raise ApiError(422, "send either an image file or image_url/text, not both")
    return await run_in_threadpool(matcher.search_image, data, filename, **query.photo_options())


async def _search_by_json(request: Request, matcher: Matcher) -> SearchResponse:
    body = parse_json_body(await request.body())
    if not isinstance(body, dict):
        raise ApiError(422, 'send a JSON object such as {"text": "red running shoes", "top_k": 5}')
    query = parse_query(body)
    if bool(query.image_url) == bool(query.text):
        raise ApiError(422, "send exactly one of 'image_url' or 'text' (or a multipart 'image' file)")
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
    from ..urlfetch import URLFetchError, URLRefused

    try:
        return matcher.search_url(query.image_url, **query.photo_options())
    except (URLRefused, URLFetchError) as err:  # the SSRF guard's refusal or a failed fetch: the reason is safe
        raise ApiError(400, client_message(err)) from None


def _search_text(matcher: Matcher, query: SearchQuery) -> SearchResponse:
    from ..embeddings import EmbeddingError

    if query.box is not None or query.rerank is not None:
        raise ApiError(422, "'box' and 'rerank' apply to a photo (an image file or image_url), not to 'text'")
    try:
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
