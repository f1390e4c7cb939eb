"""Decision-layer benchmark (issue 3): Bayesian fusion on simulated multi-photo items, calibration,
and tariff-code agreement, as shared/spec/evaluation.md prescribes.

For every test photo, M = 3 views by independent random transforms (crops keeping 50–100 % of the
area, rotation up to ±15°, brightness/contrast/colour shifts, blur, JPEG quality 30–90, and for
catalogue photos a changed background). Per attribute, the error of the fused item decision is
compared with the mean error of its single views. ECE (15 bins) before and after temperature
scaling is measured on the single test photos. Tariff codes from the by-eye labels and from the
predictions are compared at 4, 6 and 10 digits for fixed sets of declared facts.

    python benchmarks/fusion.py --data ../shared/data [--model weights/default] [--limit N] [--dump views.npz]
"""
from __future__ import annotations

import argparse
import io
import time

import albumentations as A
import cv2
import numpy as np
import torch
from PIL import Image
from scipy.special import expit

from shoeclass.api import Classifier
from shoeclass.attributes import MASK, OUTPUT_KEYS
from shoeclass.images import load_image
from shoeclass.labels import read_labels
from shoeclass.metrics import expected_calibration_error
from shoeclass.tariff import DeclaredFacts, classify_tariff

M = 3
FACT_SETS = {
    "leather upper + rubber sole": DeclaredFacts(upper_material="leather", sole_material="rubber", metal_toecap=False,
                                                 insole_cm=25.0, gender="women"),
    "textile upper + rubber sole": DeclaredFacts(upper_material="textile", sole_material="rubber", insole_cm=25.0,
                                                 gender="women"),
    "plastics upper + plastics sole": DeclaredFacts(upper_material="plastics", sole_material="plastics",
                                                    metal_toecap=False, insole_cm=25.0, gender="women"),
}


