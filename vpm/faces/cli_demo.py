"""`python -m vpm demo`: load the sample catalog shipped with the app (vpm.core.sample), with a progress bar."""

from __future__ import annotations

from vpm.faces.cli import EXIT_ERROR, EXIT_OK, emit, make_matcher, terminal_safe
from vpm.faces.cli_progress import ProgressBar


def register(sub, command) -> None:
    from vpm.core.sample import LOAD_TIME

    command("demo", cmd_demo, f"load the sample catalog shipped with the app (84 products; {LOAD_TIME}); photos "
                              "already there are skipped, so it is safe to run again")


def cmd_demo(args) -> int:
    from vpm.core.sample import load_sample

    matcher = make_matcher(args)
    with ProgressBar("img") as bar:
        report = load_sample(matcher, progress=bar)
    # One summary line on stdout (the bars and any warning went to stderr), then what failed, if anything.
    lines = [f"Loaded {report.source}: {report.summary()}. {matcher.count_products()} products in the catalog now; "
             "try `python -m vpm search PHOTO`"]
    if report.failed:
        lines += ["failed:"] + [f"  {issue.source}: {issue.reason}" for issue in report.failed]
    emit(args, report.as_dict(), terminal_safe("\n".join(lines)))
    return EXIT_ERROR if report.failed else EXIT_OK
