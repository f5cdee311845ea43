"""`python -m vpm ...`: the command line over the same Matcher the app and API use.

`--json` prints one JSON document on stdout; errors go to stderr with a non-zero exit code. Commands that
belong to other modules register themselves through COMMAND_MODULES (each has `register(subparsers)`).
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from pathlib import Path

from vpm.core import product_schema
from vpm.core.catalog import MAX_PAGE, MAX_PRICE
from vpm.core.config import ConfigError, configure_logging, load_settings
from vpm.core.errors import VpmError, log_unexpected, something_went_wrong
from vpm.core.presentation import format_price, plural

log = logging.getLogger(__name__)

# Modules that add subcommands: each defines register(subparsers) and sets `func` on its parsers.
COMMAND_MODULES: list[str] = ["vpm.faces.cli_search", "vpm.faces.cli_quality", "vpm.faces.cli_migrate", "vpm.faces.cli_serve", "vpm.faces.cli_demo",
                            "vpm.faces.cli_check"]

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2
# Commands that keep running and log as they go (at LOG_LEVEL, INFO by default). Every other command answers and
# exits: it logs only what went wrong (WARNING and up, as "warning: ..."), as pip and git do, unless LOG_LEVEL is set.
LONG_RUNNING = frozenset({"serve"})


def emit(args, document, text: str) -> None:
    """One JSON document with --json, else the human-readable text."""
    if getattr(args, "json", False):
        print(json.dumps(document, indent=2, ensure_ascii=False, default=str))
    else:
        print(text)


def make_matcher(args):
    from vpm.core.wiring import build_matcher

    return build_matcher(args.settings)


def _read_images(paths: list[str]) -> list[tuple[bytes, str]]:
    images = []
    for name in paths:
        path = Path(name)
        try:
            images.append((path.read_bytes(), path.name))
        except OSError as err:
            raise UserError(f"cannot read {path}: {err.strerror or err}") from None
    return images


def cmd_add(args) -> int:
    """Several images make one product; with --id of an existing product they are added to it."""
    images = _read_images(args.images)
    matcher = make_matcher(args)
    existing = matcher.files.products([args.id]).get(args.id) if args.id else None
    fields = {spec.name: getattr(args, spec.name) for spec in product_schema.CLI_FIELDS if spec.editable}
    if existing is not None:
        if any(value is not None and value != "" for value in fields.values()):
            raise UserError(
                f"{args.id} exists already: adding photos to it takes only IMAGE... --id (edit its fields in the app)"
            )
        product = matcher.add_photos(args.id, images, allow_duplicate=args.allow_duplicate)
        text = f"added {plural(len(images), 'photo')} to {product.id}: {product.name} ({len(product.photos)} in all)"
    else:
        missing = " and ".join(f"--{name}" for name in product_schema.REQUIRED if not fields.get(name))
        if missing:
            raise UserError(f"{missing} required for a new product")
        product = matcher.create_product(
            images, **fields, product_id=args.id, allow_duplicate=args.allow_duplicate,
        )
        text = f"added {product.id}: {product.name} [{product.category}] with {plural(len(images), 'photo')}"
    view = matcher.view(product)
    emit(args, view.as_dict(), f"{terminal_safe(text)}\n{view.image_url}")
    return EXIT_OK


def cmd_list(args) -> int:
    matcher = make_matcher(args)
    page = matcher.page_products(
        offset=args.offset, limit=args.limit, categories=args.category, name_contains=args.name,
    )
    if getattr(args, "json", False):
        document = {
            "total": page.total, "offset": page.offset, "limit": page.limit,
            "items": [matcher.view(p).as_dict() for p in page.items],
        }
        emit(args, document, "")
        return EXIT_OK
    if not page.total:
        filtered = args.category or args.name
        print("no product matches" if filtered else
              "the catalog is empty: add a product with `python -m vpm add IMAGE --name N --category C`")
        return EXIT_OK
    width = max((len(p.id) for p in page.items), default=0)
    for p in page.items:
        price = f"  {format_price(p.price)}" if p.price is not None else ""
        photos = f"  ({len(p.photos)} photos)" if len(p.photos) > 1 else ""
        print(terminal_safe(f"{p.id:<{width}}  {p.name} [{p.category}]{price}{photos}"))
    shown = f"{page.offset + 1}-{page.offset + len(page.items)} of " if page.items else "none of "
    more = f"; next page: --offset {page.offset + len(page.items)}" if page.has_more else ""
    print(f"{shown}{plural(page.total, 'product')}, latest changes first{more}")
    return EXIT_OK


def cmd_remove_photo(args) -> int:
    matcher = make_matcher(args)
    product = matcher.remove_photo(args.id, args.key)
    emit(args, matcher.view(product).as_dict(),
         terminal_safe(f"removed {args.key} from {product.id}: {product.name} ({len(product.photos)} photos left)"))
    return EXIT_OK


def cmd_export(args) -> int:
    matcher = make_matcher(args)
    target = Path(args.path)
    partial = target.with_name(target.name + ".partial")
    try:
        with partial.open("w", encoding="utf-8") as out:
            count = matcher.export_json(out)
        partial.replace(target)  # a cut-off export never leaves a half file under the real name
    except OSError as err:
        partial.unlink(missing_ok=True)
        raise UserError(f"cannot write {target}: {err.strerror or err}") from None
    emit(args, {"path": str(target), "products": count}, f"wrote {plural(count, 'product')} to {target}")
    return EXIT_OK


def terminal_safe(text: str) -> str:
    """No escape sequence reaches the terminal, whatever an older version stored."""
    return "".join("?" if (ord(c) < 32 and c != "\n") or 127 <= ord(c) < 160 else c for c in text)


def cmd_delete(args) -> int:
    matcher = make_matcher(args)
    product = matcher.delete_product(args.id)
    emit(args, {"deleted": product.id}, f"deleted {product.id}: {product.name}")
    return EXIT_OK


def cmd_health(args) -> int:
    from vpm.core import health

    matcher = make_matcher(args)
    checks = health.checks_for(matcher, load_model=True)  # a command line has the time to load the model
    report = health.as_report(checks)
    lines = [f"[{c.status.upper():4}] {c.name}: {c.detail}" + (f"\n       fix: {c.fix}" if c.fix and c.status != "pass" else "") for c in checks]
    emit(args, report, "\n".join(lines) + f"\noverall: {report['status']}")
    return EXIT_OK if report["status"] != "fail" else EXIT_ERROR


def non_negative(text: str) -> int:
    """An argparse type: a whole number, 0 or more (shared by every command's counts)."""
    return _whole_number(text, 0, "0 or more")


def positive(text: str) -> int:
    """An argparse type: a whole number, 1 or more."""
    return _whole_number(text, 1, "at least 1")


def page_size(text: str) -> int:
    """An argparse type: products on one page, 1 to MAX_PAGE (as the API allows)."""
    value = _whole_number(text, 1, "at least 1")
    if value > MAX_PAGE:
        raise argparse.ArgumentTypeError(
            f"must be at most {MAX_PAGE} (one page), got {value}; see the next page with --offset"
        )
    return value


def _whole_number(text: str, minimum: int, limit: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be {limit}, got {value}")
    return value


def _price(text: str) -> float:
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a price (write it like 12.50)") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a price (a finite number, 0 or more)")
    if value > MAX_PRICE:
        raise argparse.ArgumentTypeError(f"{text!r} is more than the largest price accepted ({MAX_PRICE:,})")
    return value


# What a flag's text becomes, by the kind of field (the rest stay text).
_FLAG_TYPES = {"price": _price}


def add_field_flags(parser: argparse.ArgumentParser) -> None:
    """A flag for each product field the command line takes (product_schema), with its help."""
    for spec in product_schema.CLI_FIELDS:
        text = spec.help
        if spec.required:
            text += " (required for a new product)"
        if spec.kind == "id":
            text += "; an existing id gets the photos added"
        parser.add_argument(f"--{spec.name}", type=_FLAG_TYPES.get(spec.kind, str), help=text)


class UserError(VpmError):
    """A problem with what the user asked for; printed without a traceback."""


class _OneLine(logging.Formatter):
    """'warning: what happened', like the CLI's own 'error: ...' lines: no timestamp, no module name."""

    def format(self, record: logging.LogRecord) -> str:
        text = f"{record.levelname.lower()}: {record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


class _NotNewsToOneCommand(logging.Filter):
    """Drops the offline fallback's warning ("Embedding model 'clip-ViT-B-32' is unavailable ... Using the built-in
    image-only model"), which every one-shot command printed before its answer on a machine that cannot download
    CLIP. It describes the configuration, not the command: `vpm health` reports it with the fix, `vpm search` names
    the model it searched with, and `search --text` says why words cannot run."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.name == "vpm.models.embeddings" and str(record.msg).startswith("Embedding model %r is unavailable"))


def configure_cli_logging(settings, command: str) -> None:
    """LOG_LEVEL for a long-running command or when LOG_LEVEL is set; else WARNING, one plain line each."""
    if command in LONG_RUNNING or "log_level" in settings.model_fields_set:
        configure_logging(settings)
        return
    root = logging.getLogger()
    fresh = not root.handlers  # the console handler is ours to format only when configure_logging makes it
    configure_logging(settings.model_copy(update={"log_level": "WARNING"}))
    if fresh:
        for handler in root.handlers:
            handler.setFormatter(_OneLine())
    quiet = logging.getLogger("vpm.models.embeddings")
    if not any(isinstance(f, _NotNewsToOneCommand) for f in quiet.filters):
        quiet.addFilter(_NotNewsToOneCommand())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m vpm", description="Visual Product Matcher")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, func, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.add_argument("--json", action="store_true", help="print one JSON document on stdout")
        p.set_defaults(func=func)
        return p

    p = command("add", cmd_add, "add a product from one or more photos, or add photos to a product (--id)")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="the product's photos (several make one product)")
    add_field_flags(p)
    p.add_argument("--allow-duplicate", action="store_true",
                   help="add a photo even when the very same image is already in the catalog")

    p = command("list", cmd_list, "list the catalog's products a page at a time, the most recently added or changed first")
    p.add_argument("--category", action="append", help="only this category (repeat for several)")
    p.add_argument("--name", help="only products whose name contains this")
    p.add_argument("--limit", type=page_size, default=50, help=f"products per page (default 50, at most {MAX_PAGE})")
    p.add_argument("--offset", type=non_negative, default=0, help="skip this many (default 0)")

    p = command("delete", cmd_delete, "delete a product and its images")
    p.add_argument("id")

    p = command("remove-photo", cmd_remove_photo, "remove one photo from a product (it keeps at least one)")
    p.add_argument("id")
    p.add_argument("key", help="the photo's storage key, as `list --json` shows it")

    p = command("export", cmd_export, "write the catalog as a products.json file for other tools")
    p.add_argument("path", help="the file to write, e.g. products.json")

    command("health", cmd_health, "check storage, catalog and model; exit 0 only when healthy")

    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub, command)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.settings = load_settings()
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    vpm_logger, quiet = logging.getLogger("vpm"), logging.getLogger("vpm.models.embeddings")
    level, filters = vpm_logger.level, list(quiet.filters)
    configure_cli_logging(args.settings, args.command)
    from tqdm.contrib.logging import logging_redirect_tqdm

    try:
        # Log lines go through tqdm while a command runs, so a warning never lands in the middle of a bar.
        with logging_redirect_tqdm():
            return args.func(args)
    except VpmError as err:  # written for people: what is wrong and what to do
        print(f"error: {err}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - a bug: the traceback goes to the log, the person gets its id
        print(f"error: {something_went_wrong(log_unexpected(log, err, f'vpm {args.command}'))}", file=sys.stderr)
        return EXIT_ERROR
    finally:  # a one-shot command's quiet is its own: whoever calls main() in-process gets its logging back
        vpm_logger.setLevel(level)
        quiet.filters[:] = filters
