"""`python -m vpm search | import | index`: search the catalog, bulk-import images, maintain the vector index.

Progress bars go to stderr, so `--json` output on stdout stays one parseable document. `import` and `index`
take `--cluster ray[://ADDRESS]` to run their heavy part on Ray (vpm/backends/cluster.py, imported only then).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vpm.core.presentation import format_percent, signals_text
from vpm.core.product_schema import OPTIONAL_COLUMNS, REQUIRED_COLUMNS
from vpm.faces.cli import EXIT_ERROR, EXIT_OK, UserError, emit, make_matcher, positive, terminal_safe
from vpm.faces.cli_progress import ProgressBar


def register(sub, command) -> None:
    """Add this module's subcommands to the parser."""
    p = command("search", cmd_search, "find the catalog products that look like a photo (or match a description)")
    p.add_argument(
        "images", nargs="*", metavar="IMAGE",
        help="photo(s) to search with; several are separate searches in one batch, unless --together",
    )
    p.add_argument("--together", action="store_true",
                   help="the IMAGEs are photos of one product (front, back, side): one query of all of them")
    p.add_argument("--url", help="search with the image at this http(s) URL")
    p.add_argument("--text", help="search by words (with CLIP fused with a search of names, brands and package "
                   "text; with a model that reads photos only, that search alone), or refine the photo with them")
    p.add_argument("--text-weight", type=float, metavar="W",
                   help="how much --text weighs beside the photo, 0 to 3 (default 1: as much as the photo)")
    p.add_argument("--not", dest="not_ids", action="append", metavar="PRODUCT_ID",
                   help="not this product: leave it out and move away from its look (repeat for several; every "
                   "model)")
    p.add_argument("--top-k", type=int, default=10, help="at most this many results (default 10)")
    p.add_argument(
        "--threshold", type=float,
        help="minimum score, 0..1 (e.g. 0.8 = 80%%): for photos how often such a match is right (the catalog's "
        "calibration), for --text the text-image similarity; default: the calibration's, or the model's",
    )
    p.add_argument("--category", action="append", help="only this category (repeat for several)")
    p.add_argument(
        "--rerank", action=argparse.BooleanOptionalAction, default=None,
        help="verify the top candidates by keypoint matches (default: VPM_RERANK, on unless set to false)",
    )
    p.add_argument(
        "--box", metavar="X,Y,W,H",
        help="search only this region of the photo, in pixels of the upright photo (e.g. a shelf photo's product)",
    )

    p = command("similar", cmd_similar, "more like this: the products most like one of the catalog's, by its stored "
                "photos' vectors (nothing embedded: works with every model, offline included)")
    p.add_argument("id", metavar="PRODUCT_ID")
    p.add_argument("--top-k", type=positive, default=10, help="at most this many results (default 10)")
    p.add_argument("--category", action="append", help="only this category (repeat for several)")

    p = command(
        "import", cmd_import,
        f"add every image of a folder, a .zip or a .csv (columns {', '.join(REQUIRED_COLUMNS)}"
        f"[, {', '.join(OPTIONAL_COLUMNS)}]); exit 1 if any image failed",
    )
    p.add_argument("path", metavar="PATH")
    _cluster_arguments(p)

    p = command("index", cmd_index, "embed the photos missing from the search index (and find their keypoints, to "
                "verify matches) and drop the vectors and keypoints of removed ones")
    p.add_argument("--rebuild", action="store_true", help="re-embed every product, not only the missing ones")
    p.add_argument("--check", action="store_true", help="only report; embed nothing; exit 1 if vectors are missing")
    _cluster_arguments(p)


def _cluster_arguments(p) -> None:
    p.add_argument(
        "--cluster", metavar="ray[://ADDRESS]", type=_cluster_address,
        help="read, decode, embed and build the vector index on a Ray cluster (pip install -r requirements-cluster.txt): 'ray' joins "
        "RAY_ADDRESS's cluster, or starts Ray on this machine; 'ray://HOST:10001' connects through Ray Client",
    )
    p.add_argument("--workers", type=positive, metavar="N",
                   help="with --cluster: model workers (default: one per GPU of the cluster, else one per CPU)")


def _cluster_address(text: str) -> str:
    """'ray' -> '' (RAY_ADDRESS or a local Ray); 'ray://host:port' as it is. Ray itself is not imported here."""
    text = text.strip()
    if text == "ray":
        return ""
    if text.startswith("ray://") and len(text) > len("ray://"):
        return text
    raise argparse.ArgumentTypeError(f"{text!r}: write ray (RAY_ADDRESS, or Ray on this machine) or ray://HOST:PORT")


