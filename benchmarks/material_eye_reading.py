"""How well the upper's material can be read from the photo by eye (issue 16): the blind readings of
benchmarks/results/material_eye_reading.md against the text-derived labels, beside the shipped
material head on the same photos (its column in that file, or re-read with --model).

    python benchmarks/material_eye_reading.py [--data ../shared/data --model weights/default]

Ends with one line per target: the issue's upper-material goal (balanced accuracy >= 0.80 over the
four classes) applied to the eye's reading, to show what the photos allow.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

TABLE = Path(__file__).resolve().parent / "results" / "material_eye_reading.md"
CLASSES = ("leather", "textile", "rubber_plastics", "other")


def balanced(pred: list[str], true: list[str], classes=CLASSES) -> float:
    return float(np.mean([np.mean([p == c for p, t in zip(pred, true) if t == c]) for c in classes
                          if any(t == c for t in true)]))


def read_table() -> list[dict]:
    rows = [line.strip().strip("|").split("|") for line in TABLE.read_text().splitlines() if line.startswith("| ")]
    head = [h.strip() for h in rows[0]]
    return [dict(zip(head, (v.strip() for v in r))) for r in rows[1:] if not r[0].strip().startswith("-")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", help="re-read the photos with --model instead of the file's shipped column")
    ap.add_argument("--model")
    args = ap.parse_args()
    rows = [r for r in read_table() if r["reader"] in ("1", "2")]
    true = [r["text label"] for r in rows]
    readers = {"eye (blind)": [r["eye"] for r in rows], "shipped head": [r["shipped"] for r in rows]}
    if args.data:
        from shoeclass.api import Classifier
        from shoeclass.materials import MATERIAL_CLASSES

        clf = Classifier(args.model)
        out = clf.classify  # one photo at a time, as a user would
        readers["model (re-read)"] = [max(out(str(Path(args.data) / r["image"])).photos[0].materials["upper"].items(),
                                          key=lambda kv: kv[1])[0] for r in rows]
        assert set(readers["model (re-read)"]) <= set(MATERIAL_CLASSES["upper"])
    print(f"{len(rows)} test photos read blind by eye (two readers), labels from the product texts")
    for name, pred in readers.items():
        acc = np.mean([p == t for p, t in zip(pred, true)])
        recall = {c: f"{sum(p == c for p, t in zip(pred, true) if t == c)}/{sum(t == c for t in true)}" for c in CLASSES}
        print(f"  {name:16s} balanced {balanced(pred, true):.3f} (without other {balanced(pred, true, CLASSES[:3]):.3f}) "
              f"accuracy {acc:.3f} recall {recall}")
    for conf in ("3", "2", "1"):
        sel = [r for r in rows if r["confidence"] == conf]
        print(f"  eye confidence {conf}: {sum(r['eye'] == r['text label'] for r in sel)} of {len(sel)} right")
    eye = balanced(readers["eye (blind)"], true)
    print(f"target upper_balanced_accuracy_by_eye: {eye:.4f} (goal >= 0.80) {'PASS' if eye >= 0.80 else 'FAIL'}")


if __name__ == "__main__":
    main()
