"""Model outputs on the by-eye photos of one split, computed once and cached under .cache/.

benchmarks/tariff.py reads them so that the tariff rules can be re-run cheaply; the cache key is
the model's checksum and the runtime that ran it, so a new model at the default path (or another
runtime) is predicted again.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from shoeclass.api import Classifier
from shoeclass.data import table_outputs
from shoeclass.labels import read_labels

CACHE = Path(__file__).resolve().parent.parent / ".cache"


def by_eye_outputs(data: str | Path, split: str, clf: Classifier, progress: bool = True) -> dict:
    """{"image", "y", "source", "fused", "wrong_cluster", "atypical"} for every by-eye photo of
    ``split``, each photo an item of its own (fused through the model's decision layer)."""
    table = read_labels(data)
    table = table.subset((table.split == split) & (table.origin == "eye"))
    runtime = clf.info["runtime"].replace(" ", "-")
    path = CACHE / f"tariff_{split}_{clf.meta['sha256'][:16]}_{runtime}_{len(table)}.npz"
    if path.is_file():
        z = np.load(path, allow_pickle=False)
        return {"image": z["image"], "y": z["y"], "source": z["source"], "fused": z["fused"],
                "wrong_cluster": z["wrong_cluster"], "atypical": [json.loads(a) for a in z["atypical"]]}

    def run(x):
        out = clf.predict_tensors(x)
        res = {"probs": out["probs"].astype(np.float64)}
        if "suitability" in out:
            res["suitability"] = out["suitability"].astype(np.float64)
        if "gate" in out:
            res["gate"] = clf.decision.gate_probs(out["gate"]).astype(np.float64)
        return res

    out = table_outputs(run, table, clf.preset, batch_size=32, progress=progress, desc=f"predict {split}")
    fused, wrong, atypical = [], [], []
    for i in range(len(table)):
        f, cluster = clf.decision.item(out["probs"][i:i + 1],
                                       out["gate"][i:i + 1] if "gate" in out else None,
                                       out["suitability"][i:i + 1] if "suitability" in out else None)
        fused.append(f)
        wrong.append(bool(cluster and cluster["wrong_cluster"]))
        atypical.append(json.dumps(cluster["atypical_firing"] if cluster else []))
    res = {"image": table.image.astype(str), "y": table.y.astype(np.float64), "source": table.source.astype(str),
           "fused": np.stack(fused), "wrong_cluster": np.array(wrong), "atypical": np.array(atypical)}
    CACHE.mkdir(exist_ok=True)
    np.savez(path, **res)
    res["atypical"] = [json.loads(a) for a in res["atypical"]]
    return res


if __name__ == "__main__":
    import sys

    clf = Classifier(None)
    for split in sys.argv[1:] or ["test"]:
        r = by_eye_outputs("/work/shared/data", split, clf)
        print(split, len(r["image"]))
