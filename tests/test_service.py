"""The HTTP service, tested over real HTTP: uvicorn on 127.0.0.1 in a thread, a tiny model trained here."""
from __future__ import annotations

import base64
import io
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import uvicorn
from PIL import Image

from shoeclass.api import Classifier
from shoeclass.assets import asset
from shoeclass.attributes import OUTPUT_KEYS
from shoeclass.cli import add_serve_parser
from shoeclass.service import create_app

LIMITS = {"max_photos": 4, "max_photo_bytes": 200_000, "max_request_bytes": 1_000_000, "max_batch_items": 3}
DECLARED = {"upper": "leather", "sole": "rubber", "insole_cm": "26.5", "gender": "women",
            "metal_toecap": "no", "heel_sole_cm": "2"}


@pytest.fixture(scope="module")
def model_dir(tiny_dataset, tmp_path_factory) -> Path:
    from shoeclass.training import load_config, train

    tmp = tmp_path_factory.mktemp("service")
    return train(load_config(asset("configs", "efficientnet_lite0.yaml"), {
        "data": str(tiny_dataset), "out": str(tmp / "m"), "epochs": 2, "cache_dir": str(tmp / "cache"),
        "progress": False, "aug_views": 1}))


@pytest.fixture(scope="module")
def clf(model_dir) -> Classifier:
    return Classifier(model_dir)


