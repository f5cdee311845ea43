"""`python -m vpm migrate` (local catalog -> S3) and `python -m vpm costs` (what the catalog costs on S3, or with
--products the whole system at a size: vpm.core.capacity)."""

from __future__ import annotations

import argparse
import sys

from vpm.core.health import as_report
from vpm.faces.cli import EXIT_ERROR, EXIT_OK, EXIT_USAGE, emit, non_negative
from vpm.faces.cli_progress import ProgressBar


def register(sub, command) -> None:
    p = command("migrate", cmd_migrate, "copy the local catalog to the S3 bucket in the settings (never deletes)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--check-only", action="store_true",
                      help="check credentials, bucket, permissions and the local catalog; writes only a "
                           "probe object, then removes it")
    mode.add_argument("--dry-run", action="store_true", help="print the plan, file by file; write nothing")
    mode.add_argument("--force", action="store_true", help="migrate without asking for confirmation")
    p.add_argument("--overwrite", action="store_true",
                   help="replace bucket objects and products that differ from the local ones (default: report them)")
    p.add_argument("--workers", type=_workers, default=None,
                   help="uploads in flight, fixed (1-32; default: as many as the bucket takes, found as it runs)")

    p = command("costs", cmd_costs, "estimate what the active catalog costs on S3 (one-time and monthly); with "
                                    "--products, the whole system at that size (capacity model, docs/scaling.md)")
    p.add_argument("--searches", "--searches-per-month", dest="searches", default=1000, metavar="N",
                   type=_count("searches a month", 0, "MAX_SEARCHES"), help="searches a month (default 1000)")
    p.add_argument("--images-per-search", type=non_negative, default=10, metavar="N",
                   help="result images shown per search (default 10)")
    p.add_argument("--cdn", action="store_true", help="serve images through CloudFront")
    p.add_argument("--originals", action="store_true", help="results show the originals, not thumbnails")
    size = p.add_argument_group("the whole system at a size nobody has run yet")
    size.add_argument("--products", type=_count("products", 1, "MAX_PRODUCTS"), metavar="N", nargs="+",
                      help="products, e.g. 250000, 10M or 1B: bucket, CDN, search replicas, a re-embed and an "
                           "index build at that size, from measured unit costs (default: the active catalog); "
                           "several sizes print one table comparing them (docs/scaling.md's)")
    for flag, name, limit, what in _SIZE_FLAGS[1:]:
        size.add_argument(flag, type=_count(name, 1, limit), metavar="N", help=what)


# The whole-system flags: (flag, name in messages, the capacity module's maximum, help). All need --products.
_SIZE_FLAGS = (
    ("--products", "products", "MAX_PRODUCTS", ""),
    ("--photos-per-product", "photos per product", "MAX_PHOTOS_PER_PRODUCT", "photos of each product (default 1)"),
    ("--replicas", "replicas", "MAX_REPLICAS", "search replicas always on (default: as many as the load needs)"),
    ("--workers", "workers", "MAX_WORKERS", "machines a re-embed and an index build run on (default 10)"),
    ("--photo-bytes", "photo bytes", "MAX_PHOTO_BYTES",
     "average bytes of a photo (default: measured on the sample photos, 26,530; a shop's are often larger)"),
)


def _count(name: str, minimum: int, limit: str):
    """An argparse type for a count as people type it (250000, 250,000, 10M, 1B), within the capacity model."""

    def parse(text: str) -> int:
        from vpm.core import capacity

        try:
            return capacity.parse_count(text, name, minimum=minimum, maximum=getattr(capacity, limit))
        except capacity.CapacityError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    return parse


def _workers(text: str) -> int:
    from vpm.migration import MAX_WORKERS

    value = non_negative(text)
    if not 1 <= value <= MAX_WORKERS:
        raise argparse.ArgumentTypeError(f"must be between 1 and {MAX_WORKERS}, got {value}")
    return value


# ------------------------------------------------------------------------------------------- migrate


