"""Adapt the shipped ensemble to photos in the wild on a GPU machine that cannot read ../shared.

How the shipped default of round 2 was trained (issue 14). The GPU machine this project is
sometimes lent receives only the repository (64 MiB a call), so the photos travel as packs:

    python scripts/device_adapt.py pack --data ../shared/data --out .devpack   # here, once
    # on the GPU machine (the pack carried in the call, unpacked to /root/packs):
    python scripts/device_adapt.py run --packs /root/packs --out $OUT --variants ...

``pack`` writes the training photos (every in-the-wild and by-eye photo, an eighth of the
class-labelled catalogue photos: the members already learnt those) and every validation photo,
re-encoded as JPEG (in-the-wild photos at 176 px), in one tar file that fits one call, plus the frozen ImageNet stem of
EfficientNet-Lite0 (the tuned tails and heads come from weights/default). ``run`` decodes and
preprocesses the photos once into GPU memory, adapts member 0 with each variant of the recipe
(``adapt.adapt_members``) and reports its validation score per kind of photo, then adapts all
members with the chosen variant and writes their tuned tensors (float16) to ``--out``.
``merge`` then fits the decision layer on this machine (``training/ensemble.py`` ``fit_ensemble``).
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import logging
import sys
import tarfile
import time
import types
from multiprocessing import Pool
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PACK_BYTES = 60_000_000


def _keep(row: dict) -> bool:
    if row["split"] == "val" or row["source"] in ("street", "worn") or row["origin"] == "eye":
        return row["split"] in ("train", "val")
    return row["split"] == "train" and int(hashlib.sha1(row["image"].encode()).hexdigest(), 16) % 8 == 0


def _encode(args: tuple[str, str, bool]) -> tuple[str, bytes]:
    from PIL import Image

    root, image, wild = args
    img = Image.open(Path(root) / image).convert("RGB")
    img.thumbnail((176, 176) if wild else (192, 192), Image.BILINEAR)  # members fine-tune at 160-192 px
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=65 if wild else 50, optimize=True)
    return image, buf.getvalue()


def pack(data: Path, out: Path) -> None:
    import torch
    from safetensors.torch import save_file

    from shoeclass.models import build_trunk

    out.mkdir(parents=True, exist_ok=True)
    with open(data / "labels.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        header, rows = reader.fieldnames, [r for r in reader if _keep(r)]
    jobs = [(str(data), r["image"], r["source"] in ("street", "worn")) for r in rows]
    with Pool(2) as pool:
        blobs = pool.map(_encode, jobs, chunksize=64)
    part, size, tar = 0, 0, None
    for image, blob in blobs:
        if tar is None or size + len(blob) > PACK_BYTES:
            if tar:
                tar.close()
            tar, size, part = tarfile.open(out / f"photos{part}.tar.gz", "w:gz", compresslevel=6), 0, part + 1
        info = tarfile.TarInfo(image)
        info.size = len(blob)
        tar.addfile(info, io.BytesIO(blob))
        size += len(blob) + 1024
    tar.close()
    with open(out / "labels.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, header)
        w.writeheader()
        w.writerows(rows)
    trunk = build_trunk("efficientnet_lite0", "imagenet", tuned_blocks=8)
    tail = set(trunk.tuned_state())
    save_file({k: v.contiguous() for k, v in trunk.state_dict().items() if k not in tail}, str(out / "stem.safetensors"))
    print(f"{len(rows)} photos in {part} packs; stem {len(trunk.state_dict()) - len(tail)} tensors")


def _pixels(path: str) -> np.ndarray:
    from PIL import Image

    from shoeclass.data import EvalPreset

    return EvalPreset("efficientnet_lite0").pixels(Image.open(path).convert("RGB"))


def run(packs: Path, out: Path, variants: list[dict], final: dict | str, epochs: int, budget: float) -> None:
    sys.modules.setdefault("albumentations", types.ModuleType("albumentations"))  # data.py's training presets only
    import torch
    from safetensors.torch import load_file, save_file

    from shoeclass.checkpoint import _trainable, load_checkpoint
    from shoeclass.hierarchy import AttributeClusters
    from shoeclass.labels import read_labels
    from shoeclass.training.adapt import adapt_members, kind_scores
    from shoeclass.training.config import load_config

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    t0 = time.time()
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    table = read_labels(packs)
    tr, va = table.subset(table.split == "train"), table.subset(table.split == "val")
    with Pool(16) as pool:
        pix = {name: torch.from_numpy(np.stack(pool.map(_pixels, [str(p) for p in t.paths()], chunksize=64))).to(dev)
               for name, t in (("train", tr), ("val", va))}
    print(f"decoded {len(tr)} train / {len(va)} val photos in {time.time() - t0:.0f} s", flush=True)
    stem = load_file(str(packs / "stem.safetensors"))
    ensemble_yaml = ROOT / "configs" / "efficientnet_lite0_ensemble.yaml"
    import yaml

    member_settings = yaml.safe_load(ensemble_yaml.read_text())["members"]
    base = ROOT / "configs" / "efficientnet_lite0.yaml"

    def fresh():
        net, meta = load_checkpoint(ROOT / "weights" / "default", trunk_weights=None)
        for m in net.members:
            m.trunk.load_state_dict(stem, strict=False)
        return net, AttributeClusters.from_dict(meta["decision"]["clusters"])

    report = {"variants": []}
    net, clusters = fresh()
    from shoeclass.training.finetune import pixel_features
    from shoeclass.data import EvalPreset

    preset = EvalPreset("efficientnet_lite0")
    m0 = net.members[0].to(dev)
    feats = torch.from_numpy(pixel_features(m0.trunk, pix["val"], *preset.stats()))
    with torch.inference_mode():
        base_logits = m0.heads.cpu()(feats)["logits"].numpy()
    report["shipped_member0"] = kind_scores(base_logits, va)
    print("shipped member 0:", report["shipped_member0"], flush=True)
    spent: list[float] = []
    for v in variants:
        mean_variant = float(np.mean(spent)) if spent else 0.0
        if time.time() - t0 + mean_variant * 4 > budget:  # leave time for the final three members
            print("time budget reached: no more variants", flush=True)
            break
        net, clusters = fresh()
        net.members = net.members[:1]
        cfg = load_config(base, {**v, "tune_epochs": epochs, "progress": False, "out": "/tmp/adapt_v"})
        t1 = time.time()
        hist = adapt_members(net, tr, va, pix["train"], pix["val"], cfg, member_settings, clusters, dev)
        report["variants"].append({"settings": v, "val_by_kind": hist[0]["val_by_kind"],
                                   "val_scores": hist[0]["val_scores"], "seconds": round(time.time() - t1, 1)})
        spent.append(time.time() - t1)
        print("variant", v, hist[0]["val_by_kind"], hist[0]["val_scores"], f"{spent[-1]:.0f} s", flush=True)
        (out / "adapt_report.json").write_text(json.dumps(report, indent=1))
    if final == "auto":  # the variant whose validation kinds score best on average
        best = max(report["variants"], key=lambda r: np.mean([s for k, s in r["val_by_kind"].items() if k != "all"]))
        final = best["settings"]
    if final:
        net, clusters = fresh()
        cfg = load_config(base, {**final, "tune_epochs": epochs, "progress": False, "out": "/tmp/adapt_final"})
        report["final"] = {"settings": final, "members": []}
        members = list(net.members)
        for i, m in enumerate(members):  # one at a time, each written as soon as it is done
            net.members = torch.nn.ModuleList([m])
            hist = adapt_members(net, tr, va, pix["train"], pix["val"], cfg, member_settings[i:i + 1], clusters, dev)
            save_file({k: v.half().contiguous() if v.is_floating_point() else v.contiguous()
                       for k, v in _trainable(m).items()}, str(out / f"member{i}.safetensors"))
            report["final"]["members"].append(hist[0])
            (out / "adapt_report.json").write_text(json.dumps(report, indent=1))
            print("final member", i, hist[0]["val_by_kind"], hist[0]["val_scores"], flush=True)
    report["seconds"] = round(time.time() - t0, 1)
    (out / "adapt_report.json").write_text(json.dumps(report, indent=1))


def merge(members: Path, report: Path, data: Path, out: Path, cache: Path) -> None:
    """The adapted members into the shipped ensemble, its decision layer fitted on validation."""
    import pickle  # our own cache of numpy outputs, written just before by this function

    from shoeclass.checkpoint import load_checkpoint
    from shoeclass.training.adapt import load_member_tensors
    from shoeclass.training.ensemble import ensemble_outputs, fit_ensemble
    from shoeclass.labels import read_labels
    from shoeclass.runtime import prepare_for_inference

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    net, meta = load_checkpoint(ROOT / "weights" / "default")
    load_member_tensors(net, sorted(members.glob("member*.safetensors")))
    net = prepare_for_inference(net)
    if cache.is_file():
        outputs = pickle.loads(cache.read_bytes())
    else:
        table = read_labels(data)
        va = table.subset(table.split == "val")
        # Simulated items for the fusion on the photos tagged by eye (every kind) and as many
        # class-labelled ones: a third of the validation split, each view a pass of the ensemble.
        eye = np.flatnonzero(va.origin == "eye")
        other = np.flatnonzero(va.origin != "eye")
        rows = np.sort(np.concatenate([eye, np.random.default_rng(0).choice(other, len(eye), replace=False)]))
        outputs = ensemble_outputs(net, table, meta["backbone"], progress=True, view_rows=rows, test=False)
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_bytes(pickle.dumps(outputs))
    rep = json.loads(report.read_text())
    first = {**meta, "training": {"config": {"balance": 1.0}}}
    shipped = meta["training"]
    training = {"adapted_from": {"sha256": meta["sha256"], "ensemble_of": shipped.get("ensemble_of")},
                "adaptation": {"recipe": rep["final"]["settings"], "members": rep["final"]["members"],
                               "device": "NVIDIA H200 (scripts/device_adapt.py run)"},
                "history": {"wall_seconds": shipped.get("history", {}).get("wall_seconds")}}
    fit_ensemble(net, first, training, data, out, outputs=outputs)
    print(f"adapted ensemble written to {out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack")
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    p.add_argument("--out", type=Path, default=ROOT / ".devpack")
    r = sub.add_parser("run")
    r.add_argument("--packs", type=Path, required=True)
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--variants", default="[]", help="JSON list of config overrides, one per variant")
    r.add_argument("--final", default="{}", help="JSON config overrides of the recipe for all members, or 'auto': the best variant")
    r.add_argument("--epochs", type=int, default=3)
    r.add_argument("--budget", type=float, default=480, help="seconds: no new variant once the final "
                   "members would not fit")
    m = sub.add_parser("merge", help="the adapted members into the shipped ensemble (decision layer on val)")
    m.add_argument("--members", type=Path, required=True, help="folder of member<i>.safetensors from run")
    m.add_argument("--report", type=Path, required=True, help="adapt_report.json from run")
    m.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    m.add_argument("--out", type=Path, default=ROOT / "runs" / "adapted")
    m.add_argument("--cache", type=Path, default=ROOT / ".cache" / "adapted_outputs.pkl")
    a = ap.parse_args()
    if a.cmd == "pack":
        pack(a.data, a.out)
    elif a.cmd == "merge":
        merge(a.members, a.report, a.data, a.out, a.cache)
    else:
        run(a.packs, a.out, json.loads(a.variants), a.final if a.final == "auto" else json.loads(a.final), a.epochs, a.budget)


if __name__ == "__main__":
    main()
