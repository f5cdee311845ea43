"""Safe decoding of uploaded images into 8-bit RGB, plus thumbnails and content hashes.

Everything a user can upload goes through `decode_image`: it checks the byte size, then the pixel count and the
aspect ratio from the header (before any pixel is decoded), decodes, applies the EXIF orientation and converts every
mode Pillow can produce to 8-bit RGB (alpha composited on white, 16-bit scaled rather than clipped). Each way an
upload can be bad raises one subclass of `ImageError` whose message names the file and says what to do; no raw
Pillow or OSError escapes. The original bytes are kept unchanged in `DecodedImage.data`: the catalog stores the
upload as it came, and the decoded image feeds the embedder and the thumbnails.

Memory stays bounded past decoding too: `crop_to_aspect` bounds any resize that scales the short side up (the
embedders' preprocessing), thumbnails only ever shrink, and `preview_thumbnail` is what a UI shows of an upload.
"""

from __future__ import annotations

import functools
import io
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np
from PIL import Image, ImageOps

from vpm.core.errors import VpmError
from vpm.core.formats import ACCEPTED_EXTENSIONS, ACCEPTED_NAMES, sha256_hex  # noqa: F401 - re-exported

log = logging.getLogger(__name__)

MIB = 1024 * 1024
DEFAULT_MAX_BYTES = 20 * MIB
# Well below Pillow's own bomb limit (~89 MP warning, ~179 MP error): a 50 MP RGB image is already 150 MB decoded.
DEFAULT_MAX_PIXELS = 50_000_000
# Long side / short side. A pixel cap alone lets through strips of a few hundred bytes (1×200000, 40000×2) that the
# models' preprocessing then blows up: it scales the short side up to 224 px, so a 1×200000 PNG becomes a
# 224×44.8M (10 GP, 30 GB) image before anything is cropped. At 20:1 that step makes at most 224×4480 (1 MP, 3 MB).
# Nothing legitimate is lost: product photos sit near 1:1, web banners reach ~11:1 (970×90), phone panoramas rarely
# pass 10:1, and the models only look at the centre square anyway, which at 20:1 is already just 5% of the picture.
MAX_ASPECT_RATIO = 20
# The query photo shown beside the results: twice its 140 px display width, for high-density screens.
PREVIEW_MAX_SIDE = 280

# PIL format name -> (file extension, content type) for every format we accept.
SUPPORTED_FORMATS: Mapping[str, tuple[str, str]] = MappingProxyType(
    {
        "JPEG": ("jpg", "image/jpeg"),
        "PNG": ("png", "image/png"),
        "WEBP": ("webp", "image/webp"),
        "GIF": ("gif", "image/gif"),
        "BMP": ("bmp", "image/bmp"),
        "TIFF": ("tiff", "image/tiff"),
        "HEIF": ("heic", "image/heic"),
    }
)
# Phones write multi-picture JPEGs that Pillow reports as "MPO"; the bytes are an ordinary JPEG.
_FORMAT_ALIASES = {"MPO": "JPEG"}
_EXPECTED = f"{ACCEPTED_NAMES} expected"

