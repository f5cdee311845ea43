"""`python -m vpm evaluate`: how good is matching on this catalog (vpm/evaluate.py); reads only.

Each photo of a product with two or more photos is held out and searched with; a progress bar goes to stderr and
Ctrl-C stops early with a report of what was done (marked as stopped).
"""

from __future__ import annotations

import argparse

from .cli import EXIT_OK, UserError, emit, make_matcher, terminal_safe


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

    command(
        "calibrate", cmd_calibrate,
        "fit the photo score on this catalog's held-out photos (and its own projection, kept only where it helps) "
        "and keep it beside the tables; imports do this by themselves",
    )


def cmd_evaluate(args) -> int:
    from .cli_progress import ProgressBar
    from .evaluate import MAX_QUERIES, Evaluation, NothingToEvaluate, report_text

    limit = MAX_QUERIES if args.max_queries is None else args.max_queries
    if limit < 1:
        raise UserError(f"--max-queries must be at least 1 (got {limit})")
    matcher = make_matcher(args)
    try:
        evaluation = Evaluation(matcher, rerank=args.rerank, max_queries=limit)
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
        names = {pid: p.name for pid, p in matcher.catalog.get_many(ids).items()}
    document = report.as_dict()
    for confusion in document["confusions"]:
        confusion["wrong_name"] = names.get(confusion["wrong_product"])
        confusion["query_name"] = names.get(confusion["query_product"])
    emit(args, document, terminal_safe(report_text(report, lambda pid: names.get(pid, pid))))
    return EXIT_OK


def cmd_calibrate(args) -> int:
    from .cli_progress import ProgressBar
    from .evaluate import score_sentence

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
