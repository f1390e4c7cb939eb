"""Bounded load test of the HTTP service on loopback: throughput, latency and server memory.

Starts ``shoeclass serve`` (service.serve) in a subprocess on 127.0.0.1 with a free port, sends
``--requests`` POST /v1/classify requests, ``--concurrency`` at a time, each one item of
``--photos-per-item`` example photos, and reads the server's RSS from /proc at the start (after a
warm-up), in the middle and at the end. Linux only (/proc).

    python benchmarks/service_load.py                       # the shipped model, 200 requests, 8 at once
    python benchmarks/service_load.py --model runs/tiny --requests 50
"""
from __future__ import annotations

import argparse
import glob
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SERVER = "import sys; from shoeclass.service import serve; serve('127.0.0.1', int(sys.argv[1]), sys.argv[2] or None)"


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: str | None, log) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", SERVER, str(port), model or ""], cwd=ROOT,
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}; see {log.name}")
        try:
            if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    proc.terminate()
    raise SystemExit("server did not answer /healthz within 180 s")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="model folder (default: the shipped weights/default)")
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--photos-per-item", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=16, help="requests before the start memory reading")
    ap.add_argument("--photos", default=str(ROOT / "examples" / "*.jpg"), help="glob of photos to send")
    args = ap.parse_args(argv)
    if args.model is None and not (ROOT / "weights" / "default" / "model.json").is_file():
        raise SystemExit("no shipped model in weights/default; pass --model FOLDER")
    files = sorted(glob.glob(args.photos))
    if not files:
        raise SystemExit(f"no photos match {args.photos}")
    blobs = [(Path(f).name, Path(f).read_bytes()) for f in files]
    k = args.photos_per_item

    def item(i: int) -> list:
        return [("photos", blobs[(i + j) % len(blobs)]) for j in range(k)]

    with tempfile.NamedTemporaryFile("w", prefix="shoeclass-serve-", suffix=".log", delete=False) as log:
        proc, url = start_server(args.model, log)
    try:
        client = httpx.Client(timeout=120)
        card = client.get(url + "/v1/model").json()
        print(f"model: {card['name']} ({card['backbone']}, sha256 {card['sha256'][:12]}), server pid {proc.pid}")
        print(f"load: {args.requests} requests x {k} photos, {args.concurrency} concurrent, "
              f"{len(blobs)} example photos from {args.photos}")
        rss = {"loaded": rss_mb(proc.pid)}

        def one(i: int) -> tuple[float, str | None]:
            t = time.perf_counter()
            try:
                r = client.post(url + "/v1/classify", files=item(i))
            except httpx.HTTPError as exc:
                return time.perf_counter() - t, f"{type(exc).__name__}: {exc}"
            dt = time.perf_counter() - t
            if r.status_code != 200:
                return dt, f"HTTP {r.status_code}: {r.text[:200]}"
            bad = [p["error"] for p in r.json()["photos"] if p["error"]]
            return dt, (f"photo error: {bad[0]}" if bad else None)

        with ThreadPoolExecutor(args.concurrency) as pool:
            warm = list(pool.map(one, range(args.warmup)))
            rss["start"] = rss_mb(proc.pid)
            t0 = time.perf_counter()
            futures = [pool.submit(one, i) for i in range(args.requests)]
            lat, errors = [], [e for _, e in warm if e]
            for n, fut in enumerate(as_completed(futures), 1):
                dt, err = fut.result()
                lat.append(dt)
                if err:
                    errors.append(err)
                if n == args.requests // 2:
                    rss["middle"] = rss_mb(proc.pid)
            wall = time.perf_counter() - t0
        rss["end"] = rss_mb(proc.pid)
        client.close()
    finally:
        proc.terminate()
        proc.wait(30)

    ms = np.asarray(lat) * 1000
    growth = rss["end"] - rss["start"]
    print(f"throughput: {args.requests / wall:.2f} requests/s, {args.requests * k / wall:.2f} photos/s "
          f"({wall:.1f} s wall)")
    print(f"latency ms: p50 {np.percentile(ms, 50):.0f}  p90 {np.percentile(ms, 90):.0f}  "
          f"p99 {np.percentile(ms, 99):.0f}  max {ms.max():.0f}")
    print(f"errors: {len(errors)}" + (f" (first: {errors[0]})" if errors else ""))
    print("server RSS MB: " + "  ".join(f"{name} {v:.0f}" for name, v in rss.items())
          + f"  (start = after {args.warmup} warm-up requests)")
    print(f"server log: {log.name}")
    ok_err, ok_mem = not errors, growth <= 50
    print(f"target errors: {len(errors)} (goal 0) {'PASS' if ok_err else 'FAIL'}")
    print(f"target memory_growth_mb: {growth:.1f} (goal <= 50) {'PASS' if ok_mem else 'FAIL'}")
    return 0 if ok_err and ok_mem else 1


if __name__ == "__main__":
    sys.exit(main())
