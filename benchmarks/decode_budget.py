"""Decode budget: the worst photos the loader's limits let through, and the bombs they refuse.

Each case is a file generated here (by scripts/make_bad_corpus.py's generators, at full size),
then passed to ``shoeclass.images.load_image`` in a fresh subprocess; the figures are that call's
wall time and its peak memory above the process's memory just before the call
(VmHWM after minus VmRSS before, the peak reset through /proc/self/clear_refs). Cases:

* ``scan_bomb_20000``: the issue's 20,000 empty scans in a progressive JPEG (refused by scan count);
* ``scans_at_limit``: ``MAX_JPEG_SCANS`` full-image scans over the largest coefficient buffer the
  budget allows (decoded: the worst progressive JPEG);
* ``progressive_no_data``: a ~600-byte progressive header declaring 8000×8000 px (refused);
* ``tile_bomb_tiff``: an 8 MB TIFF of 1,000,000 one-pixel tiles (refused by format);
* ``png_at_budget``: the largest RGBA PNG under the budget, every row Paeth-filtered (decoded);
* ``jpeg_baseline_at_max_pixels``: a baseline JPEG of ``MAX_PIXELS`` px (decoded at 1/8 scale).

Usage:
    python benchmarks/decode_budget.py
"""
from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

GOAL_SECONDS, GOAL_MB = 2.0, 300.0


def _corpus():
    spec = importlib.util.spec_from_file_location("make_bad_corpus", ROOT / "scripts" / "make_bad_corpus.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def child(path: str) -> dict:
    from shoeclass.images import ImageError, load_image

    with open("/proc/self/clear_refs", "w") as fh:  # reset the peak (VmHWM) to the current size
        fh.write("5")
    before = _status_kb("VmRSS")
    t = time.perf_counter()
    try:
        img = load_image(path)
        outcome = f"decoded {img.size[0]}×{img.size[1]}"
    except ImageError as exc:
        outcome = f"refused: {exc.problem}"
    seconds = time.perf_counter() - t
    return {"seconds": seconds, "mb": max(0, _status_kb("VmHWM") - before) / 1024, "outcome": outcome}


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith(field + ":"))


def cases() -> dict[str, bytes]:
    from PIL import Image

    from shoeclass._jpeg import jpeg_cost
    from shoeclass.images import MAX_DECODE_BYTES, MAX_JPEG_SCANS, MAX_PIXELS

    corpus = _corpus()
    side = 16 * math.isqrt(MAX_DECODE_BYTES // 3) // 16  # 4:2:0: 1.5 components × 2 bytes a pixel
    while jpeg_cost(corpus.scan_bomb(1, side, side), 1).coefficient_bytes > MAX_DECODE_BYTES:
        side -= 16
    png_side = math.isqrt(MAX_DECODE_BYTES // 4)
    w = math.isqrt(MAX_PIXELS * 4 // 3)
    h = MAX_PIXELS // w
    return {
        "scan_bomb_20000": corpus.scan_bomb(20000, 2048, 2048),
        "scans_at_limit": corpus.scan_bomb(MAX_JPEG_SCANS, side, side),
        "progressive_no_data": corpus.progressive_header_only(8000, 8000),
        "tile_bomb_tiff": corpus.tiled_tiff(1000, 1000),
        "png_at_budget": corpus.png_rows(png_side, png_side, 6, 4),
        "jpeg_baseline_at_max_pixels": corpus.encode(Image.new("RGB", (w, h), (180, 150, 120)), "JPEG",
                                                     quality=90),
    }


def main() -> int:
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, data in cases().items():
            path = Path(tmp) / name
            path.write_bytes(data)
            out = subprocess.run([sys.executable, __file__, "--child", str(path)], capture_output=True, text=True,
                                 check=True, cwd=ROOT)
            res = json.loads(out.stdout.strip().splitlines()[-1])
            res["kb"] = len(data) / 1024
            results[name] = res
            print(f"{name:30s} {res['kb']:9.0f} KB  {res['seconds']:6.2f} s  {res['mb']:7.1f} MB  {res['outcome']}")
    print()
    for name, res in results.items():
        for key, goal, unit in (("seconds", GOAL_SECONDS, "s"), ("mb", GOAL_MB, "MB")):
            ok = "PASS" if res[key] <= goal else "FAIL"
            print(f"target decode_{name}_{key}: {res[key]:.2f} {unit} (goal <= {goal:g} {unit}) {ok}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print(json.dumps(child(sys.argv[2])))
        sys.exit(0)
    sys.exit(main())
