"""Experiment (issue 16), step 2 of 3: tune a copy of blocks FIRST..15 + head conv of the untuned
ImageNet tail on the material labels (masked, class-balanced cross-entropy; epoch chosen on val).
With AUGMENT=1 the training photos are decoded again every epoch with a random resized crop and a
mirror, and run through the frozen stem and blocks 8-10 (160 s an epoch on 2 cores; 35 s without).
    python scripts/experiments/material_tail_train.py [FIRST=11] [EPOCHS=10] [LR=2e-4] [AUGMENT=0] [RANK=0]
With RANK > 0 the copied blocks' 1x1 convolutions learn only a rank-RANK delta (at 10x the learning
rate), the depthwise convolutions stay frozen: what a model folder would store is the deltas.
"""
import copy, sys, time, numpy as np, torch, torch.nn as nn, torch.nn.functional as F
torch.set_num_threads(2); torch.manual_seed(0)
from shoeclass.api import Classifier
from shoeclass.materials import MATERIAL_CLASSES
from shoeclass.training.materials import balanced_accuracy, material_labels
from shoeclass.images import load_image
from PIL import Image
FIRST = int(sys.argv[1]) if len(sys.argv) > 1 else 11
EPOCHS = int(sys.argv[2]) if len(sys.argv) > 2 else 10
LR = float(sys.argv[3]) if len(sys.argv) > 3 else 2e-4
AUGMENT = len(sys.argv) > 4 and sys.argv[4] == "1"
RANK = int(sys.argv[5]) if len(sys.argv) > 5 else 0  # > 0: the copied 1x1 convs tuned through a low-rank delta only
clf = Classifier(runtime="torch"); ref = clf.net.reference; b = ref.body
maps = torch.from_numpy(np.load(".cache/mattail/maps.npy"))  # (N, 2, 112, 14, 14) fp16
split = np.load(".cache/mattail/split.npy")
y = {p: np.load(f".cache/mattail/y_{p}.npy") for p in ("upper", "sole")}
tr = split == "train"
keep = {p: [c for c in range(len(MATERIAL_CLASSES[p])) if (y[p][tr] == c).sum() >= 40] for p in y}
remap = {p: np.array([keep[p].index(c) if c in keep[p] else -1 for c in range(len(MATERIAL_CLASSES[p]))] + [-1]) for p in y}
t = {p: torch.from_numpy(remap[p][y[p]]) for p in y}  # -1 stays -1 (index -1 -> last = -1)
print({p: [MATERIAL_CLASSES[p][c] for c in keep[p]] for p in y})
pre = nn.ModuleList(copy.deepcopy(b._blocks[i]) for i in range(11, FIRST)).eval()  # frozen, if FIRST > 11
class Tail(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList(copy.deepcopy(b._blocks[i]) for i in range(FIRST, 16))
        self.head, self.bn, self.act = copy.deepcopy(b._conv_head), copy.deepcopy(b._bn1), copy.deepcopy(b._swish)
        self.drop = nn.Dropout(0.3)
        self.out = nn.ModuleDict({p: nn.Linear(2560, len(keep[p])) for p in keep})
        self.requires_grad_(True)  # the shipped network's copy comes frozen: tune it for real
        if RANK:  # only the deltas (and the batch-norm affines, the outputs) learn; they are what a model folder would store
            import torch.nn.utils.parametrize as P
            class Delta(nn.Module):
                def __init__(self, cout, cin):
                    super().__init__(); self.a = nn.Parameter(torch.randn(RANK, cin) / cin ** 0.5); self.b = nn.Parameter(torch.zeros(cout, RANK))
                def forward(self, w): return w + (self.b @ self.a).view_as(w)
            for mod in [*self.blocks.modules(), self.head]:
                if isinstance(mod, nn.Conv2d):
                    mod.weight.requires_grad_(False)
                    if mod.kernel_size == (1, 1) and mod.groups == 1:
                        P.register_parametrization(mod, "weight", Delta(mod.out_channels, mod.in_channels))
    def features(self, h):
        for blk in self.blocks: h = blk(h)
        m = self.act(self.bn(self.head(h)))
        return torch.cat([m.mean((2, 3)), m.amax((2, 3))], 1)
    def forward(self, h):
        f = self.drop(self.features(h))
        return {p: lin(f) for p, lin in self.out.items()}
net = Tail()
def freeze_bn(m):
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d): mod.eval()
wts = {p: torch.tensor([len(t[p][tr][t[p][tr] >= 0]) / (len(keep[p]) * max(1, int((t[p][tr] == k).sum()))) for k in range(len(keep[p]))], dtype=torch.float32) for p in keep}
params = [{"params": [q for n, q in net.named_parameters() if not n.startswith("out.") and q.requires_grad], "lr": LR * (10 if RANK else 1)},
          {"params": net.out.parameters(), "lr": 10 * LR}]
