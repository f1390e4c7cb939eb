"""The shipped model on the runtimes a user would pick instead: PyTorch, ONNX Runtime, OpenVINO.

In ONE process, on the same exported network (``shoeclass.export``) and the same preprocessing,
interleaved round by round so that a busy machine slows every runtime alike (figures are medians):

* photos/s of the network alone and end to end (JPEG bytes -> ``classify`` -> item JSON) at
  batch 1 and batch 32, for PyTorch fp32, PyTorch bf16 (the path shipped before this benchmark),
  ONNX Runtime fp32, OpenVINO fp32 and bf16 (where the CPU has bf16), and the model folder's int8
  graph (``shoeclass quantize``: static post-training quantization calibrated on validation photos)
  on ONNX Runtime and OpenVINO, each as a user would assemble it;
* the decisions (calibrated photo probability >= the model's threshold, 14 outputs) of each on
  the test photos against PyTorch fp32;
* the stage times of one 3-photo item (decode + resize, tensor, network, decision layer, tariff,
  JSON) and its p50 latency through ``classify_images``, for the default runtime and the old path;
* the retained checks of ``benchmarks/speed.py`` (VGG19 trunk against the bf16 matmul roof, heads
  training time, lenet training time), each in its own process.

    python benchmarks/runtimes.py --quick                      # ~5 min smoke run (200 test photos)
    python benchmarks/runtimes.py --json benchmarks/results/runtimes.json   # the full test split
"""
from __future__ import annotations

import os

# PyTorch and OpenVINO share this process: PyTorch's OpenMP threads must sleep between calls, not
# spin, or they hold the cores OpenVINO's threads wait for (measured: the old path's 3-photo
# network took 5.1 s against 0.12 s on OpenVINO in a quick run with spinning threads).
_PASSIVE = "OMP_WAIT_POLICY" not in os.environ
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from shoeclass.api import Classifier, classify_images  # noqa: E402
from speed import _target  # noqa: E402  (benchmarks/ is on the path: one target-line format)
from shoeclass.attributes import OUTPUT_KEYS  # noqa: E402
from shoeclass.backends import AUTO_ORDER, OnnxRuntime, TorchRuntime, runtime_available  # noqa: E402
from shoeclass.checkpoint import DEFAULT_MODEL, int8_graph  # noqa: E402
from shoeclass.export import cached_onnx  # noqa: E402
from shoeclass.images import load_image  # noqa: E402
from shoeclass.labels import read_labels  # noqa: E402
from shoeclass.runtime import configure_threads, cpu_has_bf16  # noqa: E402
from shoeclass.facts import DeclaredFacts  # noqa: E402
from shoeclass.tariff import classify_tariff  # noqa: E402

BATCH = 32
OLD = "torch bf16" if cpu_has_bf16() else "torch fp32"  # the shipped path before this benchmark
REFERENCE = "torch fp32"


def _median_time(fn, reps: int) -> float:
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def _pixels(paths: list[str], preset) -> np.ndarray:
    return np.stack([preset.pixels(load_image(p)) for p in paths])  # (N, 224, 224, 3) uint8


def _tensor(pixels: np.ndarray, preset) -> torch.Tensor:
    return torch.stack([preset.normalize(p) for p in pixels])  # (B, 3, 224, 224)


class PlainOpenVino:
    """OpenVINO as a user would assemble it: the graph compiled for the CPU at one precision, one
    synchronous request per batch (shoeclass's ``OpenVinoRuntime`` adds the batch split over streams)."""

    name = "openvino"

    def __init__(self, path: Path, bf16: bool, int8: bool = False) -> None:
        import openvino as ov

        self.precision = "int8" if int8 else "bf16" if bf16 else "fp32"
        model = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "bf16" if bf16 else "f32"})
        self.request, self.names = model.create_infer_request(), [o.get_any_name() for o in model.outputs]

    def __call__(self, x) -> dict[str, np.ndarray]:
        res = self.request.infer({0: np.ascontiguousarray(np.asarray(x, dtype=np.float32))})
        return {name: np.array(res[i], dtype=np.float32) for i, name in enumerate(self.names)}


def build_runtimes(clf: Classifier) -> dict:
    """Every runtime of the comparison on the loaded network, by name: PyTorch, and ONNX Runtime
    and OpenVINO on the exported graph with their plain settings (what a user would assemble)."""
    net, meta = clf.net, clf.meta
    out = {"torch fp32": TorchRuntime(net, False), "torch bf16": TorchRuntime(net, True)}
    if not runtime_available("onnxruntime"):
        return out
    path = cached_onnx(net, meta)
    out["onnxruntime fp32"] = OnnxRuntime(path)
    if runtime_available("openvino"):
        out["openvino fp32"] = PlainOpenVino(path, bf16=False)
        if cpu_has_bf16():
            out["openvino bf16"] = PlainOpenVino(path, bf16=True)
    q = int8_graph(clf.path, meta)
    if q is not None:
        out["onnxruntime int8"] = OnnxRuntime(q)
        if runtime_available("openvino"):
            out["openvino int8"] = PlainOpenVino(q, bf16=False, int8=True)  # int8 kernels, the rest f32
    for name, rt in out.items():
        rt.label = name
    return out


