"""Experiment (issue 16), step 3 of 3: the shipped material-head fit on the tuned tail's features,
alone and beside the shipped head input.
    python scripts/experiments/material_tail_heads.py .cache/mattail/feats_11.npy
"""
import sys, numpy as np, torch
torch.set_num_threads(2)
from shoeclass.api import Classifier
from shoeclass.training.materials import material_labels, fit_heads, feature_cache
from shoeclass.materials import head_input
table, labels = material_labels("../shared/data")
assert (np.load(".cache/mattail/images.npy") == np.array(table.image, dtype=str)).all()
f = np.load(sys.argv[1]).astype(np.float32)
z = feature_cache(Classifier(), table)  # the shipped head input, default runtime, cached by model
base = head_input({k: z[k].astype(np.float32) for k in ("embedding", "features")})
for name, x in {"tuned tail alone": head_input({"embedding": f}), "shipped + tuned tail": np.hstack([base, head_input({"embedding": f})])}.items():
    heads, summ = fit_heads(x, labels, table.split, 1.0)
    print(name, "l2", summ["l2"], "val", summ["val"], "test", summ["test"], flush=True)
