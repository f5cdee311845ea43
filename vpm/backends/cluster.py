"""`--cluster`: the heavy part of `vpm index` and `vpm import` (reading, decoding, embedding) on a Ray cluster.

Only `--cluster` imports this module (and so Ray). What runs where:

- This process (the driver) decides what to do exactly as the single-machine path does: `Indexer` walks the
  catalog for the photos without a vector and reuses a vector this model already made for the same bytes; an
  import opens its source with `vpm.core.importer` and groups rows into products. It then hands Ray Data a table of
  small rows (keys, or where each image is), never the images.
- Ray Data reads the images on workers (from the bucket, or from the import source), and a pool of model
  workers decodes and embeds them in batches: one model load per worker, on its GPU when it has one and
  VPM_DEVICE allows (vpm/backends/cluster_work.py). An import's workers also store the photo and its thumbnail under
  fresh keys, as `Matcher` does before writing the row that points at them.
- The results stream back to the driver, which commits them in bulk: vectors, then product rows through the
  catalog's insert-if-absent (`bulk_import.commit_rows`), `commit_every` photos at a time. Only the driver ever
  writes a LanceDB table, so workers never fight over commits.

So the promises are the single-machine path's: what is done is skipped (a photo with a vector is not sent; an
import's photo already in the catalog is skipped when read, and again when committed), a job cut off keeps
every batch it committed and a re-run does only the rest, and a photo that cannot be read, decoded or stored
fails its row (reported, as today), never the job. A job killed outright can leave the files of the batches in
flight with no row pointing at them, as a killed single-machine import can; the storage browser's
consistency check lists such orphans and removes them on request.

Photos that live on this machine (a local catalog folder, an import source) are read by Ray workers on this
machine's node; the embedding still runs anywhere. With Ray Client (`ray://`) the driver runs on the cluster's
head node, so there a local path must be one that node can read.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import ray

from vpm.backends import cluster_index
from vpm.backends.cluster_work import EmbedPhotos, read_source, read_stored
from vpm.backends.lance_vectors import ANN_FROM_PHOTOS
from vpm.core import photos
from vpm.core.bulk_import import Landing, commit_rows, group_items
from vpm.core.catalog import CatalogError, Photo, Product, validate_product
from vpm.core.importer import ImportIssue, ImportLimits, open_source
from vpm.core.indexing import IndexStatus
from vpm.core.pipeline import chunked
from vpm.core.results import ImportReport
from vpm.core.vector_index import PhotoVector

if TYPE_CHECKING:
    from vpm.core.matcher import Matcher

log = logging.getLogger(__name__)

Progress = Callable[..., None]
COMMIT_EVERY = 256  # photos per bulk commit of vectors (and rows): a killed job loses at most this much work
EMBED_BATCH = 32  # photos per model call on a worker
READ_BATCH = 32
READ_CPUS = 0.25  # reading is I/O: a quarter of a CPU per read task leaves the rest to the model workers
WALK_CHUNK = 1000
VPM_PACKAGE = Path(__file__).resolve().parents[1]



class ClusterError(RuntimeError):
    """The cluster job cannot go on; the message says what to check. What it committed stays committed."""


@dataclass(frozen=True)
class ClusterOptions:
    address: str | None = None  # None: RAY_ADDRESS if set, else a Ray started on this machine; or "ray://host:port"
    workers: int | None = None  # model workers; default one per GPU of the cluster, else one per CPU left over
    commit_every: int = COMMIT_EVERY
    batch_size: int = EMBED_BATCH
    index_from: int = ANN_FROM_PHOTOS  # vectors from which `reindex` builds the approximate index on Ray


def _no_progress(done: int, total: int, message: str = "") -> None:
    pass


@contextmanager
def connected(options: ClusterOptions) -> Iterator[None]:
    """Ray for the length of a job: an existing connection is used as it is (and left open); otherwise we
    connect (`ray://` address, or RAY_ADDRESS), or start Ray on this machine, and stop it at the end."""
    if ray.is_initialized():
        yield
        return
    where = options.address or os.environ.get("RAY_ADDRESS") or "a Ray started on this machine"
    log.info("connecting to %s", where)
    try:
        # Workers' output stays in Ray's logs: the CLI shows its progress bar; a worker's failure comes back as
        # the job's error (or its row's), and a wrong model is caught by the driver.
        ray.init(address=options.address, runtime_env=runtime_env(), logging_level=logging.WARNING,
                 configure_logging=False, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as err:
        raise ClusterError(f"cannot reach the Ray cluster at {where}: {err}") from None
    try:
        yield
    finally:
        ray.shutdown()


def runtime_env() -> dict[str, Any]:
    """What a job's workers need from this machine: this very `vpm` package (Ray uploads it), so they run the
    driver's code whatever is installed on them. Pass it to `ray.init` when starting Ray yourself."""
    return {"py_modules": [str(VPM_PACKAGE)], "excludes": ["__pycache__"]}