def cmd_migrate(args) -> int:
    from vpm.migration import Migration

    migration = Migration(args.settings, workers=args.workers)
    if args.check_only:
        checks = migration.check()
        report = as_report(checks)
        lines = [_check_line(c) for c in checks]
        emit(args, report, "\n".join(lines) + f"\noverall: {report['status']}")
        return EXIT_OK if report["status"] != "fail" else EXIT_ERROR

    with ProgressBar("file", desc="planning", leave=False, terminal_only=True) as bar:
        plan = migration.plan(overwrite=args.overwrite, progress=bar.files_and_bytes)
    if args.dry_run:
        emit(args, {"dry_run": True, "plan": plan.as_dict()}, plan.as_text() + "\n\n(dry run: nothing was written)")
        return EXIT_OK
    if not plan.compared:  # no credentials: the plan is the local catalog's alone, to look at, not to run
        from vpm.migration import NOT_RUNNABLE, MigrationError

        raise MigrationError(NOT_RUNNABLE.replace("preview the plan again", "run it again (`--dry-run` shows the "
                                                  "plan without credentials)"))

    if plan.nothing_to_do:
        report = migration.execute(plan)
        emit(args, report.as_dict(), "nothing to do: the bucket already has the whole catalog\n" + report.as_text())
        return report.exit_code

    if not args.force:
        if not sys.stdin.isatty():
            print("error: refusing to ask for confirmation: stdin is not a terminal; use --force to migrate "
                  "without asking, or --dry-run to see the plan", file=sys.stderr)
            return EXIT_USAGE
        print(plan.as_text(list_files=False), file=sys.stderr)
        answer = input(f"{_what_it_does(plan)} to {plan.target} (plan {plan.fingerprint()[:12]})? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("cancelled: nothing was written", file=sys.stderr)
            return EXIT_ERROR

    try:
        with ProgressBar(desc="uploading", byte_sizes=True, terminal_only=True) as bar:
            report = migration.execute(plan, progress=bar.files_and_bytes)
    except KeyboardInterrupt:
        print("stopped: every object already uploaded is complete and the bucket's catalog never points at a "
              "missing one; run the same command again to finish", file=sys.stderr)
        raise
    emit(args, report.as_dict(), report.as_text())
    return report.exit_code


def _what_it_does(plan) -> str:
    """'Upload 5 files, write 2 products and copy 5 vectors': what confirming starts."""
    from vpm.core.presentation import plural

    counts = ((len(plan.to_upload), "upload", "file"), (len(plan.products.to_write), "write", "product"),
              (plan.vectors_to_copy, "copy", "vector"))
    parts = [f"{verb} {plural(n, noun)}" for n, verb, noun in counts if n] or ["verify the bucket"]
    text = ", ".join(parts[:-1]) + (" and " if len(parts) > 1 else "") + parts[-1]
    return text[0].upper() + text[1:]


def _check_line(c) -> str:
    fix = f"\n       fix: {c.fix}" if c.fix and c.status != "pass" else ""
    return f"[{c.status.upper():4}] {c.name}: {c.detail}{fix}"


# --------------------------------------------------------------------------------------------- costs


def cmd_costs(args) -> int:
    if args.products is not None:
        return _system_costs(args)
    given = [flag for flag, *_ in _SIZE_FLAGS[1:] if getattr(args, flag[2:].replace("-", "_")) is not None]
    if given:
        print(f"error: {', '.join(given)} size the whole system: give --products N too (e.g. --products 10M)",
              file=sys.stderr)
        return EXIT_USAGE
    from vpm.core.costs import Traffic, estimate
    from vpm.core.storage import make_storage
    from vpm.migration import catalog_size

    settings = args.settings
    storage = make_storage(settings)
    size = catalog_size(storage, settings)
    traffic = Traffic(searches_per_month=args.searches, images_per_search=args.images_per_search,
                      use_cdn=args.cdn, serve_thumbnails=not args.originals)
    result = estimate(size, traffic)
    header = (f"Catalog in {storage.description}: {size.images:,} images, {size.thumbnails:,} thumbnails, "
              f"{size.metadata_text()}; {size.bytes:,} bytes in all\n")
    emit(args, {"storage": storage.description, **result.as_dict()}, header + result.as_text())
    return EXIT_OK


def _system_costs(args) -> int:
    """The whole system at --products N: the capacity model's figures and the bill (vpm.core.capacity); at several
    sizes, the table comparing them."""
    from vpm.core.capacity import SystemSize, comparison_markdown, system_estimate

    assumptions = {"photos_per_product": args.photos_per_product or 1, "searches_per_month": args.searches,
                   "replicas": args.replicas, "workers": args.workers or 10, "images_per_search": args.images_per_search,
                   "use_cdn": args.cdn, "serve_thumbnails": not args.originals, "photo_bytes": args.photo_bytes}
    results = [system_estimate(SystemSize(products=n, **assumptions)) for n in args.products]
    if len(results) == 1:
        emit(args, results[0].as_dict(), results[0].as_text())
    else:
        emit(args, {"sizes": [r.as_dict() for r in results]}, comparison_markdown(tuple(args.products), **assumptions))
    return EXIT_OK