opt = torch.optim.AdamW(params, weight_decay=1e-4)
idx_tr = np.flatnonzero(tr); bs = 64
steps = EPOCHS * int(np.ceil(len(idx_tr) / bs))
sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[LR, 10 * LR], total_steps=steps, pct_start=0.15)
paths = material_labels("../shared/data")[0].paths() if AUGMENT else None
def augmented(rows):
    xs = []
    for r in rows:
        im = load_image(paths[r]); w, h = im.size
        s_ = np.sqrt(np.random.uniform(0.6, 1.0)); cw, ch = int(w * s_), int(h * s_)
        x0, y0 = np.random.randint(0, w - cw + 1), np.random.randint(0, h - ch + 1)
        im = im.crop((x0, y0, x0 + cw, y0 + ch))
        if np.random.rand() < 0.5: im = im.transpose(Image.FLIP_LEFT_RIGHT)
        xs.append(clf.preset(im))
    with torch.no_grad():
        h = clf.net.members[0].trunk.stem(torch.stack(xs))
        for idx in range(ref.cut, FIRST): h = b._blocks[idx](h)
    return h
def inputs(rows, view=None):
    if AUGMENT and view is None:
        return augmented(rows)
    v = torch.from_numpy(np.random.randint(0, 2, len(rows))) if view is None else torch.full((len(rows),), view)
    h = maps[torch.from_numpy(rows), v].float()
    with torch.no_grad():
        for blk in pre: h = blk(h)
    return h
def evaluate(sel):
    rows = np.flatnonzero(sel); net.eval(); out = {p: [] for p in keep}; feats = []
    with torch.no_grad():
        for i in range(0, len(rows), 256):
            r = rows[i:i + 256]
            fs = [net.features(inputs(r, v)) for v in (0, 1)]
            f = (fs[0] + fs[1]) / 2; feats.append(f.numpy())
            for p, lin in net.out.items(): out[p].append(F.softmax(lin(f), 1).numpy())
    res = {}
    for p in keep:
        pr = np.concatenate(out[p]).argmax(1); tt = t[p].numpy()[rows]; m = tt >= 0
        present = [c for c in range(len(keep[p])) if (tt[m] == c).sum() >= 10]
        res[p] = (round(balanced_accuracy(pr[m], tt[m], present), 4), round(float((pr[m] == tt[m]).mean()), 4))
    return res, np.concatenate(feats)
best = (-1, None); t0 = time.time()
for ep in range(EPOCHS):
    net.train(); freeze_bn(net); perm = np.random.permutation(idx_tr); tot = 0
    for i in range(0, len(perm), bs):
        r = perm[i:i + bs]; outs = net(inputs(r))
        loss = sum(F.cross_entropy(outs[p], t[p][torch.from_numpy(r)], weight=wts[p], ignore_index=-1) for p in keep
                   if (t[p][torch.from_numpy(r)] >= 0).any())
        opt.zero_grad(); loss.backward(); opt.step(); sched.step(); tot += float(loss) * len(r)
    rv, _ = evaluate(split == "val"); rt, _ = evaluate(split == "test")
    print(f"epoch {ep + 1} loss {tot / len(perm):.3f} val {rv} test {rt} [{time.time() - t0:.0f}s]", flush=True)
    if rv["upper"][0] > best[0]:
        best = (rv["upper"][0], copy.deepcopy(net.state_dict()), ep + 1)
net.load_state_dict(best[1]); print("best epoch", best[2], "val upper", best[0])
_, f_all = evaluate(np.ones(len(split), bool))
tag = f"{FIRST}{'_aug' if AUGMENT else ''}{f'_r{RANK}' if RANK else ''}"
np.save(f".cache/mattail/feats_{tag}.npy", f_all.astype(np.float16))
torch.save(best[1], f".cache/mattail/tail_{tag}.pt")
print("trainable", sum(q.numel() for q in net.parameters() if q.requires_grad))