# ---------------------------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class _Plan:
    workers: int
    cpus: float  # per model worker
    gpus: float  # per model worker
    threads: int  # torch threads per model worker
    read_node: str | None  # the node that must read (photos on this machine), or None: any node

    def describe(self) -> str:
        kind = "GPU" if self.gpus else f"{self.cpus:.2g} CPU, {self.threads} torch thread{'s' if self.threads > 1 else ''}"
        return f"{self.workers} model worker{'s' if self.workers != 1 else ''} ({kind} each)"


def _plan(settings, options: ClusterOptions, *, local_reads: bool) -> _Plan:
    resources = ray.cluster_resources()
    cpus, gpus = float(resources.get("CPU", 1.0)), float(resources.get("GPU", 0.0))
    if gpus >= 1 and settings.vpm_device.strip().lower() != "cpu":
        return _Plan(options.workers or int(gpus), 1.0, 1.0, 1, _this_node() if local_reads else None)
    room = max(0.5, cpus - READ_CPUS)  # the model workers must leave room for the read tasks, or nothing reads
    workers = options.workers or max(1, int(room))
    share = room / workers  # one worker on a 2-CPU machine gets 1.75 CPUs and 2 torch threads, as one process
    return _Plan(workers, share, 0.0, max(1, round(share)), _this_node() if local_reads else None)


def _this_node() -> str:
    return ray.get_runtime_context().get_node_id()


def _pipeline(rows: list[pa.Table], read: Callable, read_args: dict[str, Any], settings, mode: str, plan: _Plan,
              options: ClusterOptions):
    """Rows -> read (tasks; on this node when the photos are on this machine) -> decode + embed (a pool of
    model workers) -> the driver's iterator."""
    read_options: dict[str, Any] = {}
    if plan.read_node is not None:
        read_options["label_selector"] = {"ray.io/node-id": plan.read_node}
    # Small blocks, so every model worker gets a share from the start (one block goes to one worker at a time).
    size = 2 * options.batch_size
    dataset = ray.data.from_arrow([table.slice(i, size) for table in rows for i in range(0, table.num_rows, size)])
    dataset = dataset.map_batches(
        read, fn_kwargs=read_args, batch_format="pyarrow", batch_size=READ_BATCH, num_cpus=READ_CPUS,
        **read_options,
    )
    return dataset.map_batches(
        EmbedPhotos, fn_constructor_kwargs={"settings": settings, "mode": mode, "threads": plan.threads},
        batch_format="pyarrow", batch_size=options.batch_size, compute=ray.data.ActorPoolStrategy(size=plan.workers),
        num_cpus=plan.cpus, num_gpus=plan.gpus or None,
    )


def _results(dataset, options: ClusterOptions) -> Iterator[pa.Table]:
    """The workers' results, `commit_every` rows at a time, as they finish (in no particular order)."""
    try:
        yield from dataset.iter_batches(batch_size=options.commit_every, batch_format="pyarrow")
    except ray.exceptions.RayError as err:  # a worker that could not start or died: say so in one line
        reason = (str(err).strip().splitlines() or [type(err).__name__])[-1][:500]
        raise ClusterError(f"the Ray job failed: {reason}") from err


def _quiet_ray_data() -> None:
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # the CLI draws its own bar from the driver's commits
    logging.getLogger("ray.data").setLevel(logging.WARNING)


