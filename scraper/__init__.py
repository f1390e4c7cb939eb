"""Growing a labelled training set for shoeclass from shop sites and local photo folders.

Three ways in, one way out (a dataset folder in the labels.csv format of shared/data plus
provenance.csv):

- ``shoeclass_scraper.crawl.run_crawl`` — a Scrapy crawl of a shop described by ``configs/sites/<name>.yaml``;
- ``shoeclass_scraper.simple.scrape_url`` — one product page or listing with requests + BeautifulSoup;
- ``shoeclass_scraper.folder_import.import_folder`` — a local folder, labelled from its folder names.

Labels are weak: keyword rules (``configs/keywords.yaml``, ``shoeclass_scraper.keywords``) read the shop's
category, title and description; whatever the text does not decide stays 0.5 (masked).
"""
from .config import SiteConfig, load_site_config
from .dataset import DatasetWriter, PhotoRecord, split_for_item
from .keywords import KeywordRules, Labelling

__all__ = ["SiteConfig", "load_site_config", "DatasetWriter", "PhotoRecord", "split_for_item",
           "KeywordRules", "Labelling"]