def decisions(clf: Classifier, out: dict[str, np.ndarray]) -> np.ndarray:
    probs = clf.decision.photo_probs(out["logits"], out.get("gate"))
    return probs >= clf.thresholds  # (N, 14)


def agreement(clf: Classifier, runtimes: dict, pixels: np.ndarray) -> dict:
    """Each runtime's decisions on every photo of ``pixels`` against PyTorch fp32."""
    dec = {}
    for name, rt in runtimes.items():
        parts = []
        t0 = time.perf_counter()
        for i in range(0, len(pixels), BATCH):
            parts.append(decisions(clf, rt(_tensor(pixels[i:i + BATCH], clf.preset))))
        dec[name] = np.concatenate(parts)
        print(f"  {name}: {len(pixels)} photos decided in {time.perf_counter() - t0:.0f} s", flush=True)
    ref = dec[REFERENCE]
    return {name: {"agreement": float((d == ref).mean()), "decisions": int(d.size),
                   "changed": int((d != ref).sum())} for name, d in dec.items()}


def with_runtime(clf: Classifier, rt) -> Classifier:
    """A Classifier sharing ``clf``'s model whose network runs on ``rt``."""
    other = object.__new__(Classifier)
    other.__dict__.update(clf.__dict__)
    other.runtime = rt
    other.info = dict(clf.info, runtime=rt.label)
    return other


def speed(clf: Classifier, runtimes: dict, default: Classifier, jpegs: list[bytes], rounds: int) -> dict:
    """Median photos/s, network alone and end to end, batch 1 and 32; interleaved by round."""
    x32 = _tensor(_pixels(jpegs[:BATCH], clf.preset), clf.preset)
    clfs = {name: with_runtime(clf, rt) for name, rt in runtimes.items()}
    clfs["default (Classifier)"] = default
    times: dict[str, dict[str, list[float]]] = {n: {"net_1": [], "net_32": [], "e2e_1": [], "e2e_32": []} for n in clfs}

    def e2e(c: Classifier, photos: list[bytes]) -> str:
        return json.dumps(c.classify(photos).to_dict())

    for c in clfs.values():  # warm up: kernels built, first-call allocations made
        c.runtime(x32), c.runtime(x32[:1]), e2e(c, jpegs[:BATCH]), e2e(c, jpegs[:1])
    for r in range(rounds):
        for name, c in clfs.items():
            times[name]["net_32"].append(_median_time(lambda: c.runtime(x32), 1) / BATCH)
            times[name]["net_1"].append(_median_time(lambda: c.runtime(x32[r % BATCH:r % BATCH + 1]), 3))
            batch = jpegs[(r * BATCH) % len(jpegs):][:BATCH]
            batch = batch + jpegs[:BATCH - len(batch)]
            times[name]["e2e_32"].append(_median_time(lambda: e2e(c, batch), 1) / BATCH)
            times[name]["e2e_1"].append(_median_time(lambda: e2e(c, [jpegs[r % len(jpegs)]]), 3))
    return {n: {k: 1.0 / statistics.median(v) for k, v in t.items()} for n, t in times.items()}


def stages(clf: Classifier, jpegs: list[bytes], reps: int) -> dict:
    """Median seconds of each stage of one 3-photo item, as ``Classifier.classify`` runs them."""
    from shoeclass.result import ItemResult, PhotoResult

    facts = DeclaredFacts.from_dict(None)
    t: dict[str, list[float]] = {k: [] for k in ("decode_resize", "tensor", "network", "decision", "tariff", "json")}
    for r in range(reps + 2):
        photos = jpegs[3 * r % (len(jpegs) - 3):][:3]
        t0 = time.perf_counter()
        pix = [clf.preset.pixels(load_image(p)) for p in photos]
        t1 = time.perf_counter()
        x = torch.stack([clf.preset.normalize(p) for p in pix])
        t2 = time.perf_counter()
        raw = clf.network_outputs(x)
        t3 = time.perf_counter()
        out = clf.photo_outputs(raw)  # as Classifier.predict_item runs the decision layer
        gates = clf.decision.gate_probs(out["gate"]) if "gate" in out else None
        weights, _ = clf.decision.screen(out["probs"], out.get("suitability"))
        fused, cluster = clf.decision.item(out["probs"], gates, out.get("suitability"), weights)
        clf.decision.checks.odd_photo(out.get("embedding"), weights)
        probs = out["probs"]
        t4 = time.perf_counter()
        tariff = classify_tariff(dict(zip(OUTPUT_KEYS, map(float, fused))), facts, top_k=5,
                                 atypical=tuple(cluster["atypical_firing"]) if cluster else (),
                                 cluster=cluster["name"] if cluster else None,
                                 input_calibration=clf.tariff_inputs).to_dict()
        t5 = time.perf_counter()
        res = ItemResult([PhotoResult(f"p{i}", probs=probs[i]) for i in range(3)], fused, clf.thresholds,
                         cluster=cluster, tariff=tariff, model=clf.info)
        json.dumps(res.to_dict())
        t6 = time.perf_counter()
        if r >= 2:
            for k, a, b in zip(t, (t0, t1, t2, t3, t4, t5), (t1, t2, t3, t4, t5, t6)):
                t[k].append(b - a)
    return {k: statistics.median(v) for k, v in t.items()}


