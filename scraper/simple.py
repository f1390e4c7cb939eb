"""The light path: one product page or one simple listing with requests + BeautifulSoup.

For a quick add from a shop not worth a crawl. Uses the same site YAML selectors (CSS only:
``::text``, `` ::text`` for all descendant text and ``::attr(name)`` are understood), the same
keyword rules and the same dataset format as the Scrapy path, and is as polite: robots.txt is
obeyed, the User-Agent names shoeclass, requests are spaced by ``delay`` seconds and retried a
few times.
"""
from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlparse
from urllib.robotparser import RobotFileParser

import requests
from bs4 import BeautifulSoup, Tag
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from .config import Selector, SiteConfig
from .dataset import PhotoRecord
from .keywords import KeywordRules
from .settings import USER_AGENT_STRING
from .spider import item_id_for
from .store import PhotoSink

__all__ = ["RobotsDisallowed", "PoliteSession", "select", "GENERIC_SELECTORS", "ScrapeResult",
           "scrape_url"]

logger = logging.getLogger(__name__)

_PSEUDO = re.compile(r"^(?P<css>.*?)(?P<space>\s*)::(?:(?P<text>text)|attr\((?P<attr>[^)]+)\))\s*$")

GENERIC_SELECTORS: dict[str, tuple[Selector, ...]] = {
    "title": (Selector("css", "h1 ::text"),),
    "breadcrumbs": (Selector("css", ".breadcrumbs a ::text"),
                    Selector("css", "nav[aria-label=breadcrumb] a ::text")),
    "description": (Selector("css", "meta[name=description]::attr(content)"),),
    "images": (Selector("css", "meta[property='og:image']::attr(content)"),
               Selector("css", "[itemprop=image]::attr(src)")),
    "item_id": (Selector("css", "[itemprop=sku]::text"),),
    "product_links": (Selector("css", "a[href*=product]::attr(href)"),),
    "listing_category": (Selector("css", "h1 ::text"),),
}


class RobotsDisallowed(PermissionError):
    """robots.txt of the site forbids this URL to our User-Agent."""


class PoliteSession:
    """requests.Session with our User-Agent, robots.txt checks, spacing and retries."""

    def __init__(self, delay: float = 1.0, timeout: float = 30.0, retries: int = 2) -> None:
        self.delay, self.timeout = delay, timeout
        self.session = requests.Session()
        self.session.headers["User-Agent"] = USER_AGENT_STRING
        adapter = HTTPAdapter(max_retries=Retry(total=retries, backoff_factor=0.5,
                                                status_forcelist=(429, 500, 502, 503, 504)))
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self._robots: dict[str, RobotFileParser] = {}
        self._last = 0.0

    def _wait(self) -> None:
        pause = self.delay - (time.monotonic() - self._last)
        if pause > 0:
            time.sleep(pause)
        self._last = time.monotonic()

    def allowed(self, url: str) -> bool:
        """Whether robots.txt of the URL's host lets our User-Agent fetch it."""
        parts = urlparse(url)
        root = f"{parts.scheme}://{parts.netloc}"
        if root not in self._robots:
            rp = RobotFileParser(root + "/robots.txt")
            self._wait()
            resp = self.session.get(root + "/robots.txt", timeout=self.timeout)
            if resp.status_code in (401, 403):
                rp.disallow_all = True
            elif resp.ok:
                rp.parse(resp.text.splitlines())
            else:
                rp.allow_all = True
            self._robots[root] = rp
        return self._robots[root].can_fetch(USER_AGENT_STRING, url)

    def get(self, url: str) -> requests.Response:
        """GET a URL robots.txt allows.

        Raises:
            RobotsDisallowed: robots.txt forbids it.
            requests.HTTPError: a 4xx/5xx answer after retries.
        """
        if not self.allowed(url):
            raise RobotsDisallowed(f"{url}: disallowed by robots.txt")
        self._wait()
        resp = self.session.get(url, timeout=self.timeout)
        resp.raise_for_status()
        return resp


