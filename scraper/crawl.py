"""Running one site crawl in this process with Scrapy's ``CrawlerProcess``.

Twisted's reactor cannot be restarted, so one process runs one crawl; tests and batch jobs run
``python -m shoeclass_scraper scrape ...`` in a subprocess.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scrapy.crawler import CrawlerProcess

from .config import load_site_config
from .settings import build_settings
from .spider import ShopSpider

__all__ = ["CrawlSummary", "run_crawl"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CrawlSummary:
    """What a crawl produced: the dataset folder and Scrapy's stats."""

    out_dir: Path
    items: int
    photos_failed: int
    photos_duplicate: int
    products_malformed: int
    stats: dict[str, Any]


def run_crawl(site: str | Path, out_dir: str | Path, *, max_items: int | None = None,
              keywords: str | Path | None = None, overrides: dict[str, Any] | None = None) -> CrawlSummary:
    """Crawl the shop described by ``site`` (a site YAML) into the dataset folder ``out_dir``.

    Example:
        >>> run_crawl("configs/sites/example_shop.yaml", "data/scraped", max_items=50)  # doctest: +SKIP
    """
    config = load_site_config(site)
    settings = build_settings(config, out_dir, max_items=max_items, keywords=keywords,
                              overrides=overrides)
    process = CrawlerProcess(settings)
    crawler = process.create_crawler(ShopSpider)
    process.crawl(crawler, site=config)
    process.start()
    stats = dict(crawler.stats.get_stats()) if crawler.stats else {}
    summary = CrawlSummary(Path(out_dir), int(stats.get("shoeclass/item_written", 0)),
                           int(stats.get("shoeclass/photo_failed", 0)),
                           int(stats.get("shoeclass/photo_duplicate", 0)),
                           int(stats.get("shoeclass/malformed_product", 0)), stats)
    logger.info("crawl of %s done: %d items written to %s", config.name, summary.items, out_dir)
    return summary
