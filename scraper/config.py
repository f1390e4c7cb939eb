"""Per-site crawl configuration (``configs/sites/<name>.yaml``) and selector evaluation.

A new shop needs a YAML file, not code: start URLs plus CSS/XPath selectors for category links,
pagination, product links and the product page fields. See ``configs/sites/example_shop.yaml``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import yaml

__all__ = ["Selector", "SiteConfig", "load_site_config", "extract"]

logger = logging.getLogger(__name__)

_SELECTOR_FIELDS = ("category_links", "listing_category", "product_links", "next_page", "title",
                    "breadcrumbs", "description", "images", "item_id")
_REQUIRED = ("product_links", "title", "images")


@dataclass(frozen=True)
class Selector:
    """One selector: ``kind`` is ``css`` (Scrapy CSS with ``::text`` / ``::attr(x)``) or ``xpath``."""

    kind: str
    query: str


@dataclass
class SiteConfig:
    """Everything the spider needs to know about one shop.

    Every selector field holds a tuple of alternatives whose results are concatenated.
    """

    name: str
    start_urls: tuple[str, ...]
    selectors: dict[str, tuple[Selector, ...]]
    allowed_domains: tuple[str, ...] = ()
    download_delay: float = 1.0
    max_images_per_item: int = 12
    settings: dict[str, Any] = field(default_factory=dict)

    def domains(self) -> tuple[str, ...]:
        """Allowed domains, defaulting to the hosts of the start URLs."""
        if self.allowed_domains:
            return self.allowed_domains
        return tuple(sorted({urlparse(u).hostname or "" for u in self.start_urls} - {""}))


def _parse_selector(value: Any, where: str) -> tuple[Selector, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (Selector("css", value),)
    if isinstance(value, dict):
        if len(value) != 1 or next(iter(value)) not in ("css", "xpath"):
            raise ValueError(f"{where}: a selector mapping needs exactly one key, 'css' or 'xpath'; "
                             f"got {sorted(value)}")
        kind, query = next(iter(value.items()))
        if not isinstance(query, str) or not query.strip():
            raise ValueError(f"{where}: empty {kind} selector")
        return (Selector(kind, query),)
    if isinstance(value, list):
        return tuple(s for i, v in enumerate(value) for s in _parse_selector(v, f"{where}[{i}]"))
    raise ValueError(f"{where}: a selector is a CSS string, {{css: ...}}, {{xpath: ...}} or a list "
                     f"of those; got {type(value).__name__}")


def load_site_config(path: str | Path) -> SiteConfig:
    """Read and validate a site YAML.

    Raises:
        ValueError: a missing or malformed field; the message names the file and the field.
    """
    path = Path(path)
    with path.open(encoding="utf-8") as fh:
        raw = yaml.safe_load(fh) or {}
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    name = str(raw.get("name") or path.stem)
    start_urls = raw.get("start_urls") or []
    if isinstance(start_urls, str):
        start_urls = [start_urls]
    if not start_urls or not all(isinstance(u, str) and u.startswith(("http://", "https://"))
                                 for u in start_urls):
        raise ValueError(f"{path}: start_urls must list one or more http(s) URLs")
    raw_sel = raw.get("selectors") or {}
    unknown = sorted(set(raw_sel) - set(_SELECTOR_FIELDS))
    if unknown:
        raise ValueError(f"{path}: unknown selector(s) {unknown}; allowed: {list(_SELECTOR_FIELDS)}")
    selectors = {k: _parse_selector(raw_sel.get(k), f"{path}: selectors.{k}") for k in _SELECTOR_FIELDS}
    missing = [k for k in _REQUIRED if not selectors[k]]
    if missing:
        raise ValueError(f"{path}: selectors {missing} are required")
    delay = float(raw.get("download_delay", 1.0))
    if delay < 0:
        raise ValueError(f"{path}: download_delay must be >= 0, got {delay}")
    max_images = int(raw.get("max_images_per_item", 12))
    if max_images < 1:
        raise ValueError(f"{path}: max_images_per_item must be >= 1, got {max_images}")
    domains = raw.get("allowed_domains") or []
    return SiteConfig(name=name, start_urls=tuple(start_urls), selectors=selectors,
                      allowed_domains=tuple(domains), download_delay=delay,
                      max_images_per_item=max_images, settings=dict(raw.get("settings") or {}))


def extract(node: Any, selectors: tuple[Selector, ...]) -> list[str]:
    """Apply selectors to a parsel/Scrapy selector or response; stripped, non-empty strings."""
    out: list[str] = []
    for sel in selectors:
        values = node.css(sel.query).getall() if sel.kind == "css" else node.xpath(sel.query).getall()
        out.extend(v.strip() for v in values if v and v.strip())
    return out