def select(soup: BeautifulSoup | Tag, selectors: tuple[Selector, ...]) -> list[str]:
    """Scrapy-style CSS selectors evaluated with BeautifulSoup; stripped, non-empty strings.

    Raises:
        ValueError: an XPath selector (use the Scrapy path for those).
    """
    out: list[str] = []
    for sel in selectors:
        if sel.kind != "css":
            raise ValueError(f"{sel.query!r}: XPath selectors need the Scrapy path (shoeclass_scraper.crawl)")
        m = _PSEUDO.match(sel.query)
        css = (m.group("css") if m else sel.query).strip() or "*"
        for el in soup.select(css):
            if m and m.group("attr"):
                value = el.get(m.group("attr").strip())
                values = value if isinstance(value, list) else [value]
            elif m and m.group("text") and not m.group("space"):
                values = [" ".join(s.strip() for s in el.find_all(string=True, recursive=False))]
            else:
                values = [el.get_text(" ", strip=True)]
            out.extend(v.strip() for v in values if isinstance(v, str) and v.strip())
    return out


@dataclass
class ScrapeResult:
    """Counts of one ``scrape_url`` call."""

    items: int = 0
    photos: int = 0
    skipped: list[str] = field(default_factory=list)


def _product(url: str, soup: BeautifulSoup, sel: dict[str, tuple[Selector, ...]], site: str,
             rules: KeywordRules, sink: PhotoSink, session: PoliteSession, category: str,
             max_images: int) -> int:
    title = " ".join(select(soup, sel["title"]))
    category = " > ".join(select(soup, sel.get("breadcrumbs", ()))) or category
    description = " ".join(select(soup, sel.get("description", ())))
    images = list(dict.fromkeys(urljoin(url, u) for u in select(soup, sel["images"])))[:max_images]
    labelling = rules.label(category, title, description)
    if not title or not images or not labelling.informative:
        logger.warning("%s: %s, skipped", url, "no title" if not title else "no photo" if not images
                       else "keyword rules decide nothing")
        return 0
    skus = select(soup, sel.get("item_id", ()))
    item = item_id_for(site, skus[0] if skus else None, url)
    kept = 0
    for img_url in images:
        try:
            data = session.get(img_url).content
        except (requests.RequestException, RobotsDisallowed) as exc:
            logger.warning("%s: photo %s not fetched (%s)", url, img_url, exc)
            continue
        record = PhotoRecord("", item, site, category, labelling.values, url=img_url, page_url=url,
                             title=title, rules="|".join(labelling.rules))
        kept += sink.add(data, img_url, record)
    return kept


def scrape_url(url: str, out_dir: str, *, site: SiteConfig | None = None,
               keywords: str | None = None, delay: float | None = None,
               max_items: int | None = None, kind: str = "auto") -> ScrapeResult:
    """Scrape one product page, or the products linked from one listing page, into ``out_dir``.

    Args:
        kind: ``product``, ``listing`` (follow its product links, one level, no pagination) or
            ``auto``: a product when the title and photo selectors both match.

    Example:
        >>> scrape_url("https://shop.example/p/123", "data/quick")  # doctest: +SKIP
    """
    if kind not in ("auto", "product", "listing"):
        raise ValueError(f"kind must be 'auto', 'product' or 'listing', got {kind!r}")
    sel = {**GENERIC_SELECTORS, **{k: v for k, v in (site.selectors if site else {}).items() if v}}
    name = site.name if site else (urlparse(url).hostname or "web")
    session = PoliteSession(delay if delay is not None else (site.download_delay if site else 1.0))
    rules = KeywordRules.from_yaml(keywords)
    sink = PhotoSink(out_dir)
    result = ScrapeResult()
    max_images = site.max_images_per_item if site else 12
    soup = BeautifulSoup(session.get(url).content, "html.parser")
    if kind == "auto":
        kind = "product" if select(soup, sel["title"]) and select(soup, sel["images"]) else "listing"
    pages: list[tuple[str, BeautifulSoup | None]] = [(url, soup)]
    category = ""
    if kind == "listing":
        category = " ".join(select(soup, sel.get("listing_category", ())))
        links = list(dict.fromkeys(urljoin(url, h) for h in select(soup, sel["product_links"])))
        pages = [(link, None) for link in links[:max_items or None]]
    for page_url, page in pages:
        try:
            page = page or BeautifulSoup(session.get(page_url).content, "html.parser")
        except (requests.RequestException, RobotsDisallowed) as exc:
            logger.warning("%s: not fetched (%s)", page_url, exc)
            result.skipped.append(page_url)
            continue
        n = _product(page_url, page, sel, name, rules, sink, session, category, max_images)
        result.items += n > 0
        result.photos += n
        if n == 0:
            result.skipped.append(page_url)
    sink.close()
    logger.info("%s: %d items, %d photos into %s", url, result.items, result.photos, out_dir)
    return result
