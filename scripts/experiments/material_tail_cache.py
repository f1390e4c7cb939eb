"""Experiment (issue 16, round 2 fourth session), step 1 of 3: cache the untuned ImageNet tail's block-10 map
(photo and mirror) of the text-labelled material photos under .cache/mattail/ (9 min on 2 cores).
Not part of the library; see BENCHMARKS.md "Materials from the photo".
"""
import numpy as np, torch, time
torch.set_num_threads(2)
from shoeclass.api import Classifier
from shoeclass.training.materials import material_labels
from shoeclass.images import load_image
clf = Classifier(runtime="torch")
net = clf.net; ref = net.reference; b = ref.body
table, labels = material_labels("../shared/data")
paths = table.paths()
maps = np.zeros((len(paths), 2, 112, 14, 14), np.float16)
t0 = time.time()
with torch.inference_mode():
    for i in range(0, len(paths), 64):
        x = torch.stack([clf.preset(load_image(p)) for p in paths[i:i + 64]])
        x = torch.cat([x, x.flip(3)])
        h = net.members[0].trunk.stem(x)
        for idx in range(ref.cut, 11):
            h = b._blocks[idx](h)
        n = len(h) // 2
        maps[i:i + n, 0] = h[:n].numpy(); maps[i:i + n, 1] = h[n:].numpy()
        if i % 1280 == 0: print(i, round(time.time() - t0), flush=True)
np.save(".cache/mattail/maps.npy", maps)
np.save(".cache/mattail/images.npy", np.array(table.image, dtype=str))
for part, v in labels.items(): np.save(f".cache/mattail/y_{part}.npy", v)
np.save(".cache/mattail/split.npy", np.array(table.split, dtype=str))
print("done", time.time() - t0)
