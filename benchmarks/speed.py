"""Inference and training speed of shoeclass on this CPU, against the paper's literal setup.

Every configuration runs in its own subprocess, so its peak memory is that process's maxrss
(``resource.getrusage``). Measured:

* photos/s and peak RSS of the paper's literal VGG19 setup: 13 separate fp32 VGG19 classifiers
  (each with its own 4096x2 last layer), one photo at a time, no channels_last. It is simulated
  with ONE VGG19 run 13 times per photo: the same compute. Its RSS holds one network; 13 resident
  networks would need 12 more copies of the weights (reported as an estimate);
* the same for shoeclass's path (``Classifier.predict_tensors``: one trunk pass for all heads,
  batch 32, channels_last, bf16 autocast when ``cpu_has_bf16()``), and for ``efficientnet_lite0``,
  ``lenet`` and (when ``benchmarks/vgg16_weights.py`` has written its file) ``vgg16``, each both
  fp32 one photo at a time and batched;
* fp32 and bf16 ``torch.mm`` GFLOP/s and the VGG19 net's achieved GFLOP/s (FLOPs counted with
  ``FlopCounterMode``) as a fraction of the bf16 matmul figure;
* agreement of bf16 and fp32 decisions (p >= 0.5) of the shipped model on test photos;
* seconds to train the heads on cached EfficientNet-Lite0 features for every configured epoch
  (random features of the same shape when the cache is missing) and the lenet training time.

Trunks are random-init (speed does not depend on the values). ``--quick`` is a short smoke
version (fewer photos, steps and epochs; extrapolated where marked).

    python benchmarks/speed.py --quick          # ~2-3 minutes
    python benchmarks/speed.py --json runs/speed.json   # full run, on an otherwise idle CPU
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

VGG16_FILE = ROOT / ".cache" / "vgg16_imagenet_features.safetensors"
N_LITERAL = 13  # the paper's separate classifiers (the 14th output, not_footwear, is ours)
BATCH = 32  # Classifier's default batch_size


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _timed(fn, reps: int, warmup: int = 1) -> float:
    """Seconds per call of ``fn`` after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps


# ---------------------------------------------------------------- child measurements

def child_matmul(quick: bool) -> dict:
    import torch

    out = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a, b = torch.randn(4096, 4096).to(dtype), torch.randn(4096, 4096).to(dtype)
        torch.mm(a, b)
        best = min(_timed(lambda: torch.mm(a, b), 1, 0) for _ in range(2 if quick else 5))
        out[f"{name}_gflops"] = 2 * 4096 ** 3 / best / 1e9
    return out


def _flops(net, x) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode(), FlopCounterMode(display=False) as fc:
        net(x)
    return fc.get_total_flops()


def child_infer(backbone: str, mode: str, quick: bool) -> dict:
    """photos/s of one backbone: ``literal`` (vgg19 x13), ``single`` (fp32, B=1) or ``batched``."""
    import torch

    from shoeclass.models import ModelConfig, build_model
    from shoeclass.runtime import autocast, configure_threads, cpu_has_bf16, prepare_for_inference

    configure_threads()
    if mode == "literal":
        from torchvision.models import vgg19

        net = vgg19().eval().requires_grad_(False)
        net.classifier[6] = torch.nn.Linear(4096, 2)  # one attribute's 4096x2 last layer
    else:
        weights = str(VGG16_FILE) if backbone == "vgg16" else None
        net = build_model(ModelConfig(backbone=backbone), weights=weights).eval().requires_grad_(False)
    x1 = torch.randn(1, 3, 224, 224)
    flops = _flops(net, x1) * (N_LITERAL if mode == "literal" else 1)
    weight_bytes = sum(p.numel() * p.element_size() for p in net.parameters())
    n_single = {"vgg19": 1 if quick else 3, "vgg16": 2 if quick else 10,
                "efficientnet_lite0": 5 if quick else 60, "lenet": 30 if quick else 300}[backbone]
    n_batches = {"vgg19": 1 if quick else 3, "vgg16": 1 if quick else 4,
                 "efficientnet_lite0": 2 if quick else 10, "lenet": 4 if quick else 40}[backbone]
    bf16 = False
    if mode == "batched":
        prepare_for_inference(net)
        bf16 = cpu_has_bf16()
        xb = torch.randn(BATCH, 3, 224, 224)

        def step():  # Classifier.predict_tensors' inner loop
            with torch.inference_mode(), autocast(bf16):
                net(xb.contiguous(memory_format=torch.channels_last))

        photos, sec = BATCH, _timed(step, n_batches, warmup=1 if quick else 2)
    else:
        reps = N_LITERAL if mode == "literal" else 1

        def step(reps=reps):
            with torch.inference_mode():
                for _ in range(reps):
                    net(x1)

        for _ in range(1 if mode == "literal" else 3):  # oneDNN builds its kernels on the first calls
            step(1)
        photos, sec = 1, _timed(step, n_single, warmup=0)
    pps = photos / sec
    return {"photos_per_s": pps, "gflops": flops * pps / 1e9, "gflop_per_photo": flops / 1e9,
            "bf16": bf16, "batch": photos, "peak_rss_mib": _rss_mib(), "weight_mib": weight_bytes / 2 ** 20}


