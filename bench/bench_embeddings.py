"""Embedding speed, torch against ONNX Runtime, for full-size CLIP ViT-B/32 and the offline EfficientNet-Lite0.

    python bench/bench_embeddings.py [--models full-clip,efficientnet-lite0] [--runtimes torch,auto]
                                     [--photos DIR] [--images 64] [--repeats 20] [--json FILE]

`full-clip` is CLIP ViT-B/32 at full size with random weights, built offline once into --model-cache
(tests/tiny_clip.py build_full_clip): the same compute as the released model, so honest speed figures without
the hub. Any other name or folder is loaded as the app would (`vpm.models.embeddings.load_embedder`); a CLIP that
cannot be loaded falls back to efficientnet-lite0 and the table says so. `auto` is the app's default runtime:
ONNX Runtime where it matches torch (int8 or fp32; the `runtime` column says which), torch otherwise.

Each row: load time (an `auto` load that had to export says so), images/s at batch 1 and 32 from decoded
photos (the model's preprocessing included), indexing images/s from the JPEG files through the import/index
pipeline (read + decode + resize on a background thread while the model embeds: vpm/core/pipeline.py), one-photo
query latency from JPEG bytes (decode + embed, median), one text query (median), and the cosine of each
photo's vector to torch's (min over the photos). Each images/s figure is the median of three runs. Targets
(issue 14, 2 cores): CLIP one-photo query <= 40 ms, CLIP indexing >= 50 images/s.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
from pathlib import Path

from PIL import Image, ImageOps

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from shared_photos import PHOTOS, require_photos  # noqa: E402 - bench/: the shared photos beside the repository

from vpm.core.images import decode_image  # noqa: E402
from vpm.core.pipeline import chunked, embedder_stages, prefetch  # noqa: E402
from vpm.models.embeddings import clear_embedder_cache, load_embedder  # noqa: E402

TEXT = "a red running shoe"


def _photo_files(folder: Path, count: int) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png", ".webp"})
    step = max(1, len(files) // count)  # spread over the set: grocery phone photos and catalog shots
    return files[::step][:count]


def _decoded(files: list[Path]) -> list[Image.Image]:
    images = []
    for path in files:
        with Image.open(path) as img:
            images.append(ImageOps.exif_transpose(img).convert("RGB"))
    return images


def _rate(embedder, images: list[Image.Image], batch_size: int) -> float:
    start = time.perf_counter()
    embedder.embed_images(images, batch_size=batch_size)
    return len(images) / (time.perf_counter() - start)


def _indexing_rate(embedder, files: list[Path], batch_size: int = 32) -> float:
    """What `vpm index` / an import does per photo: read, decode (vpm.core.images), preprocess, embed, pipelined."""
    prepare, embed = embedder_stages(embedder)

    def load(paths: list[Path]):
        return prepare([decode_image(path.read_bytes(), path.name).image for path in paths])

    start = time.perf_counter()
    done = 0
    for prepared in prefetch(chunked(files, batch_size), load, name="vpm-decode"):
        done += len(embed(prepared))
    return done / (time.perf_counter() - start)


# Throughputs are the median of three runs: on a shared 2-core machine one run can lose a tenth of its speed to
# a neighbour, either way.
RATE_RUNS = 3


def _median_of(runs: int, rate) -> float:
    return statistics.median(rate() for _ in range(runs))


def _median_ms(call, repeats: int) -> float:
    call()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def _model_path(name: str, cache: Path) -> str:
    if name != "full-clip":
        return name
    from tiny_clip import build_full_clip

    return str(build_full_clip(cache / "full-clip-vit-b-32"))


def _cached_exports() -> set[str]:
    from vpm.models.onnx_runtime import cache_root

    root = cache_root()
    return {p.name for p in root.iterdir()} if root.is_dir() else set()


def bench_one(name: str, path: str, runtime: str, images, files, photo_bytes, repeats: int, reference):
    clear_embedder_cache()
    gc.collect()
    cached_before = _cached_exports()
    start = time.perf_counter()
    embedder = load_embedder(path, "cpu", runtime)
    load_s = time.perf_counter() - start
    exported = _cached_exports() != cached_before
    embedder.embed_images(images[:4], batch_size=4)  # warm-up: first calls allocate
    row = {
        "model": name, "model_id": embedder.model_id, "runtime": embedder.runtime,
        "runtime_reason": embedder.runtime_reason, "fallback_reason": embedder.fallback_reason,
        "load_s": round(load_s, 1), "exported": bool(exported and runtime != "torch"),
        "images_per_s_batch1": round(_median_of(RATE_RUNS, lambda: _rate(embedder, images, 1)), 1),
        "images_per_s_batch32": round(_median_of(RATE_RUNS, lambda: _rate(embedder, images, 32)), 1),
        "indexing_images_per_s": round(_median_of(RATE_RUNS, lambda: _indexing_rate(embedder, files)), 1),
        "photo_query_ms": round(_median_ms(lambda: embedder.embed_images([decode_image(photo_bytes).image]),
                                           repeats), 1),
        "text_query_ms": round(_median_ms(lambda: embedder.embed_texts([TEXT]), repeats), 1)
        if embedder.supports_text else None,
    }
    vectors = embedder.embed_images(images, batch_size=32)
    texts = embedder.embed_texts([TEXT, "blue ceramic mug", "LED desk lamp"]) if embedder.supports_text else None
    if reference is None:
        row["cosine_min_vs_torch"] = 1.0 if runtime == "torch" else None
        row["text_cosine_min_vs_torch"] = (1.0 if runtime == "torch" else None) if texts is not None else None
    else:
        row["cosine_min_vs_torch"] = round(float((vectors * reference[0]).sum(axis=1).min()), 5)
        row["text_cosine_min_vs_torch"] = (round(float((texts * reference[1]).sum(axis=1).min()), 5)
                                           if texts is not None else None)
    clear_embedder_cache()
    return row, (vectors, texts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="full-clip,efficientnet-lite0",
                        help="comma-separated: full-clip, efficientnet-lite0, a hub name or a model folder")
    parser.add_argument("--runtimes", default="torch,auto", help="comma-separated: torch, auto, onnx-fp32, onnx-int8")
    parser.add_argument("--photos", type=Path, default=PHOTOS,
                        help="a folder of product photos (default: ../shared/datasets/products-photos)")
    parser.add_argument("--images", type=int, default=64, help="how many photos for the throughput runs")
    parser.add_argument("--repeats", type=int, default=20, help="timed runs per latency figure (median)")
    parser.add_argument("--model-cache", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "vpm-bench-models")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON to this file")
    args = parser.parse_args()
    require_photos(args.photos)

    files = _photo_files(args.photos, args.images)
    images = _decoded(files)
    photo_bytes = files[0].read_bytes()
    load_before = _load()
    rows = []
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        path = _model_path(name, args.model_cache)
        reference = None
        for runtime in [r.strip() for r in args.runtimes.split(",") if r.strip()]:
            row, vectors = bench_one(name, path, runtime, images, files, photo_bytes, args.repeats, reference)
            if runtime == "torch":
                reference = vectors
            rows.append(row)
            print(f"  {name} / {runtime}: done (load average {_load()})", file=sys.stderr)

    print(f"photos          : {len(files)} from {args.photos} ({images[0].size[0]}x{images[0].size[1]} and others)")
    print(f"machine         : {os.cpu_count()} CPUs; VPM_THREADS {os.environ.get('VPM_THREADS') or 'auto'}; "
          f"load average before {load_before}, after {_load()}")
    header = ["model", "runtime", "load s", "img/s b1", "img/s b32", "index img/s", "photo ms", "text ms",
              "cos img", "cos text"]
    table = [header]
    for r in rows:
        table.append([
            r["model"], r["runtime"], f"{r['load_s']}{' (export)' if r['exported'] else ''}",
            f"{r['images_per_s_batch1']}", f"{r['images_per_s_batch32']}", f"{r['indexing_images_per_s']}",
            f"{r['photo_query_ms']}", "n/a" if r["text_query_ms"] is None else f"{r['text_query_ms']}",
            "-" if r["cosine_min_vs_torch"] is None else f"{r['cosine_min_vs_torch']}",
            "-" if r["text_cosine_min_vs_torch"] is None else f"{r['text_cosine_min_vs_torch']}",
        ])
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for n, row in enumerate(table):
        print("| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) + " |")
        if n == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        if r["runtime_reason"] and r["runtime"] == "torch" and "VPM_RUNTIME" not in r["runtime_reason"]:
            print(f"note: {r['model']} ran on torch: {r['runtime_reason']}")
        if r["fallback_reason"]:
            print(f"note: {r['model']} fell back to {r['model_id']}: {r['fallback_reason']}")
    clip = [r for r in rows if r["model"] == "full-clip" and r["runtime"] != "torch"]
    for r in clip:
        print(f"targets (full-clip, {r['runtime']}): one-photo query {r['photo_query_ms']} ms <= 40: "
              f"{'met' if r['photo_query_ms'] <= 40 else 'MISSED'}; indexing {r['indexing_images_per_s']} img/s "
              f">= 50: {'met' if r['indexing_images_per_s'] >= 50 else 'MISSED'}")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "load_before": load_before, "load_after": _load()}, indent=2))


def _load() -> str:
    try:
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


if __name__ == "__main__":
    main()
