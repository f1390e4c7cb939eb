"""Scraper tests against a fixture shop served on 127.0.0.1 (no other address is touched).

A real Scrapy crawl runs in a subprocess (``python -m shoeclass.cli scrape``; Twisted's reactor cannot
restart in-process) against tests/fixtures/shop/make_shop.py, built at test time with PIL-drawn
photos. Then the BeautifulSoup path, the folder importer and one epoch of training on the result.
"""
from __future__ import annotations

import csv
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shoeclass_scraper.config import load_site_config
from shoeclass_scraper.dataset import LABEL_COLUMNS, split_for_item
from shoeclass_scraper.folder_import import import_folder
from shoeclass_scraper.imaging import PerceptualIndex, dhash, hamming
from shoeclass_scraper.keywords import KeywordRules
from shoeclass_scraper.settings import USER_AGENT_STRING, build_settings
from shoeclass_scraper.simple import RobotsDisallowed, scrape_url
from shoeclass.attributes import ATTRIBUTE_KEYS, OUTPUT_KEYS
from shoeclass.labels import read_labels

REPO = Path(__file__).resolve().parents[1]
KEYWORDS = REPO / "configs" / "keywords.yaml"
_spec = importlib.util.spec_from_file_location("make_shop", REPO / "tests/fixtures/shop/make_shop.py")
shop = importlib.util.module_from_spec(_spec)
sys.modules["make_shop"] = shop
_spec.loader.exec_module(shop)  # type: ignore[union-attr]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    env["NO_PROXY"] = "*"
    return env


def _scrape(site: Path, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "shoeclass.cli", "scrape", "--site", str(site), "--out", str(out),
           "--keywords", str(KEYWORDS), *extra]
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    root = shop.build(tmp_path_factory.mktemp("shop"))
    with shop.serve(root) as (base, log):
        site = root.parent / "fixture_shop.yaml"
        site.write_text(shop.site_yaml(base), encoding="utf-8")
        yield base, log, site


@pytest.fixture(scope="module")
def crawled(served, tmp_path_factory: pytest.TempPathFactory):
    base, log, site = served
    out = tmp_path_factory.mktemp("crawl") / "data"
    proc = _scrape(site, out)
    return out, list(log), proc


def _rows(out: Path, name: str = "labels.csv") -> list[dict[str, str]]:
    with (out / name).open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _by_item(rows: list[dict[str, str]]) -> dict[str, list[dict[str, str]]]:
    out: dict[str, list[dict[str, str]]] = {}
    for r in rows:
        out.setdefault(r["item"], []).append(r)
    return out


def test_crawl_output_is_a_labels_folder(crawled) -> None:
    out, _, _ = crawled
    with (out / "labels.csv").open(encoding="utf-8") as fh:
        assert tuple(fh.readline().strip().split(",")) == LABEL_COLUMNS
    table = read_labels(out)
    assert len(table) == len(shop.EXPECTED_SEEDS)
    assert all(p.is_file() for p in table.paths())
    assert set(table.origin) == {"class"} and set(table.source) == {shop.SITE}
    assert set(table.split) == {"train", "val", "test"}
    for item, split in zip(table.item, table.split):  # one product never straddles splits
        assert split == split_for_item(item)
    for p in table.paths():
        with Image.open(p) as img:
            assert img.format == "JPEG" and img.mode == "RGB"
    prov = _rows(out, "provenance.csv")
    assert [r["image"] for r in prov] == list(table.image)
    assert all(r["url"].startswith("http://127.0.0.1:") and r["page_url"].endswith(".html")
               and r["date"] and r["site"] == shop.SITE for r in prov)


def test_expected_items_and_photos_arrive_without_duplicates(crawled) -> None:
    out, _, proc = crawled
    items = _by_item(_rows(out))
    assert set(items) == {f"{shop.SITE}:{shop.PRODUCTS[s].sku}" for s in shop.EXPECTED_ITEMS}
    assert all(rows for rows in items.values())
    assert len(items[f"{shop.SITE}:B-100"]) == 3  # a multi-photo product keeps all its photos
    hashes = [dhash(Image.open(out / r["image"])) for r in _rows(out)]
    assert all(hamming(a, b) > 4 for i, a in enumerate(hashes) for b in hashes[i + 1:])
    for seed in shop.EXPECTED_SEEDS:  # every unique photo exactly once, whoever got it
        assert sum(hamming(dhash(shop.make_photo(seed)), h) <= 4 for h in hashes) == 1, seed
    assert len(list((out / "images").rglob("*.jpg"))) == len(hashes)  # dropped copies deleted
    assert "3 duplicate and 2 unusable photos dropped" in proc.stdout
    assert "1 malformed product pages" in proc.stdout