def latency(clfs: dict[str, Classifier], jpegs: list[bytes], reps: int) -> dict:
    """p50 seconds of one 3-photo item through ``classify_images``, interleaved."""
    t: dict[str, list[float]] = {n: [] for n in clfs}
    for c in clfs.values():
        classify_images(jpegs[:3], model=c)
    for r in range(reps):
        photos = jpegs[3 * r % (len(jpegs) - 3):][:3]
        for n, c in clfs.items():
            t[n].append(_median_time(lambda: json.dumps(classify_images(photos, model=c).to_dict()), 1))
    return {n: statistics.median(v) for n, v in t.items()}


def retained(quick: bool) -> dict:
    """The checks of ``benchmarks/speed.py`` kept after its 100x target was retired."""
    import speed

    if _PASSIVE:  # the children run PyTorch alone, as speed.py does: threads spin as by default
        os.environ.pop("OMP_WAIT_POLICY", None)
    q = quick
    data = str(ROOT.parent / "shared" / "data")
    # lenet: its training steps timed here and scaled to the configured epochs, not the wall time a
    # trained runs/lenet records (a run resumed on a shared machine is no speed figure)
    return {"matmul": speed.run_child("matmul", quick=q), "vgg19": speed.run_child("infer", "vgg19", "batched", quick=q),
            "heads": speed.run_child("heads", data, quick=q), "lenet": speed.run_child("lenet", data, quick=q)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="200 test photos, fewer rounds")
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--model", default=str(DEFAULT_MODEL))
    ap.add_argument("--rounds", type=int, help="interleaved speed rounds (default 5 quick, 15 full)")
    ap.add_argument("--no-retained", action="store_true", help="skip speed.py's retained checks")
    ap.add_argument("--retained-only", action="store_true", help="only speed.py's retained checks")
    ap.add_argument("--json", type=Path, help="also write every measurement here")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    for noisy in ("onnx_ir", "onnxscript", "torch.onnx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    q, rounds = args.quick, args.rounds or (5 if args.quick else 15)
    threads = configure_threads()
    if args.retained_only:
        report_retained(retained(q))
        return 0
    import onnxruntime
    import openvino

    print(f"shoeclass runtimes ({'quick' if q else 'full'}): torch {torch.__version__}, onnxruntime "
          f"{onnxruntime.__version__}, openvino {openvino.__version__}, {threads} threads, "
          f"cpu_has_bf16={cpu_has_bf16()}, model {args.model}", flush=True)
    table = read_labels(args.data)
    rng = np.random.default_rng(0)
    test = table.subset(table.split == "test")
    if q:
        test = test.subset(np.sort(rng.choice(len(test), 200, replace=False)))

    torch_clf = Classifier(args.model, runtime="torch", bf16=False)
    t0 = time.perf_counter()
    default = Classifier(args.model)  # runtime "auto": what a user gets
    print(f"default runtime: {default.info['runtime']} (auto order {AUTO_ORDER}); loading it took "
          f"{time.perf_counter() - t0:.1f} s (ONNX export on first use, then cached)", flush=True)
    old = Classifier(args.model, runtime="torch")  # the shipped path before: PyTorch, bf16 where native
    runtimes = build_runtimes(torch_clf)
    runtimes["default (Classifier)"] = default.runtime
    default.runtime.label = default.info["runtime"]

    t0 = time.perf_counter()
    pixels = _pixels(test.paths(), torch_clf.preset)
    print(f"{len(test)} test photos decoded in {time.perf_counter() - t0:.0f} s", flush=True)
    agree = agreement(torch_clf, runtimes, pixels)  # the default's own runtime object too
    del pixels
    for name, a in agree.items():
        print(f"  {name}: decisions agree with fp32 on {a['agreement']:.4f} ({a['changed']} of {a['decisions']} changed)",
              flush=True)

    jpegs = [Path(p).read_bytes() for p in test.paths()[: (96 if q else 480)]]
    sp = speed(torch_clf, {k: v for k, v in runtimes.items() if k != "default (Classifier)"}, default, jpegs, rounds)
    for name, r in sp.items():
        print(f"  {name}: photos/s " + ", ".join(f"{k} {v:.1f}" for k, v in r.items()), flush=True)
    st_default, st_old = stages(default, jpegs, 10 if q else 30), stages(old, jpegs, 10 if q else 30)
    lat = latency({"default": default, "old": old}, jpegs, 10 if q else 40)
    ret = {} if args.no_retained else retained(q)

    print(f"\n| runtime | net photos/s b1 | net b{BATCH} | end to end b1 | end to end b{BATCH} | decisions agree with fp32 |")
    print("|---|---|---|---|---|---|")
    for name, s in sp.items():
        a = agree.get(name) or {}
        print(f"| {name} | {s['net_1']:.1f} | {s['net_32']:.1f} | {s['e2e_1']:.1f} | {s['e2e_32']:.1f} | "
              f"{a.get('agreement', float('nan')):.4f} ({a.get('changed', '?')} of {a.get('decisions', '?')} changed) |")
    print(f"\n3-photo item stages, median ms ({default.info['runtime']} | old path {OLD}):")
    tot_d, tot_o = sum(st_default.values()), sum(st_old.values())
    for k in st_default:
        print(f"  {k:14s} {1e3 * st_default[k]:7.1f} ({st_default[k] / tot_d:5.1%}) | {1e3 * st_old[k]:7.1f} ({st_old[k] / tot_o:5.1%})")
    print(f"  {'total':14s} {1e3 * tot_d:7.1f}          | {1e3 * tot_o:7.1f}")
    print(f"3-photo item through classify_images, p50: default {1e3 * lat['default']:.1f} ms, old path {1e3 * lat['old']:.1f} ms")

    others = [n for n in sp if n.split()[0] in ("onnxruntime", "openvino")
              and (agree.get(n) or {}).get("agreement", 0) >= 0.995]
    best_other = max(others, key=lambda n: sp[n]["e2e_32"]) if others else None
    vs_best = sp["default (Classifier)"]["e2e_32"] / sp[best_other]["e2e_32"] if best_other else None
    vs_old = sp["default (Classifier)"]["e2e_32"] / sp[OLD]["e2e_32"]
    keeping = [n for n in sp if n != "default (Classifier)" and (agree.get(n) or {}).get("agreement", 0) >= 0.995]
    fastest = max(keeping, key=lambda n: sp[n]["e2e_32"])
    print(f"fastest runtime keeping ≥ 99.5 % of the fp32 decisions, end to end batch {BATCH}: {fastest}; "
          f"fastest ONNX Runtime / OpenVINO: {best_other}")
    share = max(v / tot_d for k, v in st_default.items() if k != "network")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"speed": sp, "agreement": agree, "stages_default": st_default,
                                         "stages_old": st_old, "latency": lat, "retained": ret,
                                         "default_runtime": default.info["runtime"], "threads": threads}, indent=2))
    print()
    print(_target("default_vs_fastest_ort_openvino_e2e_b32", vs_best, 1.0, True, ".2f"))
    print(_target("default_vs_old_path_e2e_b32", vs_old, 2.0, True, ".2f"))
    print(_target("item3_p50_latency_vs_old_path", lat["default"] / lat["old"], 0.5, False, ".2f"))
    print(_target("default_decision_agreement_vs_fp32", (agree["default (Classifier)"] or {}).get("agreement"), 0.995, True, ".4f"))
    print(_target("largest_non_network_stage_share_item3", share, 0.20, False, ".2f"))
    if ret:
        report_retained(ret)
    return 0


def report_retained(ret: dict) -> None:
    """The retained checks' summary and target lines."""
    mm, vg, hd, le = ret["matmul"], ret["vgg19"], ret["heads"], ret["lenet"]
    frac = vg["gflops"] / mm["bf16_gflops" if vg.get("bf16") else "fp32_gflops"] if "error" not in vg and "error" not in mm else None
    print(f"retained: VGG19 batched {vg.get('gflops', float('nan')):.0f} GFLOP/s against bf16 matmul "
          f"{mm.get('bf16_gflops', float('nan')):.0f}; heads {hd.get('seconds', float('nan')):.1f} s on "
          f"{hd.get('features')} features; lenet {le.get('minutes', float('nan')):.1f} min")
    print(_target("vgg19_fraction_of_bf16_matmul", frac, 0.60, True, ".2f"))
    print(_target("heads_train_seconds", hd.get("seconds"), 60, False, ".1f"))
    print(_target("lenet_full_training_minutes", le.get("minutes"), 30, False, ".1f"))


if __name__ == "__main__":
    sys.exit(main())
