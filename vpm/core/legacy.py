"""The catalog layout of the first release, read for the upgrade and for imports, written for exports.

That release kept every product in one `metadata/products.json` (`{"schema": 1, "version": N, "products":
[...]}`, each product with one `image_key`, `thumbnail_key`, `image_sha256`; the earliest files were a bare
list) and the vectors in `.npz` segments per model under `metadata/embeddings/<model id>/`. Nothing here
writes to storage: the upgrade (vpm/core/upgrade.py) copies what these functions read into the tables, and
`write_products_json` streams an export to a local file for other tools.
"""

from __future__ import annotations

import io
import json
import logging
import math
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Any

import numpy as np
from pydantic import ValidationError

from vpm.core.catalog import STORED, CatalogCorrupt, Product, one_problem

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
SEGMENT_FORMAT = 1
_NORM_TOLERANCE = 1e-3


# ------------------------------------------------------------------------------------------ products.json


def parse_products_json(raw: bytes, where: str, sha_of: Callable[[str], str | None] | None = None) -> list[Product]:
    """The products of a products.json document. A file that is not a catalog raises CatalogCorrupt naming
    `where`; a stored non-finite price (written before prices had to be finite) loads as no price.

    The earliest files did not record `image_sha256`; `sha_of(image_key)` supplies it (None: the product
    loads without that photo)."""
    try:
        document = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CatalogCorrupt(f"{where} is not valid JSON ({err}); fix or restore the file — it was left untouched") from None
    if isinstance(document, list):  # the earliest format: a bare list of products
        document = {"version": 0, "products": document}
    if not isinstance(document, dict) or not isinstance(document.get("products"), list):
        raise CatalogCorrupt(
            f"{where} is not a catalog: expected {{\"version\": N, \"products\": [...]}}; it was left untouched"
        )
    schema = document.get("schema", SCHEMA_VERSION)
    if not isinstance(schema, int) or schema > SCHEMA_VERSION:
        raise CatalogCorrupt(f"{where} has schema {schema!r}, newer than this app understands ({SCHEMA_VERSION})")
    products = []
    for i, item in enumerate(document["products"]):
        item = _without_non_finite_price(item, i, where)
        if sha_of and isinstance(item, dict) and item.get("image_key") and not item.get("image_sha256"):
            item = {**item, "image_sha256": sha_of(str(item["image_key"]))}
        try:
            products.append(Product.model_validate(item, context=STORED))
        except ValidationError as err:
            raise CatalogCorrupt(f"{where}: product #{i + 1} is invalid ({one_problem(err)}); it was left untouched") from None
    return products


def _without_non_finite_price(item: Any, index: int, where: str) -> Any:
    """A product stored with the price `Infinity` or `NaN` loads with no price, and says so."""
    if not isinstance(item, dict):
        return item
    price = item.get("price")
    if isinstance(price, float) and not math.isfinite(price):
        log.warning(
            "%s: product %r (#%d) has the price %s, which is not a number; it is loaded without a price",
            where, str(item.get("id", "?"))[:100], index + 1, price,
        )
        return {**item, "price": None}
    return item


def write_products_json(products: Iterable[Product], out: IO[str]) -> int:
    """Stream the catalog as a products.json document (strict JSON) to `out`; return the product count.

    Each product carries its photos (`photos`) and, for tools that know one photo per product, the first
    photo's `image_key`, `thumbnail_key` and `image_sha256`. Products are written one at a time, so an export
    of a million products never holds them all.
    """
    out.write(f'{{"schema": {SCHEMA_VERSION}, "products": [\n')
    count = 0
    for product in products:
        if count:
            out.write(",\n")
        out.write(json.dumps(product.as_json(), ensure_ascii=False, allow_nan=False))
        count += 1
    out.write("\n]}\n")
    return count


# --------------------------------------------------------------------------------------------- segments


class CorruptSegment(ValueError):
    """A vector segment that cannot be trusted; the message says why."""


@dataclass(frozen=True)
class Segment:
    key: str
    model_id: str
    shas: list[str]
    vectors: np.ndarray  # (n, dim) float32, unit rows


def model_folders(keys: Iterable[str], embeddings_prefix: str) -> dict[str, list[str]]:
    """Segment keys grouped by the model folder they sit in (`<prefix><model id>/<segment>.npz`)."""
    folders: dict[str, list[str]] = {}
    for key in keys:
        rest = key[len(embeddings_prefix):] if key.startswith(embeddings_prefix) else None
        if not rest or not key.endswith(".npz") or rest.count("/") != 1:
            continue
        model_id = rest.split("/", 1)[0]
        if re.fullmatch(r"[A-Za-z0-9._-]+", model_id):
            folders.setdefault(model_id, []).append(key)
    return {model: sorted(found) for model, found in folders.items()}


def decode_segment(data: bytes, key: str, model_id: str) -> Segment:
    """Parse and check a segment; raise CorruptSegment saying what is wrong."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            fields = {name: npz[name] for name in ("format", "model_id", "dim", "sha256", "vectors")}
    except KeyError as err:
        raise CorruptSegment(f"{key} lacks the field {err}") from None
    except Exception as err:  # noqa: BLE001 - BadZipFile, EOFError, OSError...: a truncated or foreign file
        raise CorruptSegment(f"{key} is not a readable vector file ({type(err).__name__}: {err})") from None
    if fields["format"].shape != () or int(fields["format"]) != SEGMENT_FORMAT:
        raise CorruptSegment(f"{key} has format {fields['format']!r}, expected {SEGMENT_FORMAT}")
    if str(fields["model_id"]) != model_id:
        raise CorruptSegment(f"{key} holds vectors of model {str(fields['model_id'])!r}, not {model_id!r}")
    vectors = fields["vectors"]
    if vectors.dtype != np.float32 or vectors.ndim != 2:
        raise CorruptSegment(f"{key} holds {vectors.dtype} values of shape {vectors.shape}, not a float32 matrix")
    raw_shas = fields["sha256"]
    if raw_shas.ndim != 1 or raw_shas.shape[0] != vectors.shape[0]:
        raise CorruptSegment(f"{key} has {raw_shas.shape} keys for {vectors.shape[0]} vectors")
    shas = [s.decode("ascii", errors="replace") for s in raw_shas.tolist()]
    if any(not re.fullmatch(r"[0-9a-f]{64}", s) for s in shas):
        raise CorruptSegment(f"{key} has keys that are not SHA-256 hex digests")
    if len(shas) and not np.isfinite(vectors).all():
        raise CorruptSegment(f"{key} holds NaN or infinite values")
    if len(shas) and np.abs(np.linalg.norm(vectors, axis=1) - 1.0).max() > _NORM_TOLERANCE:
        raise CorruptSegment(f"{key} holds vectors that are not unit length")
    return Segment(key, model_id, shas, vectors)


def iter_segment_vectors(segments: Iterable[Segment]) -> Iterator[tuple[str, np.ndarray]]:
    """(sha, vector) of every segment, later segments winning."""
    latest: dict[str, np.ndarray] = {}
    for segment in segments:
        for sha, vector in zip(segment.shas, segment.vectors, strict=True):
            latest[sha] = vector
    yield from latest.items()
