"""Experiment (issue 16), step 3 of 3: the shipped material-head fit on the tuned tail's features,
alone and beside the shipped head input.
    python scripts/experiments/material_tail_heads.py .cache/mattail/feats_11.npy
"""
import sys, numpy as np, torch
torch.set_num_threads(2)
from shoeclass.training.materials import material_labels, fit_heads
from shoeclass.materials import head_input
table, labels = material_labels("../shared/data")
assert (np.load(".cache/mattail/images.npy") == np.array(table.image, dtype=str)).all()
f = np.load(sys.argv[1]).astype(np.float32)
z = np.load(".cache/materials/ce4202bee47d1794-6ce2a9ef-openvino-int8-v2.npz")
index = {im: i for i, im in enumerate(z["image"].tolist())}
rows = np.array([index[im] for im in table.image])
base = head_input({k: z[k][rows].astype(np.float32) for k in ("embedding", "features")})
for name, x in {"tuned tail alone": head_input({"embedding": f}), "shipped + tuned tail": np.hstack([base, head_input({"embedding": f})])}.items():
    heads, summ = fit_heads(x, labels, table.split, 1.0)
    print(name, "l2", summ["l2"], "val", summ["val"], "test", summ["test"], flush=True)
