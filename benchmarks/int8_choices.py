"""Which parts of the shipped network to quantize to int8 (issue 20): decisions kept and photos/s.

Each variant quantizes the model's ONNX export (``shoeclass.export.quantize_onnx``'s recipe: QDQ,
per-channel int8 weights, uint8 min-max activations) calibrated on validation photos, runs it on
OpenVINO over every test photo and compares the decisions (calibrated probability >= threshold, 14
outputs) with ONNX Runtime fp32 (whose decisions equal PyTorch fp32's on all 48,734, BENCHMARKS.md),
and the photo embedding's cosine with fp32's.

    python benchmarks/int8_choices.py --data ../shared/data      # ~15 min on 2 cores
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from runtimes import _pixels, _tensor, decisions  # noqa: E402
from speed import _target  # noqa: E402
from shoeclass.api import Classifier  # noqa: E402
from shoeclass.backends import OnnxRuntime, OpenVinoRuntime  # noqa: E402
from shoeclass.export import _after_linear, cached_onnx  # noqa: E402
from shoeclass.labels import read_labels  # noqa: E402


def quantize(src: Path, photos: np.ndarray, out: Path, exclude: list[str]) -> Path:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Photos(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter({"photos": photos[i:i + 16]} for i in range(0, len(photos), 16))

        def get_next(self):
            return next(self.batches, None)

    quantize_static(str(src), str(out), Photos(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, nodes_to_exclude=exclude)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    args = ap.parse_args()
    from onnxruntime.quantization.shape_inference import quant_pre_process
    import onnx

    clf = Classifier(runtime="torch", bf16=False)
    table = read_labels(args.data)
    test, val = (table.subset(table.split == s) for s in ("test", "val"))
    rows = np.sort(np.random.default_rng(0).choice(len(val), 512, replace=False))
    calib = _tensor(_pixels(list(np.asarray(val.paths())[rows]), clf.preset), clf.preset).numpy()
    px = _pixels(test.paths(), clf.preset)

    def run(rt) -> dict[str, np.ndarray]:
        outs = [rt(_tensor(px[i:i + 32], clf.preset)) for i in range(0, len(px), 32)]
        return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}

    tmp = Path(tempfile.mkdtemp(prefix="shoeclass-int8-"))
    pre = tmp / "pre.onnx"
    quant_pre_process(str(cached_onnx(clf.net, clf.meta)), str(pre), skip_symbolic_shape=True)
    ref = run(OnnxRuntime(pre))
    want = decisions(clf, ref)
    after = _after_linear(pre)
    gemm = [n.name for n in onnx.load(str(pre), load_external_data=False).graph.node if n.op_type == "Gemm"]
    variants = {"all int8, 256 calibration photos": (256, []), "all int8": (512, []),
                "linear layers float": (512, gemm), "what the linear layers feed float (shipped)": (512, after),
                "linear layers and all they feed float": (512, gemm + after)}
    print(f"| variant | decisions agree with fp32 ({want.size:,}) | changed | embedding cosine min / mean | "
          f"test photos/s | MB |\n|---|---|---|---|---|---|")
    shipped = None
    for i, (name, (n, exclude)) in enumerate(variants.items()):
        q = quantize(pre, calib[:n], tmp / f"v{i}.onnx", exclude)
        t0 = time.perf_counter()
        out = run(OpenVinoRuntime(q, int8=True))
        rate = len(px) / (time.perf_counter() - t0)
        got = decisions(clf, out)
        e, r = out["embedding"], ref["embedding"]
        cos = (e * r).sum(1) / np.linalg.norm(e, axis=1) / np.linalg.norm(r, axis=1)
        agree = float((got == want).mean())
        shipped = agree if "shipped" in name else shipped
        print(f"| {name} | {agree:.4f} | {int((got != want).sum())} | {cos.min():.3f} / {cos.mean():.4f} | "
              f"{rate:.0f} | {q.stat().st_size / 1e6:.1f} |", flush=True)
    print(_target("shipped_int8_decision_agreement_vs_fp32", shipped, 0.995, True, ".4f"))


if __name__ == "__main__":
    main()
