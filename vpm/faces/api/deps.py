"""What the routes depend on: the app's Matcher and Settings, the API key check, and photo links."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader

from vpm.core.catalog import Product
from vpm.core.config import Settings
from vpm.core.matcher import Matcher
from vpm.core.results import Match, PhotoView, ProductView
from vpm.faces.api.errors import ApiError
from vpm.faces.api.limits import API_KEY_HEADER, key_refusal


async def get_matcher(request: Request) -> Matcher:
    return request.app.state.matcher


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


MatcherDep = Annotated[Matcher, Depends(get_matcher)]
SettingsDep = Annotated[Settings, Depends(get_settings)]

_api_key_header = APIKeyHeader(name=API_KEY_HEADER, auto_error=False, description="required when VPM_API_KEY is set")


async def require_api_key(request: Request, supplied: Annotated[str | None, Security(_api_key_header)]) -> None:
    """The API key, when VPM_API_KEY is set. RequestGuard has already checked it before the body was read;
    checking again here keeps a router closed even where it is mounted without the guard."""
    why = key_refusal(supplied, request.app.state.api_key)
    if why:
        raise ApiError(401, why)


# --------------------------------------------------------------------------------------------- links


@dataclass(frozen=True)
class PhotoLinks:
    """The URLs a client fetches photos from: the storage's own (a CDN, or presigned S3), or for a local
    folder with no public URL, this API's GET /api/images/{key}."""

    matcher: Matcher
    served_from: str | None  # "<this server>/api/images/" when this API serves the files

    def url(self, key: str | None) -> str | None:
        if not key:
            return None
        if self.served_from:
            return self.served_from + quote(key)
        return self.matcher.url_for(key)

    def product(self, product: Product) -> dict[str, Any]:
        """The product with every photo's URLs (`images`) and the first photo's at the top level."""
        views = [PhotoView(photo, self.url(photo.key), self.url(photo.thumbnail_key)) for photo in product.photos]
        return ProductView(product, views).as_dict()

    def match(self, match: Match) -> dict[str, Any]:
        """A search result, its URLs those of the photo that matched."""
        if self.served_from:
            thumbnail = next((p.thumbnail_key for p in match.product.photos if p.key == match.photo_key), None)
            match = dataclasses.replace(match, image_url=self.url(match.photo_key), thumbnail_url=self.url(thumbnail))
        return match.as_dict()


async def get_links(request: Request, matcher: MatcherDep) -> PhotoLinks:
    serves_files = not matcher.files.web_urls  # a local folder's file:// paths mean nothing to a client
    return PhotoLinks(matcher, str(request.base_url).rstrip("/") + "/api/images/" if serves_files else None)


LinksDep = Annotated[PhotoLinks, Depends(get_links)]
