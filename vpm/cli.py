"""`python -m vpm ...`: the command line over the same Matcher the app and API use.

`--json` prints one JSON document on stdout; errors go to stderr with a non-zero exit code. Commands that
belong to other modules register themselves through COMMAND_MODULES (each has `register(subparsers)`).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

from .catalog import CatalogError
from .config import ConfigError, configure_logging, load_settings
from .images import ImageError
from .storage import StorageError

# Modules that add subcommands: each defines register(subparsers) and sets `func` on its parsers.
COMMAND_MODULES: list[str] = ["vpm.cli_search", "vpm.cli_migrate", "vpm.cli_serve"]

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2


def emit(args, document, text: str) -> None:
    """One JSON document with --json, else the human-readable text."""
    if getattr(args, "json", False):
        print(json.dumps(document, indent=2, ensure_ascii=False, default=str))
    else:
        print(text)


def make_matcher(args):
    from .matcher import Matcher

    return Matcher(args.settings)


def cmd_add(args) -> int:
    path = Path(args.image)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise UserError(f"cannot read {path}: {err.strerror}") from None
    matcher = make_matcher(args)
    product = matcher.add_product(
        data, path.name, name=args.name, category=args.category, price=args.price, product_id=args.id,
        description=args.description,
    )
    view = matcher.view(product)
    emit(args, view.as_dict(), f"added {product.id}: {product.name} [{product.category}]\n{view.image_url}")
    return EXIT_OK


def cmd_list(args) -> int:
    matcher = make_matcher(args)
    products = matcher.list_products()
    if args.category:
        products = [p for p in products if p.category.casefold() == args.category.casefold()]
    if getattr(args, "json", False):
        emit(args, [matcher.view(p).as_dict() for p in products], "")
        return EXIT_OK
    if not products:
        print("the catalog is empty: add a product with `python -m vpm add IMAGE --name N --category C`")
        return EXIT_OK
    width = max(len(p.id) for p in products)
    for p in products:
        price = f"  ${p.price:,.2f}" if p.price is not None else ""
        print(f"{p.id:<{width}}  {p.name} [{p.category}]{price}")
    print(f"{len(products)} products")
    return EXIT_OK


def cmd_delete(args) -> int:
    matcher = make_matcher(args)
    product = matcher.delete_product(args.id)
    emit(args, {"deleted": product.id}, f"deleted {product.id}: {product.name}")
    return EXIT_OK


def cmd_health(args) -> int:
    from . import health

    matcher = make_matcher(args)
    checks = health.full_checks(matcher) if hasattr(health, "full_checks") else health.storage_checks(matcher)
    report = health.as_report(checks)
    lines = [f"[{c.status.upper():4}] {c.name}: {c.detail}" + (f"\n       fix: {c.fix}" if c.fix and c.status != "pass" else "") for c in checks]
    emit(args, report, "\n".join(lines) + f"\noverall: {report['status']}")
    return EXIT_OK if report["status"] != "fail" else EXIT_ERROR


class UserError(Exception):
    """A problem with what the user asked for; printed without a traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m vpm", description="Visual Product Matcher")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, func, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.add_argument("--json", action="store_true", help="print one JSON document on stdout")
        p.set_defaults(func=func)
        return p

    p = command("add", cmd_add, "add a product from an image file")
    p.add_argument("image", help="path to the product photo")
    p.add_argument("--name", required=True)
    p.add_argument("--category", required=True)
    p.add_argument("--price", type=float)
    p.add_argument("--id", help="product id (letters, digits, - and _); generated when omitted")
    p.add_argument("--description")

    p = command("list", cmd_list, "list the catalog's products")
    p.add_argument("--category", help="only this category")

    p = command("delete", cmd_delete, "delete a product and its images")
    p.add_argument("id")

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
    configure_logging(args.settings)
    try:
        return args.func(args)
    except (UserError, ImageError, CatalogError, StorageError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
