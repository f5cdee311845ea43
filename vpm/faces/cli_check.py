"""`python -m vpm check [--repair [--yes]]`: the catalog's consistency verdict, and the way back (vpm/core/repair.py).

Every change is said before it is made. Setting damaged table versions aside and deleting orphan files ask for a
yes on a terminal; --yes answers it beforehand; anywhere else the command refuses, having changed nothing.
Embedding what is missing only adds derived data, so it asks nothing.
"""

from __future__ import annotations

import sys
from typing import Any

from vpm.faces.cli import EXIT_ERROR, EXIT_OK, UserError, emit, make_matcher, terminal_safe


def register(sub, command) -> None:
    p = command(
        "check", cmd_check,
        "check that the catalog's tables open, that every file products point at is there and every file belongs "
        "to a product, and that every photo has its vector and keypoints; exit 1 on a failure",
    )
    p.add_argument(
        "--repair", action="store_true",
        help="then mend what can be mended: set a damaged table's unreadable newest versions aside (kept, never "
        "deleted), delete orphan files (not ones written in the last minutes), embed what is missing",
    )
    p.add_argument("--yes", action="store_true", help="with --repair: do it without asking (for scripts)")


def cmd_check(args) -> int:
    from vpm.core import repair

    if args.yes and not args.repair:
        raise UserError("--yes goes with --repair (a check alone changes nothing)")
    matcher = make_matcher(args)
    found = repair.check(matcher)
    if not args.repair:
        emit(args, found.as_dict(), terminal_safe("\n".join([*found.lines(), f"overall: {found.status}"])))
        return EXIT_ERROR if found.status == "fail" else EXIT_OK
    return _repair(args, matcher, found)


def _repair(args, matcher, found) -> int:
    from vpm.backends import table_repair
    from vpm.core import repair

    document: dict[str, Any] = {"before": found.as_dict()}
    say = _Say(args)
    say("\n".join([*found.lines(), f"before the repair: {found.status}"]))

    # 1. Tables that will not open: everything else needs the products table.
    if found.fixable:
        say("\nDamaged tables:", *[f"  {t.plan_line()}" for t in found.fixable])
        count = sum(len(t.plan.bad) for t in found.fixable)
        what = f"setting {count} version file{'s' if count > 1 else ''} aside"
        if _confirm(args, f"Set {'it' if count == 1 else 'them'} aside (moved to "
                          f"{matcher.files.set_aside_folder}, never deleted)?", what):
            try:
                done = repair.set_aside_damaged(matcher, found.fixable)
            except table_repair.RepairError as err:
                raise UserError(str(err)) from None
            document["set_aside"] = [d.as_dict() for d in done]
            say(*[f"  done: {d.summary()}" for d in done])
            found = repair.check(matcher)
        else:
            say("  nothing was set aside")
    for table in found.damaged:
        say(f"\nnot repaired: {table.problem}")
    if any(t.name == repair.PRODUCTS for t in found.damaged) or found.report is None:
        return _finish(args, document, found, say)

    # 2. Orphan files.
    if found.report.orphans:
        plan = repair.plan_orphans(matcher, found.report, records=found.set_asides)
        document["orphans"] = {"plan": plan.as_dict()}
        say("\nOrphan files:", *[f"  {line}" for line in plan.lines()])
        if plan.delete:
            what = f"deleting {len(plan.delete)} orphan file{'s' if len(plan.delete) > 1 else ''}"
            if _confirm(args, f"Delete {'it' if len(plan.delete) == 1 else 'them'} permanently?", what):
                result = repair.delete_planned(matcher, plan)
                document["orphans"]["result"] = result.as_dict()
                say(f"  done: {result.summary()}", *[f"  kept {key}: {why}" for key, why in result.kept])
            else:
                say("  nothing was deleted")

    # 3. What is missing from the vectors, keypoints and package text: added, never removed, so no question.
    embedding = repair.plan_embedding(matcher, found)
    if embedding.needed:
        document["embedding"] = {"plan": embedding.as_dict()}
        say("\nEmbedding:", f"  {embedding.line()}")
        status = _embed(matcher)
        document["embedding"]["status"] = status.as_dict()
        say(f"  done: vectors for {status.vectors}/{status.photos} photos ({status.model_id})"
            + "".join(f"\n  {problem}" for problem in status.problems))
    return _finish(args, document, repair.check(matcher), say)


def _embed(matcher):
    from vpm.core import repair
    from vpm.faces.cli_progress import ProgressBar
    from vpm.models.embeddings import EmbeddingError

    try:
        with ProgressBar("img") as bar:
            return repair.embed_missing(matcher, progress=bar)
    except EmbeddingError as err:
        raise UserError(str(err)) from None


def _finish(args, document: dict[str, Any], after, say) -> int:
    document["after"] = after.as_dict()
    document["status"] = after.status
    if getattr(args, "json", False):
        emit(args, document, "")
    else:
        say("\nAfter the repair:", *after.lines(), f"overall: {after.status}")
    return EXIT_ERROR if after.status == "fail" else EXIT_OK


class _Say:
    """Lines for people: stdout, or stderr with --json (stdout then holds only the JSON document)."""

    def __init__(self, args):
        self.stream = sys.stderr if getattr(args, "json", False) else sys.stdout

    def __call__(self, *lines: str) -> None:
        print(terminal_safe("\n".join(lines)), file=self.stream, flush=True)


def _confirm(args, question: str, what: str) -> bool:
    """--yes, or a yes typed on a terminal; refuses (nothing changed by this step) where nobody can be asked."""
    if args.yes:
        return True
    if not _interactive():
        raise UserError(f"stopped before {what}: nobody can be asked to confirm here (not a terminal); run it again "
                        "with --yes to go ahead, or in a terminal to be asked. Nothing was changed")
    print(f"{question} [y/N] ", end="", file=sys.stderr, flush=True)
    return sys.stdin.readline().strip().lower() in ("y", "yes")


def _interactive() -> bool:
    try:
        return sys.stdin.isatty()
    except (AttributeError, ValueError):  # no stdin at all, or a closed one
        return False
