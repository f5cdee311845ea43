"""Indexing speed of the single-process path and of the Ray path with 1 and 2 workers, on the same photos.

    python bench/bench_cluster.py [--photos 200] [--model full-random|PATH|NAME] [--workers 1 2] [--repeat 2]
                                  [--json OUT]

A local catalog is made from the shared product photos (stored once, with a tiny model's vectors), then the
photos are embedded for the benchmark model three ways, each from an empty vector table: `Matcher.reindex()`
(the single-process path) and `vpm.backends.cluster.reindex()` on a local Ray with 1 and with 2 model workers. Each
figure is wall time from the call to its return (reading, decoding, embedding, committing; for Ray also the
workers' start and model load, which is the overhead to know); starting Ray itself is timed apart. Each path
runs `--repeat` times, each round in another order, and the median is shown with every run beside it.

The default model is a full-size CLIP ViT-B/32 with random weights (built once under bench/results/models/):
it computes exactly what the real one does, so its speed is the real one's, with no download. On a machine
with 2 cores, 2 Ray workers compete with each other and with the driver: the figures show that cost too.
The load average is printed before and after: other work on the machine slows every row alike.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # the tiny CLIP builder (tests/tiny_clip.py)
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from shared_photos import PHOTOS, require_photos  # noqa: E402 - bench/: the shared photos beside the repository

MODELS = ROOT / "bench" / "results" / "models"


def build_full_random_clip(dest: Path) -> Path:
    """CLIP ViT-B/32's shapes (CLIPConfig defaults, patch 32, 224 px, projection 512), random weights."""
    if (dest / "done").exists():
        return dest
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    from tiny_clip import _write_tokenizer_files

    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".clip-", dir=dest.parent))
    vocab_size = _write_tokenizer_files(staging)
    tokenizer = CLIPTokenizer(str(staging / "vocab.json"), str(staging / "merges.txt"), model_max_length=77)
    config = CLIPConfig(
        text_config={"vocab_size": vocab_size, "bos_token_id": tokenizer.bos_token_id,
                     "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id},
        vision_config={"patch_size": 32, "image_size": 224}, projection_dim=512,
    )
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = CLIPModel(config).eval()
    model.save_pretrained(staging)
    CLIPProcessor(image_processor=CLIPImageProcessor(), tokenizer=tokenizer).save_pretrained(staging)
    (staging / "done").write_text("ok\n")
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(staging, dest)
    return dest


def make_catalog(root: Path, photos: int, tiny_model: Path):
    """A local catalog of `photos` real product photos (rows sharing a product id make one product)."""
    from vpm.core.config import load_settings
    from vpm.core.matcher import Matcher

    with (PHOTOS / "metadata.csv").open(encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))[:photos]
    source = root / "source"
    source.mkdir(parents=True)
    lines = [("image", "name", "category", "id")]
    for row in rows:
        (source / row["file"]).write_bytes((PHOTOS / row["file"]).read_bytes())
        lines.append((row["file"], row["name"], row["category"], row["product_id"]))
    with (source / "products.csv").open("w", encoding="utf-8", newline="") as fh:
        csv.writer(fh).writerows(lines)
    settings = load_settings(vpm_data_dir=root / "data", s3_enabled=False, vpm_model=str(tiny_model), vpm_device="cpu")
    report = Matcher(settings).import_path(source / "products.csv")
    if report.failed or report.photos_imported != len(rows):
        raise SystemExit(f"could not make the catalog: {report.summary()}")
    return root / "data"


def timed(run) -> float:
    started = time.perf_counter()
    status = run()
    seconds = time.perf_counter() - started
    if not status.ok:
        raise SystemExit(f"the run left {status.missing} photos without a vector: {status.problems[:3]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=200)
    parser.add_argument("--model", default="full-random",
                        help="full-random (CLIP ViT-B/32 shapes, random weights), a model folder, or a hub name")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeat", type=int, default=2, help="runs of each path (median shown); default 2")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    require_photos(PHOTOS, metadata=True, option=None)

    from vpm.backends import cluster, engine
    from vpm.core.config import load_settings
    from vpm.core.matcher import Matcher
    from vpm.models.embeddings import load_embedder

    from tiny_clip import build_tiny_clip

    load_before = " ".join(f"{x:.1f}" for x in os.getloadavg())
    work = Path(tempfile.mkdtemp(prefix="vpm-bench-cluster-"))
    try:
        model = str(build_full_random_clip(MODELS / "clip-vit-b32-random")) if args.model == "full-random" else args.model
        data = make_catalog(work, args.photos, build_tiny_clip(work / "tiny-clip"))
        settings = load_settings(vpm_data_dir=data, s3_enabled=False, vpm_model=model, vpm_device="cpu")
        embedder = load_embedder(settings.vpm_model, settings.vpm_device)  # loaded before any timing, as a server has
        matcher = Matcher(settings, embedder=embedder)

        def reset() -> None:  # every run starts from an empty vector table
            if matcher.has_vector_index(embedder.model_id):
                matcher.vectors.drop()
            engine.forget(matcher.where)
            matcher._vector_indexes.clear()
            matcher._indexers.clear()

        import ray

        started = time.perf_counter()
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, runtime_env=cluster.runtime_env(),
                 logging_level="WARNING", log_to_driver=False)
        ray_start = time.perf_counter() - started
        paths = [("single process", "-", matcher.reindex)]
        for workers in args.workers:
            options = cluster.ClusterOptions(workers=workers)
            paths.append((f"Ray, {workers} worker{'s' if workers > 1 else ''}", str(workers),
                          lambda options=options: cluster.reindex(matcher, options=options)))
        seconds: dict[str, list[float]] = {name: [] for name, _w, _run in paths}
        try:
            for round_ in range(args.repeat):  # each round in another order, so a change of load hits every path
                order = paths[round_ % len(paths):] + paths[:round_ % len(paths)]
                for name, _workers, run in order:
                    reset()
                    seconds[name].append(timed(run))
        finally:
            ray.shutdown()
        results = [(name, workers, statistics.median(seconds[name])) for name, workers, _run in paths]
    finally:
        shutil.rmtree(work, ignore_errors=True)

    load_after = " ".join(f"{x:.1f}" for x in os.getloadavg())
    single = results[0][2]
    print(f"model           : {embedder.display_name} [{embedder.model_id}], {embedder.dim}-d, {embedder.device}")
    print(f"photos          : {args.photos} real product photos ({PHOTOS.name}), local catalog")
    print(f"machine         : {os.cpu_count()} cores; load average before {load_before}, after {load_after}")
    print(f"Ray start       : {ray_start:.1f} s (not in the figures below)")
    print()
    print(f"runs            : {args.repeat} of each path, each round in another order; median shown")
    print()
    print("| path | workers | seconds (median) | images/s | vs single process | every run (s) |")
    print("|---|---|---|---|---|---|")
    for name, workers, median in results:
        runs = ", ".join(f"{x:.1f}" for x in seconds[name])
        print(f"| {name} | {workers} | {median:.1f} | {args.photos / median:.1f} | {single / median:.2f}x | {runs} |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "model": embedder.model_id, "photos": args.photos, "cores": os.cpu_count(), "load_before": load_before,
            "load_after": load_after, "ray_start_s": ray_start,
            "runs": [{"path": n, "workers": w, "seconds": seconds[n], "median_s": m, "images_per_s": args.photos / m}
                     for n, w, m in results],
        }, indent=2))


if __name__ == "__main__":
    main()