def child_agreement(data: str, model: str, quick: bool) -> dict:
    import numpy as np

    from shoeclass.api import Classifier
    from shoeclass.evaluate import predict_table
    from shoeclass.labels import read_labels
    from shoeclass.runtime import configure_threads

    configure_threads()
    table = read_labels(data)
    test = table.subset(table.split == "test")
    if quick:
        test = test.subset(np.arange(len(test)) < 200)
    probs, pps = {}, {}
    for bf in (True, False):
        clf = Classifier(model, bf16=bf)
        t0 = time.perf_counter()
        probs[bf] = predict_table(clf, test, progress=False)  # photo files -> probabilities, batched
        pps[bf] = len(test) / (time.perf_counter() - t0)
    agree = (probs[True] >= 0.5) == (probs[False] >= 0.5)  # (N, 14)
    diff = np.abs(probs[True] - probs[False])
    return {"agreement": float(agree.mean()), "photos": len(test), "decisions": int(agree.size),
            "max_abs_dp": float(diff.max()), "mean_abs_dp": float(diff.mean()),
            "photos_per_s_bf16": pps[True], "photos_per_s_fp32": pps[False]}


def _cached_views(cfg, trunk, table, tr) -> dict | None:
    """The feature cache files ``train_frozen`` would read (the eval view of every photo, the
    augmented views of the training photos), or None when one is missing."""
    from shoeclass.data import EvalPreset
    from shoeclass.models import state_checksum
    from shoeclass.training.augment import TrainPreset
    from shoeclass.training.features import feature_cache_path

    sha, b = state_checksum(trunk), cfg.model.backbone
    want = {"eval": (table, EvalPreset(b), "eval")}
    want.update({f"aug{v}": (tr, TrainPreset(b, seed=v), f"aug{v}") for v in range(1, cfg.aug_views + 1)})
    for table, preset, view in want.values():
        if not feature_cache_path(trunk, table, preset, cfg.cache_dir, view=view, trunk_sha=sha).is_file():
            return None
    return {"sha": sha, "want": want}


