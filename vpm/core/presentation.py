"""How numbers and results look to people: percentages, prices, byte sizes, CSV export, table rows.

Kept out of the pages so every page (and the tests) agree on one format, and importable without Streamlit.
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Iterable
from typing import Any

from vpm.core import product_schema
from vpm.core.formats import ACCEPTED_EXTENSIONS, ACCEPTED_NAMES

# Every character Markdown, Streamlit's extensions (`:red[...]`, `:material/x:` icons, `$math$`) or HTML give a
# meaning to. A backslash before any ASCII punctuation makes it literal in CommonMark.
_WORD_JOINER = "\u2060"
_AUTOLINK_RE = re.compile(r"(?<=\\:)(?=/)|(?<=www)(?=\\\.)|(?=@)", re.IGNORECASE)
_MARKDOWN_SPECIALS = frozenset("\\`*_{}[]()<>#+-.!|~:$&\"'=^")


def plain(text: object) -> str:
    """`text` for st.markdown / st.caption / st.error / help= as literal characters, never links, images or
    formatting: a stored name like `[click](https://evil.example)` shows as typed. Line breaks become spaces
    (a single line of text must not start a list or a heading)."""
    escaped = "".join("\\" + c if c in _MARKDOWN_SPECIALS else c for c in str(text))
    # GFM turns bare "https://x", "www.x" and "a@b.c" into links after escapes are resolved, so a backslash
    # cannot stop it; an invisible word joiner inside the pattern does.
    escaped = _AUTOLINK_RE.sub(_WORD_JOINER, escaped)
    return " ".join(escaped.split())


def code(text: object) -> str:
    """`text` as inline code whatever backticks it holds (a storage key may contain them): the fence is one
    backtick longer than the longest run inside, so the span cannot be closed early. Nothing at all reads
    "(empty)": an empty span would be an unclosed fence that swallows the Markdown after it (a blank setting on
    the Health page showed the next lines' `**` and backticks)."""
    value = " ".join(str(text).split())
    if not value:
        return "(empty)"
    run = current = 0
    for c in value:
        current = current + 1 if c == "`" else 0
        run = max(run, current)
    fence = "`" * (run + 1)
    pad = " " if value.startswith("`") or value.endswith("`") or run else ""
    return f"{fence}{pad}{value}{pad}{fence}"


def score_percent(score: float) -> int:
    """A score as a whole percent for display, rounded down and clamped to 0-100 (negatives read as 0%): rounded
    down, a card that says 76% is still shown at a threshold of 76%."""
    if not math.isfinite(score):
        return 0
    return max(0, min(100, math.floor(score * 100 + 1e-9)))


def format_percent(score: float) -> str:
    return f"{score_percent(score)}%"


# Prices up to this are written out in full; above it (only rows stored before vpm.core.catalog.MAX_PRICE: 1e308 is 309
# digits) in scientific notation.
PLAIN_PRICE_UP_TO = 1e12


def format_price(price: float | None) -> str:
    """'$89.50', or '' when the product has no price (cards then leave the line out); '$1.00e+308' for an absurd
    price a catalog stored before prices were capped."""
    if price is None or not math.isfinite(price):
        return ""
    if abs(price) > PLAIN_PRICE_UP_TO:
        return f"${price:.2e}"
    return f"${price:,.2f}"


def format_ms(ms: float) -> str:
    """Search time: '42 ms' below a second, '1.3 s' above."""
    if ms < 1000:
        return f"{ms:.0f} ms"
    return f"{ms / 1000:.1f} s"


def format_bytes(n: float) -> str:
    """'512 B', '1.5 KB', '2,048.0 MB' is never shown: '2.0 GB'; the one byte formatter of the app."""
    size = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1024 or unit == "TB":
            return f"{size:,.0f} {unit}" if unit == "B" else f"{size:,.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def plural(n: int, word: str, many: str | None = None) -> str:
    """'1 product', '3 products', '0 categories' (with `many` for irregular plurals)."""
    return f"{n} {word if n == 1 else (many or word + 's')}"


def results_count_text(shown: int, threshold: float) -> str:
    """The line above the result grid: '3 matches at or above 25%'."""
    return f"{plural(shown, 'match', 'matches')} at or above {format_percent(threshold)}"


def nothing_found_text(best_score: float | None, threshold: float, best_name: str | None = None) -> str:
    """What to say when no product reaches the threshold: which product came closest, and how close."""
    if best_score is None:
        return "No products to compare with in the chosen categories."
    best = f"The closest is {best_name} at {format_percent(best_score)}" if best_name else (
        f"The best match scored {format_percent(best_score)}")
    return (f"No product reaches {format_percent(threshold)}. {best}: lower the threshold to "
            f"{format_percent(best_score)} or below to see it.")


def signals_text(match: Any) -> str:
    """What a photo result's score is made of, in a few words: 'looks 81% alike · 24 keypoints match · reads
    OATLY, HAVRE' (only the signals that were compared)."""
    from vpm.core.rerank import MIN_INLIERS  # rerank imports OpenCV only when it verifies: this import is light

    parts = []
    similarity = getattr(match, "similarity", None)
    if similarity is not None and math.isfinite(similarity):
        parts.append(f"looks {max(0, min(100, round(similarity * 100)))}% alike")  # a signal, not the threshold's
    inliers = getattr(match, "inliers", None)
    if inliers and inliers >= MIN_INLIERS:  # fewer is what unrelated photos produce: it adds nothing to the score
        parts.append(f"{plural(inliers, 'keypoint')} match")
    reads = getattr(match, "reads", ())
    if reads:
        parts.append("reads " + ", ".join(reads))
    return " · ".join(parts)


# The rank, the fields a result shows (product_schema.RESULT_FIELDS), then how well it matched and its picture.
CSV_COLUMNS = ("rank", *product_schema.RESULT_FIELDS, "score_percent", "score", "image_url")


def results_csv(matches: Iterable[Any]) -> bytes:
    """Search results as CSV (UTF-8 with BOM so spreadsheet apps read accents), best first.

    `matches` are objects with `as_dict()` giving the RESULT_FIELDS, score and image_url (vpm.core.results.Match).
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for rank, match in enumerate(matches, start=1):
        row = match.as_dict()
        score = float(row["score"])
        writer.writerow([
            rank,
            *(_csv_field(name, row.get(name)) for name in product_schema.RESULT_FIELDS),
            score_percent(score),
            f"{score:.4f}",
            web_url(row.get("image_url")),
        ])
    return ("\ufeff" + buffer.getvalue()).encode("utf-8")


def web_url(url: str | None) -> str:
    """`url` when a browser elsewhere can open it (http or https: a CDN, a presigned S3 link); else "" (a local
    folder's file:// path names a file on the server, which means nothing to whoever reads the export)."""
    return url if url and url.lower().startswith(("https://", "http://")) else ""


def format_quantity(quantity: float, unit: str) -> str:
    """'10,000 requests', '1 request', '0.0012 GB', '2.5 GB-month': whole counts with separators, small amounts
    with two significant digits, never scientific notation, and the unit in the singular for exactly one."""
    if unit == "requests" or float(quantity).is_integer():
        text = f"{quantity:,.0f}"
        one = text == "1"
    elif quantity >= 100:
        text, one = f"{quantity:,.0f}", False
    elif quantity >= 0.01:
        text, one = f"{quantity:,.2f}".rstrip("0").rstrip("."), False
    else:
        decimals = 1 - math.floor(math.log10(quantity)) if quantity > 0 else 0
        text, one = f"{quantity:.{decimals}f}", False
    if one and unit.endswith("s") and unit != "GB":
        unit = unit[:-1]
    return f"{text} {unit}"


def sentence(text: object) -> str:
    """A message as a line a person reads: its first word capitalised when it is an ordinary lower-case word
    (vpm's messages start lower-case so they can follow "what: "); a file name or key in first place
    ("holiday.jpg is not an image") is left exactly as it is."""
    text = str(text)
    first = text.split(" ", 1)[0]
    return text[:1].upper() + text[1:] if first.isalpha() and first.islower() else text


def _csv_field(name: str, value: Any) -> str:
    """A product field's cell: a price with two decimals, anything else as spreadsheet-safe text; none is empty."""
    if value is None:
        return ""
    if product_schema.spec(name).kind == "price":
        return f"{value:.2f}"
    return _csv_safe(str(value))


def _csv_safe(text: str) -> str:
    # A name such as "=HYPERLINK(...)" would run as a formula in a spreadsheet; a leading quote keeps it text.
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


# Bare icons, as st.success / st.warning / st.error take them (they colour them themselves).
STATUS_ICONS = {"pass": ":material/check_circle:", "warn": ":material/warning:", "fail": ":material/cancel:"}
# The same in colour, for markdown lists of checks.
STATUS_MARKS = {
    "pass": ":green[:material/check_circle:]",
    "warn": ":orange[:material/warning:]",
    "fail": ":red[:material/cancel:]",
}
STATUS_WORDS = {"pass": "pass", "warn": "warning", "fail": "fail"}

KEY_PACKAGES = (
    "streamlit", "sentence-transformers", "transformers", "torch", "numpy", "pandas", "pillow", "pillow-heif",
    "boto3", "pydantic", "pydantic-settings", "fastapi",
)


def package_versions(packages: Iterable[str] = KEY_PACKAGES) -> dict[str, str]:
    """Installed versions from package metadata (no imports, so torch is never loaded just to ask)."""
    import platform
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for name in packages:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def pick_category(chosen: str | None, typed: str | None) -> str:
    """The add form offers existing categories and a box for a new one: a typed name wins over a pick."""
    typed = (typed or "").strip()
    return typed or (chosen or "").strip()


def add_form_problems(has_photo: bool, name: str | None, category: str) -> str | None:
    """What the add form still needs, as one sentence; None when it can be submitted."""
    problems = []
    if not has_photo:
        problems.append("choose a photo of the product")
    if not (name or "").strip():
        problems.append("give it a name")
    if not category:
        problems.append("choose a category or type a new one")
    return "To add a product, " + ", ".join(problems) + "." if problems else None


def page_caption(page: Any, total: int) -> str:
    """'Showing 51-100 of 1,234 products, latest changes first.', or how many match a filter.

    The catalog lists the products added or edited most recently first (the table's own order: no page sorts
    the whole catalog)."""
    if not page.items:
        return f"No product matches (of {_products(total)})." if total else "No products yet."
    first, last = page.offset + 1, page.offset + len(page.items)
    if page.total == total:
        return f"Showing {first:,}-{last:,} of {_products(page.total)}, latest changes first."
    return f"Showing {first:,}-{last:,} of {page.total:,} matching ({total:,} in all), latest changes first."


def _products(n: int) -> str:
    return f"{n:,} product{'' if n == 1 else 's'}"


_MIME_BY_EXTENSION = {
    "webp": "image/webp", "jpg": "image/jpeg", "jpeg": "image/jpeg", "png": "image/png", "gif": "image/gif",
    "bmp": "image/bmp", "tif": "image/tiff", "tiff": "image/tiff", "heic": "image/heic",
}


def data_uri(data: bytes, key: str) -> str:
    """A `data:` URI for a small picture, so tables show thumbnails from private buckets and local folders."""
    import base64

    mime = _MIME_BY_EXTENSION.get(key.rpartition(".")[2].lower(), "application/octet-stream")
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def product_rows(products: Iterable[Any], picture: Any) -> list[dict[str, Any]]:
    """Rows for the catalog table; `picture(product)` returns (bytes, key) or None."""
    rows = []
    for p in products:
        found = picture(p)
        rows.append({
            "picture": data_uri(*found) if found else None,
            "name": p.name,
            "category": p.category,
            "price": format_price(p.price),
            "photos": len(p.photos),
            "id": p.id,
            "added": p.created_at[:10],
        })
    return rows


def table_rows(tables: Iterable[Any]) -> list[dict[str, Any]]:
    """Rows for the storage browser's table of catalog tables (vpm.backends.engine.TableSummary)."""
    return [
        {
            "table": t.name, "holds": t.holds, "rows": f"{t.rows:,}", "version": t.version,
            "files": t.fragments, "indexes": ", ".join(t.indexes) or "none",
        }
        for t in tables
    ]


def changed_fields(product: Any, **edited: Any) -> dict[str, Any]:
    """The edited fields that differ from the product, for a minimal update. Text is stripped; a blank optional
    field (a description) means none. Only the fields an edit may change (product_schema.EDITABLE) are taken."""
    not_editable = set(edited) - set(product_schema.EDITABLE)
    if not_editable:  # an id, or a misspelt name: a form's mistake, not the user's
        raise TypeError(f"not editable: {', '.join(sorted(not_editable))}")
    out = {}
    for name in product_schema.EDITABLE:
        if name not in edited:
            continue
        value = edited[name]
        if isinstance(value, str):
            value = value.strip()
            if not value and not product_schema.spec(name).required:
                value = None
        if value != getattr(product, name):
            out[name] = value
    return out


# File-picker extensions for photo uploads: every format vpm.core.images accepts, with the usual spellings.
IMAGE_UPLOAD_TYPES = tuple(sorted(ACCEPTED_EXTENSIONS))
IMAGE_FORMATS_TEXT = ACCEPTED_NAMES  # for help texts: "JPEG, PNG, WebP, GIF, BMP, TIFF or HEIC"


def why_caption(inliers: int) -> str:
    """Under "why this match": what the lines between the two photos mean."""
    from vpm.core.rerank import MIN_INLIERS

    if inliers >= MIN_INLIERS:
        return (f"Your photo (left) and the result's photo (right): {inliers} keypoints match under one consistent "
                "change of view, so they very likely show the same product.")
    return (f"Your photo (left) and the result's photo (right): only {inliers} keypoints agree (fewer than "
            f"{MIN_INLIERS}), so this match rests on overall look, not on shared details.")


def query_hint(words: bool) -> str:
    """The Search page's hint before a query: the ways to search that work with the model that runs (a model that
    reads photos only still finds products by the words in their names and package text)."""
    if words:
        return "Upload a photo, take one, paste an image link or describe the product to see matches."
    return "Upload a photo, take one, paste an image link or type the product's name to see matches."
