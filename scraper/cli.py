"""Command line: ``python -m shoeclass_scraper {scrape,import-folder,fetch} ...``.

The shoeclass CLI mounts the same commands with ``add_parsers(subparsers)`` (or one of the
``add_*_parser`` functions); each sets ``func`` to a handler taking the parsed args and returning an
exit code.
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Any, Sequence

import yaml

__all__ = ["main", "build_parser", "add_parsers", "add_scrape_parser", "add_import_folder_parser",
           "add_fetch_parser", "run_scrape", "run_import_folder", "run_fetch"]


def _setting(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"{text!r}: expected KEY=VALUE")
    return key.strip(), yaml.safe_load(value)


def add_scrape_parser(subparsers: Any) -> argparse.ArgumentParser:
    """``scrape --site configs/sites/<name>.yaml --out DIR [--max-items N]``: a Scrapy crawl."""
    p = subparsers.add_parser("scrape", help="crawl a shop described by a site YAML into a dataset folder")
    p.add_argument("--site", required=True, help="site config, e.g. configs/sites/example_shop.yaml")
    p.add_argument("--out", required=True, help="dataset folder (created or extended)")
    p.add_argument("--max-items", type=int, default=None, help="stop after this many products")
    p.add_argument("--keywords", default=None, help="keyword rules (default configs/keywords.yaml)")
    p.add_argument("-s", "--set", dest="settings", action="append", type=_setting, default=[],
                   metavar="KEY=VALUE", help="override a Scrapy setting (repeatable)")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.set_defaults(func=run_scrape)
    return p


def add_import_folder_parser(subparsers: Any) -> argparse.ArgumentParser:
    """``import-folder SRC --out DIR``: label local photos from their folder names."""
    p = subparsers.add_parser("import-folder", help="import a local folder of photos, labelled by folder names")
    p.add_argument("src", help="folder of photos (e.g. stock/Сапоги/Ботфорты/*.jpg)")
    p.add_argument("--out", required=True, help="dataset folder (created or extended)")
    p.add_argument("--keywords", default=None, help="keyword rules (default configs/keywords.yaml)")
    p.add_argument("--source", default=None, help="source column (default: the folder's name)")
    p.add_argument("--group-by-folder", action="store_true", help="the photos of one folder are one item")
    p.add_argument("--min-side", type=int, default=100)
    p.add_argument("--max-side", type=int, default=512)
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.set_defaults(func=run_import_folder)
    return p


def add_fetch_parser(subparsers: Any) -> argparse.ArgumentParser:
    """``fetch URL --out DIR [--site YAML]``: one product page or listing via requests + BeautifulSoup."""
    p = subparsers.add_parser("fetch", help="scrape one product page or simple listing (no Scrapy)")
    p.add_argument("url")
    p.add_argument("--out", required=True, help="dataset folder (created or extended)")
    p.add_argument("--site", default=None, help="site config whose CSS selectors to use")
    p.add_argument("--kind", default="auto", choices=["auto", "product", "listing"])
    p.add_argument("--max-items", type=int, default=None)
    p.add_argument("--delay", type=float, default=None, help="seconds between requests")
    p.add_argument("--keywords", default=None, help="keyword rules (default configs/keywords.yaml)")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.set_defaults(func=run_fetch)
    return p


def add_parsers(subparsers: Any) -> None:
    """All scraper commands: scrape, import-folder, fetch."""
    add_scrape_parser(subparsers)
    add_import_folder_parser(subparsers)
    add_fetch_parser(subparsers)


def run_scrape(args: argparse.Namespace) -> int:
    """Handler of ``scrape``."""
    from .crawl import run_crawl  # Scrapy/Twisted only when crawling

    overrides = dict(args.settings)
    overrides.setdefault("LOG_LEVEL", args.log_level)
    try:
        summary = run_crawl(args.site, args.out, max_items=args.max_items, keywords=args.keywords,
                            overrides=overrides)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{summary.items} items written to {summary.out_dir} "
          f"({summary.photos_duplicate} duplicate and {summary.photos_failed} unusable photos dropped, "
          f"{summary.products_malformed} malformed product pages)")
    return 0


def run_import_folder(args: argparse.Namespace) -> int:
    """Handler of ``import-folder``."""
    from .folder_import import import_folder

    logging.basicConfig(level=args.log_level, format="%(levelname)s %(name)s: %(message)s")
    try:
        res = import_folder(args.src, args.out, keywords=args.keywords, source=args.source,
                            group_by_folder=args.group_by_folder, min_side=args.min_side,
                            max_side=args.max_side)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{res.photos} photos of {res.items} items imported into {args.out} "
          f"({len(res.unlabelled)} unlabelled, dropped {res.dropped})")
    return 0


def run_fetch(args: argparse.Namespace) -> int:
    """Handler of ``fetch``."""
    import requests

    from .config import load_site_config
    from .simple import RobotsDisallowed, scrape_url

    logging.basicConfig(level=args.log_level, format="%(levelname)s %(name)s: %(message)s")
    try:
        site = load_site_config(args.site) if args.site else None
        res = scrape_url(args.url, args.out, site=site, keywords=args.keywords, delay=args.delay,
                         max_items=args.max_items, kind=args.kind)
    except (ValueError, OSError, RobotsDisallowed, requests.RequestException) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{res.items} items, {res.photos} photos written to {args.out} ({len(res.skipped)} pages skipped)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The standalone ``python -m shoeclass_scraper`` parser."""
    parser = argparse.ArgumentParser(prog="python -m shoeclass_scraper", description="Grow a labelled footwear dataset from shop sites and photo folders.")
    add_parsers(parser.add_subparsers(dest="command", required=True))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    args = build_parser().parse_args(argv)
    return int(args.func(args))