def _check_model(batch: pa.Table, model_id: str) -> None:
    found = set(batch.column("model_id").to_pylist())
    if found - {model_id}:
        raise ClusterError(
            f"the cluster's workers embedded with {', '.join(sorted(found - {model_id}))} but this machine uses "
            f"{model_id}: set the same VPM_MODEL on every worker, and make sure each can load it (a hub model "
            "needs the network or a cached copy there, or it falls back to another model)"
        )


def _vectors(batch: pa.Table, dim: int) -> np.ndarray:
    flat = batch.column("vector").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    return np.asarray(flat, dtype=np.float32).reshape(batch.num_rows, dim)


# --------------------------------------------------------------------------------------------------- index


def reindex(matcher: Matcher, *, rebuild: bool = False, progress: Progress | None = None,
            options: ClusterOptions | None = None) -> IndexStatus:
    """`Matcher.reindex` with the embedding on Ray: the photos missing from the active model's index (every
    photo with `rebuild`) are read and embedded by the cluster and committed here in bulk; then vectors of
    photos no longer in the catalog are dropped. From `options.index_from` vectors the approximate index is then
    built on Ray too, when there is none yet or with `rebuild` (vpm/backends/cluster_index.py). Needs `connected`."""
    options = options or ClusterOptions()
    if rebuild:
        matcher._drop_unreadable_vectors()
    vectors = matcher.vectors  # after that: an unreadable table was replaced by a new one
    held = getattr(vectors, "ann_built_elsewhere", None)  # no build of this process's own races the cluster's
    with held() if held else contextlib.nullcontext():
        status = _embed_missing(matcher, rebuild, progress or _no_progress, options)
        try:
            cluster_index.build_when_due(vectors, matcher.settings, rebuild=rebuild, from_rows=options.index_from,
                                         tasks=options.workers)
        except cluster_index.IndexBuildError as err:
            raise ClusterError(f"the vectors are stored, but {err}") from err
    return status


def _embed_missing(matcher: Matcher, rebuild: bool, progress: Progress, options: ClusterOptions) -> IndexStatus:
    indexer, embedder = matcher.indexer, matcher.embedder
    vectors = matcher.vectors
    rows, total, done = [], 0, 0
    for chunk in chunked(indexer.photos_to_embed(rebuild), WALK_CHUNK):
        total += len(chunk)
        known = {} if rebuild else vectors.vectors_for_shas({photo.sha256 for _product, photo in chunk})
        reused = [PhotoVector(photo.key, product.id, photo.sha256, product.category, known[photo.sha256])
                  for product, photo in chunk if photo.sha256 in known]
        if reused:  # the same bytes were embedded by this model before: no need to send them anywhere
            vectors.upsert(reused)
            done += len(reused)
        rest = [(product, photo) for product, photo in chunk if photo.sha256 not in known]
        if rest:
            rows.append(pa.table({
                "key": [photo.key for _p, photo in rest], "filename": [photo.key for _p, photo in rest],
                "product_id": [product.id for product, _photo in rest],
                "sha256": [photo.sha256 for _p, photo in rest], "category": [product.category for product, _p in rest],
            }))
    progress(done, total, f"embedding {total - done} photos with {embedder.model_id} on Ray")
    if rows:
        _quiet_ray_data()
        plan = _plan(matcher.settings, options, local_reads=not matcher.settings.s3_enabled)
        log.info("indexing %d photos on Ray with %s", total - done, plan.describe())
        dataset = _pipeline(rows, read_stored, {"settings": matcher.settings}, matcher.settings, "index", plan, options)
        for batch in _results(dataset, options):
            _check_model(batch, embedder.model_id)
            ok = np.asarray(batch.column("embedded").to_pylist(), dtype=bool)
            values = _vectors(batch, embedder.dim)
            keys, products = batch.column("key").to_pylist(), batch.column("product_id").to_pylist()
            shas, categories = batch.column("sha256").to_pylist(), batch.column("category").to_pylist()
            vectors.upsert([PhotoVector(keys[i], products[i], shas[i], categories[i], values[i])
                            for i in np.flatnonzero(ok)])
            for i, error in enumerate(batch.column("error").to_pylist()):
                if not ok[i]:
                    indexer.unembeddable[keys[i]] = error or "not embedded"
                    log.warning("product %s: its photo %s cannot be embedded (%s)", products[i], keys[i], error)
            done += batch.num_rows
            progress(done, total, f"embedded {done}/{total} photos on Ray")
    indexer.prune()
    return indexer.status()