def test_robots_txt_and_user_agent(crawled) -> None:
    _, log, _ = crawled
    paths = [p for p, _ in log]
    assert "/robots.txt" in paths
    assert not [p for p in paths if p.startswith("/private")]
    assert "/catalog/boots/page2/" in paths  # pagination followed
    assert f"/img/{shop.PRODUCTS['gift'].sku}-0.jpg" not in paths  # unlabelled: photos never fetched
    assert {ua for _, ua in log} == {USER_AGENT_STRING}


def test_labels_follow_keyword_rules(crawled) -> None:
    out, _, _ = crawled
    items = _by_item(_rows(out))
    for slug in shop.EXPECTED_ITEMS:
        rows = items[f"{shop.SITE}:{shop.PRODUCTS[slug].sku}"]
        for key, value in shop.PRODUCTS[slug].expect.items():
            assert {float(r[key]) for r in rows} == {value}, (slug, key)
    socks = items[f"{shop.SITE}:N-100"][0]
    assert all(socks[k] == "0.5" for k in ATTRIBUTE_KEYS)
    assert items[f"{shop.SITE}:H-100"][0]["src_class"] == "Домашняя обувь"  # listing fallback


def test_recrawl_extends_without_duplicates_and_max_items(served, crawled, tmp_path: Path) -> None:
    _, _, site = served
    out, _, _ = crawled
    before = _rows(out)
    copy = tmp_path / "data"
    shutil.copytree(out, copy)
    _scrape(site, copy)
    assert sorted(r["image"] for r in _rows(copy)) == sorted(r["image"] for r in before)
    small = tmp_path / "small"
    _scrape(site, small, "--max-items", "2")
    assert len(_by_item(_rows(small))) == 2


def test_simple_path_product_listing_and_robots(served, tmp_path: Path, monkeypatch) -> None:
    base, _, site_path = served
    for k in [k for k in os.environ if "proxy" in k.lower()]:
        monkeypatch.delenv(k)
    site = load_site_config(site_path)
    out = tmp_path / "simple"
    res = scrape_url(f"{base}/product/botforty.html", str(out), site=site, keywords=str(KEYWORDS), delay=0)
    assert (res.items, res.photos) == (1, 3)
    res = scrape_url(f"{base}/catalog/sneakers/", str(out), site=site, keywords=str(KEYWORDS), delay=0)
    assert (res.items, res.photos) == (2, 3)  # the kedy copy of a runner photo is dropped
    table = read_labels(out)
    assert set(table.item) == {f"{shop.SITE}:B-100", f"{shop.SITE}:S-101", f"{shop.SITE}:S-200"}
    assert table.y[table.item == f"{shop.SITE}:B-100"][:, OUTPUT_KEYS.index("height_over_knee")].tolist() == [1, 1, 1]
    with pytest.raises(RobotsDisallowed):
        scrape_url(f"{base}/private/secret.html", str(tmp_path / "no"), site=site,
                   keywords=str(KEYWORDS), delay=0)


