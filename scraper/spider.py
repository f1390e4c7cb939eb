"""The one spider: walks a shop as its site YAML describes and yields labelled products.

start URLs → listing pages (category links, product links, next page) → product pages (title,
breadcrumbs, description, all photo URLs). Products whose text the keyword rules cannot label are
not yielded, so their photos are never downloaded.
"""
from __future__ import annotations

import hashlib
import logging
from typing import Any, AsyncIterator, Iterator

import scrapy
from scrapy.http import Response

from .config import SiteConfig, extract, load_site_config
from .keywords import KeywordRules

__all__ = ["ShopSpider", "item_id_for"]

logger = logging.getLogger(__name__)


def item_id_for(site: str, sku: str | None, url: str) -> str:
    """``<site>:<sku>`` when the page names a SKU, else ``<site>:u<12 hex of sha1(url)>``."""
    if sku:
        return f"{site}:{sku.strip()}"
    return f"{site}:u{hashlib.sha1(url.encode('utf-8')).hexdigest()[:12]}"  # noqa: S324


class ShopSpider(scrapy.Spider):
    """Crawl one shop. ``site`` is a ``SiteConfig`` or the path of a site YAML.

    Usable from the ``scrapy`` command too:
    ``SCRAPY_SETTINGS_MODULE=shoeclass_scraper.settings scrapy crawl shop -a site=configs/sites/x.yaml
    -s IMAGES_STORE=DIR`` (the dataset folder).
    """

    name = "shop"

    def __init__(self, site: SiteConfig | str | None = None, **kwargs: Any) -> None:
        if site is None:
            raise ValueError("site: pass a SiteConfig or the path of configs/sites/<name>.yaml")
        self.config = site if isinstance(site, SiteConfig) else load_site_config(site)
        super().__init__(name=self.config.name, **kwargs)
        self.allowed_domains = list(self.config.domains())
        self.rules: KeywordRules | None = None

    @classmethod
    def from_crawler(cls, crawler: Any, *args: Any, **kwargs: Any) -> "ShopSpider":
        spider = super().from_crawler(crawler, *args, **kwargs)
        spider.rules = KeywordRules.from_yaml(crawler.settings.get("SHOECLASS_KEYWORDS") or None)
        return spider

    async def start(self) -> AsyncIterator[scrapy.Request]:
        for url in self.config.start_urls:
            yield scrapy.Request(url, callback=self.parse_listing)

    def _stat(self, key: str) -> None:
        if self.crawler is not None and self.crawler.stats is not None:
            self.crawler.stats.inc_value(f"shoeclass/{key}")

    def parse_listing(self, response: Response) -> Iterator[scrapy.Request]:
        """A home, category or search page: follow categories, products and the next page."""
        sel = self.config.selectors
        category = " ".join(extract(response, sel["listing_category"])) or response.meta.get("category", "")
        meta = {"category": category}
        for href in extract(response, sel["category_links"]):
            yield response.follow(href, callback=self.parse_listing, meta=meta)
        for href in extract(response, sel["next_page"]):
            yield response.follow(href, callback=self.parse_listing, meta=meta)
        for href in extract(response, sel["product_links"]):
            yield response.follow(href, callback=self.parse_product, meta=meta)

    def parse_product(self, response: Response) -> Iterator[dict[str, Any]]:
        """A product page: one item with all its photo URLs and weak labels, or nothing."""
        sel = self.config.selectors
        if not hasattr(response, "css"):
            logger.warning("%s: not an HTML page, skipped", response.url)
            self._stat("malformed_product")
            return
        title = " ".join(extract(response, sel["title"]))
        crumbs = extract(response, sel["breadcrumbs"])
        category = " > ".join(crumbs) or response.meta.get("category", "")
        description = " ".join(extract(response, sel["description"]))
        urls = [response.urljoin(u) for u in extract(response, sel["images"])]
        urls = [u for u in dict.fromkeys(urls) if u.startswith(("http://", "https://"))]
        if not title or not urls:
            logger.warning("%s: no %s found, product skipped", response.url,
                           "title" if not title else "photo")
            self._stat("malformed_product")
            return
        assert self.rules is not None, "ShopSpider must be created with from_crawler"
        labelling = self.rules.label(category, title, description)
        if not labelling.informative:
            logger.info("%s: keyword rules decide nothing for %r / %r, skipped", response.url,
                        category, title)
            self._stat("unlabelled_product")
            return
        skus = extract(response, sel["item_id"])
        self._stat("product")
        yield {
            "item": item_id_for(self.config.name, skus[0] if skus else None, response.url),
            "site": self.config.name,
            "page_url": response.url,
            "title": title,
            "category": category,
            "description": description,
            "labels": labelling.values,
            "rules": "|".join(labelling.rules),
            "image_urls": urls[: self.config.max_images_per_item],
        }