def child_heads(data: str, quick: bool) -> dict:
    """``fit_heads`` as ``train_frozen.train_frozen`` calls it, on the efficientnet_lite0 config."""
    import numpy as np
    import torch

    from shoeclass.hierarchy import AttributeClusters
    from shoeclass.labels import read_labels
    from shoeclass.models import build_model
    from shoeclass.runtime import configure_threads
    from shoeclass.training.config import load_config, sample_weights
    from shoeclass.training.features import trunk_features
    from shoeclass.training.frozen import fit_heads, gate_targets, suitability_targets

    configure_threads()
    cfg = load_config(ROOT / "configs" / "efficientnet_lite0.yaml", {"progress": False, "data": data})
    cfg.cache_dir = str(ROOT / cfg.cache_dir)
    table = read_labels(cfg.data)
    tr, va = (table.subset(table.split == s) for s in ("train", "val"))
    clusters = AttributeClusters(max_varying=3).fit(tr.y)
    cfg.model.n_clusters, cfg.model.suitability = len(clusters.clusters_), True
    model = build_model(cfg.model, weights=cfg.trunk_weights)
    cached = _cached_views(cfg, model.trunk, table, tr)
    reps = 1 + cfg.aug_views
    epochs = cfg.epochs
    if quick:  # one epoch on the unaugmented rows, scaled to every view and epoch: an upper bound
        cached, reps, cfg.epochs, cfg.patience = None, 1, 1, 1
    if cached:
        feats = {n: trunk_features(model.trunk, t, p, cfg.cache_dir, view=v, trunk_sha=cached["sha"], progress=False)
                 for n, (t, p, v) in cached["want"].items()}
        x = np.concatenate([feats["eval"][table.split == "train"]] + [feats[f"aug{v}"] for v in range(1, reps)])
        x_val = feats["eval"][table.split == "val"]
    else:  # same shapes, real labels
        rng = np.random.default_rng(0)
        x = rng.standard_normal((reps * len(tr), model.trunk.dim), dtype=np.float32)
        x_val = rng.standard_normal((len(va), model.trunk.dim), dtype=np.float32)
    cfg.patience = cfg.epochs  # no early stopping: every configured epoch runs (the worst case)
    hist = fit_heads(model.heads, x, np.tile(tr.y, (reps, 1)), np.tile(sample_weights(tr, cfg), reps),
                     x_val, va.y, cfg, gate_targets=np.tile(gate_targets(clusters, tr.y), reps),
                     suit_targets=np.tile(suitability_targets(tr), (reps, 1)))
    sec = hist["seconds"] * ((1 + cfg.aug_views) * epochs if quick else 1)
    return {"seconds": sec, "features": "cache" if cached else "random", "rows": int(len(x)),
            "dim": int(x.shape[1]), "epochs_run": hist["epochs_run"], "epochs_configured": epochs,
            "extrapolated": quick, "peak_rss_mib": _rss_mib(), "threads": torch.get_num_threads()}


