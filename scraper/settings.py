"""Scrapy settings for shoeclass crawls (a Scrapy settings module) and ``build_settings``.

Politeness is not optional: robots.txt is obeyed and the User-Agent names the project; neither can
be overridden by a site config or ``--set``. Delays and AutoThrottle can be tuned per site.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from scrapy.settings import Settings

from .config import SiteConfig

__all__ = ["build_settings", "USER_AGENT_STRING", "LOCKED_SETTINGS"]

USER_AGENT_STRING = "shoeclass-scraper/0.1 (+https://github.com/shoeclass/shoeclass)"
LOCKED_SETTINGS = ("ROBOTSTXT_OBEY", "USER_AGENT")

BOT_NAME = "shoeclass-scraper"
SPIDER_MODULES = [f"{__package__}.spider"]  # installed as shoeclass_scraper
USER_AGENT = USER_AGENT_STRING
ROBOTSTXT_OBEY = True

DOWNLOAD_DELAY = 1.0
DOWNLOAD_DELAY_JITTER = 0.5  # each delay is DOWNLOAD_DELAY × U(0.5, 1.5)
CONCURRENT_REQUESTS = 8
CONCURRENT_REQUESTS_PER_DOMAIN = 2
AUTOTHROTTLE_ENABLED = True
AUTOTHROTTLE_START_DELAY = 2.0
AUTOTHROTTLE_MAX_DELAY = 30.0
AUTOTHROTTLE_TARGET_CONCURRENCY = 1.0
RETRY_ENABLED = True
RETRY_TIMES = 2
RETRY_HTTP_CODES = [500, 502, 503, 504, 522, 524, 408, 429]
DOWNLOAD_TIMEOUT = 30
DOWNLOAD_MAXSIZE = 20 * 1024 * 1024
DEPTH_LIMIT = 12
COOKIES_ENABLED = False
TELNETCONSOLE_ENABLED = False
HTTPCACHE_ENABLED = False
LOG_LEVEL = "INFO"

ITEM_PIPELINES = {
    f"{__package__}.pipelines.DedupImagesPipeline": 100,
    f"{__package__}.pipelines.DatasetPipeline": 300,
}
IMAGES_MIN_WIDTH = 100
IMAGES_MIN_HEIGHT = 100
IMAGES_THUMBS: dict[str, tuple[int, int]] = {}
SHOECLASS_IMAGES_MAX_SIDE = 512
SHOECLASS_DHASH_DISTANCE = 4
SHOECLASS_FLUSH_EVERY = 50


def build_settings(config: SiteConfig, out_dir: str | Path, *, max_items: int | None = None,
                   keywords: str | Path | None = None,
                   overrides: dict[str, Any] | None = None) -> Settings:
    """Settings for one crawl: this module, then the site's ``settings:``, then ``overrides``.

    Raises:
        ValueError: an attempt to change ``ROBOTSTXT_OBEY`` or ``USER_AGENT``, or a bad max_items.
    """
    if max_items is not None and max_items < 1:
        raise ValueError(f"max_items must be >= 1, got {max_items}")
    settings = Settings()
    settings.setmodule(sys.modules[__name__], priority="project")
    settings.set("DOWNLOAD_DELAY", config.download_delay, priority="project")
    for source, values in (("site config", config.settings), ("--set", overrides or {})):
        locked = [k for k in values if k in LOCKED_SETTINGS]
        if locked:
            raise ValueError(f"{source}: {locked} cannot be changed (robots.txt is always obeyed "
                             f"and the User-Agent always names shoeclass)")
        settings.setdict(values, priority="cmdline" if source == "--set" else "spider")
    out = Path(out_dir).resolve()
    settings.set("IMAGES_STORE", str(out), priority="cmdline")
    settings.set("SHOECLASS_OUT_DIR", str(out), priority="cmdline")
    if keywords:
        settings.set("SHOECLASS_KEYWORDS", str(Path(keywords).resolve()), priority="cmdline")
    if max_items:
        settings.set("SHOECLASS_MAX_ITEMS", max_items, priority="cmdline")
        settings.set("CLOSESPIDER_ITEMCOUNT", max_items, priority="cmdline")
    return settings
