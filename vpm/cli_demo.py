"""`python -m vpm demo`: load the sample catalog shipped with the app (vpm.sample), with a progress bar."""

from __future__ import annotations

from .cli import EXIT_ERROR, EXIT_OK, emit, make_matcher, terminal_safe
from .cli_progress import ProgressBar


def register(sub, command) -> None:
    command("demo", cmd_demo, "load the sample catalog shipped with the app (84 products); photos already there are "
                              "skipped, so it is safe to run again")


def cmd_demo(args) -> int:
    from .sample import load_sample

    matcher = make_matcher(args)
    with ProgressBar("img") as bar:
        report = load_sample(matcher, progress=bar)
    lines = [f"{report.source}: {report.summary()}"]
    if report.failed:
        lines += ["failed:"] + [f"  {issue.source}: {issue.reason}" for issue in report.failed]
    lines.append(f"{matcher.count_products()} products in the catalog now; try `python -m vpm search PHOTO`")
    emit(args, report.as_dict(), terminal_safe("\n".join(lines)))
    return EXIT_ERROR if report.failed else EXIT_OK
