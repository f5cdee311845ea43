"""`python -m vpm evaluate`: how good is matching on this catalog (vpm/core/evaluate.py); reads only.

Each photo of a product with two or more photos is held out and searched with; a progress bar goes to stderr and
Ctrl-C stops early with a report of what was done (marked as stopped). `--model A --model B` evaluates each model on
the same photos and prints them side by side (vpm/models/model_compare.py): a model other than the catalog's embeds the
photos into a temporary folder, never into the catalog.
"""

from __future__ import annotations

import argparse

from vpm.faces.cli import EXIT_OK, UserError, emit, make_matcher, terminal_safe


def register(sub, command) -> None:
    p = command(
        "evaluate", cmd_evaluate,
        "hold out each photo of every product with 2+ photos, search with it, and report recall@1/@5, the worst "
        "confusions, each signal's part and the fitted score (changes nothing)",
    )
    p.add_argument(
        "--rerank", action=argparse.BooleanOptionalAction, default=None,
        help="verify the top candidates by keypoints, as searches do (default: VPM_RERANK)",
    )
    p.add_argument("--max-queries", type=int, default=None,
                   help="hold out at most this many photos (a seeded sample; default 2000)")
    p.add_argument(
        "--model", action="append", default=None, metavar="MODEL",
        help="evaluate this model (VPM_MODEL's syntax: a hub name such as facebook/dinov2-small or "
             "google/siglip2-base-patch16-224, a folder, efficientnet-lite0); repeat it to compare models side by "
             "side on the same photos. A model other than the catalog's embeds the photos into a temporary folder: "
             "the catalog and its vectors are never changed",
    )

    command(
        "calibrate", cmd_calibrate,
        "fit the photo score on this catalog's held-out photos (and its own projection, kept only where it helps) "
        "and keep it beside the tables; imports do this by themselves",
    )


def cmd_evaluate(args) -> int:
    from vpm.core.evaluate import LATENCY_PHOTOS, MAX_QUERIES, Evaluation, NothingToEvaluate, report_text
    from vpm.faces.cli_progress import ProgressBar

    limit = MAX_QUERIES if args.max_queries is None else args.max_queries
    if limit < 1:
        raise UserError(f"--max-queries must be at least 1 (got {limit})")
    matcher = make_matcher(args)
    if args.model:
        return _compare(args, matcher, limit)
    try:
        evaluation = Evaluation(matcher, rerank=args.rerank, max_queries=limit, latency_photos=LATENCY_PHOTOS)
    except NothingToEvaluate as err:
        raise UserError(str(err)) from None
    with ProgressBar("photo") as bar:
        try:
            report = evaluation.run(progress=bar)
        except KeyboardInterrupt:  # stop early: what was done is still worth reporting
            evaluation.stopped = True
            report = evaluation.report()
    names = {}
    ids = sorted({c.wrong_product for c in report.confusions} | {c.query_product for c in report.confusions})
    if ids:
        names = {pid: p.name for pid, p in matcher.files.products(ids).items()}
    document = report.as_dict()
    for confusion in document["confusions"]:
        confusion["wrong_name"] = names.get(confusion["wrong_product"])
        confusion["query_name"] = names.get(confusion["query_product"])
    emit(args, document, terminal_safe(report_text(report, lambda pid: names.get(pid, pid))))
    return EXIT_OK


def _compare(args, matcher, limit: int) -> int:
    """`--model A --model B`: each model evaluated on the same held-out photos, side by side (vpm/models/model_compare.py)."""
    from vpm.core.errors import VpmError
    from vpm.faces.cli_progress import ProgressBar
    from vpm.models.model_compare import ModelComparison, comparison_text

    try:
        comparison = ModelComparison(matcher, args.model, rerank=args.rerank, max_queries=limit)
    except VpmError as err:
        raise UserError(str(err)) from None
    try:
        try:
            comparison.load()
        except VpmError as err:
            raise UserError(str(err)) from None
        try:
            while comparison.embedding:
                with ProgressBar("photo") as bar:
                    comparison.embed_next(bar)
            with ProgressBar("photo") as bar:
                while not comparison.finished:
                    comparison.step()
                    bar(comparison.done, comparison.total)
            report = comparison.report()
        except KeyboardInterrupt:  # stop early: the models evaluated so far are still worth reporting
            report = comparison.stop()
        except VpmError as err:
            raise UserError(str(err)) from None
    finally:
        comparison.close()
    emit(args, report.as_dict(), terminal_safe(comparison_text(report)))
    return EXIT_OK


def cmd_calibrate(args) -> int:
    from vpm.core.evaluate import score_sentence
    from vpm.faces.cli_progress import ProgressBar

    matcher = make_matcher(args)
    with ProgressBar("photo") as bar:
        kept = matcher.calibrate(bar)
    if kept is None:
        raise UserError(
            "nothing to fit: the catalog needs at least two products with a vector (photos of several products, "
            "best two or more photos each), then run `python -m vpm calibrate`"
        )
    model = kept.score
    recall = model.recall.get("recall@1")
    text = (f"model {model.model_id}: {model.described}"
            + (" with this catalog's projection" if kept.projection is not None else "")
            + (f"; recall@1 {recall:.1%}" if recall is not None else "") + f"\n{score_sentence(model)}")
    emit(args, {"score": model.as_dict(), "projection": kept.projection is not None}, terminal_safe(text))
    return EXIT_OK