# -------------------------------------------------------------------------------------------------- import


@dataclass
class _Group:
    product: Product | None  # None: its fields are invalid (`invalid`), usable only if the id exists already
    product_id: str  # the id its photo keys are made with
    explicit: bool  # the source gave the id (photos are added to that product when it exists)
    sources: list[str]
    invalid: str | None = None


def import_path(matcher: Matcher, path: str | Path, progress: Progress | None = None, *,
                options: ClusterOptions | None = None, limits: ImportLimits | None = None) -> ImportReport:
    """`Matcher.import_path` with reading, decoding, embedding and the photo files on Ray, and the vectors and
    rows committed here in bulk, `commit_every` photos at a time. Needs `connected`."""
    options = options or ClusterOptions()
    progress = progress or _no_progress
    limits = limits or ImportLimits(max_file_bytes=matcher.settings.max_upload_bytes)
    with open_source(path, limits=limits, fetch=lambda url: matcher.fetch_url_image(url)[0]) as source:
        report = ImportReport(skipped=list(source.skipped), failed=list(source.failed), source=str(path))
        total = len(source.items)
        progress(0, total, f"importing {total} images from {Path(path).name} on Ray")
        groups, rows = _describe(source.items, report)
        if rows:
            matcher.catalog.table  # noqa: B018 - the tables exist before any worker reads them
            matcher.vectors.table  # noqa: B018
            _quiet_ray_data()
            plan = _plan(matcher.settings, options, local_reads=True)
            log.info("importing %d photos on Ray with %s", total, plan.describe())
            dataset = _pipeline(rows, read_source, {"settings": matcher.settings, "limits": limits},
                                matcher.settings, "import", plan, options)
            _land_results(matcher, dataset, rows, groups, report, options, progress, total)
    log.info("import of %s on Ray: %s", path, report.summary())
    return report


def _describe(items, report: ImportReport) -> tuple[list[_Group], list[pa.Table]]:
    """The import's products (validated here, as the single-machine path does) and the rows for the workers."""
    groups: list[_Group] = []
    rows: list[pa.Table] = []
    columns: dict[str, list] = {name: [] for name in ("group", "position", "product_id", "filename", "source",
                                                       "origin")}
    for group in group_items(items):
        first = group.items[0]
        try:
            product: Product | None = validate_product(
                name=first.name, category=first.category, price=first.price, description=first.description,
                id=first.product_id, attributes=first.attributes or None,
            )
            invalid = None
        except CatalogError as err:
            if group.product_id is None:  # not an existing product either: every row fails now
                report.failed.extend(ImportIssue(item.source, str(err)) for item in group.items)
                continue
            product, invalid = None, str(err)
        product_id = product.id if product is not None else group.product_id
        groups.append(_Group(product, product_id, group.product_id is not None,
                             [item.source for item in group.items], invalid))
        for position, item in enumerate(group.items):
            for name, value in (("group", len(groups) - 1), ("position", position), ("product_id", product_id),
                                ("filename", item.filename), ("source", item.source), ("origin", list(item.origin))):
                columns[name].append(value)
        if len(columns["group"]) >= WALK_CHUNK:
            rows.append(pa.table(columns))
            columns = {name: [] for name in columns}
    if columns["group"]:
        rows.append(pa.table(columns))
    return groups, rows


