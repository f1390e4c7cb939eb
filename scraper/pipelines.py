"""Item pipelines: photos through Scrapy's ImagesPipeline with de-duplication, then the dataset.

``DedupImagesPipeline`` stores each photo as an RGB JPEG ``images/<site>/<sha1(url)>.jpg`` (longer
side ≤ ``SHOECLASS_IMAGES_MAX_SIDE``, at least ``IMAGES_MIN_WIDTH``×``IMAGES_MIN_HEIGHT``) and keeps
a photo only if no earlier photo has the same bytes (SHA-1) or nearly the same look (dHash within
``SHOECLASS_DHASH_DISTANCE`` bits) — across products and across earlier runs into the same folder.
``DatasetPipeline`` writes the kept photos to labels.csv / provenance.csv.
"""
from __future__ import annotations

import logging
from io import BytesIO
from pathlib import Path
from typing import Any, Iterator

from PIL import Image
from scrapy.exceptions import DropItem
from scrapy.http import Request, Response
from scrapy.http.request import NO_CALLBACK
from scrapy.pipelines.images import ImageException, ImagesPipeline

from .dataset import DatasetWriter, PhotoRecord
from shoeclass.images import ImageError, load_image

from .imaging import dhash, encode_jpeg, sha1_bytes
from .store import Deduplicator

__all__ = ["DedupImagesPipeline", "DatasetPipeline"]

logger = logging.getLogger(__name__)


class DedupImagesPipeline(ImagesPipeline):
    """ImagesPipeline with RGB JPEG conversion, a size cap and content + perceptual de-duplication."""

    def __init__(self, store_uri: str, download_func: None = None, *, crawler: Any) -> None:
        super().__init__(store_uri, crawler=crawler)
        s = crawler.settings
        self.max_side: int = s.getint("SHOECLASS_IMAGES_MAX_SIDE", 512)
        self.root = Path(store_uri)
        self.dedup = Deduplicator(s.getint("SHOECLASS_DHASH_DISTANCE", 4)).seed(self.root)
        self.hashes: dict[str, tuple[str, int]] = {}  # path → (sha1 of the bytes, dHash)

    def file_path(self, request: Request, response: Response | None = None, info: Any = None, *,
                  item: Any = None) -> str:
        site = (item or {}).get("site", "site") if isinstance(item, dict) else "site"
        return f"images/{site}/{sha1_bytes(request.url.encode('utf-8'))}.jpg"

    def get_media_requests(self, item: Any, info: Any) -> list[Request]:
        # Shops serve photos from CDNs: image requests may leave allowed_domains (robots.txt of
        # the CDN host still applies).
        return [Request(u, callback=NO_CALLBACK, meta={"allow_offsite": True})
                for u in item.get("image_urls", [])]

    def media_to_download(self, request: Request, info: Any, *, item: Any = None) -> None:
        return None  # always fetch: hashes are needed for de-duplication

    def get_images(self, response: Response, request: Request, info: Any, *,
                   item: Any = None) -> Iterator[tuple[str, Image.Image, BytesIO]]:
        path = self.file_path(request, response=response, info=info, item=item)
        try:
            image = load_image(response.body, request.url)  # the library's loader, with its guards
        except ImageError as exc:
            raise ImageException(exc.problem) from exc
        if image.width < self.min_width or image.height < self.min_height:
            raise ImageException(f"image too small ({image.width}x{image.height} < "
                                 f"{self.min_width}x{self.min_height})")
        if max(image.size) > self.max_side:
            image.thumbnail((self.max_side, self.max_side), Image.Resampling.LANCZOS)
        self.hashes[path] = (sha1_bytes(response.body), dhash(image))
        yield path, image, BytesIO(encode_jpeg(image))

    def item_completed(self, results: list[tuple[bool, Any]], item: Any, info: Any) -> Any:
        kept: list[dict[str, Any]] = []
        for ok, res in results:
            if not ok:
                logger.warning("%s: photo dropped: %s", item["item"], _reason(res.value))
                self._stat("photo_failed")
                continue
            path = res["path"]
            sha1, dh = self.hashes[path]
            reason = self.dedup.duplicate_of(path, sha1, dh, item["item"])
            if reason is None:
                self.dedup.keep(path, sha1, dh, item["item"])
                kept.append({**res, "sha1": sha1, "dhash": f"{dh:016x}"})
                continue
            logger.info("%s: duplicate photo %s dropped (%s)", item["item"], res["url"], reason)
            self._stat("photo_duplicate")
            if path not in self.dedup.owner:
                (self.root / path).unlink(missing_ok=True)
        item["images"] = kept
        return item

    def _stat(self, key: str) -> None:
        self.crawler.stats.inc_value(f"shoeclass/{key}")


class DatasetPipeline:
    """Writes items with at least one kept photo to the dataset folder (``SHOECLASS_OUT_DIR``)."""

    def __init__(self, crawler: Any) -> None:
        self.crawler = crawler
        out = crawler.settings.get("SHOECLASS_OUT_DIR") or crawler.settings.get("IMAGES_STORE")
        if not out:
            raise ValueError("no dataset folder: set SHOECLASS_OUT_DIR or IMAGES_STORE (-s IMAGES_STORE=DIR)")
        self.out_dir = Path(out)
        self.max_items: int = crawler.settings.getint("SHOECLASS_MAX_ITEMS", 0)
        self.flush_every: int = crawler.settings.getint("SHOECLASS_FLUSH_EVERY", 50)
        self.count = 0
        self.writer: DatasetWriter | None = None

    @classmethod
    def from_crawler(cls, crawler: Any) -> "DatasetPipeline":
        return cls(crawler)

    def open_spider(self) -> None:
        self.writer = DatasetWriter(self.out_dir)

    def process_item(self, item: Any) -> Any:
        assert self.writer is not None
        if self.max_items and self.count >= self.max_items:
            raise DropItem(f"{item['item']}: --max-items {self.max_items} reached")
        if not item.get("images"):
            raise DropItem(f"{item['item']}: no usable photo")
        for img in item["images"]:
            self.writer.add(PhotoRecord(
                image=img["path"], item=item["item"], source=item["site"],
                src_class=item["category"], labels=item["labels"], url=img["url"],
                page_url=item["page_url"], title=item["title"], rules=item["rules"],
                sha1=img["sha1"], dhash=img["dhash"]))
        self.count += 1
        self.crawler.stats.inc_value("shoeclass/item_written")
        if self.count % self.flush_every == 0:
            self.writer.write()
        return item

    def close_spider(self) -> None:
        if self.writer is not None:
            self.writer.write()


def _reason(exc: BaseException) -> str:
    # Scrapy wraps our ImageException in FileExceptions without a message: find the first message.
    seen: BaseException | None = exc
    while seen is not None:
        if str(seen):
            return str(seen)
        seen = seen.__cause__ or seen.__context__
    return type(exc).__name__