def _cluster(args):
    """The cluster module and its options, or a clear message when Ray is not installed."""
    try:
        from vpm.backends import cluster
    except ImportError as err:
        raise UserError(
            f"--cluster needs Ray ({err}): install it with pip install -r requirements-cluster.txt"
        ) from None
    return cluster, cluster.ClusterOptions(address=args.cluster or None, workers=args.workers)


# ---------------------------------------------------------------------------------------------- search


def cmd_search(args) -> int:
    from vpm.models.embeddings import EmbeddingError

    photo = bool(args.images) or args.url is not None
    if (bool(args.images) and args.url is not None) or (not photo and args.text is None):
        raise UserError("give exactly one of: IMAGE... , --url URL or --text TEXT (--text may also refine a photo)")
    if args.together and len(args.images) < 2:
        raise UserError("--together searches several IMAGE arguments as one query: give two or more photos")
    if args.text_weight is not None and not (photo and args.text is not None):
        raise UserError("--text-weight weighs --text beside a photo: give IMAGE... or --url with --text")
    if args.top_k < 1:
        raise UserError(f"--top-k must be at least 1 (got {args.top_k})")
    if args.threshold is not None and not -1.0 <= args.threshold <= 1.0:
        raise UserError(f"--threshold is a score between 0 and 1 (e.g. 0.8 for 80%), not {args.threshold}")
    options = {"top_k": args.top_k, "threshold": args.threshold, "categories": args.category}
    if not photo and (args.box is not None or args.rerank is not None):
        raise UserError("--box and --rerank apply to a photo (IMAGE... or --url), not to --text")
    if photo:
        from vpm.core.images import (
            parse_box,  # numpy and Pillow: loaded by the commands that use them, not by every one
        )

        options.update(rerank=args.rerank, box=None if args.box is None else parse_box(args.box))
    images = [_read(path) for path in args.images]
    matcher = make_matcher(args)
    try:
        responses = _search(matcher, args, images, options, photo)
    except EmbeddingError as err:
        raise UserError(str(err)) from None
    for notice in dict.fromkeys(n for r in responses if (n := getattr(r, "notice", None))):
        print(f"note: {notice}", file=sys.stderr)  # e.g. words beside a photo with a model that reads photos only
    documents = [r.as_dict() for r in responses]
    document = documents if len(responses) > 1 else documents[0]
    emit(args, document, terminal_safe("\n\n".join(_table(r) for r in responses)))
    return EXIT_OK


def _search(matcher, args, images, options, photo: bool) -> list:
    """One response per query: the IMAGEs together or each alone, --url, or words; mixed with --text and --not."""
    mix = {"text": args.text, "text_weight": args.text_weight, "not_ids": args.not_ids or ()}
    if args.together:
        return [matcher.search_mixed(images, **mix, **options)]
    if not args.not_ids and (args.text is None or not photo):  # a plain search, as before
        if images:
            return matcher.search_images(images, **options)
        if args.url is not None:
            return [matcher.search_url(args.url, **options)]
        return [matcher.search_text(args.text, **options)]
    if images:
        return [matcher.search_mixed([image], **mix, **options) for image in images]
    return [matcher.search_mixed(url=args.url, **mix, **options)]


def cmd_similar(args) -> int:
    from vpm.core.catalog import ProductNotFound

    matcher = make_matcher(args)
    try:
        response = matcher.similar(args.id, top_k=args.top_k, categories=args.category)
    except ProductNotFound:
        raise UserError(f"no product with id {args.id!r}: `python -m vpm list` shows the ids") from None
    emit(args, response.as_dict(), terminal_safe(_table(response)))
    return EXIT_OK


def _read(path: str) -> tuple[bytes, str]:
    try:
        return Path(path).read_bytes(), Path(path).name
    except OSError as err:
        raise UserError(f"cannot read {path}: {err.strerror or err}") from None