def _land_results(matcher: Matcher, dataset, dataset_rows: list[pa.Table], groups: list[_Group],
                  report: ImportReport, options: ClusterOptions, progress: Progress, total: int) -> None:
    """Collect each product's photos as they come back; commit complete products in bulk."""
    model_id, dim = matcher.embedder.model_id, matcher.embedder.dim
    pending: dict[int, list[dict]] = {}
    complete: list[tuple[int, list[dict]]] = []
    done = total - sum(table.num_rows for table in dataset_rows)  # rows refused before the job (invalid products)
    try:
        for batch in _results(dataset, options):
            values = _vectors(batch, dim)
            for row, vector in zip(batch.drop_columns(["vector"]).to_pylist(), values, strict=True):
                row["vector"] = vector
                rows = pending.setdefault(row["group"], [])
                rows.append(row)
                if len(rows) == len(groups[row["group"]].sources):
                    complete.append((row["group"], pending.pop(row["group"])))
            _check_model(batch, model_id)
            done += batch.num_rows
            if sum(len(rows) for _g, rows in complete) >= options.commit_every:
                landing, complete = complete, []  # from here on `_land` answers for these rows' files
                _land(matcher, [(groups[g], rows) for g, rows in landing], report)
            progress(done, total, f"{done}/{total}: {report.summary()}")
        if complete:
            landing, complete = complete, []
            _land(matcher, [(groups[g], rows) for g, rows in landing], report)
        progress(done, total, f"{done}/{total}: {report.summary()}")
    except BaseException:
        # Files the workers stored for products this job will not commit now: this job's own keys.
        leftover = [row for _g, rows in complete for row in rows] + [row for rows in pending.values() for row in rows]
        photos.discard(matcher.storage, [k for row in leftover for k in (row.get("key"), row.get("thumbnail_key")) if k],
                       "after an interrupted cluster import")
        raise


def _land(matcher: Matcher, finished: list[tuple[_Group, list[dict]]], report: ImportReport) -> None:
    """One bulk commit: drop the duplicates the workers could not see (within the source, or added meanwhile),
    then vectors, then rows; a row that does not land takes its files and vectors with it."""
    try:
        landings, entries, written = _sort_out(matcher, finished, report)
        matcher.vectors.upsert(entries)
    except BaseException:  # nothing of this batch is committed: every file its workers stored goes
        photos.discard(matcher.storage, [k for _g, rows in finished for row in rows
                                         for k in (row.get("key"), row.get("thumbnail_key")) if k])
        raise
    commit_rows(matcher, landings, report, written, [e.photo_key for e in entries])


def _sort_out(matcher: Matcher, finished: list[tuple[_Group, list[dict]]], report: ImportReport):
    """Which photos land, as which product; the rest are reported (and their files removed)."""
    catalog = matcher.catalog
    existing = catalog.get_many([group.product_id for group, _rows in finished if group.explicit])
    owners = catalog.owners_of({row["sha256"] for _g, rows in finished for row in rows if row["embedded"]})
    landings: list[Landing] = []
    entries: list[PhotoVector] = []
    written: list[str] = []
    unwanted: list[str] = []
    for group, rows in finished:
        product = existing.get(group.product_id) or group.product
        fresh = []
        for row in sorted(rows, key=lambda r: r["position"]):
            if row["skipped"]:
                report.skipped.append(ImportIssue(row["source"], row["skipped"]))
            elif not row["embedded"]:
                report.failed.append(ImportIssue(row["source"], row["error"] or "not imported"))
            elif row["sha256"] in owners:
                report.skipped.append(ImportIssue(
                    row["source"], f"duplicate: the same image is already product {owners[row['sha256']]}"))
                unwanted += [row["key"], row["thumbnail_key"]]
            elif product is None:
                report.failed.append(ImportIssue(row["source"], group.invalid or "invalid product"))
                unwanted += [row["key"], row["thumbnail_key"]]
            else:
                owners[row["sha256"]] = product.id
                fresh.append(row)
        if not fresh or product is None:
            continue
        landing = Landing(product, [Photo(key=r["key"], thumbnail_key=r["thumbnail_key"], sha256=r["sha256"],
                                          width=r["width"], height=r["height"]) for r in fresh],
                          [r["source"] for r in fresh], product.id in existing)
        landings.append(landing)
        written += [k for photo in landing.photos for k in (photo.key, photo.thumbnail_key) if k]
        entries += [PhotoVector(r["key"], product.id, r["sha256"], product.category, r["vector"]) for r in fresh]
    photos.discard(matcher.storage, [k for k in unwanted if k], "after finding it is a duplicate")
    return landings, entries, written
