"""Queries beyond one photo, measured on real product photos: several photos at once, "not this one", and (with a
model that reads words) a photo refined by words. Prints tables; `--json` too.

    python bench/bench_queries.py [--data ../shared/datasets/products-photos] [--model efficientnet-lite0]
                                  [--cache DIR] [--json out.json]

Every query photo looks like a shopper's (bench_quality.py's `perturb`: a small crop and rotation, a JPEG
re-encode, seeded per photo); the catalog holds the original photos. Ranking is the index's: each product by its
best photo's plain cosine (the app's projection, verification and text come after it and are left out here, so the
rows compare the queries alone).

- several photos: for each product with at least 3 photos and each pair of its photos, the pair is the query and
  leaves the catalog; the product keeps its other photos, every other product all of its own. Rows: each of the two
  photos alone (the single-photo baseline, two queries a pair), and the pair fused: `max` (a product scores by its
  best match to either photo), `mean` (by the mean of its best matches to each photo), `centroid` (one vector, the
  mean of the two; vpm/core/query_mix.py's arithmetic). Recall@k: the share of queries with their product in the first k.
- not this one: each photo in turn is the query (its product keeps its other photos). Where the first result is
  wrong, the person rejects it: it leaves the list, and with a negative weight w the query becomes
  unit(unit(q) - w * unit(look)), the look being the mean of the rejected product's photo vectors. Row `fixed`:
  recall@1 of those queries afterwards. Where the first result is right and the person rejects the second (a wrong
  one), row `kept`: how often the right product stays first (pushing away must not cost what was right).
- refined by words (only with a model that reads words): for each product B, the product A whose photos look most
  like B's; the query is a photo of A plus B's name, weight w (unit(unit(photo) + w * unit(text))). Row `sibling`:
  recall@1 of B; row `own`: a photo of B with B's own name (words must not spoil a good photo).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import csv
import hashlib
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_quality import perturb
from shared_photos import PHOTOS, require_photos

from vpm.core import query_mix
from vpm.core.images import decode_image
from vpm.models.embeddings import load_embedder

NEGATIVE_WEIGHTS = (0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0)
TEXT_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)


def embed(embedder, images: list[bytes], what: str) -> np.ndarray:
    started = time.perf_counter()
    out = []
    for start in range(0, len(images), 16):  # decoded a batch at a time: memory stays bounded
        batch = [decode_image(d).image for d in images[start : start + 16]]
        out.append(embedder.embed_images(batch, batch_size=16))
    took = time.perf_counter() - started
    print(f"embedded {len(images)} {what} in {took:.0f} s ({len(images) / took:.1f} img/s)", flush=True)
    return np.concatenate(out)


def vectors(embedder, originals: list[bytes], queries: list[bytes],
            cache: Path | None) -> tuple[np.ndarray, np.ndarray]:
    """The catalog's and the queries' vectors (kept in `cache`, keyed by the model and the photos' bytes)."""
    digest = hashlib.sha256(b"".join(hashlib.sha256(d).digest() for d in originals + queries)).hexdigest()[:16]
    path = cache / f"queries-{embedder.model_id.replace('/', '_')}-{digest}.npz" if cache else None
    if path is not None and path.is_file():
        stored = np.load(path)
        return stored["catalog"], stored["queries"]
    catalog, asked = embed(embedder, originals, "catalog photos"), embed(embedder, queries, "query photos")
    if path is not None:
        np.savez(path, catalog=catalog, queries=asked)
    return catalog, asked


def per_product(scores: np.ndarray, codes: np.ndarray, n: int, left_out: list[int]) -> np.ndarray:
    """Each product's best photo score for one query ((m,) scores over the catalog's photos), photos left out."""
    s = scores.copy()
    s[left_out] = -np.inf
    best = np.full(n, -np.inf, dtype=np.float64)
    np.maximum.at(best, codes, s)
    return best


def hits(best: np.ndarray, own: int) -> tuple[bool, bool]:
    """Recall@1 and @5 of one ranking (ties count against the own product)."""
    above = int(np.sum(best >= best[own])) - 1
    return above < 1, above < 5


def several_photos(catalog: np.ndarray, queries: np.ndarray, codes: np.ndarray, n: int,
                   size: int) -> dict[str, dict]:
    """`size` photos of a product as the query (each such set of a product with more photos than that)."""
    rows: dict[str, list[tuple[bool, bool]]] = {"one photo": [], "max": [], "mean": [], "centroid": []}
    for own in range(n):
        photos = list(np.flatnonzero(codes == own))
        if len(photos) <= size:
            continue
        for chosen in itertools.combinations(photos, size):
            left_out = list(chosen)
            single = [per_product(catalog @ queries[i], codes, n, left_out) for i in chosen]
            rows["one photo"] += [hits(s, own) for s in single]
            stacked = np.stack(single)
            rows["max"].append(hits(stacked.max(axis=0), own))
            rows["mean"].append(hits(stacked.mean(axis=0), own))
            centre = query_mix.combine([(queries[i], 1.0) for i in chosen])
            rows["centroid"].append(hits(per_product(catalog @ centre, codes, n, left_out), own))
    return {name: _recall(values) for name, values in rows.items()}


def not_this_one(catalog: np.ndarray, queries: np.ndarray, codes: np.ndarray, n: int) -> dict[str, dict]:
    looks = np.stack([query_mix.combine([(v, 1.0) for v in catalog[codes == c]]) for c in range(n)])
    fixed = {w: [] for w in NEGATIVE_WEIGHTS}
    kept = {w: [] for w in NEGATIVE_WEIGHTS}
    for i, own in enumerate(codes):
        photos = [j for j in np.flatnonzero(codes == own) if j != i]
        if not photos:
            continue
        best = per_product(catalog @ queries[i], codes, n, [i])
        order = np.argsort(-best, kind="stable")
        right_first = order[0] == own
        rejected = int(order[1] if right_first else order[0])
        for w in NEGATIVE_WEIGHTS:
            query = query_mix.combine([(queries[i], 1.0), (looks[rejected], -w)])
            after = per_product(catalog @ query, codes, n, [i])
            after[rejected] = -np.inf  # "not this one" also removes it
            (kept if right_first else fixed)[w].append(hits(after, own))
    return {"fixed": {str(w): _recall(v) for w, v in fixed.items()},
            "kept": {str(w): _recall(v) for w, v in kept.items()},
            "queries": {"first wrong": len(fixed[0.0]), "first right": len(kept[0.0])}}


def refined_by_words(embedder, catalog, queries, codes, n, names: list[str]) -> dict[str, dict]:
    texts = embedder.embed_texts(names)
    looks = np.stack([query_mix.combine([(v, 1.0) for v in catalog[codes == c]]) for c in range(n)])
    alike = looks @ looks.T
    np.fill_diagonal(alike, -np.inf)
    sibling = {w: [] for w in TEXT_WEIGHTS}
    own = {w: [] for w in TEXT_WEIGHTS}
    for target in range(n):
        other = int(np.argmax(alike[target]))
        photo_of_other = int(np.flatnonzero(codes == other)[0])
        photo_of_target = int(np.flatnonzero(codes == target)[0])
        for w in TEXT_WEIGHTS:
            for photo, tally, left_out in ((photo_of_other, sibling, [photo_of_other]),
                                           (photo_of_target, own, [photo_of_target])):
                query = query_mix.combine([(queries[photo], 1.0), (texts[target], w)])
                tally[w].append(hits(per_product(catalog @ query, codes, n, left_out), target)[0])
    return {"sibling": {str(w): _share(v) for w, v in sibling.items()},
            "own": {str(w): _share(v) for w, v in own.items()}}


def _recall(values: list[tuple[bool, bool]]) -> dict:
    return {"queries": len(values), "recall@1": _share([a for a, _ in values]),
            "recall@5": _share([b for _, b in values])}


def _share(values: list[bool]) -> float:
    return round(float(np.mean(values)), 3) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=PHOTOS, help="folder with metadata.csv and the photos")
    parser.add_argument("--model", default="efficientnet-lite0",
                        help="the model (default: the built-in, offline); a CLIP folder also measures words")
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--cache", type=Path, help="keep the photos' vectors here between runs")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    args = parser.parse_args()
    require_photos(args.data, metadata=True, option="--data")
    if args.cache:
        args.cache.mkdir(parents=True, exist_ok=True)
    with open(args.data / "metadata.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    product_ids = sorted({r["product_id"] for r in rows})
    codes = np.array([product_ids.index(r["product_id"]) for r in rows])
    originals = [(args.data / r["file"]).read_bytes() for r in rows]
    shopper = [perturb(d, args.seed * 100_003 + i) for i, d in enumerate(originals)]
    embedder = load_embedder(args.model, "cpu")
    print(f"{len(rows)} photos of {len(product_ids)} products; model {embedder.model_id} ({embedder.runtime}); "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores", flush=True)
    catalog, queries = vectors(embedder, originals, shopper, args.cache)
    n = len(product_ids)
    found: dict = {"model": embedder.model_id,
                   "several_photos": {size: several_photos(catalog, queries, codes, n, size) for size in (2, 3)},
                   "not_this_one": not_this_one(catalog, queries, codes, n)}

    print("\nSeveral photos as one query (a product's photos as the query; its other photos stay in the catalog)")
    print("| query | queries | recall@1 | recall@5 |\n|---|---|---|---|")
    for size, rows_of_size in found["several_photos"].items():
        for name, r in rows_of_size.items():
            label = f"one photo (of the {size}-photo sets)" if name == "one photo" else f"{size} photos, {name}"
            print(f"| {label} | {r['queries']} | {r['recall@1']:.3f} | {r['recall@5']:.3f} |")

    negatives = found["not_this_one"]
    print(f"\nNot this one (first wrong: {negatives['queries']['first wrong']} queries, the first rejected; first "
          f"right: {negatives['queries']['first right']}, the second rejected)")
    print("| negative weight | first wrong: recall@1 after | recall@5 after | first right: stays first |\n"
          "|---|---|---|---|")
    for w in NEGATIVE_WEIGHTS:
        fixed, kept = negatives["fixed"][str(w)], negatives["kept"][str(w)]
        print(f"| {w} | {fixed['recall@1']:.3f} | {fixed['recall@5']:.3f} | {kept['recall@1']:.3f} |")

    if embedder.supports_text:
        names = [next(r["name"] for r in rows if r["product_id"] == pid) for pid in product_ids]
        found["words"] = refined_by_words(embedder, catalog, queries, codes, n, names)
        print("\nA photo refined by words (a look-alike's photo + the wanted product's name; its own photo + name)")
        print("| text weight | look-alike photo + name: recall@1 | own photo + own name: recall@1 |\n|---|---|---|")
        for w in TEXT_WEIGHTS:
            print(f"| {w} | {found['words']['sibling'][str(w)]:.3f} | {found['words']['own'][str(w)]:.3f} |")
    else:
        print(f"\nA photo refined by words: not measured ({embedder.model_id} reads photos only; pass --model with a "
              "CLIP folder)")
    if args.json:
        args.json.write_text(json.dumps(found, indent=1))


if __name__ == "__main__":
    main()