def _table(response) -> str:
    head = f"query: {response.query} · model {response.model} · {response.took_ms:.0f} ms"
    if response.box is not None:
        head += f" · region {response.box}"
    if response.threshold is not None:
        head += f" · threshold {response.threshold * 100:.0f}%"
    if getattr(response, "fusion", None):
        head += f" · {len(response.photos)} photos as one query ({response.fusion})"
    if getattr(response, "text_weight", None) is not None:
        head += f" · words weigh {response.text_weight:g}"
    if getattr(response, "not_ids", ()):
        head += f" · rejected looks subtracted at {response.negative_weight:g}"
    if getattr(response, "answered_by", ""):
        head += f" · answered by: {response.answered_by}"
    if response.verified:
        head += " · verified by keypoints" + (f" with {response.verified_with}" if getattr(response, "fusion", None)
                                              else "") + (" (order changed)" if response.reranked else "")
    if not response.results:
        if response.score_kind == "words":
            from vpm.core.searching import NO_WORDS_MATCH

            return f"{head}\n{NO_WORDS_MATCH}"
        if response.best_score is None:
            return head + "\nno products to search (the catalog, or the chosen category, is empty)"
        best = response.best_match
        return head + (
            f"\nno product scored at least {format_percent(response.threshold)}; the closest is "
            f"{best.product.name if best else '?'} at {format_percent(response.best_score)}: lower --threshold to see it"
        )
    words_alone = response.score_kind == "words"  # ranked by words: where they matched, no percentage
    rows = [("#", "name", "category", "id") if words_alone else ("#", "score", "name", "category", "id")]
    for rank, match in enumerate(response.results, 1):
        p = match.product
        score = () if words_alone else (format_percent(match.score),)
        rows.append((str(rank), *score, _clip(p.name, 40), _clip(p.category, 20), p.id))
    if response.score_kind == "match":  # what each photo result's score is made of
        rows = [(*row, "why" if i == 0 else signals_text(m))
                for i, (row, m) in enumerate(zip(rows, [None, *response.results], strict=True))]
    elif any(m.matched_fields for m in response.results):  # words: where they were found
        rows = [(*row, "matched in" if i == 0 else ", ".join(m.matched_fields))
                for i, (row, m) in enumerate(zip(rows, [None, *response.results], strict=True))]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    right = 1 if words_alone else 2  # the rank and the score line up on the right
    lines = [
        "  ".join(cell.rjust(w) if i < right else cell.ljust(w)
                  for i, (cell, w) in enumerate(zip(row, widths, strict=True))).rstrip()
        for row in rows
    ]
    return head + "\n" + "\n".join(lines)


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


# ---------------------------------------------------------------------------------------------- import


def cmd_import(args) -> int:
    from vpm.models.embeddings import EmbeddingError

    matcher = make_matcher(args)
    try:
        with ProgressBar("img") as bar:
            if args.cluster is not None:
                cluster, options = _cluster(args)
                try:
                    with cluster.connected(options):
                        report = cluster.import_path(matcher, args.path, progress=bar, options=options)
                except cluster.ClusterError as err:
                    raise UserError(str(err)) from None
            else:
                report = matcher.import_path(args.path, progress=bar)
    except EmbeddingError as err:  # ImportSourceError is a ValueError: the CLI prints it as it is
        raise UserError(str(err)) from None
    lines = [f"{args.path}: {report.summary()}"]
    for title, issues in (("skipped", report.skipped), ("failed", report.failed)):
        if issues:
            lines.append(f"{title}:")
            lines += [f"  {issue.source}: {issue.reason}" for issue in issues]
    emit(args, report.as_dict(), terminal_safe("\n".join(lines)))
    return EXIT_ERROR if report.failed else EXIT_OK


# ----------------------------------------------------------------------------------------------- index


def cmd_index(args) -> int:
    from vpm.models.embeddings import EmbeddingError

    matcher = make_matcher(args)
    try:
        if args.check:
            status = matcher.index_status()
        elif args.cluster is not None:
            cluster, options = _cluster(args)
            try:
                with ProgressBar("img") as bar, cluster.connected(options):
                    status = cluster.reindex(matcher, rebuild=args.rebuild, progress=bar, options=options)
            except cluster.ClusterError as err:
                raise UserError(str(err)) from None
        else:
            with ProgressBar("img") as bar:
                status = matcher.reindex(rebuild=args.rebuild, progress=bar)
    except EmbeddingError as err:
        raise UserError(str(err)) from None
    text = (
        f"model {status.model_id}: vectors for {status.vectors}/{status.photos} photos of {status.products} products"
        + (f"; {status.missing} missing (run python -m vpm index)" if status.missing else "")
        + "".join(f"\n  {problem}" for problem in status.problems)
    )
    if matcher.has_features_table():
        keypoints = matcher.features.count()
        text += f"\nkeypoints (to verify matches) for {min(keypoints, status.photos)}/{status.photos} photos"
    if matcher.package_text_default and matcher.has_text_table():
        read = matcher.texts.count()
        text += f"\npackage text (read on the photos) for {min(read, status.photos)}/{status.photos} photos"
    emit(args, status.as_dict(), text)
    return EXIT_OK if status.missing == 0 else EXIT_ERROR