def child_lenet(data: str, quick: bool) -> dict:
    """Training steps of ``train_images.train_lenet``'s loop, extrapolated to the configured epochs."""
    import numpy as np
    import torch

    from shoeclass.data import EvalPreset
    from shoeclass.images import load_image
    from shoeclass.labels import class_weights, read_labels
    from shoeclass.models import build_model
    from shoeclass.runtime import autocast, configure_threads
    from shoeclass.training.augment import augment_views
    from shoeclass.training.config import load_config, make_optimizer
    from shoeclass.training.lenet import _predict
    from shoeclass.training.losses import masked_bce
    from shoeclass.training.pixels import pixel_cache_path, pixels_to_tensor

    configure_threads()
    cfg = load_config(ROOT / "configs" / "lenet.yaml", {"progress": False, "data": data})
    table = read_labels(cfg.data)
    tr = table.subset(table.split == "train")
    n_val, n_test = (int((table.split == s).sum()) for s in ("val", "test"))
    preset = EvalPreset("lenet")
    cache = pixel_cache_path(tr, preset, ROOT / cfg.cache_dir)  # only whether it exists: timing needs no real pixels
    # lenet trains on the 112-pixel cache (training/lenet.py), already downsampled
    pix = np.random.default_rng(0).integers(0, 256, (8 * cfg.batch_size, 112, 112, 3), dtype=np.uint8)
    mean, std = preset.stats()
    model = build_model(cfg.model).to(memory_format=torch.channels_last)
    opt = make_optimizer(model.parameters(), cfg)
    y = torch.from_numpy(tr.y)
    cw = torch.from_numpy(class_weights(tr.y, cfg.balance))
    gen = torch.Generator().manual_seed(0)
    model.train()

    phase = {"load": 0.0, "augment": 0.0, "fwd_bwd_step": 0.0}

    def step():
        t0 = time.perf_counter()
        idx = np.sort(np.random.default_rng().choice(len(tr), cfg.batch_size, replace=False))
        x = pixels_to_tensor(pix[idx % len(pix)])
        t1 = time.perf_counter()
        x = augment_views(x, gen, x.shape[-1])
        x = ((x - mean) / std).contiguous(memory_format=torch.channels_last)
        t2 = time.perf_counter()
        with autocast():
            logits = model.heads(model.trunk(x, downsampled=True))["logits"].float()
        loss = masked_bce(logits, y[idx], cw)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        for k, dt in zip(phase, (t1 - t0, t2 - t1, time.perf_counter() - t2)):
            phase[k] += dt

    n_steps = 5 if quick else 40
    step(), step()
    phase = dict.fromkeys(phase, 0.0)
    step_s = _timed(step, n_steps, warmup=0)
    n_pred = 256 if quick else 1024
    pred_s = _timed(lambda: _predict(model, pix[np.arange(n_pred) % len(pix)], mean, std), 1) / n_pred
    steps = math.ceil(len(tr) / cfg.batch_size)
    epoch_s = steps * step_s + n_val * pred_s  # train steps + the validation pass
    # First run only: decode and preprocess every photo into the pixel cache.
    paths = table.paths()[:: max(1, len(table) // (10 if quick else 100))]
    decode_s = 0.0 if cache.is_file() else _timed(lambda: [preset.pixels(load_image(p)) for p in paths], 1, 0) / len(paths)
    total = cfg.epochs * epoch_s + (n_val + n_test) * pred_s + len(table) * decode_s
    return {"step_s": step_s, **{f"{k}_s": v / n_steps for k, v in phase.items()}, "steps_per_epoch": steps, "epoch_s": epoch_s, "epochs": cfg.epochs,
            "pixel_cache_s": len(table) * decode_s, "minutes": total / 60, "pixel_cache": "present" if cache.is_file() else "to build",
            "peak_rss_mib": _rss_mib()}


def child(argv: list[str]) -> dict:
    kind, *rest = argv
    quick = "--quick" in rest
    args = [a for a in rest if a != "--quick"]
    if kind == "matmul":
        return child_matmul(quick)
    if kind == "baseline":  # RSS of the imports alone, to read the others against
        import shoeclass.api  # noqa: F401
        import torchvision  # noqa: F401

        return {"peak_rss_mib": _rss_mib()}
    if kind == "infer":
        return child_infer(args[0], args[1], quick)
    if kind == "agreement":
        return child_agreement(args[0], args[1], quick)
    if kind == "heads":
        return child_heads(args[0], quick)
    if kind == "lenet":
        return child_lenet(args[0], quick)
    raise ValueError(f"unknown child {kind!r}")


# ---------------------------------------------------------------- orchestration

THREADS: int | None = None


def run_child(*argv: str, quick: bool) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", *argv] + (["--quick"] if quick else [])
    env = dict(os.environ, OMP_NUM_THREADS=str(THREADS)) if THREADS else None
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["?"]
        print(f"  {' '.join(argv)}: FAILED ({tail[0]})", flush=True)
        return {"error": tail[0]}
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"  {' '.join(argv)}: {json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in res.items()})}"
          f"  [{time.perf_counter() - t0:.0f}s]", flush=True)
    return res


def _target(name: str, value: float | None, goal: float, higher: bool, fmt: str) -> str:
    ok = value is not None and (value >= goal if higher else value <= goal)
    shown = format(value, fmt) if value is not None else "not_measured"
    return f"target {name}: {shown} (goal {'≥' if higher else '≤'} {format(goal, fmt)}) {'PASS' if ok else 'FAIL'}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="short smoke version")
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--model", default=str(ROOT / "weights" / "default"), help="model for the bf16/fp32 agreement")
    ap.add_argument("--json", type=Path, help="also write every measurement here")
    ap.add_argument("--threads", type=int, help="OMP_NUM_THREADS for every measurement (default: all cores)")
    args = ap.parse_args(argv)
    q = args.quick
    global THREADS
    THREADS = args.threads
    import torch

    from shoeclass.runtime import cpu_has_bf16

    print(f"shoeclass speed ({'quick' if q else 'full'}): torch {torch.__version__}, "
          f"{THREADS or os.environ.get('OMP_NUM_THREADS') or os.cpu_count()} threads, "
          f"cpu_has_bf16={cpu_has_bf16()}", flush=True)
    res: dict = {"baseline": run_child("baseline", quick=q), "matmul": run_child("matmul", quick=q)}
    configs = [("vgg19", "literal"), ("vgg19", "batched"), ("efficientnet_lite0", "single"),
               ("efficientnet_lite0", "batched"), ("lenet", "single"), ("lenet", "batched")]
    if VGG16_FILE.is_file():
        configs += [("vgg16", "single"), ("vgg16", "batched")]
    for backbone, mode in configs:
        res[f"{backbone}/{mode}"] = run_child("infer", backbone, mode, quick=q)
    model_ok = (Path(args.model) / "model.json").is_file()
    res["agreement"] = run_child("agreement", args.data, args.model, quick=q) if model_ok else \
        {"error": f"{args.model}/model.json missing (train the default model first)"}
    res["heads"] = run_child("heads", args.data, quick=q)
    lenet_json = ROOT / "runs" / "lenet" / "model.json"
    wall = json.loads(lenet_json.read_text())["training"]["history"].get("wall_seconds") if lenet_json.is_file() else None
    res["lenet_train"] = {"minutes": wall / 60, "source": str(lenet_json)} if wall else run_child("lenet", args.data, quick=q)

    print(f"\npeak RSS of a process that only imports torch + shoeclass: {res['baseline'].get('peak_rss_mib', 0):.0f} MiB")
    print("| configuration | photos/s | batch | bf16 | GFLOP/photo | GFLOP/s | peak RSS MiB |")
    print("|---|---|---|---|---|---|---|")
    for backbone, mode in configs:
        r = res[f"{backbone}/{mode}"]
        if "error" not in r:
            print(f"| {backbone} {mode} | {r['photos_per_s']:.3f} | {r['batch']} | {r['bf16']} | "
                  f"{r['gflop_per_photo']:.2f} | {r['gflops']:.0f} | {r['peak_rss_mib']:.0f} |")
    lit, opt, mm = res["vgg19/literal"], res["vgg19/batched"], res["matmul"]
    speedup = frac = None
    if "error" not in lit and "error" not in opt:
        speedup = opt["photos_per_s"] / lit["photos_per_s"]
        resident = lit["peak_rss_mib"] + (N_LITERAL - 1) * lit["weight_mib"]
        print(f"\nliteral VGG19 = one VGG19 (4096x2 last layer) run {N_LITERAL}x per photo, the same compute as "
              f"{N_LITERAL} separate classifiers; with all {N_LITERAL} resident its RSS would be ~{resident:.0f} MiB")
        peak = mm.get("bf16_gflops" if opt["bf16"] else "fp32_gflops")
        frac = opt["gflops"] / peak if peak else None
        print(f"matmul 4096^2: fp32 {mm.get('fp32_gflops', float('nan')):.0f} GFLOP/s, bf16 "
              f"{mm.get('bf16_gflops', float('nan')):.0f} GFLOP/s; VGG19 batched {opt['gflops']:.0f} GFLOP/s")
    ag = res["agreement"]
    if "error" in ag:
        print(f"bf16/fp32 agreement not measured: {ag['error']}")
    else:
        print(f"bf16/fp32 agreement on {ag['photos']} test photos: {ag['agreement']:.4f} "
              f"(max |dp| {ag['max_abs_dp']:.4f}, mean {ag['mean_abs_dp']:.5f})")
        print(f"shipped model end to end (photo files -> probabilities, batch {BATCH}): "
              f"{ag['photos_per_s_bf16']:.1f} photos/s bf16, {ag['photos_per_s_fp32']:.1f} fp32")
    hd, le = res["heads"], res["lenet_train"]
    if "error" not in hd:
        print(f"heads: {hd['seconds']:.1f} s on {hd['features']} features {hd['rows']}x{hd['dim']}, "
              f"{hd['epochs_run']} epochs run{' (extrapolated to ' + str(hd['epochs_configured']) + ')' if hd['extrapolated'] else ''}")
    if "error" not in le:
        print("lenet: " + (f"measured {le['minutes']:.1f} min ({le['source']})" if "source" in le else
              f"{le['step_s']:.3f} s/step (load {le['load_s']:.3f}, augment {le['augment_s']:.3f}, "
              f"fwd+bwd+step {le['fwd_bwd_step_s']:.3f}) x {le['steps_per_epoch']} steps -> {le['epoch_s'] / 60:.1f} min/epoch x "
              f"{le['epochs']} epochs + pixel cache {le['pixel_cache_s'] / 60:.1f} min (pixel cache {le['pixel_cache']})"))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=2))
    print()
    print(_target("vgg19_speedup_vs_literal", speedup, 100, True, ".1f"))
    print(_target("vgg19_fraction_of_bf16_matmul", frac, 0.60, True, ".2f"))
    print(_target("bf16_fp32_agreement", ag.get("agreement"), 0.995, True, ".4f"))
    print(_target("heads_train_seconds", hd.get("seconds"), 60, False, ".1f"))
    print(_target("lenet_full_training_minutes", le.get("minutes"), 30, False, ".1f"))
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print(json.dumps(child(sys.argv[2:])))
        sys.exit(0)
    sys.exit(main())