def test_folder_import(tmp_path: Path) -> None:
    src = tmp_path / "stock"
    photos = {"Обувь/Ботфорты/a.jpg": 1, "Обувь/Ботфорты/b.png": 2, "Носки/x.jpg": 3,
              "misc/IMG_0001.jpg": 4, "Обувь/Сапоги/a_copy.jpg": 1, "Обувь/Кроссовки/bad.jpg": None,
              "Обувь/Тапочки/tiny.jpg": -1}
    for rel, seed in photos.items():
        p = src / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if seed is None:
            p.write_bytes(b"not an image")
        elif seed < 0:
            shop.make_photo(7, (30, 30)).save(p)
        else:
            shop.make_photo(seed).convert("RGBA" if p.suffix == ".png" else "RGB").save(p)
    res = import_folder(src, tmp_path / "out", keywords=KEYWORDS)
    assert (res.photos, res.unlabelled, res.dropped) == (3, ["misc/IMG_0001.jpg"],
                                                         {"broken": 1, "small": 1, "duplicate": 1})
    table = read_labels(tmp_path / "out")
    over = [row for item, row in zip(table.item, table.y) if "Ботфорты" in item]
    assert len(over) == 2 and all(r[OUTPUT_KEYS.index("height_over_knee")] == 1 for r in over)
    socks = [row for item, row in zip(table.item, table.y) if "Носки" in item][0]
    assert socks[OUTPUT_KEYS.index("not_footwear")] == 1 and set(socks[:13]) == {0.5}
    cat = tmp_path / "catalogue" / "boots" / "sku1"
    cat.mkdir(parents=True)
    for i, name in enumerate(["front.jpg", "side.jpg"]):
        shop.make_photo(40 + i).save(cat / name)
    res = import_folder(tmp_path / "catalogue", tmp_path / "cat_out", keywords=KEYWORDS, group_by_folder=True)
    assert (res.photos, res.items) == (2, 1)
    assert len(set(read_labels(tmp_path / "cat_out").item)) == 1


def test_keyword_rules_properties() -> None:
    rules = KeywordRules.from_yaml(KEYWORDS)
    lab = rules.label("Обувь > Сапоги", "Резиновые сапоги")
    assert lab.values["waterproof"] == 1 and "wellingtons" in lab.rules
    assert rules.label("", "Shoe covers").values["not_footwear"] == 1  # longer match wins
    assert rules.label("", "Football boots").values["height_low"] == 0.5
    assert not rules.label("Подарки", "Сертификат").informative
    conflict = rules.label("", "Ankle boots over the knee").values  # two heights → both unknown
    assert conflict["height_ankle"] == conflict["height_over_knee"] == 0.5
    for text in ["сапоги", "ботфорты", "кроссовки", "тапочки", "шлёпанцы", "сабо", "босоножки",
                 "boots", "sneakers", "slippers", "flip-flops", "clogs", "sandals", "wellingtons", "heels"]:
        v = rules.label("", text).values
        assert v["not_footwear"] == 0 and set(v.values()) <= {0.0, 0.5, 1.0}, text
        assert sum(v[k] == 1 for k in ("height_low", "height_ankle", "height_knee", "height_over_knee")) <= 1
    for text in ["носки", "socks", "сумка", "bags", "t-shirt", "футболка"]:
        v = rules.label("", text).values
        assert v["not_footwear"] == 1 and all(v[k] == 0.5 for k in ATTRIBUTE_KEYS), text


def test_settings_are_polite_and_index_finds_near_duplicates(tmp_path: Path) -> None:
    cfg = load_site_config(REPO / "configs" / "sites" / "example_shop.yaml")
    s = build_settings(cfg, tmp_path, max_items=5)
    assert s.getbool("ROBOTSTXT_OBEY") and s.getbool("AUTOTHROTTLE_ENABLED")
    assert s.getfloat("DOWNLOAD_DELAY") == 2.0 and s.getint("RETRY_TIMES") >= 1
    assert s["USER_AGENT"] == USER_AGENT_STRING and s.getint("CLOSESPIDER_ITEMCOUNT") == 5
    with pytest.raises(ValueError, match="ROBOTSTXT_OBEY"):
        build_settings(cfg, tmp_path, overrides={"ROBOTSTXT_OBEY": False})
    rng = np.random.default_rng(0)
    index, hashes = PerceptualIndex(4), [int(h) for h in rng.integers(0, 2**63, 200)]
    for i, h in enumerate(hashes):
        index.add(h, i)
    assert index.find(hashes[7] ^ 0b1011) == 7  # 3 bits off
    assert index.find(hashes[7] ^ 0b11111) is None  # 5 bits off


def test_training_runs_one_epoch_on_scraped_data(crawled, tmp_path: Path) -> None:
    out, _, _ = crawled
    cmd = [sys.executable, "-m", "shoeclass.cli", "train", "--config", "configs/lenet.yaml",
           "--data", str(out), "--epochs", "1", "--out", str(tmp_path / "run"), "--no-progress",
           "--set", f"cache_dir={tmp_path / 'cache'}", "batch_size=8"]
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert any((tmp_path / "run").iterdir())
    assert "lenet epoch 0 loss" in proc.stderr and "val mean balanced accuracy" in proc.stderr  # shown without -v