def change_background(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Replace the near-white studio background by a random colour gradient with noise."""
    h, w, _ = img.shape
    bg_mask = (img.min(2) > 235)[..., None]
    c0, c1 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    t = np.linspace(0, 1, w)[None, :, None]
    bg = (c0 * (1 - t) + c1 * t) + rng.normal(0, 8, (h, w, 3))
    return np.where(bg_mask, np.clip(bg, 0, 255), img).astype(np.uint8)


def make_views(img: Image.Image, catalogue: bool, rng: np.random.Generator) -> list[Image.Image]:
    side = max(img.size)
    aug = A.Compose([
        A.RandomResizedCrop(size=(side, side), scale=(0.5, 1.0), ratio=(0.75, 1.333)),
        A.Rotate(limit=15, border_mode=cv2.BORDER_REPLICATE, p=1.0),
        A.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.03, p=1.0),
        A.GaussianBlur(blur_limit=(3, 5), p=0.3),
    ], seed=int(rng.integers(1 << 31)))
    views = []
    for _ in range(M):
        arr = np.asarray(img)
        if catalogue:
            arr = change_background(arr, rng)
        arr = aug(image=arr)["image"]
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, "JPEG", quality=int(rng.integers(30, 91)))
        views.append(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    return views


def errors(probs: np.ndarray, y: np.ndarray, thr: np.ndarray) -> np.ndarray:
    """(K,) error rate per output over the counted labels."""
    known = y != MASK
    wrong = ((probs >= thr) != (y == 1)) & known
    return wrong.sum(0) / np.maximum(known.sum(0), 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--model", default=None)
    ap.add_argument("--limit", type=int, default=0, help="use only the first N test photos (0 = all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dump", help="also save the per-view head outputs and labels here (.npz)")
    args = ap.parse_args()

    clf = Classifier(args.model)
    dl = clf.decision
    labels = read_labels(args.data)
    test = labels.subset(labels.split == "test")
    if args.limit:
        test = test.subset(np.arange(len(test)) < args.limit)
    rng = np.random.default_rng(args.seed)
    t0 = time.time()
    single_logits, single_probs, view_out = [], [], []
    for i, path in enumerate(test.paths()):
        img = load_image(path)
        views = make_views(img, test.source[i] != "worn", rng)
        x = torch.stack([clf.preset(v) for v in [img] + views])
        out = clf.predict_tensors(x)
        single_logits.append(out["logits"][0])
        single_probs.append(out["probs"][0])  # calibrated and combined with the cluster posterior
        view_out.append({k: v[1:] for k, v in out.items()})
    secs = time.time() - t0
    y = test.y
    thr = clf.thresholds
    raw = np.stack(single_logits)  # (N, 14)
    ece_before = expected_calibration_error(expit(raw), y)
    probs = np.stack(single_probs)  # (N, 14) what the model reports per photo
    ece_after = expected_calibration_error(probs, y)

    vp = np.stack([o["probs"] for o in view_out])  # (N, M, 14)
    vw = np.stack([dl.weights(o["suitability"]) for o in view_out]) if "suitability" in view_out[0] else None
    fused = dl.fusion.fuse_items(vp, vw) if dl.fusion else vp.mean(1)
    if args.dump:
        np.savez_compressed(args.dump, y=y, thr=thr, source=test.source, single_probs=probs,
                            **{f"view_{k}": np.stack([o[k] for o in view_out]) for k in view_out[0]})
    single_err = np.mean([errors(vp[:, m], y, thr) for m in range(M)], axis=0)  # (14,)
    fused_err = errors(fused, y, thr)
    mean_err = errors(vp.mean(1), y, thr)
    counted = (y != MASK).sum(0) > 0
    print(f"{len(test)} test photos, {M} simulated views each ({secs:.0f} s)\n")
    print("| attribute | single-view error | fused error | ratio | plain mean error |")
    print("|---|---|---|---|---|")
    for k, key in enumerate(OUTPUT_KEYS):
        if counted[k]:
            ratio = fused_err[k] / single_err[k] if single_err[k] else float("nan")
            print(f"| {key} | {single_err[k]:.4f} | {fused_err[k]:.4f} | {ratio:.3f} | {mean_err[k]:.4f} |")
    s_mean, f_mean = single_err[counted].mean(), fused_err[counted].mean()
    ratio = f_mean / s_mean
    print(f"\nmean over attributes: single-view error {s_mean:.4f}, fused {f_mean:.4f} (ratio {ratio:.3f}), "
          f"plain mean {mean_err[counted].mean():.4f}")
    if dl.fusion is not None:
        print("fitted correlation rho per output: " + ", ".join(
            f"{k}={r:.2f}" for k, r in zip(OUTPUT_KEYS, dl.fusion.rho_)))
    print(f"ECE on single test photos: raw heads {ece_before:.4f}, as reported (calibrated, cluster-combined) {ece_after:.4f}")

    # Tariff agreement: rows judged by eye on everything the rules read.
    eye = (test.origin == "eye") & ((y[:, :13] != MASK).all(1) | (y[:, 13] == 1))
    agree = {}
    for name, facts in FACT_SETS.items():
        hits = np.zeros(3)
        for i in np.flatnonzero(eye):
            truth = classify_tariff(dict(zip(OUTPUT_KEYS, map(float, y[i]))), facts, top_k=1).top_code or ""
            pred = classify_tariff(dict(zip(OUTPUT_KEYS, map(float, probs[i]))), facts, top_k=1).top_code or ""
            hits += [truth[:4] == pred[:4], truth[:6] == pred[:6], truth == pred]
        agree[name] = hits / max(eye.sum(), 1)
        print(f"code agreement ({name}, {int(eye.sum())} by-eye photos): 4-digit {agree[name][0]:.4f}, "
              f"6-digit {agree[name][1]:.4f}, 10-digit {agree[name][2]:.4f}")
    print()
    print(f"target fused_error_ratio: {ratio:.3f} (goal <= 0.7) {'PASS' if ratio <= 0.7 else 'FAIL'}")
    print(f"target ece_after_calibration: {ece_after:.4f} (goal <= 0.03) {'PASS' if ece_after <= 0.03 else 'FAIL'}")


if __name__ == "__main__":
    main()