# File signatures of the accepted formats: a file that starts like one of them but will not open is damaged,
# not "something else". BMP's two-byte "BM" is left out: too many text files start with it.
_HEIC_BRANDS = (b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs")
_WHITE = (255, 255, 255, 255)
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_HIGH_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I", "F"})


class ImageError(VpmError, ValueError):
    """An upload that cannot become a catalog image. The message names the file and says what to do."""

    def __init__(self, message: str, filename: str = "image") -> None:
        super().__init__(message)
        self.filename = filename

    def __reduce__(self):  # keep `filename` when the error crosses a process boundary
        return (type(self), (str(self), self.filename))


class EmptyImageError(ImageError):
    """The upload has no bytes at all."""


class TruncatedImageError(ImageError):
    """The file starts like a supported image but is cut short or damaged."""


class NotAnImageError(ImageError):
    """The bytes are not an image Pillow recognises (e.g. a text file renamed .jpg)."""


class ImageTooLargeError(ImageError):
    """Too many bytes, or too many pixels to decode safely."""


class ImageShapeError(ImageError):
    """A strip rather than a picture: the long side is more than MAX_ASPECT_RATIO times the short side."""


class UnsupportedImageError(ImageError):
    """A real image, but in a format (or colour mode) we do not accept."""


@dataclass(frozen=True)
class DecodedImage:
    image: Image.Image  # 8-bit RGB, EXIF orientation applied, pixels loaded
    format: str  # PIL format name, e.g. "JPEG"
    extension: str  # "jpg", "png", "webp", "gif", "bmp", "tiff", "heic"
    content_type: str  # "image/jpeg", ...
    sha256: str  # hex SHA-256 of the original bytes: the content identity used for dedup
    width: int  # after orientation
    height: int
    data: bytes = field(repr=False)  # the original upload, unchanged (can be megabytes: keep it out of logs)


def decode_image(
    data: bytes,
    filename: str = "image",
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_aspect: float = MAX_ASPECT_RATIO,
) -> DecodedImage:
    """Check, decode and normalise an upload. Raises a subclass of `ImageError` for every kind of bad input."""
    return _decode(data, filename, max_bytes, max_pixels, max_aspect, draft_side=None)


def preview_thumbnail(
    data: bytes,
    filename: str = "image",
    *,
    max_side: int = PREVIEW_MAX_SIDE,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_aspect: float = MAX_ASPECT_RATIO,
) -> bytes:
    """A small WebP of an upload, to show it back to the person; the same checks and errors as `decode_image`.

    Show this, never the raw upload: a UI that resizes the upload itself does so with no bound. JPEGs are decoded
    at a reduced scale (1/2 to 1/8) when that still covers `max_side`, so a preview costs little.
    """
    decoded = _decode(data, filename, max_bytes, max_pixels, max_aspect, draft_side=max_side)
    return make_thumbnail(decoded.image, max_side)


def _decode(
    data: bytes, filename: str, max_bytes: int, max_pixels: int, max_aspect: float, draft_side: int | None
) -> DecodedImage:
    """decode_image's work; with `draft_side`, formats that can (JPEG) decode at a reduced scale."""
    if not isinstance(data, bytes):
        data = bytes(data)  # bytearray / memoryview from upload widgets
    name = _display_name(filename)
    if not data:
        raise EmptyImageError(f"{name} is empty (0 bytes): choose the file again or re-upload it", filename)
    if len(data) > max_bytes:
        size_mb, limit_mb = _over_limit(len(data) / MIB, max_bytes / MIB)
        raise ImageTooLargeError(
            f"{name} is {size_mb} MB; the upload limit is {limit_mb} MB (VPM_MAX_UPLOAD_MB)", filename
        )
    # Never above Pillow's own limit, so its DecompressionBombWarning only fires for images we reject anyway.
    pixel_limit = min(max_pixels, Image.MAX_IMAGE_PIXELS or max_pixels)

    source = _open(data, name, filename, pixel_limit)
    try:
        width, height = source.size
        if width * height > pixel_limit:
            raise _too_many_pixels(name, filename, (width, height), pixel_limit)
        if width == 0 or height == 0:
            raise TruncatedImageError(f"{name} is damaged (it has no pixels): re-export or re-upload it", filename)
        if not within_aspect(width, height, max_aspect):
            raise _too_narrow(name, filename, (width, height), max_aspect)
        pil_format = _FORMAT_ALIASES.get(source.format or "", source.format or "")
        if pil_format not in SUPPORTED_FORMATS:  # _open only tries accepted formats; this is a guard
            raise _unsupported(name, filename, pil_format)
        if draft_side:
            source.draft(None, (draft_side, draft_side))  # never below draft_side; a no-op outside JPEG
        try:
            source.load()  # the first frame only: animated GIF/WebP/PNG and multi-page TIFF keep frame 0
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise _too_many_pixels(name, filename, None, pixel_limit) from exc
        except Exception as exc:  # Pillow reports a cut-off file as OSError, SyntaxError, ValueError...
            raise _truncated(name, filename) from exc
        image = _upright(source, name)
        try:
            image = _to_rgb(image)
        except Exception as exc:
            raise UnsupportedImageError(
                f"{name} uses the {image.mode} colour mode, which cannot be converted to RGB: "
                "save it as an RGB image and try again",
                filename,
            ) from exc
    finally:
        source.close()

    extension, content_type = SUPPORTED_FORMATS[pil_format]
    return DecodedImage(
        image=image,
        format=pil_format,
        extension=extension,
        content_type=content_type,
        sha256=sha256_hex(data),
        width=image.width,
        height=image.height,
        data=data,
    )


def make_thumbnail(image: Image.Image, max_side: int = 256) -> bytes:
    """WebP bytes whose longest side is at most `max_side`; aspect ratio kept, never upscaled."""
    if max_side < 1:
        raise ValueError(f"max_side must be at least 1, got {max_side}")
    thumb = _to_rgb(image)
    if thumb is image:
        thumb = image.copy()  # thumbnail() works in place: leave the caller's image alone
    thumb.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    thumb.save(buffer, format="WEBP", quality=80)
    return buffer.getvalue()


def within_aspect(width: int, height: int, max_aspect: float = MAX_ASPECT_RATIO) -> bool:
    """True when the long side is at most `max_aspect` times the short side (limit included)."""
    return max(width, height) <= min(width, height) * max_aspect


def crop_to_aspect(image: Image.Image, max_aspect: float = MAX_ASPECT_RATIO) -> Image.Image:
    """The centre of `image`, cut so its long side is at most `max_aspect` times its short side.

    Returns `image` itself when it is already within, so every image `decode_image` accepts is untouched. Call it
    before any resize that scales the short side up (as the embedders' preprocessing does): the result can then
    never exceed short-side-target² × max_aspect pixels, whatever the input. The centre is what such a resize
    followed by a centre crop keeps anyway.
    """
    if max_aspect < 1:
        raise ValueError(f"max_aspect must be at least 1, got {max_aspect}")
    width, height = image.size
    if width == 0 or height == 0 or within_aspect(width, height, max_aspect):
        return image
    keep = max(1, math.floor(min(width, height) * max_aspect))
    if width > height:
        left = (width - keep) // 2
        return image.crop((left, 0, left + keep, height))
    top = (height - keep) // 2
    return image.crop((0, top, width, top + keep))


# --- regions ------------------------------------------------------------------------------------------------

MIN_BOX_SIDE = 16  # px: a smaller region holds too little of a product to search with


class InvalidBox(VpmError, ValueError):
    """A search region that is not a usable part of the photo; the message says what to change."""


@dataclass(frozen=True)
class Box:
    """A region of a photo, in pixels of the upright image (EXIF orientation applied): left, top, width, height."""

    x: int
    y: int
    w: int
    h: int

    def as_list(self) -> list[int]:
        return [self.x, self.y, self.w, self.h]

    def __str__(self) -> str:
        return f"{self.x},{self.y},{self.w},{self.h}"


def parse_box(value: object) -> Box:
    """A box from "x,y,w,h" (the CLI, a form field) or [x, y, w, h] (JSON); whole numbers only."""
    if isinstance(value, Box):
        return value
    if isinstance(value, str):
        parts: list[object] = [p.strip() for p in value.split(",")]
    elif isinstance(value, (list, tuple)):
        parts = list(value)
    else:
        raise InvalidBox(f"a region is x,y,w,h (four whole numbers of pixels), not a {type(value).__name__}")
    if len(parts) != 4:
        raise InvalidBox(f"a region is x,y,w,h: four whole numbers of pixels, not {len(parts)} value(s)")
    numbers = []
    for name, part in zip("xywh", parts, strict=False):
        if isinstance(part, bool) or not isinstance(part, (int, str)):
            raise InvalidBox(f"the region's {name} must be a whole number of pixels, not {part!r}")
        try:
            number = int(part)
        except ValueError:
            raise InvalidBox(f"the region's {name} must be a whole number of pixels, not {str(part)[:20]!r}") from None
        numbers.append(number)
    return Box(*numbers)


def check_box(box: Box, width: int, height: int, max_aspect: float = MAX_ASPECT_RATIO) -> Box:
    """`box` if it lies inside a width × height image, is at least MIN_BOX_SIDE a side and no narrower than
    `max_aspect`:1 (so every resize of the crop stays bounded as for a whole photo); else InvalidBox saying why."""
    where = f"the photo is {width}×{height} pixels"
    if box.x < 0 or box.y < 0:
        raise InvalidBox(f"the region starts outside the photo (x={box.x}, y={box.y}): x and y must be 0 or more")
    if box.w < MIN_BOX_SIDE or box.h < MIN_BOX_SIDE:
        raise InvalidBox(
            f"the region is {box.w}×{box.h} pixels; make it at least {MIN_BOX_SIDE}×{MIN_BOX_SIDE} ({where})"
        )
    if box.x + box.w > width or box.y + box.h > height:
        raise InvalidBox(
            f"the region {box} reaches past the photo's edge ({where}): x + w must be at most {width} and y + h at "
            f"most {height}"
        )
    if not within_aspect(box.w, box.h, max_aspect):
        raise InvalidBox(f"the region {box.w}×{box.h} is a strip; keep it within {max_aspect:g}:1")
    return box


def crop_box(image: Image.Image, box: Box) -> Image.Image:
    """The part of `image` inside `box`, after `check_box` (a crop only ever shrinks: no resize here)."""
    box = check_box(box, image.width, image.height)
    return image.crop((box.x, box.y, box.x + box.w, box.y + box.h))


def box_from_percent(width: int, height: int, left: float, top: float, box_width: float, box_height: float) -> Box:
    """A box from percentages of the photo (what the Search page's sliders give), clipped to the photo and
    checked like any other box."""
    for name, value in (("left", left), ("top", top), ("width", box_width), ("height", box_height)):
        if not 0 <= value <= 100:
            raise InvalidBox(f"the region's {name} is {value}%: it must be between 0 and 100%")
    x, y = round(width * left / 100), round(height * top / 100)
    w = min(round(width * box_width / 100), width - x)
    h = min(round(height * box_height / 100), height - y)
    return check_box(Box(x, y, w, h), width, height)


def outline_box(image: Image.Image, box: Box, max_side: int = PREVIEW_MAX_SIDE) -> bytes:
    """A small WebP of the whole photo with the region outlined and the rest dimmed: the live preview of a crop."""
    from PIL import ImageDraw

    box = check_box(box, image.width, image.height)
    preview = _to_rgb(image)
    preview = preview.copy() if preview is image else preview
    preview.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    scale = preview.width / image.width
    inner = (round(box.x * scale), round(box.y * scale),
             round((box.x + box.w) * scale) - 1, round((box.y + box.h) * scale) - 1)
    dimmed = Image.blend(preview, Image.new("RGB", preview.size, (0, 0, 0)), 0.55)
    dimmed.paste(preview.crop((inner[0], inner[1], inner[2] + 1, inner[3] + 1)), inner[:2])
    ImageDraw.Draw(dimmed).rectangle(inner, outline=(255, 196, 0), width=2)
    buffer = io.BytesIO()
    dimmed.save(buffer, format="WEBP", quality=80)
    return buffer.getvalue()


# --- opening ------------------------------------------------------------------------------------------------


@functools.cache
def _heif_available() -> bool:
    """Register pillow-heif's opener on first use, once (importing it costs time most uploads don't need)."""
    try:
        from pillow_heif import register_heif_opener
    except ImportError:
        log.warning("pillow-heif is not installed: HEIC/HEIF uploads will be refused")
        return False
    register_heif_opener()
    return True


def _accepted_pil_formats() -> tuple[str, ...]:
    # Image.open raises KeyError for a format nobody registered, so HEIF is listed only once its opener is in.
    return tuple(f for f in SUPPORTED_FORMATS if f != "HEIF" or _heif_available())


def _open(data: bytes, name: str, filename: str, pixel_limit: int) -> Image.Image:
    """Identify the image and read its header only; pixels are decoded later, after the size checks."""
    try:
        return Image.open(io.BytesIO(data), formats=list(_accepted_pil_formats()))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Over Pillow's own limit (the warning arrives as an exception when warnings are turned into errors).
        raise _too_many_pixels(name, filename, _header_size(data), pixel_limit) from exc
    except Exception as exc:  # UnidentifiedImageError, or a plugin choking on a damaged header
        raise _why_unopenable(data, name, filename) from exc


def _why_unopenable(data: bytes, name: str, filename: str) -> ImageError:
    if _is_heic(data) and not _heif_available():
        return UnsupportedImageError(
            f"{name} is a HEIC image, but HEIC support (pillow-heif) is not installed here: "
            "convert it to JPEG and try again",
            filename,
        )
    if _starts_like_supported(data):
        return _truncated(name, filename)
    if data.startswith(b"%PDF"):
        return UnsupportedImageError(
            f"{name} is a PDF document, not an image ({_EXPECTED}): export it as an image and try again", filename
        )
    other_format = _identify_any(data)
    if other_format:
        return _unsupported(name, filename, other_format)
    return NotAnImageError(f"{name} is not an image ({_EXPECTED})", filename)


def _is_heic(data: bytes) -> bool:
    return data[4:8] == b"ftyp" and data[8:12] in _HEIC_BRANDS


def _starts_like_supported(data: bytes) -> bool:
    return (
        data.startswith((b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"II*\x00", b"MM\x00*"))
        or (data[:4] == b"RIFF" and data[8:12] == b"WEBP")
        or _is_heic(data)
    )


def _identify_any(data: bytes) -> str | None:
    """The format name if Pillow can open the header as any image at all (to name it when we refuse it)."""
    try:
        with Image.open(io.BytesIO(data)) as other:
            return other.format
    except Exception:  # noqa: BLE001 - Pillow's plugins raise anything on foreign bytes: not an image
        return None


def _header_size(data: bytes) -> tuple[int, int] | None:
    """Width and height from the header, skipping Pillow's bomb check; only to say how big a refused image is.

    Uses Pillow's plugin registry directly; if that ever changes, the message just loses the dimensions.
    """
    prefix = data[:16]
    for pil_format in _accepted_pil_formats():
        try:
            factory, accept = Image.OPEN[pil_format]
            accepted = accept is None or accept(prefix)
            if accepted and not isinstance(accepted, str):  # a str is Pillow's "looks like it, but..." note
                return factory(io.BytesIO(data), "").size
        except Exception:  # noqa: BLE001 - only for a message: a plugin that chokes just gives no size
            continue
    return None


# --- messages -----------------------------------------------------------------------------------------------


def _display_name(filename: str) -> str:
    """The file name as it may appear in a message: no control characters (log injection), not endless."""
    cleaned = "".join("?" if ord(c) < 32 or ord(c) == 127 else c for c in str(filename)).strip()
    if len(cleaned) > 120:
        cleaned = cleaned[:117] + "..."
    return cleaned or "image"


def _trim(number: float, decimals: int) -> str:
    text = f"{number:.{decimals}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def _limit_text(limit: float) -> tuple[str, int]:
    """A limit as text with two decimals (more if it is tiny), rounded down so it never promises too much."""
    decimals = 2
    while math.floor(limit * 10**decimals + 1e-9) == 0 and decimals < 9:
        decimals += 1
    return _trim(math.floor(limit * 10**decimals + 1e-9) / 10**decimals, decimals), decimals


def _over_limit(value: float, limit: float) -> tuple[str, str]:
    """`value` and `limit` as text, with enough decimals that value reads larger (20.04 must not say 20 > 20)."""
    limit_text, decimals = _limit_text(limit)
    value_text = _trim(value, decimals)
    while float(value_text) <= float(limit_text) and decimals < 9:
        decimals += 1
        value_text = _trim(value, decimals)
    return value_text, limit_text


def _too_many_pixels(
    name: str, filename: str, size: tuple[int, int] | None, pixel_limit: int
) -> ImageTooLargeError:
    if size is None:
        limit_mp, _ = _limit_text(pixel_limit / 1e6)
        return ImageTooLargeError(
            f"{name} has too many pixels to open safely; the limit is {limit_mp} MP: resize it and try again",
            filename,
        )
    width, height = size
    megapixels, limit_mp = _over_limit(width * height / 1e6, pixel_limit / 1e6)
    return ImageTooLargeError(
        f"{name} is {width}×{height} pixels ({megapixels} MP); the limit is {limit_mp} MP: resize it and try again",
        filename,
    )


def _too_narrow(name: str, filename: str, size: tuple[int, int], max_aspect: float) -> ImageShapeError:
    width, height = size
    ratio, limit = _over_limit(max(size) / min(size), max_aspect)
    return ImageShapeError(
        f"{name} is {width}×{height} pixels (aspect ratio {ratio}:1); the limit is {limit}:1: "
        "crop it to the product and try again",
        filename,
    )


def _truncated(name: str, filename: str) -> TruncatedImageError:
    return TruncatedImageError(f"{name} is truncated or damaged: re-export or re-upload it", filename)


def _unsupported(name: str, filename: str, pil_format: str) -> UnsupportedImageError:
    return UnsupportedImageError(
        f"{name} is in {pil_format} format, which is not supported ({_EXPECTED}): convert it and try again",
        filename,
    )


# --- pixels -------------------------------------------------------------------------------------------------


def _upright(image: Image.Image, name: str) -> Image.Image:
    """A new, upright image (never `image` itself, which the caller closes).

    Unreadable EXIF is not worth refusing a photo over: it is kept as stored.
    """
    try:
        return ImageOps.exif_transpose(image)  # returns a copy even when there is nothing to turn
    except Exception:
        log.warning("%s: unreadable EXIF orientation ignored", name, exc_info=True)
        return image.copy()


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB. Returns `image` itself when it already is plain RGB."""
    if image.mode in _HIGH_BIT_MODES:
        image = _high_bit_to_8bit(image)
    has_alpha = image.mode in _ALPHA_MODES or "transparency" in image.info
    if image.mode == "RGB" and not has_alpha:
        return image
    if not has_alpha:
        return image.convert("RGB")  # 1, L, P, CMYK, YCbCr...
    # Transparent areas become white, as a product shot on a white page would look.
    background = Image.new("RGBA", image.size, _WHITE)
    return Image.alpha_composite(background, image.convert("RGBA")).convert("RGB")


def _high_bit_to_8bit(image: Image.Image) -> Image.Image:
    """16-bit (and 32-bit int/float) greyscale -> L, scaled so 65535 becomes 255; Pillow's convert clips.

    "I" images come from 16-bit PNG and TIFF files, so their range is taken as 0..65535; float images
    whose values stay within 0..1 are taken as 0..1.
    """
    values = np.asarray(image)  # respects the byte order of I;16B
    full_scale = 1.0 if image.mode == "F" and values.size and float(values.max()) <= 1.0 else 65535.0
    grey = np.rint(np.clip(values.astype(np.float64), 0, full_scale) * (255.0 / full_scale)).astype(np.uint8)
    transparent = image.info.get("transparency")
    if isinstance(transparent, (int, float)):  # a 16-bit grey PNG's tRNS colour, compared before scaling
        alpha = np.where(values == transparent, 0, 255).astype(np.uint8)
        return Image.fromarray(np.dstack([grey, alpha]))  # (h, w, 2) uint8 -> LA
    return Image.fromarray(grey)  # (h, w) uint8 -> L