@pytest.fixture(scope="module")
def url(clf):
    """Base URL of a real uvicorn server on a free loopback port, serving ``clf``."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(clf, **LIMITS), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    server.should_exit = True
    thread.join(10)
    sock.close()


@pytest.fixture(scope="module")
def photos(tiny_dataset) -> list[bytes]:
    """A boot, a sandal and a not-footwear photo as JPEG bytes."""
    return [(tiny_dataset / f"images/p{i:03d}.jpg").read_bytes() for i in (0, 1, 2)]


def post(url: str, files: list, data: dict | None = None, **kw) -> httpx.Response:
    return httpx.post(url + "/v1/classify", files=[("photos", f) for f in files], data=data, timeout=60, **kw)


def assert_refused(r: httpx.Response, status: int, field: str) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["detail"].startswith(field + ":"), body
    assert body["errors"][0]["field"] == field
    assert "Traceback" not in r.text
    return body


def test_healthz_and_model_card(url, model_dir):
    assert httpx.get(url + "/healthz").json()["status"] == "ok"
    card = httpx.get(url + "/v1/model").json()
    meta = json.loads((model_dir / "model.json").read_text())
    assert card["attributes"] == list(OUTPUT_KEYS)
    assert card["sha256"] == meta["sha256"] and card["backbone"] == "efficientnet_lite0"
    assert card["members"] == len(meta.get("ensemble", {}).get("members", [None]))
    assert card["version"]["schema"] == "1" and "test" in card["metrics"]
    assert card["limits"]["max_photos"] == LIMITS["max_photos"]
    paths = httpx.get(url + "/openapi.json").json()["paths"]
    assert {"/v1/classify", "/v1/classify/batch", "/v1/model", "/healthz"} <= set(paths)


def test_classify_equals_python_api(url, clf, photos):
    r = post(url, [("boot.jpg", photos[0], "image/jpeg"), ("boot2.jpg", photos[0], "image/jpeg")],
             {**DECLARED, "top_k": "2"})
    assert r.status_code == 200, r.text
    got = r.json()
    want = clf.classify([photos[0], photos[0]], declared={
        "upper_material": "leather", "sole_material": "rubber", "insole_cm": 26.5, "gender": "women",
        "metal_toecap": False, "heel_sole_cm": 2.0}, top_k=2).to_dict()
    assert [p["photo"] for p in got["photos"]] == ["boot.jpg", "boot2.jpg"]
    for key in ("schema_version", "status", "decisions", "keys", "model"):
        assert got[key] == want[key], key
    assert np.allclose([got["attributes"][k] for k in OUTPUT_KEYS], [want["attributes"][k] for k in OUTPUT_KEYS],
                       atol=1e-5)
    assert np.allclose(got["matrix"], want["matrix"], atol=1e-5)
    assert got["tariff"] is not None and len(got["tariff"]["candidates_10"]) <= 2
    assert got["tariff"]["rationale"]["facts"] == want["tariff"]["rationale"]["facts"]


def test_bad_photos_get_their_own_error(url, photos):
    truncated = photos[1][: len(photos[1]) // 3]
    r = post(url, [("boot.jpg", photos[0]), ("cut.jpg", truncated), ("sandal.jpg", photos[1]),
                   ("notes.txt", b"not an image at all")])
    assert r.status_code == 200, r.text
    res = r.json()
    errors = [p["error"] for p in res["photos"]]
    assert errors[0] is None and errors[2] is None
    assert errors[1].startswith("cut.jpg: ") and errors[3].startswith("notes.txt: ")
    assert res["photos"][1]["attributes"] is None and res["photos"][2]["attributes"] is not None
    assert len(res["matrix"]) == 2 and res["status"] != "error"
    assert all(0.0 <= p <= 1.0 for p in res["attributes"].values())

    only_bad = post(url, [("empty.jpg", b""), ("x.png", b"\x89PNG garbage")]).json()
    assert only_bad["status"] == "error" and only_bad["attributes"] is None and only_bad["tariff"] is None


def test_limits(url, photos):
    big = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (400, 400, 3), dtype=np.uint8)).save(big, "PNG")
    assert len(big.getvalue()) > LIMITS["max_photo_bytes"]
    assert_refused(post(url, [("ok.jpg", photos[0]), ("big.png", big.getvalue())]), 413, "photos[1]")
    assert_refused(post(url, [photos[0]] * 5), 422, "photos")
    huge = b"\xff" * (LIMITS["max_request_bytes"] + 10)
    assert_refused(post(url, [("huge.jpg", huge)]), 413, "body")  # refused on Content-Length

    def chunks():  # no Content-Length: the server must count what it reads
        yield b'--abc\r\nContent-Disposition: form-data; name="photos"; filename="a.jpg"\r\n\r\n'
        for _ in range(12):
            yield b"x" * 100_000
    r = httpx.post(url + "/v1/classify", content=chunks(), timeout=60,
                   headers={"Content-Type": "multipart/form-data; boundary=abc"})
    assert_refused(r, 413, "body")
    assert httpx.get(url + "/healthz").status_code == 200


def test_malformed_requests(url, photos):
    assert_refused(httpx.post(url + "/v1/classify", data={"upper": "leather"}), 422, "photos")
    assert_refused(httpx.post(url + "/v1/classify", json={"photos": []}), 422, "photos")
    assert_refused(post(url, [photos[0]], {"uper": "leather"}), 422, "uper")
    assert_refused(post(url, [photos[0]], {"top_k": "0"}), 422, "top_k")
    assert_refused(post(url, [photos[0]], {"top_k": "many"}), 422, "top_k")
    assert httpx.get(url + "/v1/nothing").status_code == 404


def test_form_fields_come_from_the_facts_schema(url, photos):
    from shoeclass.facts import FACTS

    paths = httpx.get(url + "/openapi.json").json()
    schema = json.dumps(paths["components"])
    for fact in FACTS:  # every declarable fact, the 13 attributes included, is a documented form field
        assert f'"{fact.alias or fact.name}"' in schema, fact.name
    r = post(url, [photos[0]], {"upper": "textile", "sole": "rubber", "height": "low", "indoor": "yes",
                               "sports_kind": "none"})
    assert r.status_code == 200, r.text
    tariff = r.json()["tariff"]
    assert tariff["rules"]["id"] == "tnved-eaeu-ch64"
    if tariff["candidates_10"]:  # the facts decide the code unless the tiny model calls it not footwear
        assert tariff["candidates_10"][0]["code"] == "6404191000"
    r = post(url, [photos[0]], {"upper": "textile", "upper_material": "leather"})
    assert r.status_code == 422 and "twice" in r.json()["detail"]


@pytest.mark.parametrize("field, value", [("upper", "lether"), ("sole", "glass"), ("insole_cm", "long"),
                                          ("insole_cm", "-3"), ("metal_toecap", "maybe"), ("gender", "robot")])
def test_bad_declared_fact_names_the_field(url, photos, field, value):
    body = assert_refused(post(url, [photos[0]], {field: value}), 422, field)
    assert value.lstrip("-") in body["detail"]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_batch(url, clf, photos):
    items = [{"id": "A1", "photos": [{"name": "boot.jpg", "data": b64(photos[0])},
                                     {"name": "bad.jpg", "data": b64(b"garbage")}],
              "declared": {"upper": "leather", "metal_toecap": False, "insole_cm": 27}, "top_k": 3},
             {"id": "B2", "photos": [{"data": b64(photos[1])}]}]
    r = httpx.post(url + "/v1/classify/batch", json={"items": items}, timeout=60)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["schema_version"] == "1" and [it["id"] for it in out["items"]] == ["A1", "B2"]
    first, second = (it["result"] for it in out["items"])
    assert first["photos"][1]["error"].startswith("bad.jpg: ") and len(first["matrix"]) == 1
    assert first["tariff"]["rationale"]["facts"]["upper_material"] == "leather"
    assert second["photos"][0]["photo"] == "photos[0]"
    single = post(url, [photos[1]]).json()
    assert np.allclose(second["matrix"], single["matrix"], atol=1e-5)


def test_batch_refusals(url, photos):
    def batch(items):
        return httpx.post(url + "/v1/classify/batch", json={"items": items}, timeout=60)

    good = {"photos": [{"data": b64(photos[0])}]}
    assert_refused(batch([good, {"photos": [{"data": "@@@"}]}]), 422, "items[1].photos[0].data")
    assert_refused(batch([good, {**good, "declared": {"gender": "robot"}}]), 422, "items[1].declared.gender")
    assert_refused(batch([{**good, "declared": {"colour": "red"}}]), 422, "items[0].declared.colour")
    assert_refused(batch([{**good, "declared": {"upper": ["leather"]}}]), 422, "items[0].declared.upper")
    assert_refused(batch([good] * 4), 422, "items")
    assert_refused(batch([{"photos": []}]), 422, "items[0].photos")
    assert_refused(batch([{"photos": [{"data": b64(photos[0])}] * 5}]), 422, "items[0].photos")
    assert_refused(httpx.post(url + "/v1/classify/batch", content=b"{not json",
                              headers={"Content-Type": "application/json"}), 422, "body")


def test_concurrent_requests_share_the_model(url, photos):
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda i: post(url, [photos[i % 3]]), range(16)))
    assert all(r.status_code == 200 for r in results)
    for i, r in enumerate(results):
        assert np.allclose(r.json()["matrix"], results[i % 3].json()["matrix"], atol=1e-5)


def test_unexpected_error_is_a_generic_500(url, clf, photos, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("secret internals")
    monkeypatch.setattr(clf, "classify", boom)
    r = post(url, [photos[0]])
    assert r.status_code == 500
    assert r.json()["detail"].startswith("internal server error")
    assert "secret" not in r.text and "Traceback" not in r.text


def test_serve_parser():
    import argparse

    sub = argparse.ArgumentParser().add_subparsers(dest="command")
    add_serve_parser(sub)
    args = sub.choices["serve"].parse_args(["--port", "9000"])
    assert (args.host, args.port, args.model) == ("127.0.0.1", 9000, None)
